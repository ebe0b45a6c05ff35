"""Contract tests of the fake OpenAI server: every route through the real SDK in strict mode
(so each response also passes the SDK's pydantic models), plus the fake's own control plane."""

from __future__ import annotations

import base64
import json
import time

import openai
import pytest

from ft_pipeline_tests.fakes.openai_server import FakeOpenAI, examples_jsonl, preference_jsonl

KEY = "sk-test-contract-key-987"
TRAIN = examples_jsonl([(f"Capital of country {i}?", f"City {i}") for i in range(10)])
PREFS = preference_jsonl([(f"Capital of country {i}?", f"City {i}", f"Town {i + 1}") for i in range(10)])


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeOpenAI(api_key=KEY) as server:
        yield server
        assert server.validation_errors == []


@pytest.fixture
def client(fake):
    return fake.client(KEY)


def _upload(client, data=TRAIN, purpose="fine-tune"):
    return client.files.create(file=("train.jsonl", data), purpose=purpose)


def _job(client, **kwargs):
    train = _upload(client).id
    return client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=train, **kwargs)


# ---------------------------------------------------------------------------- files


def test_files_round_trip_byte_exact(fake, client):
    data = TRAIN + "é ünïcode\r\n lone\r cr \x00 nul\n".encode()
    uploaded = client.files.create(
        file=("weird name.jsonl", data), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert (uploaded.bytes, uploaded.filename, uploaded.status) == (len(data), "weird name.jsonl", "processed")
    assert uploaded.expires_at == uploaded.created_at + 3600
    assert client.files.content(uploaded.id).content == data
    assert client.files.retrieve(uploaded.id) == uploaded
    other = _upload(client, b"{}", purpose="batch")
    assert [f.id for f in client.files.list()] == [other.id, uploaded.id]  # newest first
    assert [f.id for f in client.files.list(purpose="fine-tune")] == [uploaded.id]
    assert [f.id for f in client.files.list(order="asc", limit=1)] == [uploaded.id, other.id]  # auto-paged
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError, match="No such File object"):
        client.files.retrieve(uploaded.id)
    sent = fake.requests_matching("POST", r"/files$")[0]
    assert sent.headers["content-type"].startswith("multipart/form-data; boundary=")


def test_file_upload_validation(client):
    with pytest.raises(openai.BadRequestError) as info:
        _upload(client, purpose="nonsense")
    assert info.value.param == "purpose"
    with pytest.raises(openai.BadRequestError, match="expires_after"):
        client.files.create(
            file=("a.jsonl", b"{}"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 10}
        )


# ---------------------------------------------------------------------------- jobs


def test_job_lifecycle_events_checkpoints_and_result(fake, client):
    valid = _upload(client, examples_jsonl([("Capital of country 3?", "City 3")])).id
    job = _job(
        client,
        validation_file=valid,
        suffix="demo",
        seed=7,
        metadata={"run_key": "k"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    assert (job.status, job.seed, job.metadata, job.error) == ("validating_files", 7, {"run_key": "k"}, None)
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == "auto"
    statuses = [client.fine_tuning.jobs.retrieve(job.id).status for _ in range(6)]
    assert statuses == ["queued", "running", "running", "running", "running", "succeeded"]
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:fake-org:demo:")
    assert done.hyperparameters.batch_size == 1 and done.trained_tokens == 2 * sum(
        len(m["content"].split()) for line in TRAIN.splitlines() for m in json.loads(line)["messages"]
    )
    assert done.finished_at >= done.created_at and done.estimated_finish is None

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))  # auto-paged, newest first
    assert len({e.id for e in events}) == len(events) == len(fake.job_events(job.id))
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    oldest_first = [e.message for e in reversed(events)]
    assert oldest_first[:4] == [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {job.training_file} and validation file: {valid}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
    ]
    assert oldest_first[-2:] == [
        f"New fine-tuned model created: {done.fine_tuned_model}",
        "The job has successfully completed",
    ]
    metrics = [e for e in reversed(events) if e.type == "metrics"]
    assert [m.data["step"] for m in metrics] == [5, 10, 15, 20]
    assert metrics[-1].message.startswith("Step 20/20: training loss=")
    assert "full_valid_loss" in metrics[-1].data and "valid_loss" in metrics[0].data

    page = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [c.step_number for c in page.data] == [20, 10]  # newest first
    assert page.data[0].fine_tuned_model_checkpoint == done.fine_tuned_model
    assert page.data[1].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-10"
    assert page.data[0].id.startswith("ftckpt_")
    raw = client.fine_tuning.jobs.checkpoints.with_raw_response.list(job.id).http_response.json()
    assert (raw["first_id"], raw["last_id"]) == (page.data[0].id, page.data[1].id)

    result_file = client.files.retrieve(done.result_files[0])
    assert (result_file.purpose, result_file.filename) == ("fine-tune-results", "step_metrics.csv")
    content = client.files.content(result_file.id).content
    assert (
        base64.b64decode(content).decode().splitlines()[0]
        == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    )
    assert client.models.retrieve(done.fine_tuned_model).owned_by == "org-fake"


