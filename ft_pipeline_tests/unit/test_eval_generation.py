"""Answer generation for evaluation: prompt/reference split, local HF generation (with and without a
LoRA adapter), validation NLL, and OpenAI-compatible generation against the local fake server.

Local tests use the tiny locally built base (random weights, built once per module in a temp
folder) and an adapter made with ``get_peft_model(..., init_lora_weights=False)`` -- no training, but
non-zero LoRA weights, so the adapter visibly changes the output. Nothing is downloaded.

OpenAI tests run the real ``openai`` SDK against ``FakeOpenAI``, with a small per-request chat
latency and the fake's own count of chat requests in flight.
"""

from __future__ import annotations

import dataclasses
import math
import os
import traceback
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from ft_pipeline.lib.evaluation.generation import (
    GenerationConfig,
    GenerationError,
    Generator,
    LocalGenerator,
    OpenAIChatGenerator,
    ScriptedGenerator,
    split_prompt_reference,
)
from ft_pipeline.lib.training.base_models import resolve_base_model
from ft_pipeline.lib.training.chat_template import CHATML_TRAINING_TEMPLATE
from ft_pipeline_tests.fakes.openai_server import FakeOpenAI

MODEL = "gpt-4o-mini"
SECRET_KEY = "sk-test-SECRET-4f1c9a7e2b"

_TEXTS = [
    "My plug is offline. What should I do?",
    "Unplug the plug, wait ten seconds, plug it back in and open the app.",
    "The camera keeps blinking after the update.",
    "Hold the reset button for five seconds until the light turns blue.",
    "Thanks, it works now.",
    "Glad to help. Have a great day.",
    "You are Nimbus, a support assistant.",
]


def _prompts(n: int) -> list[list[dict]]:
    """Prompts of varied lengths (some with a system message, some multi-turn): padding matters."""
    out = []
    for i in range(n):
        msgs: list[dict] = []
        if i % 3 == 0:
            msgs.append({"role": "system", "content": "You are Nimbus, a support assistant."})
        msgs.append({"role": "user", "content": f"Question {i}: " + " ".join(_TEXTS[: 1 + i % 5])})
        if i % 4 == 1:
            msgs += [{"role": "assistant", "content": _TEXTS[1]}, {"role": "user", "content": _TEXTS[4]}]
        out.append(msgs)
    return out


# ----------------------------------------------------------------------------- split / config


def test_split_prompt_reference_single_and_multi_turn():
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Plug offline?"},
        {"role": "assistant", "content": "Unplug it."},
    ]
    prompt, reference = split_prompt_reference(convo)
    assert reference == "Unplug it."
    assert prompt == convo[:-1]  # system message and the earlier assistant turn stay in the prompt
    prompt[0]["content"] = "changed"
    assert convo[0]["content"] == "Be brief."  # the example is not aliased

    prompt, reference = split_prompt_reference(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    )
    assert prompt == [{"role": "user", "content": "Q"}] and reference == "A"


@pytest.mark.parametrize(
    "messages, match",
    [
        (
            [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
                {"role": "user", "content": "Q2"},
            ],
            "last message",
        ),
        ([{"role": "system", "content": "S"}], "last message"),
        ([], "empty"),
        ([{"role": "assistant", "content": "A"}], "no prompt"),
        ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}], "string"),
    ],
)
def test_split_prompt_reference_errors(messages, match):
    with pytest.raises(ValueError, match=match):
        split_prompt_reference(messages)


def test_generation_config_defaults_and_validation():
    cfg = GenerationConfig()
    assert (cfg.max_new_tokens, cfg.batch_size, cfg.seed, cfg.temperature, cfg.concurrency) == (128, 16, 0, 0.0, 16)
    assert (cfg.request_timeout_s, cfg.max_retries) == (60.0, 4)
    for bad in (
        {"max_new_tokens": 0},
        {"batch_size": 0},
        {"concurrency": 0},
        {"temperature": -1.0},
        {"max_retries": -1},
    ):
        with pytest.raises(ValueError):
            GenerationConfig(**bad)


