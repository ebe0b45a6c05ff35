"""TogetherBackend against the local fake Together server, through the real ``together`` SDK.

No network: the fake binds 127.0.0.1:0; ``sleep`` is a no-op (or a fake clock), so the whole file
runs in a few seconds."""

from __future__ import annotations

import openai
import pytest

from ft_pipeline.lib.training.backends.base import JobHandle, PreparedRun, TrainingHooks, TrainingRequest, train_with
from ft_pipeline.lib.training.backends.together import (
    TogetherBackend,
    TogetherFineTuneConfig,
    run_suffix,
    together_run_key,
)
from ft_pipeline.lib.training.openai_job import FineTuneError, FineTuneFailed, FineTuneTimeout
from ft_pipeline_tests.fakes.together_server import FakeTogether, examples_jsonl, preference_jsonl

SECRET = "tg-test-SECRET-4f9a2c77"
FAST = {"poll_interval_s": 0.001, "max_poll_interval_s": 0.002}
CREATE = r"/fine-tunes$"
RETRIEVE = r"/fine-tunes/ft-[^/]+$"


@pytest.fixture
def fake(monkeypatch):
    # why: a CI proxy without NO_PROXY would otherwise intercept calls to 127.0.0.1
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeTogether(api_key=SECRET) as server:
        yield server
        assert server.validation_errors == []


@pytest.fixture
def files(tmp_path):
    """SFT chat files (12 train, 3 validation examples) and DPO preference files."""
    paths = {name: tmp_path / f"{name}.jsonl" for name in ("train", "valid", "pref_train", "pref_valid")}
    paths["train"].write_bytes(examples_jsonl([(f"What is {i} + {i}?", f"{2 * i}") for i in range(12)]))
    paths["valid"].write_bytes(examples_jsonl([(f"What is {i} * 3?", f"{3 * i}") for i in range(3)]))
    paths["pref_train"].write_bytes(
        preference_jsonl([(f"Capital of land {i}?", f"City {i}", f"Town {i}") for i in range(12)])
    )
    paths["pref_valid"].write_bytes(preference_jsonl([(f"Capital of isle {i}?", f"Port {i}", "no") for i in range(3)]))
    return paths


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.jobs: list[str] = []

    def hooks(self) -> TrainingHooks:
        return TrainingHooks(on_log=self.lines.append, on_job=self.jobs.append)


def _backend(fake, *, sleep=lambda s: None, clock=None, **settings):
    config = TogetherFineTuneConfig(**{**FAST, **settings})
    kwargs = {"clock": clock} if clock is not None else {}
    return TogetherBackend(fake.together_client(SECRET), config, sleep=sleep, **kwargs)


def _run(backend, files, method="sft"):
    config = backend.config
    sft = (files["train"], files["valid"])
    dpo = (files["pref_train"], files["pref_valid"])
    data_version = "splits-v1" if method == "sft" else "prefs-v1"
    key = together_run_key(config, "splits-v1+prefs-v1" if method == "sft_then_dpo" else data_version, method)
    return PreparedRun(
        key=key,
        data_version=data_version,
        data_paths={},
        files={"splits_version": "splits-v1", "sft": sft, "dpo": dpo},
        settings={},
    )


def _train(backend, run, log):
    job = backend.start(run, log.hooks())
    return backend.wait(run, job, log.hooks())


def _request(tmp_path, method="sft"):
    return TrainingRequest(
        method=method, splits=None, preferences=None, models_folder=tmp_path / "models", data_dir=tmp_path
    )  # type: ignore[arg-type]


