"""``ft-pipeline run --backend together``: raw logs to a promoted Together model against the fake
Together server on loopback, idempotent under a lost create response, the key in no log,
metadata, record or report."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from ft_pipeline.cli import main
from ft_pipeline.definitions import ALL_ASSETS, TRAINING_ASSETS
from ft_pipeline.defs.resources import TogetherResource
from ft_pipeline.lib.evaluation.candidate import DEFAULT_MODEL_NAME
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline_tests.conftest import resources_for
from ft_pipeline_tests.fakes.together_server import FakeTogether

SECRET = "tg-test-SECRET-cli-5e1d0b"
#: One of the sample's files: enough for the gate to decide, a fifth of the ingest runs.
KEEP = ("support_2024-05-01.jsonl",)


def test_run_with_the_together_backend_goes_raw_to_promoted_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    data = tmp_path / "data"
    main(["sample-data", str(data / "raw")])
    for path in (data / "raw").iterdir():
        if path.name not in KEEP:
            path.unlink()
    with FakeTogether(api_key=SECRET) as fake:
        monkeypatch.setenv("TOGETHER_API_KEY", SECRET)
        monkeypatch.setenv("TOGETHER_BASE_URL", fake.root_url)
        # The job is created but the response is lost: the backend finds it by run key.
        fake.lose_response_after_apply("POST", r"/fine-tunes$")
        fast = ["--set", "fine_tuned_model.together_poll_interval_s=0.01"]
        fast += ["--set", "fine_tuned_model.together_max_poll_interval_s=0.02"]
        fast += ["--set", "evaluation_report.n_resamples=200", "--set", "evaluation_report.measure_latency=false"]
        # The fake's fine-tuned model recalls exact training prompts, so any perturbation defeats it: the
        # robustness suite is reported, not gated (as in test_fine_tuned_model).
        fast += ["--set", "evaluation_report.robustness_examples=4", "--set", "evaluation_report.robustness_gate=false"]
        assert main(["run", "--data-dir", str(data), "--backend", "together", *fast]) == 0
        out = capsys.readouterr().out
        (job,) = fake.jobs.values()
        assert job["status"] == "completed" and len(fake.requests_matching("POST", r"/fine-tunes$")) == 1
        assert "check evaluation_report.promotion_gate: passed" in out
        production = ModelRegistry.for_data_dir(data).resolve(DEFAULT_MODEL_NAME, "production")
        assert production is not None
        assert (production.backend, production.remote_model_id) == ("together", job["model_output_name"])
        record = json.loads((data / "models" / "latest.json").read_text())
        assert record["remote_model_id"] == job["model_output_name"]

        # Run again (in process, the training step alone): same data and settings, same job.
        with dg.DagsterInstance.get() as instance:
            again = dg.materialize(
                ALL_ASSETS,
                selection=TRAINING_ASSETS,
                instance=instance,
                resources={
                    **resources_for(data),
                    "together": TogetherResource(base_url=fake.root_url),
                },
                run_config={
                    "ops": {"fine_tuned_model": {"config": {"backend": "together", "together_poll_interval_s": 0.01}}}
                },
            )
            assert again.success and len(fake.jobs) == 1
            metadata = again.get_asset_materialization_events()[0].materialization.metadata
            assert metadata["reattached"].value is True
            assert metadata["fine_tuned_model"].value == job["model_output_name"]

            # The key is in no log line, event, stored metadata, record or report.
            for run in instance.get_run_records():
                for entry in instance.all_logs(run.dagster_run.run_id):
                    assert SECRET not in (entry.message or "") and SECRET not in str(entry.dagster_event or "")
        stored = [p.read_text(errors="ignore") for p in data.rglob("*") if p.suffix in (".json", ".md", ".jsonl")]
        assert stored and not [text for text in stored if SECRET in text]
        assert SECRET not in out
        assert fake.validation_errors == []


def test_together_without_a_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(dg.Failure, match="TOGETHER_API_KEY is not set"):
        TogetherResource().get_client()
