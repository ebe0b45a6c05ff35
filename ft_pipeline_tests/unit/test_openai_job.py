"""run_fine_tune & co. against the local fake OpenAI server, through the real SDK in strict mode.

No network: the fake binds 127.0.0.1:0. ``sleep`` is a no-op (or a fake clock), so the
whole file runs in a few seconds.
"""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import openai
import pandas as pd
import pytest

from ft_pipeline.lib.preference_format import write_preference_jsonl
from ft_pipeline.lib.training import openai_job
from ft_pipeline.lib.training.openai_job import (
    FineTuneCancelled,
    FineTuneError,
    FineTuneFailed,
    FineTuneTimeout,
    OpenAIFineTuneConfig,
    OpenAIFineTuneResult,
    cancel_job,
    find_job_by_run_key,
    job_method,
    parse_result_csv,
    run_fine_tune,
)
from ft_pipeline_tests.fakes.openai_server import FakeOpenAI, examples_jsonl

SECRET = "sk-test-SECRET-abc123"
JOB_PATH = r"/fine_tuning/jobs/[^/]+$"  # retrieve
EVENTS_PATH = r"/fine_tuning/jobs/[^/]+/events$"
CREATE_PATH = r"/fine_tuning/jobs$"
NO_SLEEP = {"sleep": lambda s: None}


@pytest.fixture
def fake(monkeypatch):
    # why: a CI proxy without NO_PROXY would otherwise intercept calls to 127.0.0.1
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeOpenAI(api_key=SECRET) as server:
        yield server
        assert server.validation_errors == []


@pytest.fixture
def client(fake):
    return openai.OpenAI(
        base_url=fake.base_url, api_key=SECRET, _strict_response_validation=True, max_retries=2, timeout=5
    )


@pytest.fixture
def data(tmp_path):
    """A valid training file (12 examples) and validation file (3 examples)."""
    train = tmp_path / "train.jsonl"
    train.write_bytes(examples_jsonl([(f"What is {i} + {i}?", f"{2 * i}") for i in range(12)], system="Be brief."))
    valid = tmp_path / "valid.jsonl"
    valid.write_bytes(examples_jsonl([(f"What is {i} * 3?", f"{3 * i}") for i in range(3)]))
    return train, valid


def _pairs(questions, answer, wrong):
    """A small ``pairs`` frame (the preference builder's prompt / chosen / rejected columns)."""
    return pd.DataFrame(
        {
            "prompt": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}] for q in questions],
            "chosen": [answer(q) for q in questions],
            "rejected": [wrong(q) for q in questions],
        }
    )


def _write_preference_files(folder):
    """Training (12 pairs) and validation (3 pairs) OpenAI preference JSONL, named like the
    preference dataset's ``<split>.openai.jsonl``."""
    train, valid = folder / "train.openai.jsonl", folder / "validation.openai.jsonl"
    add = [f"What is {i} + {i}?" for i in range(12)]
    write_preference_jsonl(
        _pairs(add, lambda q: str(2 * int(q.split()[2])), lambda q: f"About {2 * int(q.split()[2]) + 1}."),
        train,
        "openai",
    )
    mul = [f"What is {i} * 3?" for i in range(3)]
    write_preference_jsonl(
        _pairs(mul, lambda q: str(3 * int(q.split()[2])), lambda q: "No idea."),
        valid,
        "openai",
    )
    return train, valid


@pytest.fixture
def pref_data(tmp_path):
    """A valid DPO training file (12 pairs) and validation file (3 pairs)."""
    folder = tmp_path / "preferences"
    folder.mkdir()
    return _write_preference_files(folder)


DPO = OpenAIFineTuneConfig(method="dpo")


class Capture:
    """Records every callback so tests can assert on exactly what a caller would see."""

    def __init__(self):
        self.logs: list[str] = []
        self.metrics: list[dict] = []
        self.jobs: list[str] = []

    def kwargs(self, **extra):
        return {
            "on_log": self.logs.append,
            "on_metrics": self.metrics.append,
            "on_job": self.jobs.append,
            **NO_SLEEP,
            **extra,
        }


def _event_lines(fake, job_id):
    return [f"[{e['level']}] {e['message']}" for e in fake.job_events(job_id)]


# ---------------------------------------------------------------------------- success


