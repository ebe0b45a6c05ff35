"""Latency and throughput of the evaluated models, measured through the generators that answer
the test split (the generation path ``ft-pipeline serve`` answers with).

For each model and each batch size ``b``: ``b * ceil(n_prompts / b)`` requests (the seeded sample
of test prompts, repeated to fill the last batch) go through the model's generator, ``b`` at a
time, after one warm-up request that is not counted (the first call pays for lazy initialisation):

* a local model (:class:`LocalGenerator`) answers each group of ``b`` prompts as one batch
  (``batch_size = b``): every request of the batch waits for the whole batch, so each one's
  latency is the batch's wall time -- what a client of a batching server sees;
* an OpenAI-compatible model (:class:`OpenAIChatGenerator`) gets ``b`` requests in flight at once
  (``concurrency = b``) and each request's latency is its own round trip;
* anything else (:class:`ScriptedGenerator`, ...) is timed per group like a local model.

Per model and batch size: p50 and p95 of the request latencies (linear interpolation), requests
per second and new tokens per second (requests and new tokens over the wall time of all groups).
New tokens are counted exactly for a local model (the generated ids that are not padding, as its
progress lines count them), else estimated from the answers (``max(chars / 4, words)``,
lib/tokens); the row's ``token_counter`` says which.

Latency runs generate at most ``max_new_tokens`` (32 by default, not the evaluation's 128) and
use 8 prompts by default, so on a CPU the measurement adds seconds with the tiny demo base and
about a minute with a 135M-parameter base, not the full evaluation again.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ft_pipeline.lib.evaluation.generation import Generator, LocalGenerator, OpenAIChatGenerator
from ft_pipeline.lib.tokens import estimate_token_counts

__all__ = ["LATENCY_COLUMNS", "LatencyConfig", "add_latency", "measure_latency", "sample_prompts"]

#: The figures of one (model, batch size) row, in the order reports show them.
LATENCY_COLUMNS = ("p50_latency_s", "p95_latency_s", "requests_per_s", "new_tokens_per_s")


@dataclass(frozen=True)
class LatencyConfig:
    """How latency and throughput are measured. Every default is the documented one."""

    enabled: bool = True
    """Measure latency and throughput of candidate and base in the evaluation."""
    n_prompts: int = 8
    """Test prompts sampled (seeded) for the measurement; each batch size sends at least this
    many requests, a multiple of the batch size (the prompts repeat to fill a batch)."""
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    """Batch sizes (local models) or requests in flight (OpenAI-compatible models)."""
    max_new_tokens: int = 32
    """Longest generated answer in latency runs (shorter than the evaluation's, to keep the cost low)."""
    seed: int = 0
    """Seed of the prompt sample."""

    def __post_init__(self) -> None:
        if self.n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1, got {self.n_prompts}")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be a non-empty list of sizes >= 1, got {list(self.batch_sizes)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def sample_prompts(prompts: Sequence[list[dict]], n: int, seed: int) -> list[list[dict]]:
    """``n`` prompts drawn without replacement (all of them when there are fewer), in a seeded
    order that is the same for every model."""
    if not prompts:
        raise ValueError("no prompts to measure latency on")
    picked = np.random.default_rng(seed).permutation(len(prompts))[: min(n, len(prompts))]
    return [prompts[int(i)] for i in picked]


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


class _CountingModel:
    """A loaded model as the generator sees it, counting the new tokens of every ``generate``
    (tokens that are not padding, as :class:`LocalGenerator`'s progress lines count them)."""

    def __init__(self, model: Any, pad_token_id: int):
        self._model = model
        self._pad_token_id = pad_token_id
        self.new_tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, **kwargs: Any) -> Any:
        out = self._model.generate(**kwargs)
        self.new_tokens += int((out[:, kwargs["input_ids"].shape[1] :] != self._pad_token_id).sum())
        return out


def _estimate(answers: Sequence[str]) -> int:
    return int(sum(estimate_token_counts(list(answers))))


def _at_batch_size(
    generator: Generator, batch_size: int, max_new_tokens: int
) -> tuple[Generator, str, Callable[[Sequence[str]], int]]:
    """A shallow copy of ``generator`` that generates ``batch_size`` at a time and at most
    ``max_new_tokens`` (the loaded model and the client are shared, not loaded again); the name of
    its token count, and a function giving the new tokens of the answers of its last call."""
    if isinstance(generator, LocalGenerator):
        clone = copy.copy(generator)
        clone.config = replace(generator.config, batch_size=batch_size, max_new_tokens=max_new_tokens)
        clone.on_progress = None  # the evaluation's progress lines are about the test split
        counting = _CountingModel(generator.model, generator.tokenizer.pad_token_id)
        clone.model = counting

        def generated(_answers: Sequence[str]) -> int:
            n, counting.new_tokens = counting.new_tokens, 0
            return n

        return clone, "tokenizer", generated
    if isinstance(generator, OpenAIChatGenerator):
        remote = copy.copy(generator)
        remote.config = replace(generator.config, concurrency=batch_size, max_new_tokens=max_new_tokens)
        return remote, "estimate:chars/4", _estimate
    return generator, "estimate:chars/4", _estimate


