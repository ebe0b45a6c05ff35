"""The backend protocol: ``train_with`` runs every backend the same way, and cancels the job it
started when the run is interrupted; the openai backend behind it, against the fake OpenAI API."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from ft_pipeline.lib.manifests import SplitsManifest
from ft_pipeline.lib.training.backends import (
    FineTuningBackend,
    JobHandle,
    PreparedRun,
    TrainingHooks,
    TrainingOutcome,
    TrainingRequest,
    train_with,
)
from ft_pipeline.lib.training.backends.local_lora import LocalLoraBackend
from ft_pipeline.lib.training.backends.openai import OpenAIBackend
from ft_pipeline.lib.training.openai_job import OpenAIFineTuneConfig
from ft_pipeline.lib.training.record import ModelRecord, read_model_record
from ft_pipeline_tests.fakes.openai_server import FakeOpenAI, examples_jsonl

SECRET = "sk-test-backend-protocol-SECRET"


class Interrupted(Exception):
    """Stands in for Dagster's DagsterExecutionInterruptedError."""


class TwoStageBackend:
    """A backend whose wait starts a second job, then fails or is interrupted as told."""

    name = "scripted"

    def __init__(self, wait_raises: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.wait_raises = wait_raises

    def prepare(self, request: TrainingRequest) -> PreparedRun:
        self.calls.append("prepare")
        return PreparedRun(key="rk", data_version=request.splits.version, data_paths={}, files={}, settings={})

    def start(self, run: PreparedRun, hooks: TrainingHooks) -> JobHandle:
        self.calls.append("start")
        return JobHandle(job_id="job-1")

    def wait(self, run: PreparedRun, job: JobHandle, hooks: TrainingHooks) -> JobHandle:
        self.calls.append("wait")
        job.job_id = "job-2"  # the second stage, started in place
        if self.wait_raises is not None:
            raise self.wait_raises
        return job

    def result(self, run: PreparedRun, job: JobHandle, request: TrainingRequest) -> TrainingOutcome:
        self.calls.append("result")
        record = ModelRecord(
            version=run.key, path="", backend=self.name, run_key=run.key, base_model="b", data_version="v",
            split_paths={}, config={}, config_hash="h", metrics={},
        )  # fmt: skip
        return TrainingOutcome(record=record, record_file=Path("model.json"), headline={"job_id": job.job_id})

    def cancel(self, job: JobHandle) -> str:
        self.cancelled.append(job.job_id)
        return "cancelled"


def _request(tmp_path: Path, splits: SplitsManifest | None = None) -> TrainingRequest:
    splits = splits or SplitsManifest(version="s1", curated_version="c1", paths={})
    return TrainingRequest("sft", splits, None, tmp_path / "models", tmp_path)


def test_train_with_runs_the_steps_in_order_and_reports_the_job(tmp_path):
    backend = TwoStageBackend()
    assert isinstance(backend, FineTuningBackend)
    jobs: list[str] = []
    outcome = train_with(backend, _request(tmp_path), TrainingHooks(on_job=jobs.append))
    assert backend.calls == ["prepare", "start", "wait", "result"]
    assert jobs == ["job-1"] and outcome.headline == {"job_id": "job-2"} and backend.cancelled == []


def test_an_interrupted_run_cancels_the_stage_that_is_running(tmp_path):
    backend = TwoStageBackend(wait_raises=Interrupted())
    with pytest.raises(Interrupted):
        train_with(backend, _request(tmp_path), TrainingHooks(), interrupted=(Interrupted,))
    assert backend.cancelled == ["job-2"] and "result" not in backend.calls


def test_a_failed_job_is_not_cancelled_again(tmp_path):
    backend = TwoStageBackend(wait_raises=RuntimeError("job failed"))
    with pytest.raises(RuntimeError):
        train_with(backend, _request(tmp_path), TrainingHooks(), interrupted=(Interrupted,))
    assert backend.cancelled == []


def test_every_backend_implements_the_protocol():
    assert isinstance(OpenAIBackend(object(), OpenAIFineTuneConfig()), FineTuningBackend)
    assert isinstance(LocalLoraBackend.__new__(LocalLoraBackend), FineTuningBackend)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeOpenAI(api_key=SECRET) as server:
        yield server


def _splits(tmp_path: Path) -> SplitsManifest:
    folder = tmp_path / "splits" / "s1"
    folder.mkdir(parents=True)
    paths = {}
    for split, n in (("train", 12), ("validation", 3)):
        path = folder / f"{split}.jsonl"
        path.write_bytes(examples_jsonl([(f"What is {i} + {i}?", f"{2 * i}") for i in range(n)]))
        paths[split] = {"jsonl": str(path), "parquet": str(folder / f"{split}.parquet")}
    return SplitsManifest(version="s1", curated_version="c1", paths=paths)


@pytest.mark.parametrize("name", ["openai", "azure"])
def test_the_openai_backend_trains_records_and_reattaches(fake, tmp_path, name):
    client = openai.OpenAI(base_url=fake.base_url, api_key=SECRET, max_retries=2, timeout=5)
    config = OpenAIFineTuneConfig(poll_interval_s=0.01, max_poll_interval_s=0.01, timeout_s=60)
    request = _request(tmp_path, _splits(tmp_path))
    lines: list[str] = []
    first = train_with(OpenAIBackend(client, config, name=name), request, TrainingHooks(on_log=lines.append))
    record = read_model_record(tmp_path / "models")
    assert record is not None and record.backend == name and record.is_hosted
    assert record.remote_model_id == first.headline["fine_tuned_model"] and record.model_uri == record.remote_model_id
    assert first.headline["reattached"] is False and first.row_tables["checkpoints"]
    again = train_with(OpenAIBackend(client, config, name=name), request, TrainingHooks())
    assert again.headline["reattached"] is True and len(fake.jobs) == 1
    assert again.record.version == first.record.version
    stored = json.dumps([lines, first.headline, first.tables, json.loads(Path(first.record_file).read_text())])
    assert SECRET not in stored


def test_a_hosted_job_on_the_augmented_train_split(fake, tmp_path):
    """train_on_augmented: the job uploads the augmented train JSONL and is keyed by its version; a
    preference method is refused (the preference data is not augmented)."""
    import dataclasses

    from ft_pipeline.lib.manifests import AugmentedTrainManifest
    from ft_pipeline.lib.training.fine_tune import NoAugmentedData

    splits = _splits(tmp_path)
    augmented_jsonl = tmp_path / "augmented.jsonl"
    augmented_jsonl.write_bytes(examples_jsonl([(f"what is {i} + {i} ?", f"{2 * i}") for i in range(24)]))
    augmented = AugmentedTrainManifest(
        version="aug1", splits_version="s1", settings={}, paths={"jsonl": str(augmented_jsonl), "parquet": ""}, rows=24
    )
    client = openai.OpenAI(base_url=fake.base_url, api_key=SECRET, max_retries=2, timeout=5)
    config = OpenAIFineTuneConfig(poll_interval_s=0.01, max_poll_interval_s=0.01, timeout_s=60)
    plain = train_with(OpenAIBackend(client, config), _request(tmp_path, splits), TrainingHooks())
    request = dataclasses.replace(_request(tmp_path, splits), augmented=augmented)
    outcome = train_with(OpenAIBackend(client, config), request, TrainingHooks())
    assert outcome.record.data_version == "aug1" and outcome.record.version != plain.record.version
    assert outcome.record.split_paths["train"]["jsonl"] == str(augmented_jsonl)
    assert len(fake.jobs) == 2  # a job of its own, not the plain split's re-attached
    dpo = OpenAIBackend(client, dataclasses.replace(config, method="dpo"))
    with pytest.raises(NoAugmentedData, match="SFT method only"):
        dpo.prepare(dataclasses.replace(request, method="dpo"))