def test_success_end_to_end(fake, client, data):
    train, valid = data
    cap = Capture()
    result = run_fine_tune(client, train, valid, "ds1:cfg1", **cap.kwargs())

    assert isinstance(result, OpenAIFineTuneResult)
    assert result.status == "succeeded" and not result.reattached
    assert cap.jobs == [result.job_id]
    job = fake.jobs[result.job_id]
    assert result.fine_tuned_model == job["fine_tuned_model"]
    assert result.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:fake-org:ft-pipeline:")
    assert result.trained_tokens == job["trained_tokens"] > 0
    assert (result.training_file_id, result.validation_file_id) == (job["training_file"], job["validation_file"])
    assert fake.file_bytes(result.training_file_id) == train.read_bytes()
    assert result.hyperparameters == {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.8}

    # every event exactly once, oldest first
    assert cap.logs == _event_lines(fake, result.job_id)
    assert cap.logs[0] == f"[info] Created fine-tuning job: {result.job_id}"
    assert cap.logs[-1] == "[info] The job has successfully completed"
    assert any(line.startswith("[info] Step 6/36: training loss=") for line in cap.logs)

    # metrics: one per metrics event, oldest first, in the callback and in the result
    expected = [e["data"] for e in fake.job_events(result.job_id) if e["type"] == "metrics"]
    assert cap.metrics == result.metrics == expected
    assert [m["step"] for m in result.metrics] == [6, 12, 18, 24, 30, 36]
    assert all("valid_loss" in m for m in result.metrics)

    assert [c["step_number"] for c in result.checkpoints] == [12, 24, 36]
    assert result.checkpoints[-1]["fine_tuned_model_checkpoint"] == result.fine_tuned_model
    assert result.checkpoints[0]["fine_tuned_model_checkpoint"].endswith(":ckpt-step-12")
    assert result.checkpoints[0]["metrics"]["train_loss"] == result.metrics[1]["train_loss"]

    assert result.result_metrics["step"] == 36
    assert result.result_metrics["train_loss"] == result.metrics[-1]["train_loss"]
    assert result.result_metrics["valid_loss"] == result.metrics[-1]["valid_loss"]

    # the wire: two uploads, one create with the documented shape, sent without SDK retries
    assert len(fake.requests_matching("POST", r"/files$")) == 2
    (create,) = fake.requests_matching("POST", CREATE_PATH)
    body = create.json
    assert body["method"] == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
        },
    }
    assert body["metadata"] == {"run_key": "ds1:cfg1"} and body["seed"] == 42 and body["suffix"] == "ft-pipeline"
    assert "hyperparameters" not in body  # deprecated top-level form
    lookup = fake.requests_matching("GET", CREATE_PATH)[0]
    assert lookup.query_dict["metadata[run_key]"] == "ds1:cfg1"
    assert fake.requests.index(lookup) < fake.requests.index(create)  # looked up before creating

    # the model is usable: the fake's fine-tuned responder has memorised the training data
    reply = client.chat.completions.create(
        model=result.fine_tuned_model, messages=[{"role": "user", "content": "What is 5 + 5?"}]
    )
    assert reply.choices[0].message.content == "10"


def test_events_are_paged_back_to_the_last_seen_one(fake, client, data, monkeypatch):
    monkeypatch.setattr(openai_job, "EVENTS_PAGE_SIZE", 2)
    fake.config.ticks_per_epoch = 1  # several events appear per tick near the end
    cap = Capture()
    result = run_fine_tune(client, data[0], None, "paged", OpenAIFineTuneConfig(n_epochs=2), **cap.kwargs())
    assert cap.logs == _event_lines(fake, result.job_id)
    assert len(cap.logs) == len(set(cap.logs))
    assert all("valid_loss" not in m for m in result.metrics)
    assert result.result_metrics["valid_loss"] is None  # empty CSV cell
    assert [r.query_dict.get("limit") for r in fake.requests_matching("GET", EVENTS_PATH)][:1] == ["2"]


def test_plain_csv_result_file_is_parsed_too(fake, client, data):
    fake.config.result_file_base64 = False
    result = run_fine_tune(client, data[0], None, "plain-csv", **NO_SLEEP)
    assert result.result_metrics["step"] == 36


def test_parse_result_csv_handles_base64_plain_and_garbage():
    csv_text = "step,train_loss,train_accuracy,valid_loss\n1,2.5,0.5,\n2,1.25,0.75,1.5\n"
    expected = {"step": 2, "train_loss": 1.25, "train_accuracy": 0.75, "valid_loss": 1.5}
    assert parse_result_csv(csv_text.encode()) == expected
    assert parse_result_csv(base64.b64encode(csv_text.encode())) == expected
    assert parse_result_csv(b"step,train_loss\n") == {}
    with pytest.raises(ValueError):
        parse_result_csv(b"\x00\x01 not a csv")


# ---------------------------------------------------------------------------- failures