def test_invalid_training_files_fail_the_job_not_the_request(client):
    cases = {
        b"not json\n" * 10: "not valid JSON",
        examples_jsonl([("q", "a")] * 9): "at least 10 examples",
        b'{"messages": [{"role": "user", "content": "only a question"}]}\n' * 10: "no assistant message",
        b'{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}\n'
        * 10: "unrecognized role",
        b'{"messages": [{"role": "assistant", "content": "y", "weight": 2}]}\n' * 10: "weight must be 0 or 1",
    }
    for data, reason in cases.items():
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=_upload(client, data).id)
        failed = client.fine_tuning.jobs.retrieve(job.id)
        assert failed.status == "failed"
        assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
        assert reason in failed.error.message
        assert next(iter(client.fine_tuning.jobs.list_events(job.id))).level == "error"


def test_dpo_job_echoes_its_method_and_trains_on_the_preferred_output(fake, client):
    train = _upload(client, PREFS).id
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18",
        training_file=train,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2}}},
    )
    assert job.method.type == "dpo" and job.method.supervised is None
    assert job.method.dpo.hyperparameters.n_epochs == 2 and job.method.dpo.hyperparameters.beta == "auto"
    assert fake.jobs[job.id]["method"]["dpo"]["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "beta": "auto",
    }
    done = fake.advance(job.id, 20)
    assert done["status"] == "succeeded"
    # "auto" resolves once running; beta to config.default_dpo_beta
    assert done["method"]["dpo"]["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": 1,
        "learning_rate_multiplier": 1.8,
        "beta": 0.1,
    }
    assert client.fine_tuning.jobs.retrieve(job.id).method.dpo.hyperparameters.beta == 0.1
    # both outputs are trained on: every token of the input and both outputs, per epoch
    tokens = sum(
        len(m["content"].split())
        for line in PREFS.splitlines()
        for m in json.loads(line)["input"]["messages"]
        + json.loads(line)["preferred_output"]
        + json.loads(line)["non_preferred_output"]
    )
    assert done["trained_tokens"] == 2 * tokens
    reply = client.chat.completions.create(
        model=done["fine_tuned_model"], messages=[{"role": "user", "content": "Capital of country 4?"}]
    )
    assert reply.choices[0].message.content == "City 4"  # the preferred answer, not "Town 5"


def test_explicit_dpo_beta_is_kept_and_validated(client):
    train = _upload(client, PREFS).id
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=train, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25}}}
    )
    for _ in range(3):
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "running" and job.method.dpo.hyperparameters.beta == 0.25
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file=train, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}
        )
    assert info.value.param == "beta"


