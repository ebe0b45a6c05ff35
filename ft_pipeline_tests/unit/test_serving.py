"""`ft-pipeline serve` end to end: the real server (uvicorn on a free loopback port, in a thread),
the real `openai` client, a SQLite registry and two LoRA adapters on the tiny local base.

Covered: answers equal the evaluation's stored answers (same generator, template, adapter and the
generation settings the evaluation recorded), streaming, /v1/models, /health, /metrics, unknown
models (404), every bad-request class (400, OpenAI-style body, the server keeps answering),
deterministic A/B routing with its assignment log, hot swap under an in-flight request (promotion
and rollback), and hosted (`openai` backend) versions proxied to a fake provider.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import httpx
import openai
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ft_pipeline.lib.evaluation.candidate import DEFAULT_MODEL_NAME
from ft_pipeline.lib.evaluation.generation import GenerationConfig, LocalGenerator, adapter_digest
from ft_pipeline.lib.registry import ModelRegistry, route_bucket
from ft_pipeline.lib.serving import ServeConfig
from ft_pipeline.lib.serving.models import ModelRef, load_served_model, parse_model_name
from ft_pipeline.lib.serving.server import ServerThread, build_server
from ft_pipeline.lib.training.base_models import resolve_base_model
from ft_pipeline_tests.fakes.openai_server import FakeOpenAI

NAME = "bot"
#: What the evaluation "used": not the defaults, so a server that ignored the recorded settings
#: (128 new tokens) would answer differently.
EVAL_GENERATION = GenerationConfig(max_new_tokens=12, batch_size=4)
_TEXTS = [
    "My plug is offline. What should I do?",
    "Unplug the plug, wait ten seconds, plug it back in and open the app.",
    "The camera keeps blinking after the update.",
    "Hold the reset button for five seconds until the light turns blue.",
    "You are Nimbus, a support assistant.",
]
PROMPTS = [
    [{"role": "user", "content": "My plug is offline. What should I do?"}],
    [
        {"role": "system", "content": "You are Nimbus, a support assistant."},
        {"role": "user", "content": "The camera keeps blinking after the update."},
    ],
]


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def _quiet(one_torch_thread):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny base (relative to the data dir, as the pipeline records it) and two different
    adapters, each in train_lora's layout (run/adapter, run/tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data_dir = tmp_path_factory.mktemp("data")
    base = Path(resolve_base_model("tiny", _TEXTS * 3, data_dir / "base_models").path)
    adapters = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        run = data_dir / "models" / f"run{seed}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(
                AutoModelForCausalLM.from_pretrained(base),
                LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False),
            )
        peft_model.save_pretrained(run / "adapter")
        AutoTokenizer.from_pretrained(base).save_pretrained(run / "tokenizer")
        adapters.append(run / "adapter")
    return data_dir, base, adapters


def _register(registry, data_dir, base, adapter, n, *, baseline_uri=None, backend="local_lora", remote=None, name=NAME):
    """Version n of NAME with a passing evaluation whose report.json records EVAL_GENERATION and
    whose examples.parquet holds the answers LocalGenerator gave with it (what the evaluation
    stores); returns (version, eval_id, stored answers)."""
    dataset = registry.record_dataset_version("curated", "train", f"{n:064d}", 1)
    run = registry.record_training_run(f"run{n}", backend, "tiny", dataset, None, {}, 0)
    version = registry.register_model_version(
        name,
        training_run_id=run,
        model_uri=f"{backend}:{adapter or remote}",
        backend=backend,
        base_model="tiny",
        run_key=f"run{n}",
        dataset_version="d",
        config_hash="c",
        metrics={},
        artifact_path=str(adapter) if adapter else None,
        remote_model_id=remote,
        # Relative to the data dir, as the pipeline records a base below it (portable_path).
        tags={
            "base_model_path": str(base.relative_to(data_dir)),
            "tokenizer_dir": str(Path(adapter).parent / "tokenizer"),
        }
        if adapter
        else {},
    )
    answers = []
    if adapter:
        answers = LocalGenerator(str(base), str(adapter), None, EVAL_GENERATION, device="cpu").generate(PROMPTS)
    report_dir = data_dir / "reports" / f"e{n}"
    report_dir.mkdir(parents=True)
    pd.DataFrame({"model": ["candidate"] * len(answers), "prediction": answers}).to_parquet(
        report_dir / "examples.parquet"
    )
    (report_dir / "report.json").write_text(json.dumps({"eval_id": f"e{n}", "generation": EVAL_GENERATION.__dict__}))
    registry.record_evaluation(
        f"e{n}",
        name,
        version.version,
        suite="test",
        eval_dataset_version_id=dataset,
        baseline_model_uri=baseline_uri,
        base_model_uri="tiny",
        metrics={},
        per_example_uri=str(report_dir / "examples.parquet"),
        gate_config={},
        decision="pass",
        leakage_checked=True,
    )
    return version, f"e{n}", answers


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """v1 production, v2 staging; half of the bare-name requests go to staging (A/B)."""
    data_dir, base, (adapter1, adapter2) = tiny
    registry = ModelRegistry.for_data_dir(data_dir)
    v1, e1, answers1 = _register(registry, data_dir, base, adapter1, 1)
    v2, e2, answers2 = _register(registry, data_dir, base, adapter2, 2, baseline_uri=v1.model_uri)
    registry.promote(NAME, 1, evaluation_id=e1, reason="first", actor="test")
    registry.promote(NAME, 2, alias="staging", evaluation_id=e2, reason="challenger", actor="test")
    log = tmp_path_factory.mktemp("serve") / "assignments.jsonl"
    config = ServeConfig(
        model_name=NAME,
        port=0,
        challenger_share=0.5,
        assignment_log=str(log),
        max_context_tokens=256,
        max_tokens_limit=64,
        poll_interval_s=0.2,
    )
    server = build_server(registry, config, data_dir=data_dir)
    with ServerThread(server.app) as thread:
        client = openai.OpenAI(base_url=thread.base_url, api_key="none", max_retries=0)
        yield {
            "client": client,
            "http": httpx.Client(base_url=thread.url, timeout=60),
            "registry": registry,
            "answers": {1: answers1, 2: answers2},
            "adapters": {1: adapter1, 2: adapter2},
            "log": log,
            "config": config,
        }
    server.stop()


def _metric(http, name, **labels):
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# ---------------------------------------------------------------------------------- answers


def test_answers_equal_the_evaluations_stored_answers(served):
    """Parity: the server's answer is the evaluation's stored answer for the same version (same
    generator, chat template, adapter and the recorded generation settings)."""
    client = served["client"]
    for version in (1, 2):
        stored = served["answers"][version]
        assert stored[0] != served["answers"][3 - version][0]  # the two adapters really differ
        for prompt, expected in zip(PROMPTS, stored):
            response = client.chat.completions.create(model=f"{NAME}:v{version}", messages=prompt)
            assert response.choices[0].message.content == expected
            assert response.model == f"{NAME}:v{version}"
            assert response.usage.prompt_tokens > 0 and 0 < response.usage.completion_tokens <= 12
            assert response.choices[0].finish_reason in {"stop", "length"}
    # @alias names and the bare name (no A/B when the request id lands on production).
    by_alias = client.chat.completions.create(model=f"{NAME}@staging", messages=PROMPTS[0])
    assert by_alias.choices[0].message.content == served["answers"][2][0]


def test_streaming_gives_the_same_answer_in_pieces(served):
    client = served["client"]
    expected = served["answers"][1][1]
    pieces, usage, finish = [], None, None
    stream = client.chat.completions.create(
        model=f"{NAME}@production", messages=PROMPTS[1], stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
        assert chunk.model == f"{NAME}:v1"
    assert "".join(pieces) == expected and len(pieces) > 1
    assert usage is not None and usage.completion_tokens > 0 and finish in {"stop", "length"}
    # A shorter answer on request: max_tokens caps the generation.
    short = client.chat.completions.create(model=f"{NAME}:v1", messages=PROMPTS[1], max_tokens=3)
    assert short.usage.completion_tokens <= 3 and short.choices[0].finish_reason == "length"
    assert expected.startswith(short.choices[0].message.content)


def test_models_health_and_metrics(served):
    client, http = served["client"], served["http"]
    ids = [m.id for m in client.models.list()]
    assert ids == [NAME, f"{NAME}@production", f"{NAME}:v1", f"{NAME}@staging", f"{NAME}:v2"]
    health = http.get("/health").json()
    assert (health["status"], health["model"], health["alias"], health["version"]) == ("ok", NAME, "production", 1)
    assert health["adapter_digest"] == adapter_digest(served["adapters"][1])
    assert health["max_new_tokens"] == 12  # the evaluation's recorded setting, not the default 128
    assert health["challenger"] == {"alias": "staging", "share": 0.5, "version": 2}

    before = _metric(http, "ft_serve_requests_total", model=NAME, version="1", alias="-")
    tokens_before = _metric(http, "ft_serve_completion_tokens_total", model=NAME, version="1")
    response = client.chat.completions.create(model=f"{NAME}:v1", messages=PROMPTS[0])
    assert _metric(http, "ft_serve_requests_total", model=NAME, version="1", alias="-") == before + 1
    assert (
        _metric(http, "ft_serve_completion_tokens_total", model=NAME, version="1")
        == tokens_before + response.usage.completion_tokens
    )
    assert _metric(http, "ft_serve_request_latency_seconds_count", model=NAME, version="1") >= 1
    assert _metric(http, "ft_serve_alias_version", model=NAME, alias="production") == 1
    errors = _metric(http, "ft_serve_errors_total", model=NAME, status="404")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=PROMPTS[0])
    assert _metric(http, "ft_serve_errors_total", model=NAME, status="404") == errors + 1


@pytest.mark.parametrize(
    "model",
    ["other-model", f"{NAME}@nightly", f"{NAME}:v99", f"{NAME}:vx", "other@production", ""],
)
def test_unknown_models_are_404_with_an_openai_body(served, model):
    with pytest.raises(openai.NotFoundError) as caught:
        served["client"].chat.completions.create(model=model, messages=PROMPTS[0])
    error = caught.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model" and error["type"]
    assert set(error) == {"message", "type", "param", "code"}


def test_parse_model_name():
    assert parse_model_name("a") == ModelRef("a")
    assert parse_model_name("a@staging") == ModelRef("a", alias="staging")
    assert parse_model_name("a:v12") == ModelRef("a", version=12)
    assert parse_model_name("ns:a:v3") == ModelRef("ns:a", version=3)
    assert parse_model_name("a:vx") == ModelRef("a:vx")


_LONG = "word " * 400
BAD_REQUESTS = {
    "malformed JSON": (b'{"model": "bot", "messages": [', "invalid_request", None),
    "not an object": (b"[1, 2]", "invalid_request", None),
    "missing messages": ({"model": NAME}, "invalid_request", "messages"),
    "missing model": ({"messages": PROMPTS[0]}, "invalid_request", "model"),
    "messages not a list": ({"model": NAME, "messages": "hi"}, "invalid_request", "messages"),
    "empty messages": ({"model": NAME, "messages": []}, "missing_messages", "messages"),
    "unknown role": (
        {"model": NAME, "messages": [{"role": "robot", "content": "hi"}]},
        "invalid_role",
        "messages[0].role",
    ),
    "tool role": (
        {"model": NAME, "messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]},
        "invalid_role",
        "messages[1].role",
    ),
    "last message not the user's": (
        {"model": NAME, "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        "invalid_role",
        "messages[1].role",
    ),
    "system not first": (
        {"model": NAME, "messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]},
        "invalid_role",
        "messages[1].role",
    ),
    "content not text": (
        {"model": NAME, "messages": [{"role": "user", "content": 5}]},
        "invalid_value",
        "messages[0].content",
    ),
    "image part": (
        {"model": NAME, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "invalid_value",
        "messages[0].content",
    ),
    "max_tokens above the limit": (
        {"model": NAME, "messages": PROMPTS[0], "max_tokens": 65},
        "invalid_value",
        "max_tokens",
    ),
    "max_completion_tokens zero": (
        {"model": NAME, "messages": PROMPTS[0], "max_completion_tokens": 0},
        "invalid_value",
        "max_completion_tokens",
    ),
    "max_tokens not a number": (
        {"model": NAME, "messages": PROMPTS[0], "max_tokens": "many"},
        "invalid_request",
        "max_tokens",
    ),
    "prompt too long for the context": (
        {"model": NAME, "messages": [{"role": "user", "content": _LONG}]},
        "context_length_exceeded",
        "messages",
    ),
    "too many messages": (
        {"model": NAME, "messages": [{"role": "user", "content": "x"}] * 257},
        "invalid_value",
        "messages",
    ),
    "n above 1": ({"model": NAME, "messages": PROMPTS[0], "n": 2}, "invalid_value", "n"),
    "temperature out of range": (
        {"model": NAME, "messages": PROMPTS[0], "temperature": 3},
        "invalid_value",
        "temperature",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_400_openai_error_and_the_server_keeps_answering(served, case):
    body, code, param = BAD_REQUESTS[case]
    http = served["http"]
    kwargs = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    response = http.post("/v1/chat/completions", **kwargs)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["code"], error["param"]) == (code, param)
    assert response.headers["x-request-id"]
    for stream in (False, True):  # the streaming path validates before the first byte
        if isinstance(body, dict) and "model" in body and isinstance(body.get("messages"), list):
            streamed = http.post("/v1/chat/completions", json={**body, "stream": stream})
            assert streamed.status_code == 400 and streamed.json()["error"]["code"] == code
    assert http.get("/health").status_code == 200


def test_the_openai_client_sees_a_bad_request_error(served):
    with pytest.raises(openai.BadRequestError) as caught:
        served["client"].chat.completions.create(model=NAME, messages=[{"role": "assistant", "content": "hello"}])
    assert caught.value.body["code"] == "invalid_role"


def test_a_client_that_leaves_mid_stream_frees_the_model(served):
    """Closing the connection after the first event ends that generation and releases the model:
    the next request on the same version is answered."""
    http = served["http"]
    body = {"model": f"{NAME}:v1", "messages": PROMPTS[0], "max_tokens": 64, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        first = next(response.iter_lines())
        assert first.startswith("data: ") and json.loads(first[6:])["object"] == "chat.completion.chunk"
    answer = served["client"].with_options(timeout=60).chat.completions.create(model=f"{NAME}:v1", messages=PROMPTS[0])
    assert answer.choices[0].message.content == served["answers"][1][0]


def test_ab_routing_is_deterministic_by_request_id_and_logged(served):
    client, registry, log = served["client"], served["registry"], served["log"]
    start = len(log.read_text().splitlines()) if log.exists() else 0
    seen = {}
    ids = [f"req-{i}" for i in range(16)]
    for request_id in ids + ids[:4]:  # the first four again: same request, same version
        raw = client.chat.completions.with_raw_response.create(
            model=NAME, messages=PROMPTS[0], max_tokens=1, extra_headers={"X-Request-Id": request_id}
        )
        version = int(raw.headers["x-model-version"])
        assert raw.headers["x-request-id"] == request_id
        assert raw.parse().model == f"{NAME}:v{version}"
        expected = registry.route(NAME, request_id, challenger_alias="staging", challenger_share=0.5)
        assert version == expected.version
        assert seen.setdefault(request_id, version) == version
    assert set(seen.values()) == {1, 2}  # both sides of the split answered
    lines = [json.loads(line) for line in log.read_text().splitlines()[start:]]
    assert [line["request_id"] for line in lines] == ids + ids[:4]
    for line in lines:
        assert line["version"] == seen[line["request_id"]] and line["status"] == 200
        assert line["alias"] == ("staging" if line["version"] == 2 else "production")
        assert line["bucket"] == pytest.approx(route_bucket(NAME, line["request_id"]), abs=1e-6)
        assert line["time"]
    # Without a request id the server makes one, and says which.
    raw = client.chat.completions.with_raw_response.create(model=NAME, messages=PROMPTS[0], max_tokens=1)
    assert len(raw.headers["x-request-id"]) == 32
    # Explicit aliases and versions are not A/B assignments.
    client.chat.completions.create(model=f"{NAME}:v1", messages=PROMPTS[0], max_tokens=1)
    assert len(log.read_text().splitlines()) == start + len(ids) + 4 + 1


# ---------------------------------------------------------------------------------- hot swap


def test_hot_swap_on_promotion_and_rollback_keeps_in_flight_requests(tiny, tmp_path):
    """A request in flight when production moves finishes on the old version; /health shows the
    new version within the poll bound; the next request is the new version's; a rollback swaps
    back the same way."""
    data_dir, base, (adapter1, adapter2) = tiny
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    v1, e1, answers1 = _register(registry, data_dir, base, adapter1, 11)
    v2, e2, answers2 = _register(registry, data_dir, base, adapter2, 12, baseline_uri=v1.model_uri)
    registry.promote(NAME, v1.version, evaluation_id=e1, reason="first", actor="test")
    config = ServeConfig(model_name=NAME, port=0, poll_interval_s=0.1)
    entered, release = threading.Event(), threading.Event()

    def loader(version):
        model = load_served_model(registry, version, data_dir=data_dir, config=config)
        if version.version == v1.version:
            complete = model.complete

            def held(request):  # the first request on v1 waits until the test lets it go
                if not release.is_set():
                    entered.set()
                    assert release.wait(60)
                return complete(request)

            model.complete = held  # type: ignore[method-assign]
        return model

    server = build_server(registry, config, data_dir=data_dir, loader=loader)
    try:
        with ServerThread(server.app) as thread:
            client = openai.OpenAI(base_url=thread.base_url, api_key="none", max_retries=0)
            http = httpx.Client(base_url=thread.url, timeout=60)
            results = {}
            in_flight = threading.Thread(
                target=lambda: results.update(r=client.chat.completions.create(model=NAME, messages=PROMPTS[0]))
            )
            in_flight.start()
            assert entered.wait(60)
            registry.promote(NAME, v2.version, evaluation_id=e2, reason="better", actor="test")
            assert _wait_for_version(http, v2.version)
            assert (
                client.chat.completions.create(model=NAME, messages=PROMPTS[0]).choices[0].message.content
                == answers2[0]
            )
            release.set()
            in_flight.join(60)
            assert results["r"].model == f"{NAME}:v{v1.version}"
            assert results["r"].choices[0].message.content == answers1[0]

            registry.rollback(NAME, reason="complaints", actor="test")
            assert _wait_for_version(http, v1.version)
            response = client.chat.completions.create(model=NAME, messages=PROMPTS[0])
            assert (response.model, response.choices[0].message.content) == (f"{NAME}:v{v1.version}", answers1[0])
    finally:
        server.stop()


def _wait_for_version(http, version, bound_s=30.0):
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if http.get("/health").json()["version"] == version:
            return True
        time.sleep(0.05)
    return False


def test_a_version_that_fails_to_load_never_replaces_the_serving_one(tiny, tmp_path):
    data_dir, base, (adapter1, adapter2) = tiny
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    v1, e1, _ = _register(registry, data_dir, base, adapter1, 21)
    v2, e2, _ = _register(registry, data_dir, base, adapter2, 22, baseline_uri=v1.model_uri)
    registry.promote(NAME, v1.version, evaluation_id=e1, reason="first", actor="test")
    config = ServeConfig(model_name=NAME, poll_interval_s=10)

    def loader(version):
        if version.version == v2.version:
            raise OSError("adapter unreadable")
        return load_served_model(registry, version, data_dir=data_dir, config=config)

    server = build_server(registry, config, data_dir=data_dir, loader=loader)
    try:
        registry.promote(NAME, v2.version, evaluation_id=e2, reason="better", actor="test")
        assert server.pool.refresh() == []
        assert server.pool.holder("production").version == v1.version
        assert "adapter unreadable" in server.pool.last_error
    finally:
        server.stop()


# ------------------------------------------------------------------------------- hosted models


def test_hosted_versions_are_proxied_to_the_provider(tmp_path, monkeypatch):
    remote = "ft:gpt-4o-mini-2024-07-18:org::abc123"
    secret = "sk-test-SERVE-5e2b9c"
    with FakeOpenAI() as fake:
        fake.register_model(remote)
        fake.set_responder(remote, lambda messages, body: f"hosted answer to {messages[-1]['content']}")
        monkeypatch.setenv("SERVE_TEST_KEY", secret)
        registry = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
        v1, e1, _ = _register(registry, tmp_path, None, None, 31, backend="openai", remote=remote)
        registry.promote(NAME, v1.version, evaluation_id=e1, reason="first", actor="test")
        config = ServeConfig(
            model_name=NAME,
            openai_api_key_env="SERVE_TEST_KEY",
            openai_base_url=fake.base_url,
            openai_max_retries=0,
            poll_interval_s=10,
        )
        server = build_server(registry, config, data_dir=tmp_path)
        try:
            with ServerThread(server.app) as thread:
                client = openai.OpenAI(base_url=thread.base_url, api_key="none", max_retries=0)
                response = client.chat.completions.create(model=NAME, messages=PROMPTS[0])
                assert response.choices[0].message.content == f"hosted answer to {PROMPTS[0][0]['content']}"
                assert response.model == f"{NAME}:v{v1.version}" and response.usage.completion_tokens > 0
                pieces = [
                    c.choices[0].delta.content or ""
                    for c in client.chat.completions.create(model=NAME, messages=PROMPTS[0], stream=True)
                    if c.choices
                ]
                assert "".join(pieces) == response.choices[0].message.content
                health = httpx.get(f"{thread.url}/health").json()
                assert (health["backend"], health["remote_model_id"]) == ("openai", remote)
                sent = fake.requests_matching("POST", r"/chat/completions")[-1].json
                assert sent["model"] == remote
                # The provider's error keeps its status; the key never shows.
                fake.inject("POST", r"/chat/completions", status=429)
                with pytest.raises(openai.RateLimitError) as caught:
                    client.chat.completions.create(model=NAME, messages=PROMPTS[0])
                assert secret not in json.dumps(caught.value.body)
        finally:
            server.stop()
        assert fake.validation_errors == []


def test_serve_config_defaults_and_checks():
    config = ServeConfig()
    assert (config.host, config.port, config.model_name) == ("127.0.0.1", 8000, DEFAULT_MODEL_NAME)
    assert config.challenger_alias == "staging" and config.challenger_share == 0.0
    for bad in (
        {"challenger_share": 1.5},
        {"challenger_alias": "production"},
        {"poll_interval_s": 0},
        {"port": 70000},
        {"max_tokens_limit": 0},
        {"model_name": ""},
    ):
        with pytest.raises(ValueError):
            ServeConfig(**bad)


def test_hosted_versions_are_proxied_to_their_own_provider(monkeypatch):
    """together versions go to Together's OpenAI-compatible endpoint with TOGETHER_API_KEY, azure ones
    to the Azure endpoint; a missing key or endpoint is one clear error naming the setting, not the key."""
    import openai

    from ft_pipeline.lib.serving.models import _provider_client

    config = ServeConfig(azure_endpoint="https://example-resource.openai.azure.com")
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(ValueError, match="TOGETHER_API_KEY is not set"):
        _provider_client("together", config)
    monkeypatch.setenv("TOGETHER_API_KEY", "tg-secret-key")
    together = _provider_client("together", config)
    assert str(together.base_url).rstrip("/") == "https://api.together.ai/v1" and together.api_key == "tg-secret-key"
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-secret-key")
    azure = _provider_client("azure", config)
    assert isinstance(azure, openai.AzureOpenAI) and "example-resource" in str(azure.base_url)
    with pytest.raises(ValueError, match="azure_endpoint is not set") as err:
        _provider_client("azure", ServeConfig())
    assert "az-secret-key" not in str(err.value)