def test_invalid_training_file_raises_with_the_api_error(fake, client, tmp_path):
    train = tmp_path / "small.jsonl"
    train.write_bytes(examples_jsonl([(f"q{i}", f"a{i}") for i in range(5)]))
    cap = Capture()
    with pytest.raises(FineTuneFailed) as info:
        run_fine_tune(client, train, None, "too-small", **cap.kwargs())
    err = info.value
    api_error = fake.jobs[err.job_id]["error"]
    assert err.code == "invalid_training_file" and err.param == "training_file"
    assert str(err) == f"fine-tuning job {err.job_id} failed: invalid_training_file: {api_error['message']}"
    assert "at least 10 examples" in str(err)
    assert cap.logs[-1] == f"[error] {api_error['message']}"


def test_training_failure_raises_fine_tune_failed(fake, client, data):
    fake.outcome_for_next_job("fail_training")
    cap = Capture()
    with pytest.raises(FineTuneFailed, match=r"failed: training_failed: Fine-tuning failed at step"):
        run_fine_tune(client, *data, "diverges", **cap.kwargs())
    assert cap.metrics  # metrics of the first epoch were still streamed


def test_should_stop_cancels_the_remote_job(fake, client, data):
    cap = Capture()

    def should_stop():
        return bool(cap.metrics)  # stop once training has visibly started

    with pytest.raises(FineTuneCancelled, match="stopped on request; remote status after cancel: cancelled") as info:
        run_fine_tune(client, *data, "stop-me", **cap.kwargs(should_stop=should_stop))
    assert info.value.job_id == cap.jobs[0]
    assert fake.jobs[cap.jobs[0]]["status"] == "cancelled"
    assert len(fake.requests_matching("POST", r"/cancel$")) == 1


def test_should_stop_before_start_creates_nothing(fake, client, data):
    with pytest.raises(FineTuneCancelled):
        run_fine_tune(client, *data, "never", should_stop=lambda: True, **NO_SLEEP)
    assert fake.jobs == {} and fake.requests == []


def test_job_cancelled_elsewhere_raises_cancelled(fake, client, data):
    def cancel_elsewhere(metrics):
        cancel_job(client, job_ids[0])

    job_ids: list[str] = []
    with pytest.raises(FineTuneCancelled, match="was cancelled"):
        run_fine_tune(
            client, *data, "cancelled-elsewhere", on_job=job_ids.append, on_metrics=cancel_elsewhere, **NO_SLEEP
        )
    assert fake.jobs[job_ids[0]]["status"] == "cancelled"


def test_cancel_job_on_a_terminal_job_returns_its_status(fake, client, data):
    result = run_fine_tune(client, data[0], None, "done", **NO_SLEEP)
    assert cancel_job(client, result.job_id) == "succeeded"


def test_timeout_cancels_and_raises_with_backoff(fake, client, data):
    fake.outcome_for_next_job("stall")
    now = [1000.0]
    sleeps: list[float] = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    config = OpenAIFineTuneConfig(poll_interval_s=5, max_poll_interval_s=20, timeout_s=100)
    with pytest.raises(FineTuneTimeout, match="timed out after 100 s; remote status after cancel: cancelled") as info:
        run_fine_tune(client, *data, "stalls", config, sleep=sleep, clock=lambda: now[0])
    assert sleeps[:5] == [5, 7.5, 11.25, 16.875, 20]
    assert sum(sleeps) == pytest.approx(100)  # the last sleep is clipped to the deadline
    assert fake.jobs[info.value.job_id]["status"] == "cancelled"


# ---------------------------------------------------------------------------- retries and idempotency


def test_429_and_5xx_on_polling_are_retried_by_the_sdk(fake, client, data):
    fake.inject("GET", JOB_PATH, times=2, status=429, headers={"retry-after-ms": "5"})
    fake.inject("GET", EVENTS_PATH, times=1, status=500, headers={"retry-after-ms": "5"})
    fake.inject("GET", EVENTS_PATH, times=1, status=503, headers={"retry-after-ms": "5"})
    result = run_fine_tune(client, *data, "flaky", **NO_SLEEP)
    assert result.status == "succeeded"

    retrieves = fake.requests_matching("GET", JOB_PATH)
    assert [r.retry_count for r in retrieves[:3]] == [0, 1, 2]
    assert [r.status for r in retrieves[:3]] == [429, 429, 200]
    assert sum(r.note == "injected" for r in retrieves) == 2
    events = fake.requests_matching("GET", EVENTS_PATH)
    assert [(r.retry_count, r.status) for r in events[:3]] == [(0, 500), (1, 503), (2, 200)]
    assert all(r.retry_count == 0 for r in retrieves[3:] + events[3:])