def test_invalid_preference_files_fail_the_dpo_job(client):
    good = json.loads(PREFS.splitlines()[0])

    def lines(**change):
        line = {**good, **change}
        return (json.dumps(line) + "\n").encode() * 10

    assistant = {"role": "assistant", "content": "x"}
    cases = {
        lines(non_preferred_output=None): "'non_preferred_output' must be a list of exactly one assistant message",
        (json.dumps({k: v for k, v in good.items() if k != "non_preferred_output"}) + "\n").encode() * 10: (
            "missing key(s) non_preferred_output"
        ),
        lines(preferred_output=[assistant, assistant]): "'preferred_output' must be a list of exactly one",
        lines(preferred_output=[{"role": "user", "content": "x"}]): "'preferred_output' must be a list of exactly one",
        lines(preferred_output=[{"role": "assistant", "content": None}]): "'preferred_output' must be a list",
        lines(input={"messages": []}): "'input' must be an object with a non-empty 'messages' list",
        lines(input={"messages": [{"role": "user", "content": "q"}], "extra": 1}): "unrecognized key(s) extra",
        lines(input={"messages": [{"role": "user", "content": "q"}, assistant]}): "must end with a user message",
        lines(input={"messages": [{"role": "user", "content": "q", "weight": 1}]}): "unrecognized key(s) weight",
        lines(input={"messages": [{"role": "bot", "content": "q"}]}): "unrecognized role",
        b"\n".join(PREFS.splitlines()[:9]) + b"\n": "at least 10 examples",
    }
    for data, reason in cases.items():
        job = client.fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file=_upload(client, data).id, method={"type": "dpo"}
        )
        failed = client.fine_tuning.jobs.retrieve(job.id)
        assert failed.status == "failed", reason
        assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
        assert reason in failed.error.message, failed.error.message
    # the validation file is checked with the same rules
    bad_valid = _upload(client, lines(preferred_output=[]).splitlines(keepends=True)[0]).id
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=_upload(client, PREFS).id, validation_file=bad_valid, method={"type": "dpo"}
    )
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.error.code == "invalid_validation_file" and "'preferred_output'" in failed.error.message


def test_a_file_of_the_other_method_is_a_400(fake, client):
    chat, prefs = _upload(client, TRAIN).id, _upload(client, PREFS).id
    create = client.fine_tuning.jobs.create
    cases = [
        ({"training_file": chat, "method": {"type": "dpo"}}, "training_file", "for a dpo fine-tuning job"),
        ({"training_file": prefs}, "training_file", "for a supervised fine-tuning job"),
        ({"training_file": prefs, "method": {"type": "supervised"}}, "training_file", "the preference format"),
        (
            {"training_file": prefs, "validation_file": chat, "method": {"type": "dpo"}},
            "validation_file",
            "line 1 has a 'messages' list (the chat format)",
        ),
    ]
    for kwargs, param, text in cases:
        with pytest.raises(openai.BadRequestError) as info:
            create(model="gpt-4o-mini", **kwargs)
        assert (info.value.param, info.value.code) == (param, f"invalid_{param}"), kwargs
        assert text in info.value.message, info.value.message
    assert fake.jobs == {}
    # the matching method is accepted
    assert create(model="gpt-4o-mini", training_file=prefs, method={"type": "dpo"}).method.type == "dpo"
    assert create(model="gpt-4o-mini", training_file=chat).method.type == "supervised"


def test_create_validation_errors(client):
    train = _upload(client).id
    batch = _upload(client, b"{}", purpose="batch").id
    create = client.fine_tuning.jobs.create
    bad = [
        ({"model": "gpt-4o-mini", "training_file": "file-missing"}, "training_file"),
        ({"model": "gpt-4o-mini", "training_file": batch}, "training_file"),
        ({"model": "gpt-4o-mini", "training_file": train, "validation_file": "file-x"}, "validation_file"),
        ({"model": "not-a-model", "training_file": train}, "model"),
        ({"model": "gpt-4o-mini", "training_file": train, "suffix": "s" * 65}, "suffix"),
        ({"model": "gpt-4o-mini", "training_file": train, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"model": "gpt-4o-mini", "training_file": train, "metadata": {"k": "v" * 513}}, "metadata"),
        (
            {
                "model": "gpt-4o-mini",
                "training_file": train,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}},
            },
            "n_epochs",
        ),
        (
            {
                "model": "gpt-4o-mini",
                "training_file": train,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 300}}},
            },
            "batch_size",
        ),
        (
            {
                "model": "gpt-4o-mini",
                "training_file": train,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 0}}},
            },
            "learning_rate_multiplier",
        ),
        (
            {"model": "gpt-4o-mini", "training_file": train, "method": {"type": "reinforcement"}},
            "method.reinforcement.grader",
        ),
    ]
    for kwargs, param in bad:
        with pytest.raises(openai.BadRequestError) as info:
            create(**kwargs)
        assert info.value.param == param, kwargs
    # the deprecated top-level hyperparameters are still accepted and mirrored into method
    job = create(model="gpt-4o-mini", training_file=train, hyperparameters={"n_epochs": 4})
    assert job.method.supervised.hyperparameters.n_epochs == 4 and job.hyperparameters.n_epochs == 4


