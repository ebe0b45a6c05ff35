"""Shared fixtures: a temporary data directory with the sample logs and a Dagster instance."""

import os

import dagster as dg
import pytest

# Tests never reach a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def data_dir(tmp_path):
    from ft_pipeline.lib.sample_data import write_sample

    root = tmp_path / "data"
    write_sample(root / "raw")
    return root


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def resources(data_dir):
    from ft_pipeline.definitions import default_resources
    from ft_pipeline.defs.resources import PipelineStorage, RawLogStore

    return {
        **default_resources(),
        "storage": PipelineStorage(data_dir=str(data_dir)),
        "raw_log_store": RawLogStore(data_dir=str(data_dir)),
    }
