"""Robustness of candidate and base to noisy prompts: the answer metric's degradation when the
user's last turn carries typos, case and spacing changes, no punctuation, or (with a paraphrase
model) other words, and whether the candidate degrades more than the base.

A fixed, seeded subset of the evaluated test examples (``max_examples``, 16 by default) is used:
for each perturbation (lib/perturbations.py, seeded per prompt, so a prompt perturbs the same way
on every run) the last user turn of each prompt is perturbed and answered by the same generators
that answered the clean prompt; the clean answers are the evaluation's own (never generated
again), and a prompt the perturbation leaves unchanged keeps its clean answer. Each answer is
scored with the gate's answer metric (``PromotionGate.answer_metric``).

Per perturbation and model: the clean and perturbed means, and the degradation (clean −
perturbed) with a paired-bootstrap CI (lib/evaluation/statistics.py); and the gap, the
candidate's degradation minus the base's (per example, then averaged), with its paired CI. The
gate's ``robustness`` rule fails when a gap's point estimate is above ``tolerance`` and its CI lies
above 0: the candidate may not lose more to noisy input than the base model it was trained from,
beyond noise.

With ``paraphrase_model`` set, an OpenAI-compatible chat model (the evaluation's OpenAI client)
rewrites each prompt's last user turn once (temperature 0, seeded), and the rewrites are one more
perturbation, ``paraphrase``. An empty rewrite leaves the prompt unchanged.

Cost: at most ``2 × max_examples`` answers per perturbation (candidate and base; fewer when a
perturbation leaves prompts unchanged): 96 with the defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ft_pipeline.lib.evaluation.generation import GenerationConfig, Generator, OpenAIChatGenerator
from ft_pipeline.lib.evaluation.metrics import detect_task, score_examples
from ft_pipeline.lib.evaluation.statistics import paired_bootstrap
from ft_pipeline.lib.perturbations import PERTURBATIONS, perturb

__all__ = [
    "PARAPHRASE",
    "PARAPHRASE_INSTRUCTION",
    "ROBUSTNESS_COLUMNS",
    "ROBUSTNESS_ROLES",
    "RobustnessConfig",
    "add_robustness",
    "measure_robustness",
    "robustness_subset",
]

#: The perturbation name of the paraphrase set (present only with a ``paraphrase_model``).
PARAPHRASE = "paraphrase"
#: The models answered under perturbation.
ROBUSTNESS_ROLES = ("candidate", "base")
#: The figures of one perturbation's row, in the order reports show them.
ROBUSTNESS_COLUMNS = (
    "candidate_clean",
    "candidate_perturbed",
    "candidate_degradation",
    "base_clean",
    "base_perturbed",
    "base_degradation",
    "gap",
    "gap_ci_low",
    "gap_ci_high",
)
#: The system message of a paraphrase request (the user message is the turn to rewrite).
PARAPHRASE_INSTRUCTION = (
    "Rewrite the user's message in different words, as the same customer might have written it. Keep its "
    "meaning and its language, and keep every placeholder in angle brackets (such as <EMAIL>), every number "
    "and every URL exactly as written. Reply with the rewritten message only."
)
#: Longest paraphrase requested (tokens).
PARAPHRASE_MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class RobustnessConfig:
    """How robustness to noisy prompts is measured and gated. Every default is the documented one."""

    enabled: bool = True
    """Measure the candidate's and the base's degradation under perturbed prompts."""
    perturbations: tuple[str, ...] = ("typos", "case_whitespace", "punctuation")
    """Perturbations of the last user turn (names of lib/perturbations.py's ``PERTURBATIONS``)."""
    typo_rate: float = 0.05
    """Share of letters given a typo (``typos``) and of spaces doubled or dropped (``case_whitespace``)."""
    max_examples: int = 16
    """Test examples (a fixed, seeded subset of those evaluated) answered under each perturbation;
    0 = all of them."""
    seed: int = 0
    """Seed of the subset and of the perturbations."""
    paraphrase_model: str = ""
    """OpenAI-compatible chat model that paraphrases each prompt (the ``paraphrase`` set); empty = off."""
    tolerance: float = 0.02
    """The gate fails when, for any perturbation, the candidate's degradation exceeds the base's by
    more than this (point estimate, in answer-metric units: 0.02 = two ROUGE-L points) and the
    gap's CI lies above 0."""
    gate: bool = True
    """The gate's ``robustness`` rule applies; False = the numbers are reported only."""

    def __post_init__(self) -> None:
        unknown = [p for p in self.perturbations if p not in PERTURBATIONS]
        if unknown:
            hint = f" (set paraphrase_model for the {PARAPHRASE!r} set)" if PARAPHRASE in unknown else ""
            raise ValueError(f"unknown perturbation(s) {unknown}{hint}; known: {', '.join(sorted(PERTURBATIONS))}")
        if not 0.0 <= self.typo_rate <= 1.0:
            raise ValueError(f"typo_rate must be between 0 and 1, got {self.typo_rate}")
        if self.max_examples < 0:
            raise ValueError(f"max_examples must be >= 0 (0 = all), got {self.max_examples}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    @property
    def sets(self) -> tuple[str, ...]:
        """The perturbation sets measured: the configured ones, then ``paraphrase`` when a
        paraphrase model is set (duplicates dropped)."""
        names = tuple(dict.fromkeys(self.perturbations))
        return names + ((PARAPHRASE,) if self.paraphrase_model else ())


def _last_user_index(prompt: Sequence[dict[str, Any]]) -> int | None:
    """Index of the last user message with text content, or None."""
    for i in range(len(prompt) - 1, -1, -1):
        message = prompt[i]
        if message.get("role") == "user":
            content = message.get("content")
            return i if isinstance(content, str) and content.strip() else None
    return None


def robustness_subset(prompts: Sequence[Sequence[dict[str, Any]]], max_examples: int, seed: int) -> list[int]:
    """Indices (in test order) of the examples the suite uses: those whose prompt ends its user
    turns with text, a seeded sample of ``max_examples`` of them (all when 0 or fewer)."""
    eligible = [i for i, prompt in enumerate(prompts) if _last_user_index(prompt) is not None]
    if 0 < max_examples < len(eligible):
        picked = np.random.default_rng(seed).permutation(len(eligible))[:max_examples]
        eligible = sorted(eligible[int(k)] for k in picked)
    return eligible


def _with_user_turn(prompt: Sequence[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """A copy of ``prompt`` whose last user turn says ``text``."""
    index = _last_user_index(prompt)
    out = [dict(m) for m in prompt]
    if index is not None:
        out[index]["content"] = text
    return out


def _paraphrases(texts: Sequence[str], client: Any, config: RobustnessConfig, concurrency: int) -> list[str]:
    generator = OpenAIChatGenerator(
        client,
        config.paraphrase_model,
        GenerationConfig(max_new_tokens=PARAPHRASE_MAX_NEW_TOKENS, seed=config.seed, concurrency=concurrency),
    )
    requests = [[{"role": "system", "content": PARAPHRASE_INSTRUCTION}, {"role": "user", "content": t}] for t in texts]
    rewrites = generator.generate(requests)
    return [r.strip() or t for r, t in zip(rewrites, texts, strict=True)]


def _bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int, confidence: float, seed: int) -> dict[str, float]:
    """mean(a - b) with its paired-bootstrap CI (every call with the same seed: the same resampled items)."""
    boot = paired_bootstrap(a, b, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {"delta": boot.delta, "ci_low": boot.ci_low, "ci_high": boot.ci_high}


def measure_robustness(
    prompts: Sequence[list[dict[str, Any]]],
    references: Sequence[str],
    answers: dict[str, Sequence[str]],
    generators: dict[str, Generator],
    answer_metric: str,
    config: RobustnessConfig = RobustnessConfig(),
    *,
    task: str = "auto",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    paraphrase_client: Callable[[], Any] | None = None,
    concurrency: int = 16,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """The robustness suite on the evaluated test examples.

    Args:
        prompts, references: every evaluated test example's prompt and reference, in test order.
        answers: role (``candidate``, ``base``) -> the evaluation's clean answers, in test order.
        generators: role -> the generator that gave those answers (answers the perturbed prompts).
        answer_metric: the per-example metric scored (the gate's ``answer_metric``).
        task: the evaluation's task; ``auto`` is resolved on all ``references`` (as the
            evaluation resolved it), not on the subset.
        paraphrase_client: called once for an OpenAI-compatible client when a paraphrase model is set.

    Returns:
        JSON-able: ``status`` (``measured`` or ``skipped``), ``reason`` (why skipped), ``settings``,
        ``rows`` (one per perturbation: ``perturbation``, ``n``, ``changed``, per model
        ``<role>_clean``, ``<role>_perturbed``, ``<role>_degradation`` with ``_ci_low``/``_ci_high``,
        ``gap`` (candidate degradation − base degradation) with ``gap_ci_low``/``gap_ci_high``, and
        ``example`` (the first changed user turn before and after)), and ``worst`` (the row with the
        largest gap: ``perturbation``, ``gap``).
    """
    settings: dict[str, Any] = {
        "metric": answer_metric,
        "perturbations": list(config.sets),
        "typo_rate": config.typo_rate,
        "max_examples": config.max_examples,
        "seed": config.seed,
        "paraphrase_model": config.paraphrase_model,
        "tolerance": config.tolerance,
        "gate": config.gate,
        "confidence": confidence,
    }

    def skipped(reason: str) -> dict[str, Any]:
        return {"status": "skipped", "reason": reason, "settings": settings, "rows": [], "worst": None}

    if not config.sets:
        return skipped("no perturbation is configured")
    subset = robustness_subset(prompts, config.max_examples, config.seed)
    settings["n_examples"] = len(subset)
    if not subset:
        return skipped("no evaluated test prompt has a user turn with text to perturb")
    resolved_task = detect_task(list(references)) if task == "auto" else task
    refs = [references[i] for i in subset]
    clean_prompts = [prompts[i] for i in subset]
    user_texts = [str(p[_last_user_index(p) or 0]["content"]) for p in clean_prompts]

    def scores(predictions: Sequence[str]) -> np.ndarray:
        frame: pd.DataFrame = score_examples(list(predictions), refs, task=resolved_task)
        if answer_metric not in frame:
            raise ValueError(
                f"the answer metric {answer_metric!r} is not scored for task {resolved_task!r} "
                f"(scored: {', '.join(frame.columns)})"
            )
        return frame[answer_metric].to_numpy(dtype=np.float64)

    clean_answers = {role: [str(answers[role][i]) for i in subset] for role in ROBUSTNESS_ROLES}
    clean_scores = {role: scores(clean_answers[role]) for role in ROBUSTNESS_ROLES}

    rows: list[dict[str, Any]] = []
    for kind in config.sets:
        if kind == PARAPHRASE:
            if paraphrase_client is None:
                raise ValueError("a paraphrase_model is configured but no OpenAI-compatible client was given")
            noisy = _paraphrases(user_texts, paraphrase_client(), config, concurrency)
        else:
            noisy = [perturb(t, kind, seed=config.seed, rate=config.typo_rate) for t in user_texts]
        changed = [k for k, (a, b) in enumerate(zip(user_texts, noisy, strict=True)) if a != b]
        row: dict[str, Any] = {"perturbation": kind, "n": len(subset), "changed": len(changed)}
        degradations: dict[str, np.ndarray] = {}
        for role in ROBUSTNESS_ROLES:
            predictions = list(clean_answers[role])
            if changed:
                regenerated = generators[role].generate([_with_user_turn(clean_prompts[k], noisy[k]) for k in changed])
                if len(regenerated) != len(changed):
                    raise RuntimeError(
                        f"{generators[role].name} returned {len(regenerated)} answers for {len(changed)} prompts"
                    )
                for k, answer in zip(changed, regenerated, strict=True):
                    predictions[k] = answer
            perturbed = scores(predictions)
            degradations[role] = clean_scores[role] - perturbed
            degradation = _bootstrap(clean_scores[role], perturbed, n_resamples, confidence, config.seed)
            row[f"{role}_clean"] = float(clean_scores[role].mean())
            row[f"{role}_perturbed"] = float(perturbed.mean())
            row[f"{role}_degradation"] = degradation["delta"]
            row[f"{role}_degradation_ci_low"] = degradation["ci_low"]
            row[f"{role}_degradation_ci_high"] = degradation["ci_high"]
        gap = _bootstrap(degradations["candidate"], degradations["base"], n_resamples, confidence, config.seed)
        row.update(gap=gap["delta"], gap_ci_low=gap["ci_low"], gap_ci_high=gap["ci_high"])
        first = changed[0] if changed else None
        row["example"] = {"original": user_texts[first], "perturbed": noisy[first]} if first is not None else None
        rows.append(row)
        log(
            f"robustness {kind} ({len(changed)} of {len(subset)} prompts changed): {answer_metric} candidate "
            f"{row['candidate_clean']:.4f} -> {row['candidate_perturbed']:.4f}, base {row['base_clean']:.4f} -> "
            f"{row['base_perturbed']:.4f}, degradation gap {row['gap']:+.4f}"
        )
    worst = max(rows, key=lambda r: r["gap"])
    return {
        "status": "measured",
        "reason": "",
        "settings": settings,
        "rows": rows,
        "worst": {"perturbation": worst["perturbation"], "gap": worst["gap"]},
    }


def add_robustness(
    extra: dict[str, Any],
    examples: pd.DataFrame,
    generators: dict[str, Generator],
    prompts: Sequence[list[dict[str, Any]]],
    answer_metric: str,
    config: RobustnessConfig,
    *,
    task: str = "auto",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    openai_client: Callable[[], Any] | None = None,
    concurrency: int = 16,
    log: Callable[[str], None] = lambda message: None,
) -> None:
    """``extra["robustness"]``: :func:`measure_robustness` of candidate and base, reusing the
    evaluation's answers (``examples``: one row per model and test example, in test order, with
    ``model``, ``prediction`` and ``reference``). When ``config.enabled`` is off, a ``skipped``
    record saying so (the gate's rule reads it)."""
    if not config.enabled:
        extra["robustness"] = {
            "status": "skipped",
            "reason": "robustness is disabled (robustness: false)",
            "settings": {"metric": answer_metric, "tolerance": config.tolerance, "gate": config.gate},
            "rows": [],
            "worst": None,
        }
        return
    candidate = examples[examples["model"] == "candidate"]
    answers = {role: examples.loc[examples["model"] == role, "prediction"].tolist() for role in ROBUSTNESS_ROLES}
    extra["robustness"] = measure_robustness(
        prompts,
        candidate["reference"].tolist(),
        answers,
        generators,
        answer_metric,
        config,
        task=task,
        n_resamples=n_resamples,
        confidence=confidence,
        paraphrase_client=openai_client,
        concurrency=concurrency,
        log=log,
    )