def test_scripted_generator():
    seen = []

    def fn(messages):
        seen.append(messages)
        messages.append({"role": "assistant", "content": "mutated"})  # must not reach the caller
        return f"{len(messages) - 1}:{messages[-2]['content']}"

    gen = ScriptedGenerator(fn, name="dry-run")
    prompts = [
        [{"role": "user", "content": "a"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "b"}],
    ]
    assert gen.generate(prompts) == ["1:a", "2:b"]
    assert prompts[0] == [{"role": "user", "content": "a"}]
    assert gen.name == "dry-run" and isinstance(gen, Generator)
    assert gen.generate([]) == []


# ------------------------------------------------------------------------------------- local


@pytest.fixture(scope="module", autouse=True)
def _quiet_progress_bars(one_torch_thread):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny base, plus a LoRA adapter saved in train_lora's layout (run/adapter, run/tokenizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("tiny")
    base = resolve_base_model("tiny", _TEXTS * 3, root / "cache").path
    run = root / "run"
    model = AutoModelForCausalLM.from_pretrained(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft 0.21 calls a renamed transformers property
        peft_model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        )
    peft_model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "tokenizer")
    return base, run / "adapter"


def _local(base, adapter=None, **cfg) -> LocalGenerator:
    return LocalGenerator(
        base, adapter_dir=str(adapter) if adapter else None, config=GenerationConfig(**cfg), device="cpu"
    )


@pytest.fixture(scope="module")
def base_gen(tiny):
    return _local(tiny[0], max_new_tokens=10, batch_size=4)


@pytest.fixture(scope="module")
def adapter_gen(tiny):
    return _local(tiny[0], tiny[1], max_new_tokens=10, batch_size=4)


def _one_by_one(gen: LocalGenerator, prompts) -> list[str]:
    """Each prompt alone (batch of one: no padding at all), the reference for the batched path."""
    return [gen.generate([p])[0] for p in prompts]


def test_local_batched_equals_one_by_one_and_is_deterministic(base_gen):
    prompts = _prompts(10)
    batched = base_gen.generate(prompts)
    assert len(batched) == 10 and all(isinstance(a, str) and a for a in batched)
    assert len(set(batched)) > 1  # different prompts, different answers: no cross-talk in the batch
    assert batched == _one_by_one(base_gen, prompts)  # left padding does not change any answer
    assert base_gen.generate(prompts) == batched  # deterministic across calls
    assert base_gen.generate(prompts[::-1]) == batched[::-1]  # order follows the input
    assert base_gen.generate([]) == []
    assert base_gen.name == f"local:{base_gen.base_model_path}"