def test_transient_poll_errors_beyond_sdk_retries_are_tolerated(fake, client, data):
    fake.inject("GET", JOB_PATH, times=3, status=503, headers={"retry-after-ms": "1"})  # the SDK gives up after 3
    result = run_fine_tune(client, *data, "outage", **NO_SLEEP)
    assert result.status == "succeeded"


def test_persistent_poll_errors_give_up_without_cancelling(fake, client, data):
    fake.inject("GET", JOB_PATH, times=100, status=503, headers={"retry-after-ms": "1"})
    config = OpenAIFineTuneConfig(max_consecutive_poll_errors=1)
    with pytest.raises(FineTuneError, match="lost contact") as info:
        run_fine_tune(client, *data, "dark", config, **NO_SLEEP)
    assert fake.jobs[info.value.job_id]["status"] != "cancelled"
    assert fake.requests_matching("POST", r"/cancel$") == []


def test_lost_create_response_leads_to_exactly_one_job(fake, client, data):
    fake.lose_response_after_apply("POST", CREATE_PATH)
    cap = Capture()
    result = run_fine_tune(client, *data, "lost-create", **cap.kwargs())
    assert result.status == "succeeded"
    assert list(fake.jobs) == [result.job_id] == cap.jobs
    (create,) = fake.requests_matching("POST", CREATE_PATH)  # never resent: reconciled by run key
    assert create.note == "lost_after_apply" and create.retry_count == 0
    assert not result.reattached  # this call created it; it only lost the response


def test_create_5xx_is_reconciled_then_retried(fake, client, data):
    fake.inject("POST", CREATE_PATH, times=1, status=500, headers={"retry-after-ms": "5"})
    sleeps: list[float] = []
    result = run_fine_tune(client, *data, "retry-create", sleep=sleeps.append)
    creates = fake.requests_matching("POST", CREATE_PATH)
    assert [(r.status, r.retry_count) for r in creates] == [(500, 0), (200, 0)]
    lookups = fake.requests_matching("GET", CREATE_PATH)
    assert len(lookups) == 2  # before the first create and between the two creates
    assert fake.requests.index(creates[0]) < fake.requests.index(lookups[1]) < fake.requests.index(creates[1])
    assert sleeps[0] == pytest.approx(0.005)  # honours retry-after-ms
    assert list(fake.jobs) == [result.job_id]


def test_create_gives_up_after_create_attempts(fake, client, data):
    fake.inject("POST", CREATE_PATH, times=10, status=503)
    with pytest.raises(FineTuneError, match=r"after 2 attempt\(s\); last error: InternalServerError"):
        run_fine_tune(client, *data, "no-capacity", OpenAIFineTuneConfig(create_attempts=2), **NO_SLEEP)
    assert len(fake.requests_matching("POST", CREATE_PATH)) == 2
    assert fake.jobs == {}


def test_create_rejected_is_not_retried(fake, client, data):
    with pytest.raises(FineTuneError, match="rejected: HTTP 400 model_not_available"):
        run_fine_tune(client, *data, "bad-model", OpenAIFineTuneConfig(model="no-such-model"), **NO_SLEEP)
    assert len(fake.requests_matching("POST", CREATE_PATH)) == 1


def test_second_run_with_same_run_key_reattaches(fake, client, data):
    first = run_fine_tune(client, *data, "same-key", **NO_SLEEP)
    uploads, creates = len(fake.requests_matching("POST", r"/files$")), len(fake.requests_matching("POST", CREATE_PATH))
    cap = Capture()
    second = run_fine_tune(client, *data, "same-key", **cap.kwargs())
    assert second.reattached and cap.jobs == [first.job_id]
    assert (second.job_id, second.fine_tuned_model, second.result_metrics) == (
        first.job_id,
        first.fine_tuned_model,
        first.result_metrics,
    )
    assert second.metrics == first.metrics  # the job's whole history is replayed on re-attach
    assert len(fake.requests_matching("POST", r"/files$")) == uploads
    assert len(fake.requests_matching("POST", CREATE_PATH)) == creates
    assert len(fake.jobs) == 1
    # a different key is a different run
    third = run_fine_tune(client, *data, "other-key", **NO_SLEEP)
    assert third.job_id != first.job_id and not third.reattached


class _Crash(Exception):
    pass


def test_rerun_after_a_crash_reattaches_to_the_running_job(fake, client, data):
    def crash(metrics):
        raise _Crash  # the orchestrator dies mid-run; the remote job keeps going

    with pytest.raises(_Crash):
        run_fine_tune(client, *data, "crashy", on_metrics=crash, **NO_SLEEP)
    (job_id,) = fake.jobs
    assert fake.jobs[job_id]["status"] == "running"
    result = run_fine_tune(client, *data, "crashy", **NO_SLEEP)
    assert result.reattached and result.job_id == job_id and result.status == "succeeded"
    assert len(fake.jobs) == 1


