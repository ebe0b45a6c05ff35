"""The promotion gate: the rules a candidate must pass to replace production, with their numbers.

A rule that fails says which rule and by how much, so the Dagster check's description is enough
to understand a rejection without opening the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Primary metrics that are not a score of each answer against its reference, measured after the
#: answers: ``preference_accuracy`` (does the model give the preferred reply of a held-out
#: preference pair the higher likelihood; candidates trained with dpo/kto/sft_then_dpo) and
#: ``judge_win_rate`` (the LLM judge's net win rate, wins − losses over all prompts, of the
#: candidate against each baseline; needs ``judge_model``).
PREFERENCE_PRIMARY_METRICS = frozenset({"preference_accuracy", "judge_win_rate"})
#: The answer metric the regression suite is scored on when the primary metric is a preference one.
DEFAULT_ANSWER_METRIC = "rougeL"
#: How the candidate must compare with production: ``superiority`` (beat it, as it must beat the
#: base) or ``non_inferiority`` (be no worse than it by more than ``non_inferiority_margin``: the
#: rule of a provider exit, where a local model replaces a hosted one that is going away).
PRODUCTION_RULES = ("superiority", "non_inferiority")


@dataclass(frozen=True)
class PromotionGate:
    """Promotion rules. Every default is the documented one."""

    primary_metric: str = "rougeL"
    """The metric that must improve with a confidence interval: a per-example answer metric
    (``rougeL``, ``token_f1``, ...), or one of :data:`PREFERENCE_PRIMARY_METRICS`."""
    margin: float = 0.0
    """The CI lower bound of (candidate - base) and of (candidate - production) on the primary
    metric must be strictly above this. Ties (lower bound at or below) do not promote."""
    guardrail_metrics: tuple[str, ...] = ("token_f1", "exact_match")
    """Metrics that must not regress versus the base (and production) by more than the tolerance."""
    guardrail_tolerance: float = 0.02
    """Allowed drop of a guardrail's mean (absolute) before it counts as a regression."""
    regression_suite_min_ratio: float = 0.95
    """On the shipped regression suite the candidate must keep at least this share of the base's
    primary-metric score (it must not forget general behaviour); of ROUGE-L when the primary
    metric is a preference one (the suite has references, not preference pairs)."""
    require_beats_prompting: bool = False
    """Block promotion unless the candidate beats the prompted baseline (the base model with a
    system prompt and few-shot examples from the training split): the CI lower bound of
    (candidate - prompted) on the answer metric must be strictly above ``margin``. False = the
    ``beats_prompting`` rule is reported (informational) and passes."""
    production_rule: str = "superiority"
    """How the candidate must compare with production (one of :data:`PRODUCTION_RULES`):
    ``superiority`` = the CI lower bound of (candidate - production) above ``margin``
    (``beats_production``); ``non_inferiority`` = that lower bound above ``-non_inferiority_margin``
    (``non_inferior_to_production``: no worse than production beyond the margin, e.g. a local model
    replacing a hosted one). The base must be beaten either way."""
    non_inferiority_margin: float = 0.02
    """With ``production_rule`` ``non_inferiority``: how much worse than production (absolute, on
    the primary metric) the CI lower bound of the difference may go."""

    def __post_init__(self) -> None:
        if self.production_rule not in PRODUCTION_RULES:
            raise ValueError(
                f"production_rule must be one of {', '.join(PRODUCTION_RULES)}, not {self.production_rule!r}"
            )
        if self.non_inferiority_margin < 0:
            raise ValueError(f"non_inferiority_margin must be >= 0, not {self.non_inferiority_margin}")

    @property
    def answer_metric(self) -> str:
        """The per-example answer metric of the regression suite (the primary one when it is one)."""
        return DEFAULT_ANSWER_METRIC if self.primary_metric in PREFERENCE_PRIMARY_METRICS else self.primary_metric


@dataclass
class RuleResult:
    rule: str
    passed: bool
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)
    informational: bool = False
    """Reported with its numbers but never blocking (it always passes)."""


