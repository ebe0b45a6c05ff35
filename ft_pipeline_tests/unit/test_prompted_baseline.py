"""The prompted baseline: few-shot selection (seeded, train only, never a test prompt or reply,
within the budget), the wrapper's messages, the candidate − prompted comparison, the
beats_prompting rule both ways, report.md's section and the asset's metadata."""

import json
import random

import pandas as pd
import pytest

from ft_pipeline.lib.evaluation.gate import PromotionGate, evaluate_gate
from ft_pipeline.lib.evaluation.generation import ScriptedGenerator
from ft_pipeline.lib.evaluation.prompted_baseline import (
    DEFAULT_SYSTEM_PROMPT,
    FewShotExample,
    PromptedBaseline,
    PromptedBaselineConfig,
    PromptedGenerator,
    choose_system_prompt,
    first_exchange,
    prompted_baseline_from_splits,
    select_few_shot,
)
from ft_pipeline.lib.evaluation.report import write_report
from ft_pipeline.lib.evaluation.runner import EvaluationConfig, run_evaluation
from ft_pipeline_tests.unit.test_promotion_gate import SUITE, TEST, keep_fraction

SYSTEM = {"role": "system", "content": "You are Nimbus Care."}


def _conversation(user: str, reply: str, system: bool = True) -> list[dict]:
    return [*([SYSTEM] if system else []), {"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def _train(n: int = 40) -> list[dict]:
    return [
        {
            "conversation_id": f"train-{i}",
            "exact_hash": 1000 + i,
            "messages": _conversation(f"How do I fix problem {i}?", f"Restart device {i} and try again."),
        }
        for i in range(n)
    ]


TEST_CONVERSATIONS = [_conversation("How do I reset my hub?", "Hold the button for ten seconds.")]


def _ids(examples: list[FewShotExample]) -> list[str]:
    return [e.conversation_id for e in examples]


def test_selection_is_seeded_and_independent_of_row_order():
    train = _train()
    config = PromptedBaselineConfig(k=3, seed=1)
    first, counts = select_few_shot(train, TEST_CONVERSATIONS, [], config)
    shuffled = random.Random(5).sample(train, len(train))
    assert _ids(select_few_shot(shuffled, TEST_CONVERSATIONS, [], config)[0]) == _ids(first)
    assert len(first) == 3 and len(set(_ids(first))) == 3 and counts == {"excluded_test_overlap": 0, "too_long": 0}
    other_seeds = {tuple(_ids(select_few_shot(train, [], [], PromptedBaselineConfig(seed=s))[0])) for s in range(4)}
    assert len(other_seeds) > 1  # the seed changes the draw
    assert select_few_shot(train, [], [], PromptedBaselineConfig(k=0)) == ([], counts)
    # Fewer eligible examples than k: all of them, no error.
    assert len(select_few_shot(train[:2], [], [], PromptedBaselineConfig(k=5))[0]) == 2


def test_selection_never_takes_a_test_conversation_prompt_or_reply():
    train = _train(6)
    test = [
        # The same user turn as train-0, spelled with other case and spaces.
        _conversation("how do I   FIX problem 0?", "Something else."),
        # Another question whose reference is train-1's reply: drawing train-1 would hand it over.
        _conversation("Different question", "Restart device 1 and try again."),
    ]
    # train-2's whole conversation is in the test split (an overlap the gate also reports).
    examples, counts = select_few_shot(train, test, [1002], PromptedBaselineConfig(k=6))
    assert sorted(_ids(examples)) == ["train-3", "train-4", "train-5"]
    assert counts["excluded_test_overlap"] == 3


def test_selection_respects_the_budget_and_takes_distinct_prompts():
    long_reply = "word " * 200
    train = [
        {"conversation_id": "long", "exact_hash": 1, "messages": _conversation("Short?", long_reply)},
        {"conversation_id": "a", "exact_hash": 2, "messages": _conversation("Same question", "One.")},
        {"conversation_id": "b", "exact_hash": 3, "messages": _conversation("same  QUESTION", "Two.")},
        {"conversation_id": "c", "exact_hash": 4, "messages": [SYSTEM, {"role": "user", "content": "no reply"}]},
    ]
    examples, counts = select_few_shot(train, [], [], PromptedBaselineConfig(k=3, max_example_chars=100))
    assert len(examples) == 1 and examples[0].conversation_id in {"a", "b"}
    assert counts["too_long"] == 1
    # First exchange of a multi-turn conversation, system turns skipped.
    multi = [SYSTEM, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    assert first_exchange([*multi, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]) == (
        "q1",
        "a1",
    )
    with pytest.raises(ValueError, match=r"k \(prompted_k\) must be >= 0"):
        PromptedBaselineConfig(k=-1)


def test_system_prompt_is_configured_shared_or_the_default():
    shared = [_conversation("q", "a")] * 3 + [_conversation("q", "a", system=False)]
    assert choose_system_prompt(shared) == ("You are Nimbus Care.", "training")
    rare = [_conversation("q", "a")] + [_conversation("q", "a", system=False)] * 3
    assert choose_system_prompt(rare) == (DEFAULT_SYSTEM_PROMPT, "default")
    assert choose_system_prompt(shared, PromptedBaselineConfig(system_prompt="Be brief.")) == ("Be brief.", "config")


def test_from_split_files(tmp_path):
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    pd.DataFrame(_train(10)).to_parquet(train)
    pd.DataFrame(
        [{"conversation_id": "t0", "exact_hash": 1003, "messages": _conversation("other", "reply")}]
    ).to_parquet(test)
    baseline = prompted_baseline_from_splits(train, test, PromptedBaselineConfig(k=3, seed=2))
    assert baseline.system_prompt_source == "training" and baseline.system_prompt == "You are Nimbus Care."
    assert len(baseline.examples) == 3 and "train-3" not in baseline.example_ids
    assert baseline.excluded_test_overlap == 1
    assert baseline.to_dict()["example_ids"] == baseline.example_ids
    again = prompted_baseline_from_splits(train, test, PromptedBaselineConfig(k=3, seed=2))
    assert again == baseline
    # k = 0: the system prompt is still the shared one.
    assert prompted_baseline_from_splits(train, test, PromptedBaselineConfig(k=0)).system_prompt_source == "training"


BASELINE = PromptedBaseline(
    system_prompt="Answer like the examples.",
    system_prompt_source="default",
    examples=(FewShotExample("e1", 1, "Q1", "A1"), FewShotExample("e2", 2, "Q2", "A2")),
    k_requested=2,
)


def test_the_wrapper_prepends_system_prompt_and_pairs_and_delegates():
    seen: list[list[dict]] = []
    base = ScriptedGenerator(lambda p: seen.append(p) or "answer", name="local:base")
    prompted = PromptedGenerator(base, BASELINE)
    prompt = [{"role": "system", "content": "You are Nimbus Care."}, {"role": "user", "content": "Help?"}]
    assert prompted.generate([prompt]) == ["answer"]
    assert seen[0] == [
        {"role": "system", "content": "Answer like the examples.\n\nYou are Nimbus Care."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "Help?"},
    ]
    # The prompt's own system turn is not repeated when it is the baseline's; the prompt is untouched.
    same = [{"role": "system", "content": "Answer like the examples."}, {"role": "user", "content": "Hi"}]
    assert prompted.messages(same)[0] == {"role": "system", "content": "Answer like the examples."}
    assert same[0]["content"] == "Answer like the examples." and len(same) == 2
    assert prompted.name.startswith("prompted[2-shot #") and prompted.name.endswith(":local:base")


CONFIG = EvaluationConfig(n_resamples=500)


def _evaluate(prompted_fraction: float, gate: PromotionGate = PromotionGate()):
    generators = {
        "candidate": keep_fraction(0.95, "cand"),
        "base": keep_fraction(0.3, "base"),
        "prompted": keep_fraction(prompted_fraction, "prompted"),
    }
    return run_evaluation(TEST, generators, gate=gate, config=CONFIG, regression_suite=SUITE)


def _rule(result):
    return next(r for r in result.decision.rules if r.rule == "beats_prompting")


def test_comparison_and_rule_when_fine_tuning_beats_prompting(tmp_path):
    result = _evaluate(0.5, PromotionGate(require_beats_prompting=True))
    assert result.comparisons["prompted"]["rougeL"]["ci_low"] > 0
    assert set(result.regression or {}) == {"candidate", "base"}  # the regression suite stays candidate vs base
    rule = _rule(result)
    assert rule.passed and not rule.informational and result.decision.passed
    assert "fine-tuning beat prompting" in rule.detail and rule.numbers["beat"] is True

    result.extra["prompted"] = {"example_ids": ["e1", "e2"], "k_requested": 3, "system_prompt_source": "training"}
    paths = write_report(result, tmp_path, {"eval_id": "e1", "primary_metric": "rougeL", "gate_config": {}})
    markdown = paths["markdown"].read_text()
    section = markdown.split("## Fine-tuning vs prompting", 1)[1].split("\n## ", 1)[0]
    delta = result.comparisons["prompted"]["rougeL"]["delta"]
    assert f"**Fine-tuning beat prompting**: rougeL candidate − prompted = {delta:+.4f}" in section
    assert "2 few-shot example(s) of the 3 asked for" in section and "`e1`, `e2`" in section
    assert "the system turn the training conversations share" in section
    assert "## Candidate − prompted (paired bootstrap, 95% CI)" in markdown
    assert "| metric | candidate | base | prompted |" in markdown
    report = json.loads(paths["json"].read_text())
    assert report["extra"]["prompted"]["example_ids"] == ["e1", "e2"]


def test_rule_when_prompting_does_as_well_reported_or_required(tmp_path):
    informational = _evaluate(0.95)
    rule = _rule(informational)
    assert rule.passed and rule.informational and informational.decision.passed
    assert "fine-tuning did not beat prompting" in rule.detail and "not required" in rule.detail
    assert "beats_prompting (informational) — rougeL candidate − prompted = " in informational.decision.description()

    required = _evaluate(0.95, PromotionGate(require_beats_prompting=True))
    assert not required.decision.passed
    assert [r.rule for r in required.decision.failed_rules] == ["beats_prompting"]
    assert "beats_prompting failed — rougeL candidate − prompted = " in required.decision.description()

    markdown = write_report(informational, tmp_path, {"eval_id": "e2", "primary_metric": "rougeL"})["markdown"]
    text = markdown.read_text()
    assert "**Fine-tuning did not beat prompting**" in text and "Reported, not required by the gate." in text
    assert "- ℹ️ `beats_prompting` — rougeL candidate − prompted" in text


def test_rule_when_prompting_was_not_run():
    common = {
        "versus_base": {"rougeL": {"delta": 0.1, "ci_low": 0.05, "ci_high": 0.15}},
        "versus_production": None,
        "regression_scores": None,
        "train_test_overlap": 0,
        "no_prompted_reason": "the prompted baseline is off (prompted_baseline: false)",
    }
    reported = evaluate_gate(PromotionGate(), **common)
    assert reported.passed and "was not measured: the prompted baseline is off" in reported.description()
    required = evaluate_gate(PromotionGate(require_beats_prompting=True), **common)
    assert [r.rule for r in required.failed_rules] == ["beats_prompting"]
    # A preference primary metric: the rule is on the answer metric (ROUGE-L).
    preference = PromotionGate(primary_metric="preference_accuracy", require_beats_prompting=True)
    decision = evaluate_gate(
        preference,
        **{**common, "versus_prompted": {"rougeL": {"delta": 0.2, "ci_low": 0.1, "ci_high": 0.3}}},
        primary={"base": {"delta": 0.2, "ci_low": 0.05, "ci_high": 0.35}},
    )
    assert decision.passed, decision.description()
    assert "rougeL candidate − prompted = +0.2000" in decision.description()


def test_asset_metadata_and_run_config():
    import dagster as dg

    from ft_pipeline.defs.evaluation import EvaluationRunConfig, _prompted_metadata

    result = _evaluate(0.5)
    result.extra["prompted"] = {"example_ids": ["e1", "e2"]}
    metadata = _prompted_metadata(result, "rougeL")
    comparison = result.comparisons["prompted"]["rougeL"]
    assert metadata["prompted_delta"] == round(comparison["delta"], 4)
    assert metadata["prompted_ci_low"] == round(comparison["ci_low"], 4)
    assert metadata["prompted_rougeL"] == round(result.summary["prompted"]["rougeL"], 4)
    assert metadata["fine_tuning_beat_prompting"] is True and metadata["prompted_few_shot_ids"] == "e1, e2"
    assert all(isinstance(metadata[k], float) for k in ("prompted_delta", "prompted_ci_low", "prompted_ci_high"))
    assert not any(isinstance(v, dg.MetadataValue) for v in metadata.values())
    result.comparisons.pop("prompted")
    assert _prompted_metadata(result, "rougeL") == {}

    lib = EvaluationRunConfig(
        prompted_k=5, seed=3, prompted_system_prompt="Be brief.", require_beats_prompting=True
    ).to_lib()
    assert lib.prompted == PromptedBaselineConfig(k=5, seed=3, system_prompt="Be brief.")
    assert lib.gate.require_beats_prompting is True
    assert EvaluationRunConfig().to_lib().prompted == PromptedBaselineConfig()
    assert EvaluationRunConfig(prompted_baseline=False).to_lib().prompted.enabled is False
    with pytest.raises(ValueError, match="prompted_max_example_chars"):
        EvaluationRunConfig(prompted_max_example_chars=0).to_lib()