def test_job_list_pagination_and_metadata_filter(fake, client):
    train = _upload(client).id
    ids = [
        client.fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file=train, metadata=({"run_key": "a" if i % 2 else "b"} if i < 4 else None)
        ).id
        for i in range(5)
    ]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == ids[::-1]  # 3 pages, newest first
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"run_key": "a"})] == [ids[3], ids[1]]
    assert [j.id for j in client.fine_tuning.jobs.list(extra_query={"metadata": "null"})] == [ids[4]]
    assert fake.requests_matching("GET", r"/jobs$")[3].query_dict["metadata[run_key]"] == "a"
    first = client.fine_tuning.jobs.list(limit=2)
    assert first.has_more and [j.id for j in first.data] == [ids[4], ids[3]]
    fake.config.honor_metadata_filter = False
    assert len(list(client.fine_tuning.jobs.list(metadata={"run_key": "a"}))) == 5


def test_cancel_pause_resume(fake, client):
    job = _job(client)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert fake.jobs[job.id]["finished_at"] is not None
    with pytest.raises(openai.BadRequestError, match="already cancelled"):  # 400, never 409 (the SDK retries 409)
        client.fine_tuning.jobs.cancel(job.id)
    assert len(fake.requests_matching("POST", r"/cancel$")) == 2  # the second was not retried
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")

    job = _job(client)
    fake.advance(job.id, 2)  # running
    with pytest.raises(openai.BadRequestError, match="allow_paused_status"):
        client.fine_tuning.jobs.pause(job.id)
    fake.config.allow_paused_status = True
    loose = fake.client(KEY, strict=False)
    assert loose.fine_tuning.jobs.pause(job.id).status == "paused"
    assert loose.fine_tuning.jobs.retrieve(job.id).status == "paused"  # no progress while paused
    with pytest.raises(openai.APIResponseValidationError):  # the documented SDK deviation
        client.fine_tuning.jobs.retrieve(job.id)
    assert loose.fine_tuning.jobs.resume(job.id).status == "running"


def test_outcomes_and_metadata_override(fake, client):
    fake.outcome_for_next_job("fail_training")
    failing = _job(client)
    stalled = _job(client, metadata={"_fake_outcome": "stall"})
    fine = _job(client)
    for _ in range(12):
        for job in (failing, stalled, fine):
            client.fine_tuning.jobs.retrieve(job.id)
    states = {jid: (j["status"], (j["error"] or {}).get("code")) for jid, j in fake.jobs.items()}
    assert states[failing.id] == ("failed", "training_failed")
    assert states[stalled.id] == ("running", None)
    assert states[fine.id] == ("succeeded", None)
    with pytest.raises(ValueError):
        fake.outcome_for_next_job("explode")


def test_manual_advance_when_auto_advance_is_off(fake, client):
    fake.config.auto_advance_on_poll = False
    job = _job(client)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
    assert fake.advance(job.id, 8)["status"] == "succeeded"


def test_seeded_ids_are_reproducible():
    def run():
        with FakeOpenAI(seed=3) as f:
            c = f.client()
            return _job(c).id, f.advance(_job(c).id, 8)["fine_tuned_model"]

    assert run() == run()


# ---------------------------------------------------------------------------- transport behaviour


def test_retries_are_recorded_and_retry_after_ms_honoured(fake, client):
    fake.inject("GET", r"/models/gpt-4o-mini$", times=2, status=429, headers={"retry-after-ms": "5"})
    start = time.monotonic()
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    assert time.monotonic() - start < 1.0  # 5 ms waits, not the SDK's 0.5 s+ default backoff
    assert [(r.retry_count, r.status) for r in fake.requests_matching("GET", "/models/")] == [
        (0, 429),
        (1, 429),
        (2, 200),
    ]


def test_retries_exhausted_and_should_retry_false(fake, client):
    fake.inject("GET", r"/models/", times=3, status=503, headers={"retry-after-ms": "1"})
    with pytest.raises(openai.InternalServerError):
        client.models.retrieve("gpt-4o-mini")
    fake.inject("*", r"/models/", times=1, status=500, headers={"x-should-retry": "false"})
    with pytest.raises(openai.InternalServerError):
        client.models.retrieve("gpt-4o-mini")
    assert len(fake.requests_matching("GET", "/models/")) == 4
    body = {"error": {"message": "custom", "type": "x", "param": None, "code": "custom_code"}}
    fake.inject("GET", r"/models/", times=1, status=400, body=body)
    with pytest.raises(openai.BadRequestError) as info:
        client.models.retrieve("gpt-4o-mini")
    assert info.value.code == "custom_code"