def test_failed_or_cancelled_jobs_are_not_reattached(fake, client, data, tmp_path):
    fake.outcome_for_next_job("fail_training")
    with pytest.raises(FineTuneFailed):
        run_fine_tune(client, *data, "retry-me", **NO_SLEEP)
    result = run_fine_tune(client, *data, "retry-me", **NO_SLEEP)
    assert not result.reattached and len(fake.jobs) == 2


def test_find_job_by_run_key_filters_client_side_and_pages(fake, client, data):
    fake.config.honor_metadata_filter = False  # a server that ignores metadata[...]
    train = client.files.create(file=data[0], purpose="fine-tune").id

    def create(metadata):
        return client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train, metadata=metadata).id

    old = create({"run_key": "k"})
    create({"run_key": "other"})
    new = create({"run_key": "k", "extra": "x"})
    create(None)
    dead = create({"run_key": "k"})
    client.fine_tuning.jobs.cancel(dead)
    create({"run_key": "k2"})

    found = find_job_by_run_key(client, "k", page_size=2)
    assert found is not None and found.id == new
    assert len(fake.requests_matching("GET", CREATE_PATH)) == 3  # 6 jobs, 2 per page
    client.fine_tuning.jobs.cancel(new)
    assert find_job_by_run_key(client, "k").id == old
    assert find_job_by_run_key(client, "missing") is None


def test_paused_status_is_treated_as_non_terminal(fake, data):
    # "paused" is not in the SDK's Literal: only a loose client can see it
    loose = openai.OpenAI(base_url=fake.base_url, api_key=SECRET, max_retries=2)
    fake.config.allow_paused_status = True
    job_ids: list[str] = []
    calls = {"n": 0}

    def should_stop():
        if not job_ids:
            return False
        job = fake.jobs[job_ids[0]]
        if job["status"] == "running" and calls["n"] == 0:
            fake.pause(job_ids[0])
            calls["n"] = 1
        elif job["status"] == "paused":
            calls["n"] += 1
            if calls["n"] > 3:  # stays paused over several polls, then resumes
                fake.resume(job_ids[0])
        return False

    logs: list[str] = []
    result = run_fine_tune(
        loose, *data, "paused", on_job=job_ids.append, on_log=logs.append, should_stop=should_stop, **NO_SLEEP
    )
    assert result.status == "succeeded"
    assert "[info] Fine-tuning job paused" in logs and "[info] Fine-tuning job resumed" in logs


# ---------------------------------------------------------------------------- DPO


def test_dpo_job_end_to_end(fake, client, pref_data):
    train, valid = pref_data
    cap = Capture()
    config = OpenAIFineTuneConfig(method="dpo", dpo_beta=0.2, n_epochs=2)
    result = run_fine_tune(client, train, valid, "ds1:dpo", config, **cap.kwargs())

    assert result.status == "succeeded" and not result.reattached and result.method == "dpo"
    assert cap.jobs == [result.job_id] and list(fake.jobs) == [result.job_id]
    job = fake.jobs[result.job_id]
    assert job["method"]["type"] == "dpo"
    assert result.hyperparameters == {"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 1.8, "beta": 0.2}
    # the preference files went up as they are
    assert fake.file_bytes(result.training_file_id) == train.read_bytes()
    assert fake.file_bytes(result.validation_file_id) == valid.read_bytes()
    assert result.trained_tokens == job["trained_tokens"] > 0
    assert [m["step"] for m in result.metrics] == [6, 12, 18, 24]
    assert cap.logs == _event_lines(fake, result.job_id)

    (create,) = fake.requests_matching("POST", CREATE_PATH)
    body = create.json
    assert body["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": 0.2}
        },
    }
    assert body["metadata"] == {"run_key": "ds1:dpo", "method": "dpo"}
    assert "hyperparameters" not in body

    # the model learned the preferred answers
    reply = client.chat.completions.create(
        model=result.fine_tuned_model, messages=[{"role": "user", "content": "What is 5 + 5?"}]
    )
    assert reply.choices[0].message.content == "10"


def test_dpo_default_beta_is_sent_as_auto(fake, client, pref_data):
    result = run_fine_tune(client, pref_data[0], None, "auto-beta", DPO, **NO_SLEEP)
    sent = fake.requests_matching("POST", CREATE_PATH)[0].json["method"]["dpo"]["hyperparameters"]
    assert sent["beta"] == "auto"
    assert result.hyperparameters["beta"] == fake.config.default_dpo_beta  # resolved by the API once running