@dataclass
class GateDecision:
    passed: bool
    rules: list[RuleResult]

    @property
    def failed_rules(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    def description(self) -> str:
        if self.passed:
            return "promote: " + "; ".join(
                f"{r.rule} (informational) — {r.detail}" if r.informational else r.detail for r in self.rules
            )
        return "do not promote: " + "; ".join(
            [f"{r.rule} failed — {r.detail}" for r in self.failed_rules]
            + [f"{r.rule} (informational) — {r.detail}" for r in self.rules if r.informational]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rules": [
                {
                    "rule": r.rule,
                    "passed": r.passed,
                    "detail": r.detail,
                    "numbers": r.numbers,
                    **({"informational": True} if r.informational else {}),
                }
                for r in self.rules
            ],
        }


def _improvement_rule(name: str, comparison: dict[str, Any], gate: PromotionGate) -> RuleResult:
    ci_low = float(comparison["ci_low"])
    delta = float(comparison["delta"])
    passed = ci_low > gate.margin
    detail = (
        f"{gate.primary_metric} candidate − {name} = {delta:+.4f}, 95% CI [{ci_low:+.4f}, "
        f"{float(comparison['ci_high']):+.4f}]"
        f" {'>' if passed else '≤'} margin {gate.margin:g} at the lower bound"
    )
    return RuleResult(
        f"beats_{name}", passed, detail, {"delta": delta, "ci_low": ci_low, "ci_high": float(comparison["ci_high"])}
    )


def _non_inferiority_rule(comparison: dict[str, Any], gate: PromotionGate) -> RuleResult:
    """The candidate is no worse than production beyond the margin: CI lower bound of
    (candidate - production) strictly above ``-non_inferiority_margin``."""
    ci_low, ci_high = float(comparison["ci_low"]), float(comparison["ci_high"])
    delta = float(comparison["delta"])
    bound = -gate.non_inferiority_margin
    passed = ci_low > bound
    detail = (
        f"{gate.primary_metric} candidate − production = {delta:+.4f}, 95% CI [{ci_low:+.4f}, {ci_high:+.4f}]"
        f" {'>' if passed else '≤'} −{gate.non_inferiority_margin:g} (non-inferiority margin) at the lower bound"
    )
    return RuleResult(
        "non_inferior_to_production",
        passed,
        detail,
        {"delta": delta, "ci_low": ci_low, "ci_high": ci_high, "non_inferiority_margin": gate.non_inferiority_margin},
    )


def _production_rule(comparison: Mapping[str, Any] | None, gate: PromotionGate, missing_reason: str) -> RuleResult:
    """The candidate against production, by ``gate.production_rule``."""
    if gate.production_rule != "non_inferiority":
        return _primary_rule("production", comparison, gate, missing_reason)
    if comparison is None or comparison.get("ci_low") is None:
        return RuleResult(
            "non_inferior_to_production",
            False,
            f"{gate.primary_metric} candidate − production was not measured: {missing_reason or 'no comparison'}",
        )
    return _non_inferiority_rule(dict(comparison), gate)


def _primary_rule(
    name: str, comparison: Mapping[str, Any] | None, gate: PromotionGate, missing_reason: str
) -> RuleResult:
    if comparison is None or comparison.get("ci_low") is None:
        return RuleResult(
            f"beats_{name}",
            False,
            f"{gate.primary_metric} candidate − {name} was not measured: {missing_reason or 'no comparison'}",
        )
    return _improvement_rule(name, dict(comparison), gate)


