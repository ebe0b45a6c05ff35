"""One evaluation: answers from every model on the frozen test split, scores, paired statistics,
per-tag slices, the regression suite, and the promotion gate's decision."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from ft_pipeline.lib.evaluation.gate import GateDecision, PromotionGate, evaluate_gate
from ft_pipeline.lib.evaluation.generation import Generator, split_prompt_reference
from ft_pipeline.lib.evaluation.metrics import aggregate, score_examples
from ft_pipeline.lib.evaluation.statistics import compare

REGRESSION_SUITE = "regression_suite.jsonl"


@dataclass(frozen=True)
class EvaluationConfig:
    """How answers are scored and compared. Every default is the documented one."""

    task: str = "auto"
    """'auto' (JSON references -> JSON metrics, a small closed label set -> classification),
    'generation', 'json' or 'classification'."""
    n_resamples: int = 2000
    """Paired-bootstrap resamples for the confidence intervals."""
    confidence: float = 0.95
    seed: int = 0
    """Seed of the bootstrap (generation is greedy)."""
    use_regression_suite: bool = True
    """Score base and candidate on the general prompts shipped with the project."""


DEFAULT_EVALUATION_CONFIG = EvaluationConfig()


def load_regression_suite() -> list[dict[str, Any]]:
    """The general prompts shipped with the project: ``{"messages": [..., final assistant reference]}``."""
    text = resources.files("ft_pipeline.lib.evaluation").joinpath(REGRESSION_SUITE).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class EvaluationResult:
    examples: pd.DataFrame
    """One row per (model, test example): ids, tags, prediction, reference and every metric."""
    summary: dict[str, dict[str, float]]
    """model role -> metric -> mean."""
    comparisons: dict[str, dict[str, dict[str, Any]]]
    """baseline role ('base', 'production', 'prompted') -> metric -> delta, CI, (McNemar for binary metrics)."""
    slices: dict[str, dict[str, dict[str, float]]]
    """tag -> model role -> metric -> mean."""
    regression: dict[str, float] | None
    decision: GateDecision
    model_ids: dict[str, str]
    metrics: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def _score(
    generator: Generator, prompts: Sequence[list[dict]], references: Sequence[str], config: EvaluationConfig
) -> tuple[list[str], pd.DataFrame]:
    predictions = generator.generate(prompts)
    if len(predictions) != len(prompts):
        raise RuntimeError(f"{generator.name} returned {len(predictions)} answers for {len(prompts)} prompts")
    return predictions, score_examples(predictions, references, task=config.task)


def _last_user_turn(prompt: list[dict[str, Any]]) -> str:
    """What the user asked last: the line people read beside the answers."""
    return next((str(m.get("content", "")) for m in reversed(prompt) if m.get("role") == "user"), "")


def run_evaluation(
    test: pd.DataFrame,
    generators: dict[str, Generator],
    *,
    gate: PromotionGate = PromotionGate(),
    config: EvaluationConfig = DEFAULT_EVALUATION_CONFIG,
    train_test_overlap: int = 0,
    regression_suite: list[dict[str, Any]] | None = None,
    no_production_reason: str = "no production model yet",
    no_prompted_reason: str = "the prompted baseline is off",
) -> EvaluationResult:
    """Evaluate ``generators`` ('candidate', 'base', optionally 'production' and 'prompted': the
    base with a system prompt and few-shot examples) on ``test``. ``no_production_reason`` /
    ``no_prompted_reason`` say, in the gate's rules, why there is no 'production' / 'prompted'
    generator. The regression suite stays candidate vs base.

    ``test`` has ``conversation_id``, ``messages`` and (optionally) ``tags``; all turns before the
    final assistant turn are the prompt and the final assistant turn is the reference.
    """
    if "candidate" not in generators or "base" not in generators:
        raise ValueError("generators needs at least 'candidate' and 'base'")
    if not len(test):
        raise ValueError("the test split is empty")
    pairs = [split_prompt_reference(list(m)) for m in test["messages"]]
    prompts = [p for p, _ in pairs]
    references = [r for _, r in pairs]
    tags = test["tags"].tolist() if "tags" in test else [[] for _ in range(len(test))]

    frames, scores = [], {}
    for role, generator in generators.items():
        predictions, frame = _score(generator, prompts, references, config)
        scores[role] = frame
        frame = frame.copy()
        frame.insert(0, "model", role)
        frame.insert(1, "model_id", generator.name)
        frame.insert(2, "conversation_id", test["conversation_id"].astype(str).to_numpy())
        frame.insert(3, "tags", [list(t) if t is not None else [] for t in tags])
        frame["prompt"] = [_last_user_turn(p) for p in prompts]
        frame["prediction"] = predictions
        frame["reference"] = references
        frames.append(frame)
    examples = pd.concat(frames, ignore_index=True)
    metrics = [c for c in scores["candidate"].columns if pd.api.types.is_numeric_dtype(scores["candidate"][c])]
    summary = {role: aggregate(frame) for role, frame in scores.items()}
    comparisons: dict[str, dict[str, dict[str, Any]]] = {
        baseline: compare(
            scores["candidate"],
            scores[baseline],
            metrics,
            n_resamples=config.n_resamples,
            confidence=config.confidence,
            seed=config.seed,
        )
        for baseline in ("base", "production", "prompted")
        if baseline in scores
    }

    slices: dict[str, dict[str, dict[str, float]]] = {}
    tag_of_row = [t[0] if len(t) else "untagged" for t in tags]
    for tag in sorted(set(tag_of_row)):
        mask = np.asarray([t == tag for t in tag_of_row])
        slices[tag] = {role: aggregate(frame[mask]) for role, frame in scores.items()}
        slices[tag]["n"] = {"examples": float(mask.sum())}

    regression = None
    if config.use_regression_suite:
        suite = regression_suite if regression_suite is not None else load_regression_suite()
        suite_pairs = [split_prompt_reference(list(ex["messages"])) for ex in suite]
        suite_prompts = [p for p, _ in suite_pairs]
        suite_refs = [r for _, r in suite_pairs]
        regression = {}
        for role in ("candidate", "base"):
            _, frame = _score(generators[role], suite_prompts, suite_refs, config)
            regression[role] = float(frame[gate.answer_metric].mean())

    decision = evaluate_gate(
        gate,
        versus_base=comparisons["base"],
        versus_production=comparisons.get("production"),
        regression_scores=regression,
        train_test_overlap=train_test_overlap,
        no_production_reason=no_production_reason,
        versus_prompted=comparisons.get("prompted"),
        no_prompted_reason=no_prompted_reason,
    )
    return EvaluationResult(
        examples=examples,
        summary=summary,
        comparisons=comparisons,
        slices=slices,
        regression=regression,
        decision=decision,
        model_ids={role: g.name for role, g in generators.items()},
        metrics=metrics,
    )