def test_dpo_second_run_reattaches(fake, client, pref_data):
    first = run_fine_tune(client, *pref_data, "dpo-key", DPO, **NO_SLEEP)
    uploads = len(fake.requests_matching("POST", r"/files$"))
    cap = Capture()
    second = run_fine_tune(client, *pref_data, "dpo-key", DPO, **cap.kwargs())
    assert second.reattached and second.job_id == first.job_id == cap.jobs[0] and second.method == "dpo"
    assert second.fine_tuned_model == first.fine_tuned_model and second.metrics == first.metrics
    assert len(fake.requests_matching("POST", r"/files$")) == uploads
    assert len(fake.requests_matching("POST", CREATE_PATH)) == 1
    assert len(fake.jobs) == 1


def test_dpo_rerun_after_a_crash_reattaches_to_the_running_job(fake, client, pref_data):
    def crash(metrics):
        raise _Crash

    with pytest.raises(_Crash):
        run_fine_tune(client, *pref_data, "dpo-crashy", DPO, on_metrics=crash, **NO_SLEEP)
    (job_id,) = fake.jobs
    assert fake.jobs[job_id]["status"] == "running"
    result = run_fine_tune(client, *pref_data, "dpo-crashy", DPO, **NO_SLEEP)
    assert result.reattached and result.job_id == job_id and len(fake.jobs) == 1


@pytest.mark.parametrize("honor_filter", [True, False])
def test_sft_and_dpo_jobs_with_one_run_key_never_collide(fake, client, data, pref_data, honor_filter):
    fake.config.honor_metadata_filter = honor_filter
    sft = run_fine_tune(client, *data, "same-data", **NO_SLEEP)
    dpo = run_fine_tune(client, *pref_data, "same-data", DPO, **NO_SLEEP)
    assert not dpo.reattached and dpo.job_id != sft.job_id
    assert (sft.method, dpo.method) == ("supervised", "dpo")
    # each method re-attaches to its own job
    again_sft = run_fine_tune(client, *data, "same-data", **NO_SLEEP)
    again_dpo = run_fine_tune(client, *pref_data, "same-data", DPO, **NO_SLEEP)
    assert (again_sft.reattached, again_sft.job_id) == (True, sft.job_id)
    assert (again_dpo.reattached, again_dpo.job_id) == (True, dpo.job_id)
    assert len(fake.jobs) == 2
    assert find_job_by_run_key(client, "same-data").id == sft.job_id
    assert find_job_by_run_key(client, "same-data", method="dpo").id == dpo.job_id


def test_dpo_lost_create_response_makes_no_second_job(fake, client, data, pref_data):
    # a live SFT job under the same run key must not be mistaken for the DPO job being created
    sft_file = client.files.create(file=data[0], purpose="fine-tune").id
    fake.config.auto_advance_on_poll = False
    sft_job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18", training_file=sft_file, metadata={"run_key": "dpo-lost"}
    ).id
    fake.config.auto_advance_on_poll = True
    fake.lose_response_after_apply("POST", CREATE_PATH)
    cap = Capture()
    result = run_fine_tune(client, *pref_data, "dpo-lost", DPO, **cap.kwargs())
    assert result.status == "succeeded" and result.method == "dpo" and not result.reattached
    assert result.job_id != sft_job and cap.jobs == [result.job_id]
    assert len(fake.jobs) == 2  # the SFT job and exactly one DPO job
    creates = fake.requests_matching("POST", CREATE_PATH)
    dpo_creates = [r for r in creates if (r.json.get("method") or {}).get("type") == "dpo"]
    assert len(dpo_creates) == 1  # never resent: reconciled by run key and method
    assert dpo_creates[0].note == "lost_after_apply" and dpo_creates[0].retry_count == 0
    assert fake.jobs[sft_job]["status"] == "validating_files"  # untouched


def test_sft_file_for_a_dpo_job_is_rejected_clearly(fake, client, data):
    with pytest.raises(FineTuneError) as info:
        run_fine_tune(client, *data, "wrong-file", DPO, **NO_SLEEP)
    message = str(info.value)
    assert not isinstance(info.value, FineTuneFailed)
    assert message.startswith("fine-tuning job creation was rejected: HTTP 400 invalid_training_file: ")
    assert "for a dpo fine-tuning job" in message and "line 1 has a 'messages' list (the chat format)" in message
    assert len(fake.requests_matching("POST", CREATE_PATH)) == 1  # a 400 is not retried
    assert fake.jobs == {}