def _prompting_rule(
    gate: PromotionGate, versus_prompted: Mapping[str, Mapping[str, Any]] | None, missing_reason: str
) -> RuleResult:
    """``beats_prompting``: candidate − prompted on the answer metric, blocking only when
    ``require_beats_prompting`` (an unmeasured comparison then fails too)."""
    metric, required = gate.answer_metric, gate.require_beats_prompting
    comparison = (versus_prompted or {}).get(metric)
    if comparison is None or comparison.get("ci_low") is None:
        detail = f"{metric} candidate − prompted was not measured: {missing_reason or 'no comparison'}"
        return RuleResult("beats_prompting", not required, detail, {"required": required}, not required)
    delta, ci_low, ci_high = (float(comparison[k]) for k in ("delta", "ci_low", "ci_high"))
    beat = ci_low > gate.margin
    detail = (
        f"{metric} candidate − prompted = {delta:+.4f}, 95% CI [{ci_low:+.4f}, {ci_high:+.4f}]"
        f" {'>' if beat else '≤'} margin {gate.margin:g} at the lower bound: fine-tuning "
        f"{'beat' if beat else 'did not beat'} prompting"
        + ("" if required else " (reported, not required: require_beats_prompting is off)")
    )
    numbers = {"delta": delta, "ci_low": ci_low, "ci_high": ci_high, "beat": beat, "required": required}
    return RuleResult("beats_prompting", beat or not required, detail, numbers, not required)


def evaluate_gate(
    gate: PromotionGate,
    *,
    versus_base: dict[str, dict[str, Any]],
    versus_production: dict[str, dict[str, Any]] | None,
    regression_scores: dict[str, float] | None,
    train_test_overlap: int,
    no_production_reason: str = "no production model yet",
    primary: Mapping[str, Mapping[str, Any]] | None = None,
    primary_missing_reason: str = "",
    versus_prompted: Mapping[str, Mapping[str, Any]] | None = None,
    no_prompted_reason: str = "the prompted baseline is off",
) -> GateDecision:
    """Apply the rules.

    ``versus_base`` / ``versus_production``: per metric, the paired comparison (``delta``,
    ``ci_low``, ``ci_high``) of the candidate against that model; ``versus_production`` is None
    when nothing is in production yet (or the candidate is production already:
    ``no_production_reason`` says which). ``regression_scores``: answer-metric means of
    ``candidate`` and ``base`` on the regression suite. ``train_test_overlap``: test examples
    that also occur in the training split. ``primary``: for a primary metric of
    :data:`PREFERENCE_PRIMARY_METRICS`, its comparison per baseline (``base``, ``production``);
    a baseline without one fails its rule with ``primary_missing_reason`` (a gate that asks for a
    preference metric never promotes on an unmeasured one). ``versus_prompted``: per metric, the
    comparison of the candidate against the prompted baseline (None when it was not run:
    ``no_prompted_reason`` says why); its ``beats_prompting`` rule is on the answer metric.
    """
    if gate.primary_metric in PREFERENCE_PRIMARY_METRICS:
        measured = primary or {}
        rules = [_primary_rule("base", measured.get("base"), gate, primary_missing_reason)]
        if versus_production is not None:
            rules.append(_production_rule(measured.get("production"), gate, primary_missing_reason))
    else:
        rules = [_improvement_rule("base", versus_base[gate.primary_metric], gate)]
        if versus_production is not None:
            rules.append(_production_rule(versus_production[gate.primary_metric], gate, ""))
    if versus_production is None:
        name = "non_inferior_to_production" if gate.production_rule == "non_inferiority" else "beats_production"
        rules.append(RuleResult(name, True, no_production_reason))
    rules.append(_prompting_rule(gate, versus_prompted, no_prompted_reason))

    regressions = []
    for baseline_name, comparisons in (("base", versus_base), ("production", versus_production)):
        if comparisons is None:
            continue
        for metric in gate.guardrail_metrics:
            if metric in comparisons and float(comparisons[metric]["delta"]) < -gate.guardrail_tolerance:
                regressions.append(f"{metric} vs {baseline_name} {float(comparisons[metric]['delta']):+.4f}")
    rules.append(
        RuleResult(
            "guardrails",
            not regressions,
            ("regressed beyond −" + f"{gate.guardrail_tolerance:g}: " + ", ".join(regressions))
            if regressions
            else f"no guardrail ({', '.join(gate.guardrail_metrics)}) dropped more than {gate.guardrail_tolerance:g}",
            {"regressions": regressions},
        )
    )

    if regression_scores is None:
        rules.append(RuleResult("regression_suite", True, "no regression suite configured"))
    else:
        base_score = float(regression_scores["base"])
        candidate_score = float(regression_scores["candidate"])
        ratio = candidate_score / base_score if base_score > 0 else (1.0 if candidate_score >= 0 else 0.0)
        passed = ratio >= gate.regression_suite_min_ratio
        rules.append(
            RuleResult(
                "regression_suite",
                passed,
                f"candidate keeps {ratio:.1%} of the base's {gate.answer_metric} on the regression suite "
                f"({candidate_score:.4f} vs {base_score:.4f}; minimum {gate.regression_suite_min_ratio:.0%})",
                {"ratio": ratio, "candidate": candidate_score, "base": base_score},
            )
        )

    rules.append(
        RuleResult(
            "no_train_test_overlap",
            train_test_overlap == 0,
            f"{train_test_overlap} test example(s) also in the training split",
            {"overlap": train_test_overlap},
        )
    )
    return GateDecision(all(r.passed for r in rules), rules)


