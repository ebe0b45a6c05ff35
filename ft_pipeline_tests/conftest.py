"""Shared fixtures: a temporary data directory with the sample logs, a Dagster instance, and a real
PostgreSQL server with a fresh database per test."""

import os
import tempfile

# Before anything imports huggingface_hub (it reads the variable once): base models registered in
# the hub cache by the tests go to a throwaway folder, not the user's ~/.cache/huggingface.
os.environ.setdefault("HF_HUB_CACHE", tempfile.mkdtemp(prefix="ft-pipeline-test-hf-cache-"))

import sys  # noqa: E402

import dagster as dg  # noqa: E402
import pytest

try:  # absl comes with rouge-score
    import absl.logging
except ImportError:  # pragma: no cover
    pass
else:
    # absl's log handler keeps the sys.stderr of the moment it was created: under pytest, a capture
    # file. Dagster applies an instance's python_logs settings with logging.config.dictConfig, which
    # closes every existing handler, and absl's closes its stream unless it is the process's own
    # stderr/stdout, so a later test failed with "I/O operation on closed file". Point it at the
    # real stderr, which absl never closes.
    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__

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


def resources_for(data_dir):
    """The project's resources with everything below ``data_dir`` (landing folder, artifacts, registry)."""
    from ft_pipeline.definitions import default_resources
    from ft_pipeline.defs.resources import ModelRegistryResource, PipelineStorage, RawLogStore

    return {
        **default_resources(),
        "storage": PipelineStorage(data_dir=str(data_dir)),
        "raw_log_store": RawLogStore(data_dir=str(data_dir)),
        "model_registry": ModelRegistryResource(data_dir=str(data_dir)),
    }


@pytest.fixture
def resources(data_dir):
    return resources_for(data_dir)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server for the session (``postgresql://user:password@127.0.0.1:port/db``):
    ``FT_PIPELINE_TEST_POSTGRES_URL`` if set, else a throwaway cluster from the installed server
    binaries. Skips when there is neither; fails, with the server log, when the binaries are there
    but the server does not start."""
    from ft_pipeline_tests.postgres_server import postgres_server, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_database_url(postgres_url):
    """A fresh, uniquely named database on that server for one test, dropped afterwards."""
    from ft_pipeline_tests.postgres_server import create_database, drop_database

    url = create_database(postgres_url)
    yield url
    drop_database(postgres_url, url)


@pytest.fixture(autouse=True)
def _isolated_default_data_dir(tmp_path, monkeypatch):
    """Resources a test does not override must never write into the repo's data/ folder."""
    monkeypatch.setenv("FT_PIPELINE_DATA_DIR", str(tmp_path / "default-data"))
    monkeypatch.delenv("FT_PIPELINE_REGISTRY_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-model tests: on the 2 shared cores, two threads
    fighting a busy core make these small matmuls several times slower than one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def register_evaluated_version(
    registry,
    model_name: str,
    *,
    model_uri: str,
    backend: str,
    base_model: str,
    eval_id: str,
    run_key: str = "manual-run",
):
    """A model version registered by hand with a passing, leakage-checked evaluation (what
    `evaluation_report` records), ready for `promote`. Returns the ModelVersion."""
    dataset = registry.record_dataset_version("manual", "train", "0" * 64, 1)
    run = registry.record_training_run(run_key, backend, base_model, dataset, None, {}, 0)
    version = registry.register_model_version(
        model_name,
        training_run_id=run,
        model_uri=model_uri,
        backend=backend,
        base_model=base_model,
        run_key=run_key,
        dataset_version="manual",
        config_hash="manual",
        metrics={},
    )
    registry.record_evaluation(
        eval_id,
        model_name,
        version.version,
        suite="test",
        eval_dataset_version_id=dataset,
        baseline_model_uri=None,
        base_model_uri=base_model,
        metrics={},
        per_example_uri="-",
        gate_config={},
        decision="pass",
        leakage_checked=True,
    )
    return version


def pytest_collection_modifyitems(config, items):
    """Tests that use the PostgreSQL server are marked ``postgres`` (the fixture decides, so a new
    test cannot forget the mark); `make test-fast` deselects them."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