def test_preference_file_for_an_sft_job_is_rejected_clearly(fake, client, pref_data):
    with pytest.raises(FineTuneError, match=r"HTTP 400 invalid_training_file: .*for a supervised fine-tuning job"):
        run_fine_tune(client, *pref_data, "wrong-file", **NO_SLEEP)
    assert fake.jobs == {}


def test_malformed_preference_line_fails_the_dpo_job_with_the_api_error(fake, client, pref_data):
    train = pref_data[0]
    lines = train.read_text().splitlines()
    bad = json.loads(lines[3])
    bad["preferred_output"].append({"role": "assistant", "content": "a second answer"})
    lines[3] = json.dumps(bad)
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(FineTuneFailed) as info:
        run_fine_tune(client, train, None, "bad-line", DPO, **NO_SLEEP)
    assert info.value.code == "invalid_training_file" and info.value.param == "training_file"
    assert "Line 4: 'preferred_output' must be a list of exactly one assistant message" in str(info.value)


def test_job_method_reads_the_echo_then_the_metadata():
    def job(method, metadata):
        return SimpleNamespace(method=method, metadata=metadata)

    assert job_method(job(SimpleNamespace(type="dpo"), {"method": "supervised"})) == "dpo"
    assert job_method(job(None, {"run_key": "k", "method": "dpo"})) == "dpo"  # a server without the echo
    assert job_method(job(None, {"run_key": "k"})) == "supervised"
    assert job_method(job(None, None)) == "supervised"


# ---------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs",
    [
        {"suffix": "x" * 65},
        {"n_epochs": 0},
        {"n_epochs": 51},
        {"n_epochs": "many"},
        {"batch_size": 257},
        {"learning_rate_multiplier": 0},
        {"learning_rate_multiplier": True},
        {"poll_interval_s": 0},
        {"poll_interval_s": 10, "max_poll_interval_s": 5},
        {"timeout_s": 0},
        {"create_attempts": 0},
        {"model": ""},
        {"method": "ppo"},
        {"method": "supervised"},
        {"dpo_beta": 0},
        {"dpo_beta": -0.1},
        {"dpo_beta": "high"},
        {"dpo_beta": True},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        OpenAIFineTuneConfig(**kwargs)


def test_config_defaults_and_valid_values():
    config = OpenAIFineTuneConfig(n_epochs=3, batch_size=8, learning_rate_multiplier=0.5, suffix="s" * 64)
    assert config.hyperparameters() == {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 0.5}
    assert (config.method, config.api_method, config.dpo_beta) == ("sft", "supervised", "auto")
    assert config.method_payload() == {
        "type": "supervised",
        "supervised": {"hyperparameters": config.hyperparameters()},
    }
    # beta is a DPO knob: never sent for sft
    assert "beta" not in OpenAIFineTuneConfig(dpo_beta=0.3).hyperparameters()
    dpo = OpenAIFineTuneConfig(method="dpo", dpo_beta=0.3, n_epochs=2)
    assert dpo.method_payload() == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": 0.3}
        },
    }
    default = OpenAIFineTuneConfig()
    assert (default.model, default.seed, default.timeout_s, default.create_attempts) == (
        "gpt-4o-mini-2024-07-18",
        42,
        21600,
        3,
    )


def test_bad_run_key_and_missing_file(fake, client, data, tmp_path):
    with pytest.raises(ValueError):
        run_fine_tune(client, *data, "", **NO_SLEEP)
    with pytest.raises(ValueError):
        run_fine_tune(client, *data, "k" * 513, **NO_SLEEP)
    with pytest.raises(FileNotFoundError):
        run_fine_tune(client, tmp_path / "missing.jsonl", None, "k", **NO_SLEEP)
    assert fake.requests == []


def test_empty_suffix_is_not_sent(fake, client, data):
    result = run_fine_tune(client, data[0], None, "no-suffix", OpenAIFineTuneConfig(suffix=""), **NO_SLEEP)
    assert "suffix" not in fake.requests_matching("POST", CREATE_PATH)[0].json
    assert ":fake-org::" in result.fine_tuned_model


# ---------------------------------------------------------------------------- secrets


