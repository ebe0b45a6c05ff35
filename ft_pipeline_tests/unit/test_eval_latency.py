"""Latency and throughput KPIs of the evaluation (lib/evaluation/latency.py), their place in
report.json / report.md, the asset's metadata, and the switch.

Timings are never asserted against the wall clock: the scripted generators advance a fake clock
by a known amount per request, so the arithmetic is checked exactly.
"""

import json
import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ft_pipeline.lib.evaluation.generation import (
    GenerationConfig,
    LocalGenerator,
    OpenAIChatGenerator,
    ScriptedGenerator,
)
from ft_pipeline.lib.evaluation.latency import LatencyConfig, add_latency, measure_latency, sample_prompts
from ft_pipeline.lib.evaluation.report import write_report
from ft_pipeline.lib.evaluation.runner import EvaluationConfig, run_evaluation


def _prompt(i: int) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"}]


def _index(prompt: list[dict]) -> int:
    return int(prompt[-1]["content"][1:])


class FakeClock:
    """A clock the scripted models advance: each request "takes" (index + 1) / 10 seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def answer(self, prompt: list[dict]) -> str:
        self.now += (_index(prompt) + 1) / 10
        return "a b c d"  # 4 words -> 4 tokens by the estimate (max(chars / 4, words))


def test_percentiles_and_throughput_on_a_scripted_generator():
    clock = FakeClock()
    generator = ScriptedGenerator(clock.answer, name="scripted")
    prompts = [_prompt(i) for i in range(8)]

    latency = measure_latency(
        {"candidate": generator}, prompts, LatencyConfig(n_prompts=8, batch_sizes=(8, 1, 3)), clock=clock
    )

    assert latency["settings"] == {"n_prompts": 8, "batch_sizes": [1, 3, 8], "max_new_tokens": 32, "seed": 0}
    one, three, eight = latency["rows"]
    # Batch 1: each request alone, latencies 0.1 ... 0.8 s.
    delays = [(i + 1) / 10 for i in range(8)]
    assert one["batch_size"] == 1 and one["requests"] == 8
    assert one["p50_latency_s"] == pytest.approx(np.percentile(delays, 50)) == pytest.approx(0.45)
    assert one["p95_latency_s"] == pytest.approx(np.percentile(delays, 95))
    assert one["requests_per_s"] == pytest.approx(8 / sum(delays))
    assert one["new_tokens"] == 32 and one["new_tokens_per_s"] == pytest.approx(32 / sum(delays))
    assert one["token_counter"] == "estimate:chars/4" and one["model"] == "candidate"
    assert one["model_id"] == "scripted"
    # Batch 3: 9 requests (the 8 prompts and the first again), in groups that finish together.
    assert three["requests"] == 9
    # Batch 8: one group of all 8; every request waits for the whole batch.
    assert eight["requests"] == 8
    assert eight["p50_latency_s"] == pytest.approx(sum(delays)) == eight["p95_latency_s"]
    assert eight["requests_per_s"] == pytest.approx(8 / sum(delays))
    json.dumps(latency)  # JSON-able, for report.json and the registry


def test_the_prompt_sample_is_seeded_and_the_same_for_every_model():
    prompts = [_prompt(i) for i in range(20)]
    first = sample_prompts(prompts, 5, seed=3)
    assert first == sample_prompts(prompts, 5, seed=3)
    assert first != sample_prompts(prompts, 5, seed=4)
    assert len({_index(p) for p in first}) == 5
    assert sample_prompts(prompts[:2], 5, seed=0) != [] and len(sample_prompts(prompts[:2], 5, seed=0)) == 2

    seen: dict[str, list[int]] = {"candidate": [], "base": []}
    generators = {
        role: ScriptedGenerator(lambda p, role=role: seen[role].append(_index(p)) or "x", name=role) for role in seen
    }
    measure_latency(generators, prompts, LatencyConfig(n_prompts=4, batch_sizes=(2,)))
    assert seen["candidate"] == seen["base"] and len(seen["candidate"]) == 1 + 4  # a warm-up, then the sample


@pytest.mark.parametrize(
    "kwargs", [{"n_prompts": 0}, {"batch_sizes": ()}, {"batch_sizes": (0, 8)}, {"max_new_tokens": 0}]
)
def test_config_refuses_nonsense(kwargs):
    with pytest.raises(ValueError):
        LatencyConfig(**kwargs)


class _FakeOpenAIClient:
    """Just enough of ``openai.OpenAI`` for OpenAIChatGenerator: each request advances its own
    thread's fake clock by (index + 1) / 10 s, and the most requests in flight are recorded."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_tokens: set[int] = set()
        self.barrier: threading.Barrier | None = None
        self.unsynchronised = 0  # requests let through without the barrier (the warm-up)
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def with_options(self, **_):
        return self

    def clock(self) -> float:
        return getattr(self.local, "now", 0.0)

    def _create(self, *, messages, max_completion_tokens, **_):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.max_tokens.add(max_completion_tokens)
            synchronised = self.barrier is not None and self.unsynchronised == 0
            self.unsynchronised = max(0, self.unsynchronised - 1)
        try:
            if synchronised and self.barrier is not None:
                self.barrier.wait(timeout=10)  # all requests of a group really are in flight together
            self.local.now = self.clock() + (_index(messages) + 1) / 10
        finally:
            with self.lock:
                self.in_flight -= 1
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content="a b"))])