def test_sft_job_trains_streams_events_once_and_records_the_output_model(fake, files, tmp_path):
    backend, log = _backend(fake), Log()
    run = _run(backend, files)
    job = _train(backend, run, log)
    outcome = backend.result(run, job, _request(tmp_path))
    (remote,) = fake.jobs.values()
    assert remote["status"] == "completed" and remote["training_method"]["method"] == "sft"
    # LoRA by default, the run key in the suffix, the base from the config
    assert remote["training_type"]["type"] == "Lora" and remote["model"] == "Qwen/Qwen2-1.5B"
    assert remote["suffix"] == run_suffix(backend.config, run.key) == f"ft-pipeline-{run.key}"
    record = outcome.record
    assert record.backend == "together" and record.remote_model_id == remote["model_output_name"]
    assert record.job_id == remote["id"] and record.trained_tokens == remote["token_count"] > 0
    assert outcome.headline["fine_tuned_model"] == record.remote_model_id and outcome.headline["reattached"] is False
    assert isinstance(outcome.headline["train_loss"], float)
    assert [row["step"] for row in outcome.loss_history] == sorted(row["step"] for row in outcome.loss_history)
    assert any("valid_loss" in row for row in outcome.loss_history)
    assert outcome.row_tables["checkpoints"][-1]["step"] == outcome.loss_history[-1]["step"]
    assert outcome.record_file.exists()
    # every event of the job exactly once, oldest first
    events = [f"[{e['level']}] {e['message']}" for e in fake.job_events(remote["id"])]
    streamed = [line for line in log.lines if line.startswith("[")]
    assert streamed == events and len(set(streamed)) == len(streamed)
    # the uploads passed the SDK's file check and the server's validation
    assert {f["processing_status"] for f in fake.files.values()} == {"COMPLETED"}
    # the output model answers through the OpenAI-compatible endpoint, recalling its training answers
    chat = openai.OpenAI(base_url=fake.base_url, api_key=SECRET, max_retries=0)
    reply = chat.chat.completions.create(
        model=record.remote_model_id, messages=[{"role": "user", "content": "What is 4 + 4?"}]
    )
    assert reply.choices[0].message.content == "8"


def test_rerun_with_the_same_run_key_reattaches_without_uploading(fake, files, tmp_path):
    backend = _backend(fake)
    run = _run(backend, files)
    first = _train(backend, run, Log())
    uploads = len(fake.requests_matching("POST", r"/files$"))
    again = backend.start(run, Log().hooks())
    assert again.reattached and again.job_id == first.job_id
    assert len(fake.requests_matching("POST", r"/files$")) == uploads and len(fake.jobs) == 1
    outcome = backend.result(run, backend.wait(run, again, Log().hooks()), _request(tmp_path))
    assert outcome.headline["reattached"] is True
    # other settings make another run key, hence another job
    other = _backend(fake, n_epochs=2)
    assert not other.start(_run(other, files), Log().hooks()).reattached and len(fake.jobs) == 2


def test_reattaches_through_the_output_model_name_when_the_suffix_is_not_echoed(fake, files):
    fake.config.echo_suffix = False
    backend = _backend(fake)
    run = _run(backend, files)
    first = backend.start(run, Log().hooks())
    assert backend.start(run, Log().hooks()).job_id == first.job_id and len(fake.jobs) == 1


@pytest.mark.parametrize("fault", ["drop", "502"])
def test_a_lost_create_response_makes_no_second_job(fake, files, tmp_path, fault):
    if fault == "drop":
        fake.lose_response_after_apply("POST", CREATE)
    else:
        fake.error_after_apply("POST", CREATE, status=502)
    backend = _backend(fake)
    run = _run(backend, files)
    job = _train(backend, run, Log())
    assert len(fake.jobs) == 1 and len(fake.requests_matching("POST", CREATE)) == 1
    assert backend.result(run, job, _request(tmp_path)).record.job_id == next(iter(fake.jobs))


def test_rate_limits_and_server_errors_are_survived(fake, files):
    fast_retry = {"retry-after-ms": "1"}
    fake.inject("POST", CREATE, times=1, status=429, headers=fast_retry)  # create: reconciled, then retried
    fake.inject("GET", RETRIEVE, times=2, status=429, headers=fast_retry)  # the SDK retries these itself
    fake.inject("GET", r"/events$", times=1, status=503, headers=fast_retry)
    fake.inject("GET", r"/fine-tunes$", times=1, status=500, headers=fast_retry)
    backend = _backend(fake)
    job = _train(backend, _run(backend, files), Log())
    assert fake.jobs[job.job_id]["status"] == "completed" and len(fake.jobs) == 1
    assert len(fake.requests_matching("POST", CREATE)) == 2
    assert {r.note for r in fake.requests} >= {"injected"}


def test_dpo_job_trains_on_the_preference_files(fake, files, tmp_path):
    backend = _backend(fake, method="dpo", dpo_beta=0.2)
    run = _run(backend, files, "dpo")
    outcome = backend.result(run, _train(backend, run, Log()), _request(tmp_path, "dpo"))
    (remote,) = fake.jobs.values()
    assert remote["training_method"] == {
        "method": "dpo",
        "dpo_beta": 0.2,
        "dpo_normalize_logratios_by_length": False,
        "dpo_reference_free": False,
    }
    assert fake.files[remote["training_file"]]["validation_report"]["dataset_format"] == "PREFERENCE_OPENAI"
    assert outcome.record.remote_model_id == remote["model_output_name"]