def _scenario(name, fake, client, data, tmp_path, sink):
    """Run one scenario; return what the caller can see (callbacks, exception, result)."""
    cap = Capture()
    kwargs = cap.kwargs()
    config = OpenAIFineTuneConfig()
    train, valid = data
    if name.startswith("dpo"):
        config = DPO
        folder = tmp_path / f"prefs-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        train, valid = _write_preference_files(folder)
    if name == "dpo_sft_file":
        train, valid = data  # rejected at create
    elif name == "dpo_lost_create":
        fake.lose_response_after_apply("POST", CREATE_PATH)
    elif name == "invalid_file":
        train = tmp_path / "small.jsonl"
        train.write_bytes(examples_jsonl([("q", "a")]))
    elif name == "training_failure":
        fake.outcome_for_next_job("fail_training")
    elif name == "should_stop":
        kwargs["should_stop"] = lambda: bool(cap.metrics)
    elif name == "timeout":
        fake.outcome_for_next_job("stall")
        now = [0.0]
        kwargs.update(sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
        config = OpenAIFineTuneConfig(timeout_s=30)
    elif name == "create_rejected_echoing_key":
        # a server that echoes the key in an error message: our message must still not carry it
        fake.inject(
            "POST",
            CREATE_PATH,
            1,
            status=400,
            body={
                "error": {
                    "message": f"Incorrect API key provided: {SECRET}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
        )
    elif name == "api_echoes_key":
        # events and the failure itself carry the key: everything we hand out must be scrubbed
        def on_job(job_id):
            cap.jobs.append(job_id)
            fake.add_event(job_id, f"Step 1/2: token {SECRET}", type_="metrics", data={"step": 1, "note": SECRET})
            fake.fail(job_id, "weird_error", f"Bad key {SECRET}", param=SECRET)

        kwargs["on_job"] = on_job
    try:
        result = run_fine_tune(client, train, valid, f"secret-{name}", config, **kwargs)
        sink.append(repr(result))
        sink.append(json.dumps(result.__dict__, default=str))
    except FineTuneError as err:
        sink.extend([str(err), repr(err), repr(err.args), repr(err.__dict__)])
    sink.extend(cap.logs)
    sink.extend(repr(m) for m in cap.metrics)
    sink.extend(cap.jobs)


@pytest.mark.parametrize(
    "name",
    [
        "success",
        "invalid_file",
        "training_failure",
        "should_stop",
        "timeout",
        "create_rejected_echoing_key",
        "api_echoes_key",
        "reattach",
        "dpo",
        "dpo_sft_file",
        "dpo_lost_create",
        "dpo_reattach",
    ],
)
def test_api_key_never_leaks(fake, client, data, tmp_path, caplog, name):
    caplog.set_level("DEBUG", logger="ft_pipeline")
    sink: list[str] = []
    if name in ("reattach", "dpo_reattach"):
        first = "success" if name == "reattach" else "dpo"
        _scenario(first, fake, client, data, tmp_path, [])
        name = first
    _scenario(name, fake, client, data, tmp_path, sink)
    assert sink, "the scenario produced nothing to check"
    leaks = [s for s in sink if SECRET in s]
    assert leaks == []
    assert SECRET not in caplog.text
    # the fake's request log is secret-free as well
    assert all(r.headers.get("authorization") == "Bearer ***" for r in fake.requests)
    assert all(SECRET not in repr(r) for r in fake.requests)


def test_scrubber_removes_the_key_from_api_strings(fake, client):
    scrub = openai_job.Scrubber(client)
    assert scrub(f"x {SECRET} y") == "x *** y"
    assert scrub({"k": [f"{SECRET}", 1.5], SECRET: None}) == {"k": ["***", 1.5], "***": None}
    result = OpenAIFineTuneResult("j", "succeeded", SECRET, 1, "f", None, metrics=[{"m": SECRET}])
    assert SECRET not in repr(scrub(result))


def test_stop_requested_during_upload_creates_no_job(fake, client, data):
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > 1  # False at the start, True once the files are uploaded

    with pytest.raises(FineTuneCancelled, match="before a fine-tuning job was created"):
        run_fine_tune(client, *data, "stop-after-upload", should_stop=should_stop, **NO_SLEEP)
    assert len(fake.files) == 2 and fake.jobs == {}


def test_sft_run_keys_do_not_change_with_the_preference_settings():
    """Keys of SFT jobs made before ``method``/``dpo_beta`` existed still find their jobs."""
    from ft_pipeline.lib.manifests import SplitsManifest
    from ft_pipeline.lib.storage import content_version
    from ft_pipeline.lib.training.fine_tune import openai_run_key

    splits = SplitsManifest(version="v1", curated_version="c1", paths={})
    sft = OpenAIFineTuneConfig(model="gpt-4o-mini-2024-07-18")
    before = {k: v for k, v in sft.__dict__.items() if k not in ("method", "dpo_beta")}
    assert openai_run_key(splits, sft) == content_version("openai", "v1", before)
    dpo = OpenAIFineTuneConfig(model="gpt-4o-mini-2024-07-18", method="dpo")
    assert openai_run_key(splits, dpo) != openai_run_key(splits, sft)