def test_local_reports_progress_per_batch_without_changing_answers(base_gen, monkeypatch):
    prompts = _prompts(10)
    expected = base_gen.generate(prompts)
    lines: list[str] = []
    monkeypatch.setattr(base_gen, "on_progress", lines.append)
    assert base_gen.generate(prompts) == expected
    bs = base_gen.config.batch_size
    assert len(lines) == -(-10 // bs)
    assert lines[-1].startswith(f"{base_gen.name}: 10/10 answers, ") and lines[-1].endswith(" tokens/s")
    assert int(lines[-1].split(" answers, ")[1].split(" new tokens")[0]) > 0


def test_local_caller_rng_is_untouched(base_gen):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    base_gen.generate(_prompts(2))
    assert torch.equal(torch.rand(3), expected)


def test_local_stops_at_max_new_tokens(base_gen, monkeypatch):
    counts: list[int] = []
    original = base_gen.model.generate

    def spy(**kwargs):
        out = original(**kwargs)
        counts.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(base_gen.model, "generate", spy)
    short = dataclasses.replace(base_gen.config, max_new_tokens=3)
    monkeypatch.setattr(base_gen, "config", short)
    base_gen.generate(_prompts(6))
    # A random-weight model essentially never emits <|im_end|>, so every batch runs to the cap.
    assert counts and all(c == 3 for c in counts)


def test_local_stops_at_the_tokenizers_eos(tiny, tmp_path):
    """Swap the output-head rows of <|im_end|> and the k-th greedy token: the model now ends its
    turn exactly there, and the answer is the k-1 tokens before it (<|im_end|> not in the text)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = tiny
    prompt = _prompts(1)[0]
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    ids = tok(
        tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
        return_tensors="pt",
        add_special_tokens=False,
    )
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == eos and eos not in new
    # The first position k >= 3 whose token did not occur before (so the swap cannot change earlier steps).
    k = next(i for i in range(3, len(new)) if new[i] not in new[:i])
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[[eos, new[k]]] = head[[new[k], eos]].clone()
    model.save_pretrained(tmp_path / "stopper")
    tok.save_pretrained(tmp_path / "stopper")

    gen = _local(str(tmp_path / "stopper"), max_new_tokens=8, batch_size=4)
    answer = gen.generate([prompt])[0]
    assert answer == tok.decode(new[:k], skip_special_tokens=True).strip()
    assert "<|im_end|>" not in answer
    # In a batch the finished row is padded while the others go on; its answer is unchanged.
    assert gen.generate([prompt, *_prompts(4)[1:]])[0] == answer


def test_local_adapter_changes_output_and_names_the_weights(base_gen, adapter_gen, tiny):
    prompts = _prompts(8)
    with_adapter = adapter_gen.generate(prompts)
    assert with_adapter != base_gen.generate(prompts)
    assert with_adapter == _one_by_one(adapter_gen, prompts)  # padding-safe through the PEFT wrapper too
    assert adapter_gen.generate(prompts) == with_adapter

    # Named by adapter path and content hash; the tokenizer saved beside the adapter is the one used.
    path, _, sha = adapter_gen.name.removeprefix("local:").partition("#")
    assert path == str(tiny[1]) and len(sha) == 12 and int(sha, 16) >= 0
    assert adapter_gen.tokenizer_dir == str(tiny[1].parent / "tokenizer")
    assert adapter_gen.tokenizer.chat_template == CHATML_TRAINING_TEMPLATE


def test_local_seeded_sampling_is_reproducible(tiny):
    gen = _local(tiny[0], max_new_tokens=6, batch_size=4, temperature=1.0, seed=7)
    prompts = _prompts(4)
    assert gen.generate(prompts) == gen.generate(prompts)


def test_mean_nll(base_gen, adapter_gen):
    convs = [p + [{"role": "assistant", "content": _TEXTS[i % len(_TEXTS)]}] for i, p in enumerate(_prompts(6))]
    nll = base_gen.mean_nll(convs)
    assert math.isfinite(nll) and nll > 0
    assert base_gen.mean_nll(convs) == nll  # identical inputs, identical value
    # Batching (right padding, explicit positions) does not change it: batch of 4 vs one at a time.
    one = _local(base_gen.base_model_path, batch_size=1)
    assert one.mean_nll(convs) == pytest.approx(nll, rel=1e-5)
    # A random-weight model is close to uniform over the vocabulary: NLL near log(vocab size).
    assert abs(nll - math.log(len(base_gen.tokenizer))) < 2.0
    assert adapter_gen.mean_nll(convs) != pytest.approx(nll, rel=1e-6)


def test_mean_nll_refuses_a_template_without_generation_markers(tiny):
    gen = _local(tiny[0])
    gen.tokenizer.chat_template = CHATML_TRAINING_TEMPLATE.replace("{%- generation %}", "").replace(
        "{%- endgeneration %}", ""
    )
    with pytest.raises(ValueError, match="generation"):
        gen.mean_nll([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]])


# ------------------------------------------------------------------------------------ openai


def _last_user(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeOpenAI(api_key=SECRET_KEY, chat_latency_s=0.02) as server:
        server.set_responder(MODEL, lambda messages, body: f"answer to {_last_user(messages)}")
        yield server
        assert server.validation_errors == []


def _client(fake, **kwargs):
    return fake.client(api_key=SECRET_KEY, **kwargs)


def _user_prompts(n: int) -> list[list[dict]]:
    return [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"}] for i in range(n)]


def test_openai_order_and_bounded_concurrency(fake):
    gen = OpenAIChatGenerator(_client(fake), MODEL, GenerationConfig(concurrency=8, seed=11, max_new_tokens=64))
    answers = gen.generate(_user_prompts(40))
    assert answers == [f"answer to q{i}" for i in range(40)]
    assert 2 <= fake.max_chat_in_flight <= 8  # really concurrent, never above the limit
    assert gen.name == f"openai:{MODEL}"

    bodies = [r.json for r in fake.requests_matching("POST", r"/chat/completions$")]
    assert len(bodies) == 40
    assert all(b["temperature"] == 0 and b["seed"] == 11 and b["max_completion_tokens"] == 64 for b in bodies)
    assert gen.generate([]) == []


def test_openai_retries_429_and_500(fake):
    fake.inject("POST", r"/chat/completions$", times=3, status=429, headers={"retry-after-ms": "5"})
    fake.inject("POST", r"/chat/completions$", times=2, status=500, headers={"retry-after-ms": "5"})
    gen = OpenAIChatGenerator(_client(fake, max_retries=0), MODEL, GenerationConfig(concurrency=4, max_retries=4))
    assert gen.generate(_user_prompts(12)) == [f"answer to q{i}" for i in range(12)]
    chat = fake.requests_matching("POST", r"/chat/completions$")
    # Retries come from config.max_retries (the client's own max_retries=0 is overridden).
    assert sum(r.note == "injected" for r in chat) == 5 and len(chat) == 17
    assert max(r.retry_count for r in chat) >= 1


def test_openai_failure_after_retries_names_the_example(fake):
    def responder(messages, body):
        if _last_user(messages) == "q2":
            # Requests are sequential with concurrency 1, so the next three attempts are example 3's.
            fake.inject("POST", r"/chat/completions$", times=3, status=503, headers={"retry-after-ms": "1"})
        return "ok"

    fake.set_responder(MODEL, responder)
    gen = OpenAIChatGenerator(_client(fake), MODEL, GenerationConfig(concurrency=1, max_retries=2))
    with pytest.raises(GenerationError, match=r"example 3 \(of 6\)") as err:
        gen.generate(_user_prompts(6))
    assert err.value.index == 3 and err.value.status_code == 503 and err.value.model == MODEL
    assert "InternalServerError" in str(err.value) and "503" in str(err.value)
    # Queued examples are not sent once one has failed.
    assert len(fake.requests_matching("POST", r"/chat/completions$")) == 4 + 2


def test_openai_errors_never_contain_the_api_key(fake):
    # A provider that echoes the key back in its error message (a proxy, a misconfigured gateway).
    body = {
        "error": {
            "message": f"bad request from key {SECRET_KEY}",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    fake.inject("POST", r"/chat/completions$", times=1, status=400, body=body)
    gen = OpenAIChatGenerator(_client(fake), MODEL, GenerationConfig(concurrency=1, max_retries=0))
    with pytest.raises(GenerationError) as err:
        gen.generate(_user_prompts(2))
    rendered = "".join(traceback.format_exception(err.value))
    assert "example 0" in str(err.value) and "400" in str(err.value)
    assert SECRET_KEY not in rendered and SECRET_KEY not in repr(err.value)
    assert "***" in str(err.value)

    # A wrong key: 401, not retried, and neither key shows up.
    wrong = "sk-test-WRONG-0000000000"
    gen = OpenAIChatGenerator(fake.client(api_key=wrong), MODEL, GenerationConfig(max_retries=1))
    with pytest.raises(GenerationError, match="HTTP 401") as err:
        gen.generate(_user_prompts(3))
    rendered = "".join(traceback.format_exception(err.value))
    assert wrong not in rendered and SECRET_KEY not in rendered