def with_rule(decision: GateDecision, rule: RuleResult) -> GateDecision:
    """``decision`` with ``rule`` added (replacing a rule of the same name), passed again only if
    every rule passes: how a rule measured after the answers joins the gate's decision."""
    rules = [r for r in decision.rules if r.rule != rule.rule] + [rule]
    return GateDecision(all(r.passed for r in rules), rules)


def robustness_rule(robustness: Mapping[str, Any] | None) -> RuleResult:
    """The ``robustness`` rule (lib/evaluation/robustness.py): fails when, under any perturbation,
    the candidate's answer-metric degradation exceeds the base's by more than the tolerance (the
    point estimate of the gap) *and* the gap's CI lies above 0, so noise on a small subset (a CI
    that includes 0) does not block a candidate; skipped (passes, saying why) when the suite did
    not run, and report-only when its ``gate`` switch is off."""
    if not robustness or robustness.get("status") != "measured":
        reason = str((robustness or {}).get("reason") or "the robustness suite did not run")
        return RuleResult("robustness", True, f"skipped: {reason}", {"skipped": reason})
    settings = robustness["settings"]
    tolerance, metric = float(settings["tolerance"]), str(settings["metric"])
    rows = list(robustness["rows"])
    worst = max(rows, key=lambda r: float(r["gap"]))
    numbers: dict[str, Any] = {
        "tolerance": tolerance,
        "worst_perturbation": worst["perturbation"],
        "worst_gap": float(worst["gap"]),
        "gaps": {r["perturbation"]: float(r["gap"]) for r in rows},
    }

    def described(row: Mapping[str, Any]) -> str:
        return (
            f"{row['perturbation']}: {metric} degradation candidate {float(row['candidate_degradation']):+.4f} vs "
            f"base {float(row['base_degradation']):+.4f}, difference {float(row['gap']):+.4f} "
            f"(95% CI [{float(row['gap_ci_low']):+.4f}, {float(row['gap_ci_high']):+.4f}])"
        )

    failing = [r for r in rows if float(r["gap"]) > tolerance and float(r["gap_ci_low"]) > 0]
    if failing and settings.get("gate", True):
        detail = (
            f"the candidate degrades more than the base, by over the tolerance {tolerance:g} and with the CI "
            "above 0, under " + "; ".join(described(r) for r in failing)
        )
        return RuleResult("robustness", False, detail, numbers)
    detail = (
        f"under no perturbation ({', '.join(r['perturbation'] for r in rows)}) does the candidate's {metric} "
        f"degrade more than the base's by over {tolerance:g} with a CI above 0; worst {described(worst)}"
    )
    if failing:
        detail = f"report only (robustness_gate off): {len(failing)} perturbation(s) over {tolerance:g}; worst " + (
            described(worst)
        )
    return RuleResult("robustness", True, detail, numbers)