def test_sft_then_dpo_continues_the_sft_job_and_reruns_reattach_both(fake, files, tmp_path):
    backend, log = _backend(fake, method="sft_then_dpo"), Log()
    run = _run(backend, files, "sft_then_dpo")
    job = _train(backend, run, log)
    sft, dpo = fake.jobs.values()
    assert sft["training_method"]["method"] == "sft" and dpo["training_method"]["method"] == "dpo"
    assert dpo["from_checkpoint"] == sft["id"]
    # the continuation names no model (the SDK refuses both) and inherits the LoRA settings
    assert fake.requests_matching("POST", CREATE)[-1].json.get("model") is None
    assert dpo["training_type"] == sft["training_type"]
    # the handle moved to the DPO job (a cancel reaches it) and hooks heard of both
    assert job.job_id == dpo["id"] and log.jobs == [dpo["id"]]
    outcome = backend.result(run, job, _request(tmp_path, "sft_then_dpo"))
    assert outcome.record.remote_model_id == dpo["model_output_name"]
    assert outcome.record.base_model == "Qwen/Qwen2-1.5B"
    assert outcome.record.trained_tokens == sft["token_count"] + dpo["token_count"]
    # the SFT stage has a plain sft run's key: a plain SFT run re-attaches to it
    plain = _backend(fake)
    assert plain.start(_run(plain, files), Log().hooks()).job_id == sft["id"]
    again = backend.wait(run, backend.start(run, Log().hooks()), Log().hooks())
    assert again.reattached and again.job_id == dpo["id"] and len(fake.jobs) == 2


def test_timeout_cancels_the_job(fake, files):
    fake.outcome_for_next_job("stall")
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    backend = _backend(fake, sleep=sleep, clock=lambda: now[0], timeout_s=30, poll_interval_s=5, max_poll_interval_s=5)
    with pytest.raises(FineTuneTimeout, match="timed out after 30 s") as caught:
        _train(backend, _run(backend, files), Log())
    assert fake.jobs[caught.value.job_id]["status"] == "cancelled"


def test_an_interrupted_run_cancels_its_job(fake, files, tmp_path):
    fake.outcome_for_next_job("stall")
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 4:
            raise KeyboardInterrupt

    backend = _backend(fake, sleep=sleep)
    backend.prepare = lambda request: _run(backend, files)  # type: ignore[method-assign]
    log = Log()
    with pytest.raises(KeyboardInterrupt):
        train_with(backend, _request(tmp_path), log.hooks())
    (remote,) = fake.jobs.values()
    assert remote["status"] == "cancelled" and any("is now cancelled" in line for line in log.lines)
    # cancelling a finished job reports where it ended
    assert backend.cancel(JobHandle(job_id=remote["id"])) == "cancelled"


def test_a_failed_job_raises_with_the_error_event(fake, files):
    fake.outcome_for_next_job("fail_training")
    backend = _backend(fake)
    with pytest.raises(FineTuneFailed, match="ended error: Training failed at step") as caught:
        _train(backend, _run(backend, files), Log())
    assert caught.value.code == "error" and caught.value.job_id


def test_bad_files_fail_before_a_job_exists(fake, files, tmp_path):
    backend = _backend(fake)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n")
    run = _run(backend, files)
    with pytest.raises(FineTuneError, match="failed the together file check"):
        backend.start(PreparedRun(run.key, "v", {}, {**run.files, "sft": (broken, None)}, {}), Log().hooks())
    assert not fake.requests_matching("POST", r"/files$")  # the SDK's check ran before any upload
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_bytes(examples_jsonl([("hi", "x")]).replace(b'"assistant"', b'"user"'))
    with pytest.raises(FineTuneError, match=r"no_answer.jsonl\) failed validation \(INVALID_FORMAT\)"):
        backend.start(PreparedRun(run.key, "v", {}, {**run.files, "sft": (no_answer, None)}, {}), Log().hooks())
    # SFT lines for a DPO job: the job fails while validating its files
    dpo = _backend(fake, method="dpo")
    dpo_run = _run(dpo, files, "dpo")
    with pytest.raises(FineTuneFailed, match="CONVERSATION format, not for dpo"):
        _train(dpo, PreparedRun(dpo_run.key, "v", {}, {**dpo_run.files, "dpo": (files["train"], None)}, {}), Log())
    assert not fake.jobs or all(j["status"] != "running" for j in fake.jobs.values())