def test_openai_requests_are_timed_one_by_one_with_the_batch_in_flight():
    client = _FakeOpenAIClient()
    generator = OpenAIChatGenerator(client, "ft:model", GenerationConfig(concurrency=16, max_new_tokens=128))
    prompts = [_prompt(i) for i in range(4)]
    measure_latency({"candidate": generator}, prompts, LatencyConfig(n_prompts=4, batch_sizes=(1,)), clock=client.clock)
    client.barrier, client.unsynchronised = threading.Barrier(4), 1
    latency = measure_latency(
        {"candidate": generator}, prompts, LatencyConfig(n_prompts=4, batch_sizes=(4,)), clock=client.clock
    )
    (row,) = latency["rows"]
    # Each request's own round trip, not the group's: the delays 0.1 ... 0.4 s.
    assert row["p50_latency_s"] == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 50))
    assert row["p95_latency_s"] == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 95))
    assert client.max_in_flight == 4  # batch size = requests in flight
    assert client.max_tokens == {32}  # the latency runs' max_new_tokens, not the evaluation's
    assert generator.config.concurrency == 16 and generator.config.max_new_tokens == 128  # the original is untouched


def test_the_switch_and_what_is_measured():
    clock = FakeClock()
    generators = {role: ScriptedGenerator(clock.answer, name=role) for role in ("candidate", "base", "production")}
    prompts = [_prompt(i) for i in range(3)]
    extra: dict = {}
    add_latency(extra, generators, prompts, LatencyConfig(enabled=False))
    assert extra == {}
    add_latency(extra, generators, prompts, LatencyConfig(n_prompts=3, batch_sizes=(1, 2)))
    assert [(r["model"], r["batch_size"]) for r in extra["latency"]["rows"]] == [
        ("candidate", 1),
        ("candidate", 2),
        ("base", 1),
        ("base", 2),
    ]


def test_run_config_switch_reaches_the_lib_config():
    from ft_pipeline.defs.evaluation import EvaluationRunConfig

    lib = EvaluationRunConfig(measure_latency=False, latency_batch_sizes=[2, 4], seed=7).to_lib().latency
    assert lib == LatencyConfig(enabled=False, n_prompts=8, batch_sizes=(2, 4), max_new_tokens=32, seed=7)
    assert EvaluationRunConfig().to_lib().latency == LatencyConfig()