def test_dropped_connection_is_a_connection_error(fake):
    fake.inject("GET", r"/models/", times=1, drop_connection=True)
    with pytest.raises(openai.APIConnectionError):
        fake.client(KEY, max_retries=0).models.retrieve("gpt-4o-mini")
    assert fake.requests[-1].note == "dropped"


def test_lost_create_response_with_sdk_retries_duplicates_the_job(fake, client):
    """Why the pipeline creates with max_retries=0: the SDK resends, the server applies twice."""
    train = _upload(client).id
    fake.lose_response_after_apply("POST", r"/fine_tuning/jobs$")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train, metadata={"run_key": "k"})
    assert len(fake.jobs) == 2 and job.id == list(fake.jobs)[-1]
    assert [r.retry_count for r in fake.requests_matching("POST", r"/fine_tuning/jobs$")] == [0, 1]
    assert [r.note for r in fake.requests_matching("POST", r"/fine_tuning/jobs$")] == ["lost_after_apply", ""]


def test_auth_and_request_log_hide_the_key(fake):
    bad = fake.client("sk-wrong-key")
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.code == "invalid_api_key" and "sk-wrong-key" not in str(info.value)
    fake.client(KEY).models.list()
    for request in fake.requests:
        assert request.headers["authorization"] == "Bearer ***"
        assert KEY not in repr(request) and "sk-wrong-key" not in repr(request)
    open_fake = FakeOpenAI()  # without a configured key any bearer token is accepted, none is not
    with open_fake:
        assert open_fake.client("anything").models.retrieve("gpt-4o-mini")
        with pytest.raises(openai.AuthenticationError):
            open_fake.client("anything").models.list(extra_headers={"Authorization": "Basic abc"})


def test_self_validation_reports_fake_bugs(fake, client):
    job = _job(client)
    fake._jobs[job.id].obj.pop("organization_id")  # simulate a bug in the fake
    with pytest.raises(openai.InternalServerError, match="self-validation"):
        client.fine_tuning.jobs.retrieve(job.id)
    assert len(fake.requests_matching("GET", job.id)) == 1  # x-should-retry: false
    assert "organization_id" in fake.validation_errors[0]
    fake.validation_errors.clear()


# ---------------------------------------------------------------------------- chat and models


def test_chat_completion_responders(fake, client):
    job = fake.advance(_job(client).id, 8)
    model = job["fine_tuned_model"]
    ask = lambda m, q, **kw: client.chat.completions.create(  # noqa: E731
        model=m, messages=[{"role": "system", "content": "s"}, {"role": "user", "content": q}], **kw
    )
    # memorising: training answers for known prompts (normalised), base echo otherwise
    assert ask(model, "  capital OF country 4? ").choices[0].message.content == "City 4"
    assert ask(model, "unknown prompt").choices[0].message.content == "unknown prompt"
    assert ask("gpt-4o-mini", "Capital of country 4?").choices[0].message.content == "Capital of country 4?"
    # scripted
    fake.set_responder("gpt-4o-mini", lambda messages, body: f"{len(messages)} msgs, seed={body.get('seed')}")
    reply = ask("gpt-4o-mini", "hi", seed=5, n=2)
    assert [c.message.content for c in reply.choices] == ["2 msgs, seed=5"] * 2
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    fake.set_responder("gpt-4o-mini", {"hi": "hello"})
    assert ask("gpt-4o-mini", "HI").choices[0].message.content == "hello"
    fake.set_responder("gpt-4o-mini", None)
    # truncation and structured output
    long = ask("gpt-4o-mini", "one two three four", max_completion_tokens=2).choices[0]
    assert (long.message.content, long.finish_reason) == ("one two", "length")
    as_json = ask(model, "Capital of country 1?", response_format={"type": "json_object"})
    assert json.loads(as_json.choices[0].message.content) == {"answer": "City 1"}
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }
    assert json.loads(ask(model, "Capital of country 2?", response_format=schema).choices[0].message.content) == {
        "city": "City 2"
    }


def test_chat_streaming_and_errors(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[])


def test_models_routes(fake, client):
    ids = {m.id for m in client.models.list()}
    assert "gpt-4o-mini-2024-07-18" in ids
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("gpt-4o-mini")
    model = fake.advance(_job(client).id, 8)["fine_tuned_model"]
    assert client.models.delete(model).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(model)