def _timed_openai(generator: OpenAIChatGenerator, clock: Callable[[], float]) -> tuple[Generator, list[float]]:
    """``generator`` with each request's round trip recorded (the copy's ``_complete`` is wrapped)."""
    latencies: list[float] = []
    complete = generator._complete

    def timed(messages: list[dict]) -> str:
        started = clock()
        answer = complete(messages)
        latencies.append(clock() - started)  # list.append is atomic: safe from the worker threads
        return answer

    clone = copy.copy(generator)
    clone._complete = timed  # type: ignore[method-assign]
    return clone, latencies


def _measure_one(
    generator: Generator,
    prompts: list[list[dict]],
    batch_size: int,
    config: LatencyConfig,
    clock: Callable[[], float],
) -> dict[str, Any]:
    n_requests = batch_size * math.ceil(len(prompts) / batch_size)
    requests = [prompts[i % len(prompts)] for i in range(n_requests)]
    sized, counter, count = _at_batch_size(generator, batch_size, config.max_new_tokens)
    per_request: list[float] | None = None
    if isinstance(sized, OpenAIChatGenerator):
        sized, per_request = _timed_openai(sized, clock)
    latencies: list[float] = []
    new_tokens = 0
    wall = 0.0
    for start in range(0, n_requests, batch_size):
        group = requests[start : start + batch_size]
        began = clock()
        answers = sized.generate(group)
        elapsed = clock() - began
        wall += elapsed
        if per_request is None:
            latencies += [elapsed] * len(group)
        new_tokens += count(answers)
    if per_request is not None:
        latencies = list(per_request)
    wall = max(wall, 1e-9)
    return {
        "batch_size": batch_size,
        "requests": n_requests,
        "new_tokens": new_tokens,
        "p50_latency_s": _percentile(latencies, 50),
        "p95_latency_s": _percentile(latencies, 95),
        "requests_per_s": n_requests / wall,
        "new_tokens_per_s": new_tokens / wall,
        "wall_s": wall,
        "token_counter": counter,
    }


def measure_latency(
    generators: dict[str, Generator],
    prompts: Sequence[list[dict]],
    config: LatencyConfig = LatencyConfig(),
    *,
    clock: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Latency and throughput of each generator (``role -> generator``) on a seeded sample of
    ``prompts``, at each of ``config.batch_sizes``.

    Returns:
        ``{"settings": {...}, "rows": [{"model", "model_id", "batch_size", "requests",
        "new_tokens", "p50_latency_s", "p95_latency_s", "requests_per_s", "new_tokens_per_s",
        "wall_s", "token_counter"}, ...]}``: JSON-able, one row per (model, batch size), in the
        order of ``generators`` and ``batch_sizes``.
    """
    sample = sample_prompts(prompts, config.n_prompts, config.seed)
    batch_sizes = sorted({int(b) for b in config.batch_sizes})
    rows: list[dict[str, Any]] = []
    for role, generator in generators.items():
        _at_batch_size(generator, 1, config.max_new_tokens)[0].generate(sample[:1])  # warm-up, not counted
        for batch_size in batch_sizes:
            row = _measure_one(generator, sample, batch_size, config, clock)
            rows.append({"model": role, "model_id": generator.name, **row})
            log(
                f"latency {role} batch {batch_size}: p50 {row['p50_latency_s']:.3f} s, "
                f"p95 {row['p95_latency_s']:.3f} s, "
                f"{row['requests_per_s']:.2f} requests/s, {row['new_tokens_per_s']:.1f} new tokens/s"
            )
    return {
        "settings": {
            "n_prompts": len(sample),
            "batch_sizes": batch_sizes,
            "max_new_tokens": config.max_new_tokens,
            "seed": config.seed,
        },
        "rows": rows,
    }


def add_latency(
    extra: dict[str, Any],
    generators: dict[str, Generator],
    prompts: Sequence[list[dict]],
    config: LatencyConfig,
    *,
    log: Callable[[str], None] = lambda message: None,
) -> None:
    """``extra["latency"]``: :func:`measure_latency` of the candidate and the base (what
    ``evaluate_candidate`` records in report.json and the registry); nothing when
    ``config.enabled`` is off."""
    if not config.enabled:
        return
    extra["latency"] = measure_latency(
        {role: generators[role] for role in ("candidate", "base")}, prompts, config, log=log
    )