def _evaluated(tmp_path):
    test = pd.DataFrame(
        {
            "conversation_id": [f"c{i}" for i in range(4)],
            "messages": [[*_prompt(i), {"role": "assistant", "content": f"answer {i}"}] for i in range(4)],
            "tags": [["billing"]] * 4,
        }
    )
    generators = {
        "candidate": ScriptedGenerator(lambda p: f"answer {_index(p)}", name="cand"),
        "base": ScriptedGenerator(lambda p: "no idea", name="base"),
    }
    result = run_evaluation(test, generators, config=EvaluationConfig(use_regression_suite=False, n_resamples=50))
    prompts = [m[:-1] for m in test["messages"]]
    add_latency(result.extra, generators, prompts, LatencyConfig(n_prompts=4, batch_sizes=(1, 4)))
    return result


def test_latency_is_in_report_json_and_report_md(tmp_path):
    result = _evaluated(tmp_path)
    paths = write_report(result, tmp_path / "report", {"eval_id": "e1", "primary_metric": "rougeL"})
    report = json.loads(paths["json"].read_text())
    rows = report["extra"]["latency"]["rows"]
    assert [(r["model"], r["batch_size"]) for r in rows] == [
        ("candidate", 1),
        ("candidate", 4),
        ("base", 1),
        ("base", 4),
    ]
    markdown = paths["markdown"].read_text()
    assert "## Latency and throughput" in markdown
    table = markdown.split("## Latency and throughput", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in table.splitlines() if line.startswith("| candidate") or line.startswith("| base")]
    assert len(lines) == 4 and lines[1].startswith("| candidate | 4 | 4 |")
    assert "4 test prompts, at most 32 new tokens" in table

    result.extra.pop("latency")
    paths = write_report(result, tmp_path / "without", {"eval_id": "e2", "primary_metric": "rougeL"})
    assert "Latency and throughput" not in paths["markdown"].read_text()
    assert "latency" not in json.loads(paths["json"].read_text()).get("extra", {})


def test_asset_metadata_has_a_table_and_headline_floats(tmp_path):
    import dagster as dg

    from ft_pipeline.defs.evaluation import _latency_metadata

    latency = _evaluated(tmp_path).extra["latency"]
    metadata = _latency_metadata(latency)
    assert isinstance(metadata["latency"], dg.TableMetadataValue)
    assert len(metadata["latency"].records) == 4
    assert [c.name for c in metadata["latency"].schema.columns] == [
        "model",
        "batch_size",
        "requests",
        "p50_latency_s",
        "p95_latency_s",
        "requests_per_s",
        "new_tokens_per_s",
    ]
    candidate = [r for r in latency["rows"] if r["model"] == "candidate"]
    assert metadata["candidate_p50_latency_s_batch_1"] == round(candidate[0]["p50_latency_s"], 4)
    assert metadata["candidate_requests_per_s_batch_4"] == round(candidate[1]["requests_per_s"], 4)
    assert all(isinstance(metadata[k], float) for k in metadata if k != "latency")
    assert _latency_metadata(None) == {}


def test_local_generator_is_measured_without_reloading_the_model(tmp_path, one_torch_thread):
    from ft_pipeline.lib.training.base_models import resolve_base_model

    texts = ["How do I reset my password?", "Open settings and choose reset.", "Thanks!"] * 5
    base = resolve_base_model("tiny", texts, tmp_path / "cache").path
    generator = LocalGenerator(base, config=GenerationConfig(max_new_tokens=64, batch_size=16), device="cpu")
    model = generator.model
    latency = measure_latency(
        {"base": generator},
        [_prompt(i) for i in range(3)],
        LatencyConfig(n_prompts=3, batch_sizes=(1, 2), max_new_tokens=4),
    )
    one, two = latency["rows"]
    assert (one["requests"], two["requests"]) == (3, 4)
    assert one["token_counter"] == "tokenizer"
    assert 0 < one["new_tokens"] <= 3 * 4 and 0 < two["new_tokens"] <= 4 * 4  # at most max_new_tokens each
    assert one["p50_latency_s"] > 0 and two["requests_per_s"] > 0
    assert generator.model is model and generator.config.batch_size == 16 and generator.config.max_new_tokens == 64
