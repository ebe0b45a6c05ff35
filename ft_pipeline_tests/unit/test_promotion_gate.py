"""Gate scenarios with scripted model outputs: better promotes; equal, worse, or worse than
production does not; an equal candidate is promoted in at most 1 of 20 seeded trials."""

import random

import pandas as pd

from ft_pipeline.lib.evaluation.gate import PromotionGate, evaluate_gate
from ft_pipeline.lib.evaluation.generation import ScriptedGenerator
from ft_pipeline.lib.evaluation.runner import EvaluationConfig, run_evaluation

WORDS = "the hub light router reset app account refund order parcel camera doorbell setup wifi password support".split()


def _test_split(n=60, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question = f"question {i}: " + " ".join(rng.choice(WORDS) for _ in range(8))
        answer = " ".join(rng.choice(WORDS) for _ in range(20)) + f" ticket {i}"
        rows.append(
            {
                "conversation_id": f"t{i}",
                "tags": ["billing" if i % 2 else "setup"],
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            }
        )
    return pd.DataFrame(rows)


TEST = _test_split()
ANSWERS = {m[0]["content"]: m[-1]["content"] for m in TEST["messages"]}
SUITE = [
    {
        "messages": [
            {"role": "user", "content": f"general {i}"},
            {"role": "assistant", "content": f"general answer number {i}"},
        ]
    }
    for i in range(5)
]
SUITE_ANSWERS = {ex["messages"][0]["content"]: ex["messages"][1]["content"] for ex in SUITE}


def _reference(prompt):
    text = prompt[-1]["content"]
    return ANSWERS.get(text) or SUITE_ANSWERS.get(text, "")


def keep_fraction(fraction, name, seed=0):
    """Answers with a share of the reference's words, chosen at random per example."""

    def answer(prompt):
        words = _reference(prompt).split()
        rng = random.Random(f"{seed}:{name}:{prompt[-1]['content']}")
        return " ".join(w for w in words if rng.random() < fraction)

    return ScriptedGenerator(answer, name=name)


CONFIG = EvaluationConfig(n_resamples=1000)


def _decide(generators, gate=PromotionGate(), config=CONFIG, overlap=0):
    return run_evaluation(
        TEST, generators, gate=gate, config=config, regression_suite=SUITE, train_test_overlap=overlap
    )


def test_clearly_better_candidate_is_promoted():
    result = _decide({"candidate": keep_fraction(0.95, "cand"), "base": keep_fraction(0.5, "base")})
    assert result.decision.passed, result.decision.description()
    assert result.comparisons["base"]["rougeL"]["ci_low"] > 0
    assert set(result.examples["model"]) == {"candidate", "base"} and len(result.examples) == 2 * len(TEST)


def test_equal_candidate_is_not_promoted():
    same = keep_fraction(0.7, "same")
    result = _decide({"candidate": same, "base": same})
    assert not result.decision.passed
    failed = {r.rule for r in result.decision.failed_rules}
    assert failed == {"beats_base"}
    assert "≤ margin 0" in result.decision.description()


def test_worse_candidate_is_not_promoted_and_guardrails_fail():
    result = _decide({"candidate": keep_fraction(0.3, "cand"), "base": keep_fraction(0.8, "base")})
    failed = {r.rule for r in result.decision.failed_rules}
    assert {"beats_base", "guardrails"} <= failed


def test_better_than_base_but_worse_than_production_is_not_promoted():
    result = _decide(
        {
            "candidate": keep_fraction(0.7, "cand"),
            "base": keep_fraction(0.3, "base"),
            "production": keep_fraction(0.95, "prod"),
        }
    )
    failed = {r.rule for r in result.decision.failed_rules}
    assert "beats_production" in failed and "beats_base" not in failed
    assert "production" in result.comparisons


def test_regression_suite_and_overlap_rules():
    forgetful = ScriptedGenerator(
        lambda p: "" if p[-1]["content"].startswith("general") else _reference(p), name="forgetful"
    )
    result = _decide({"candidate": forgetful, "base": keep_fraction(0.5, "base")}, overlap=2)
    failed = {r.rule: r for r in result.decision.failed_rules}
    assert "regression_suite" in failed and "0.0%" in failed["regression_suite"].detail
    assert "no_train_test_overlap" in failed and "2 test example" in failed["no_train_test_overlap"].detail


def test_an_equal_candidate_is_promoted_in_at_most_1_of_20_seeded_trials():
    promoted = 0
    for seed in range(20):
        result = _decide(
            {"candidate": keep_fraction(0.7, "a", seed), "base": keep_fraction(0.7, "b", seed)},
            config=EvaluationConfig(n_resamples=1000, seed=seed, use_regression_suite=False),
        )
        promoted += result.decision.passed
    assert promoted <= 1


def test_margin_makes_a_small_win_insufficient():
    gate = PromotionGate(margin=0.5)
    result = _decide({"candidate": keep_fraction(0.95, "cand"), "base": keep_fraction(0.5, "base")}, gate=gate)
    assert not result.decision.passed


def test_gate_rules_on_numbers_directly():
    comparisons = {
        "rougeL": {"delta": 0.1, "ci_low": 0.05, "ci_high": 0.15},
        "token_f1": {"delta": -0.05, "ci_low": -0.1, "ci_high": 0.0},
    }
    decision = evaluate_gate(
        PromotionGate(),
        versus_base=comparisons,
        versus_production=None,
        regression_scores={"candidate": 0.5, "base": 0.5},
        train_test_overlap=0,
    )
    assert not decision.passed
    assert [r.rule for r in decision.failed_rules] == ["guardrails"]
    assert "token_f1 vs base -0.0500" in decision.description()


def test_a_preference_primary_metric_gates_on_its_own_comparisons():
    gate = PromotionGate(primary_metric="preference_accuracy")
    assert gate.answer_metric == "rougeL" and PromotionGate(primary_metric="token_f1").answer_metric == "token_f1"
    answers = {"rougeL": {"delta": -0.01, "ci_low": -0.02, "ci_high": 0.0}}  # no better answers: not the rule
    common = {"versus_base": answers, "regression_scores": {"candidate": 0.5, "base": 0.5}, "train_test_overlap": 0}
    better = {"base": {"delta": 0.2, "ci_low": 0.05, "ci_high": 0.35}}
    decision = evaluate_gate(gate, versus_production=None, primary=better, **common)
    assert decision.passed, decision.description()
    assert "preference_accuracy candidate − base = +0.2000" in decision.description()
    # A tie at the lower bound does not promote.
    tied = {"base": {"delta": 0.1, "ci_low": 0.0, "ci_high": 0.2}}
    assert not evaluate_gate(gate, versus_production=None, primary=tied, **common).passed
    # Not measured (an SFT candidate, no judge): the rule fails and says why; never a silent pass.
    missing = evaluate_gate(
        gate, versus_production=None, primary={}, primary_missing_reason="the candidate was trained with sft", **common
    )
    assert [r.rule for r in missing.failed_rules] == ["beats_base"]
    assert "was not measured: the candidate was trained with sft" in missing.description()
    # With a production model, it must be beaten on the preference metric too.
    versus_production = {"rougeL": {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0}}
    no_production_number = evaluate_gate(gate, versus_production=versus_production, primary=better, **common)
    assert [r.rule for r in no_production_number.failed_rules] == ["beats_production"]
    both = {**better, "production": {"delta": 0.1, "ci_low": 0.01, "ci_high": 0.2}}
    assert evaluate_gate(gate, versus_production=versus_production, primary=both, **common).passed


def test_primary_view_reads_each_kind_of_primary_metric():
    from types import SimpleNamespace

    from ft_pipeline.lib.evaluation.candidate import primary_view

    result = SimpleNamespace(
        summary={"candidate": {"rougeL": 0.6}, "base": {"rougeL": 0.4}},
        comparisons={"base": {"rougeL": {"delta": 0.2, "ci_low": 0.1, "ci_high": 0.3}}},
        extra={
            "preference_accuracy": {
                "status": "measured",
                "candidate": 0.8,
                "base": 0.5,
                "delta": 0.3,
                "ci_low": 0.1,
                "ci_high": 0.5,
            },
            "judge": {"base": {"win_rate": 0.6, "net_win": {"delta": 0.4, "ci_low": 0.2, "ci_high": 0.6}}},
        },
    )
    answer = primary_view(result, PromotionGate())  # type: ignore[arg-type]
    assert answer["means"] == {"candidate": 0.6, "base": 0.4} and answer["comparisons"]["base"]["ci_low"] == 0.1
    preference = primary_view(result, PromotionGate(primary_metric="preference_accuracy"))  # type: ignore[arg-type]
    assert preference["means"] == {"candidate": 0.8, "base": 0.5}
    assert preference["comparisons"] == {"base": {"delta": 0.3, "ci_low": 0.1, "ci_high": 0.5}}
    judge = primary_view(result, PromotionGate(primary_metric="judge_win_rate"))  # type: ignore[arg-type]
    assert judge["comparisons"]["base"]["delta"] == 0.4 and judge["means"] == {"candidate_vs_base": 0.6}
    result.extra = {}
    assert (
        "dpo, kto or sft_then_dpo"
        in primary_view(result, PromotionGate(primary_metric="preference_accuracy"))[  # type: ignore[arg-type]
            "missing_reason"
        ]
    )
    assert primary_view(result, PromotionGate(primary_metric="judge_win_rate"))["missing_reason"] == (  # type: ignore[arg-type]
        "no judge_model is configured"
    )