def test_the_api_key_never_reaches_messages_logs_or_records(fake, files, tmp_path):
    backend, log = _backend(fake), Log()
    run = _run(backend, files)
    outcome = backend.result(run, _train(backend, run, log), _request(tmp_path))
    fake.inject("POST", CREATE, status=400, body={"error": {"message": f"bad key {SECRET}", "type": "invalid"}})
    other = _backend(fake, n_epochs=1)
    with pytest.raises(FineTuneError) as caught:
        other.start(_run(other, files), log.hooks())
    assert "HTTP 400" in str(caught.value) and "***" in str(caught.value)
    # API errors that survive the SDK's retries become one scrubbed line, the SDK's exception not shown
    unknown = _backend(fake, model="nobody/no-such-model", n_epochs=1)
    with pytest.raises(FineTuneError, match="HTTP 404: Model nobody/no-such-model is not available") as refused:
        unknown.start(_run(unknown, files), log.hooks())
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    wrong_key = TogetherBackend(fake.together_client("tg-wrong-key"), TogetherFineTuneConfig(**FAST))
    with pytest.raises(FineTuneError, match="HTTP 401"):
        wrong_key.start(_run(wrong_key, files), log.hooks())
    texts = [*log.lines, str(caught.value), str(refused.value), outcome.record_file.read_text(), repr(outcome.headline)]
    assert not [text for text in texts if SECRET in text]
    assert {r.headers.get("authorization") for r in fake.requests} <= {"Bearer ***", None}


def test_the_together_backend_implements_the_protocol(fake):
    from ft_pipeline.lib.training.backends import FineTuningBackend

    assert isinstance(_backend(fake), FineTuningBackend)


def test_config_refuses_what_together_cannot_take():
    with pytest.raises(ValueError, match="at most 23 characters"):
        TogetherFineTuneConfig(suffix="x" * 24)
    with pytest.raises(ValueError, match="method"):
        TogetherFineTuneConfig(method="kto")
    with pytest.raises(ValueError, match="batch_size"):
        TogetherFineTuneConfig(batch_size="auto")
    # the waiting knobs are not part of the run key; the training ones are
    base = TogetherFineTuneConfig()
    key = together_run_key(base, "v", "sft")
    assert together_run_key(TogetherFineTuneConfig(poll_interval_s=1, timeout_s=5), "v", "sft") == key
    assert together_run_key(TogetherFineTuneConfig(lora_r=16), "v", "sft") != key


def test_train_with_prepares_from_the_splits_and_the_augmented_split(fake, files, tmp_path):
    """prepare: the SFT splits' JSONL and their version key the run; train_on_augmented trains on
    the augmented train split under its own key; preference methods refuse it."""
    import dataclasses

    from ft_pipeline.lib.manifests import AugmentedTrainManifest, SplitsManifest
    from ft_pipeline.lib.training.fine_tune import NoAugmentedData, NoPreferenceData

    paths = {"train": {"jsonl": str(files["train"])}, "validation": {"jsonl": str(files["valid"])}}
    splits = SplitsManifest(version="s1", curated_version="c1", paths=paths)
    request = TrainingRequest("sft", splits, None, tmp_path / "models", tmp_path)
    plain = train_with(_backend(fake), request, TrainingHooks())
    assert plain.record.data_version == "s1"
    assert plain.record.version == together_run_key(_backend(fake).config, "s1", "sft")
    augmented = AugmentedTrainManifest(
        version="aug1", splits_version="s1", settings={}, paths={"jsonl": str(files["train"]), "parquet": ""}, rows=12
    )
    outcome = train_with(_backend(fake), dataclasses.replace(request, augmented=augmented), TrainingHooks())
    assert outcome.record.data_version == "aug1" and outcome.record.version != plain.record.version
    assert len(fake.jobs) == 2
    with pytest.raises(NoAugmentedData, match="SFT method only"):
        _backend(fake, method="dpo").prepare(dataclasses.replace(request, method="dpo", augmented=augmented))
    with pytest.raises(NoPreferenceData):
        _backend(fake, method="dpo").prepare(dataclasses.replace(request, method="dpo"))
