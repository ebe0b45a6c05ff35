"""The robustness suite (lib/evaluation/robustness.py): degradation of candidate and base under
perturbed prompts with paired CIs, the gate's ``robustness`` rule both ways, the report.md section,
the asset's metadata, the paraphrase set through the fake OpenAI server, and the run config.

The models are scripted: a "brittle" one answers correctly only the exact clean prompt, a "robust"
one answers from the order number in the prompt (numbers are never perturbed), so every expected
number is known exactly.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from ft_pipeline.lib.evaluation.gate import PromotionGate, evaluate_gate, robustness_rule, with_rule
from ft_pipeline.lib.evaluation.generation import ScriptedGenerator
from ft_pipeline.lib.evaluation.report import write_report
from ft_pipeline.lib.evaluation.robustness import (
    PARAPHRASE_INSTRUCTION,
    RobustnessConfig,
    add_robustness,
    measure_robustness,
    robustness_subset,
)
from ft_pipeline.lib.evaluation.runner import EvaluationConfig, run_evaluation
from ft_pipeline_tests.fakes.openai_server import FakeOpenAI

N = 8
USER = [f"Hello, where is my parcel {i}? It was due yesterday." for i in range(N)]
PROMPTS = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": u}] for u in USER]
REFERENCES = [f"parcel {i} ships tomorrow" for i in range(N)]
FAST = {"task": "generation", "n_resamples": 200}


def _number(prompt: list[dict]) -> int:
    return int(re.search(r"\d+", prompt[-1]["content"]).group())


class Recording:
    """A scripted model that records every prompt it is asked."""

    def __init__(self, brittle: bool, name: str):
        self.seen: list[str] = []
        self.brittle = brittle
        self.generator = ScriptedGenerator(self._answer, name=name)

    def _answer(self, prompt: list[dict]) -> str:
        text = prompt[-1]["content"]
        self.seen.append(text)
        if self.brittle and text not in USER:
            return "sorry, no idea"
        return REFERENCES[_number(prompt)]


def _measure(candidate_brittle: bool, config: RobustnessConfig, prompts=PROMPTS, **kwargs):
    candidate, base = Recording(candidate_brittle, "cand"), Recording(not candidate_brittle, "base")
    clean = {role: list(REFERENCES) for role in ("candidate", "base")}  # both answered the clean prompts right
    result = measure_robustness(
        prompts,
        REFERENCES,
        clean,
        {"candidate": candidate.generator, "base": base.generator},
        "rougeL",
        config,
        **FAST,
        **kwargs,
    )
    return result, candidate, base


def test_a_brittle_candidate_degrades_and_the_gap_has_a_paired_ci():
    result, candidate, base = _measure(True, RobustnessConfig(max_examples=0))
    assert result["status"] == "measured" and result["settings"]["n_examples"] == N
    rows = {r["perturbation"]: r for r in result["rows"]}
    assert list(rows) == ["typos", "case_whitespace", "punctuation"]
    punctuation = rows["punctuation"]
    assert punctuation["changed"] == N  # every prompt has punctuation
    assert punctuation["candidate_clean"] == 1.0 and punctuation["candidate_perturbed"] == 0.0
    assert punctuation["candidate_degradation"] == 1.0
    assert punctuation["base_clean"] == punctuation["base_perturbed"] == 1.0
    assert punctuation["base_degradation"] == 0.0
    assert (punctuation["gap"], punctuation["gap_ci_low"], punctuation["gap_ci_high"]) == (1.0, 1.0, 1.0)
    typos = rows["typos"]
    # a prompt the typos leave unchanged keeps its (right) clean answer: the gap is the changed share
    assert typos["gap"] == pytest.approx(typos["changed"] / N)
    assert typos["gap_ci_low"] <= typos["gap"] <= typos["gap_ci_high"]
    assert result["worst"]["gap"] == 1.0
    # the clean prompts are never answered again: only perturbed ones reach the models
    assert candidate.seen and not set(candidate.seen) & set(USER)
    assert len(base.seen) == sum(r["changed"] for r in result["rows"])
    assert punctuation["example"] == {"original": USER[0], "perturbed": USER[0].replace(",", "").replace("?", "")[:-1]}


def test_a_robust_candidate_has_a_negative_gap_and_the_run_is_deterministic():
    first, _, _ = _measure(False, RobustnessConfig())
    again, _, _ = _measure(False, RobustnessConfig())
    assert first == again
    assert all(r["gap"] <= 0 for r in first["rows"])
    assert {r["perturbation"]: r["gap"] for r in first["rows"]}["punctuation"] == -1.0


def test_unchanged_prompts_keep_their_answers_and_cost_nothing():
    plain = [[{"role": "user", "content": f"where is parcel {i}"}] for i in range(N)]
    result, candidate, base = _measure(True, RobustnessConfig(perturbations=("punctuation",)), prompts=plain)
    row = result["rows"][0]
    assert row["changed"] == 0 and row["gap"] == 0.0 and row["example"] is None
    assert candidate.seen == [] and base.seen == []


def test_the_subset_is_fixed_seeded_and_skips_prompts_without_a_user_turn():
    prompts = [*PROMPTS, [{"role": "system", "content": "no user turn"}]]
    picked = robustness_subset(prompts, 5, seed=0)
    assert picked == robustness_subset(prompts, 5, seed=0) == sorted(picked)
    assert len(picked) == 5 and N not in picked
    assert robustness_subset(prompts, 0, seed=0) == list(range(N))
    assert robustness_subset(prompts, 5, seed=1) != picked
    result, _, _ = _measure(True, RobustnessConfig(max_examples=3))
    assert result["settings"]["n_examples"] == 3 and {r["n"] for r in result["rows"]} == {3}


def test_nothing_to_perturb_is_skipped_with_a_reason():
    no_user = [[{"role": "system", "content": "hi"}] for _ in range(N)]
    result, _, _ = _measure(True, RobustnessConfig(), prompts=no_user)
    assert result["status"] == "skipped" and "user turn" in result["reason"]
    assert robustness_rule(result).passed


def test_config_rejects_unknown_perturbations_and_bad_numbers():
    with pytest.raises(ValueError, match=r"unknown perturbation\(s\) \['shouting'\]; known: case_whitespace"):
        RobustnessConfig(perturbations=("shouting",))
    with pytest.raises(ValueError, match="set paraphrase_model"):
        RobustnessConfig(perturbations=("paraphrase",))
    with pytest.raises(ValueError, match="typo_rate"):
        RobustnessConfig(typo_rate=2.0)
    with pytest.raises(ValueError, match="tolerance"):
        RobustnessConfig(tolerance=-0.1)


def _decision():
    comparison = {"delta": 0.2, "ci_low": 0.1, "ci_high": 0.3}
    return evaluate_gate(
        PromotionGate(guardrail_metrics=()),
        versus_base={"rougeL": comparison},
        versus_production=None,
        regression_scores=None,
        train_test_overlap=0,
    )


def test_gate_rule_fails_when_the_candidate_degrades_more_than_the_base():
    brittle, _, _ = _measure(True, RobustnessConfig(perturbations=("punctuation", "case_whitespace")))
    rule = robustness_rule(brittle)
    assert not rule.passed and rule.rule == "robustness"
    assert rule.detail.startswith(
        "the candidate degrades more than the base, by over the tolerance 0.02 and with the CI above 0, under "
    )
    assert (
        "punctuation: rougeL degradation candidate +1.0000 vs base +0.0000, difference +1.0000 "
        "(95% CI [+1.0000, +1.0000])" in rule.detail
    )
    assert rule.numbers["worst_gap"] == 1.0 and rule.numbers["tolerance"] == 0.02
    decision = with_rule(_decision(), rule)
    assert not decision.passed and [r.rule for r in decision.failed_rules] == ["robustness"]
    assert "robustness failed — the candidate degrades more" in decision.description()
    # added again (a re-decision), the rule replaces itself
    assert [r.rule for r in with_rule(decision, rule).rules].count("robustness") == 1


def test_a_gap_over_the_tolerance_whose_ci_includes_zero_is_noise_and_passes():
    """The demo's case: 16 prompts, a gap of +0.036 with a CI of [-0.015, +0.097]."""
    brittle, _, _ = _measure(True, RobustnessConfig(perturbations=("punctuation",)))
    noisy = {
        **brittle,
        "rows": [{**row, "gap": 0.036, "gap_ci_low": -0.015, "gap_ci_high": 0.097} for row in brittle["rows"]],
    }
    rule = robustness_rule(noisy)
    assert rule.passed and "with a CI above 0" in rule.detail and "+0.0360" in rule.detail
    certain = {**noisy, "rows": [{**row, "gap_ci_low": 0.001} for row in noisy["rows"]]}
    assert not robustness_rule(certain).passed


def test_gate_rule_passes_for_a_robust_candidate_when_skipped_and_when_report_only():
    robust, _, _ = _measure(False, RobustnessConfig(perturbations=("punctuation",)))
    rule = robustness_rule(robust)
    assert rule.passed
    assert rule.detail.startswith("under no perturbation (punctuation) does the candidate's rougeL degrade more")
    assert with_rule(_decision(), rule).passed

    report_only, _, _ = _measure(True, RobustnessConfig(perturbations=("punctuation",), gate=False))
    rule = robustness_rule(report_only)
    assert rule.passed and rule.detail.startswith("report only (robustness_gate off): 1 perturbation(s) over 0.02")

    at_tolerance, _, _ = _measure(True, RobustnessConfig(perturbations=("punctuation",), tolerance=1.0))
    assert robustness_rule(at_tolerance).passed  # a gap equal to the tolerance is allowed

    assert robustness_rule(None).detail == "skipped: the robustness suite did not run"
    extra: dict = {}
    add_robustness(extra, pd.DataFrame(), {}, PROMPTS, "rougeL", RobustnessConfig(enabled=False))
    skipped = robustness_rule(extra["robustness"])
    assert skipped.passed and skipped.detail == "skipped: robustness is disabled (robustness: false)"


def _evaluated(config: RobustnessConfig):
    test = pd.DataFrame(
        {
            "conversation_id": [f"c{i}" for i in range(N)],
            "messages": [[*p, {"role": "assistant", "content": r}] for p, r in zip(PROMPTS, REFERENCES, strict=True)],
        }
    )
    generators = {"candidate": Recording(True, "cand").generator, "base": Recording(False, "base").generator}
    evaluation = EvaluationConfig(task="generation", n_resamples=200, use_regression_suite=False)
    result = run_evaluation(test, generators, config=evaluation)
    add_robustness(result.extra, result.examples, generators, PROMPTS, "rougeL", config, **FAST)
    return result


def test_report_json_and_md_have_the_robustness_section(tmp_path):
    result = _evaluated(RobustnessConfig(perturbations=("punctuation",)))
    paths = write_report(result, tmp_path / "r", {"eval_id": "e1", "primary_metric": "rougeL"})
    report = json.loads(paths["json"].read_text())
    assert report["extra"]["robustness"]["rows"][0]["gap"] == 1.0
    section = paths["markdown"].read_text().split("## Robustness", 1)[1].split("\n## ", 1)[0]
    assert "| punctuation | 8/8 | 1.0000 → 0.0000 | 1.0000 → 1.0000 | +1.0000 [+1.0000, +1.0000] |" in section
    assert "The gate fails a gap above 0.02 whose CI lies above 0." in section
    assert "- punctuation: Hello, where is my parcel 0? It was due yesterday. → Hello where is my parcel 0" in section

    disabled = _evaluated(RobustnessConfig(enabled=False))
    text = write_report(disabled, tmp_path / "d", {"eval_id": "e2", "primary_metric": "rougeL"})["markdown"]
    assert "## Robustness\n\nNot measured: robustness is disabled (robustness: false)." in text.read_text()


def test_asset_metadata_has_a_table_and_the_worst_gap():
    import dagster as dg

    from ft_pipeline.defs.evaluation import _robustness_metadata

    metadata = _robustness_metadata(_evaluated(RobustnessConfig()).extra["robustness"])
    table = metadata["robustness"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [r.data["perturbation"] for r in table.records] == ["typos", "case_whitespace", "punctuation"]
    assert table.records[2].data["gap"] == 1.0 and table.records[2].data["changed"] == N
    assert metadata["robustness_worst_degradation_gap"] == 1.0
    skipped = _robustness_metadata(_evaluated(RobustnessConfig(enabled=False)).extra["robustness"])
    assert skipped == {"robustness_not_measured": "robustness is disabled (robustness: false)"}
    assert _robustness_metadata(None) == {}


def test_paraphrases_come_from_the_configured_model():
    requests: list[list[dict]] = []

    def paraphrase(messages, body):
        requests.append(messages)
        number = re.search(r"\d+", messages[-1]["content"]).group()
        return f"Any news on parcel {number}? It should have arrived."

    with FakeOpenAI() as fake:
        fake.register_model("para-1")
        fake.set_responder("para-1", paraphrase)
        config = RobustnessConfig(perturbations=(), paraphrase_model="para-1", max_examples=4)
        result, candidate, _ = _measure(True, config, paraphrase_client=fake.client)
        assert fake.validation_errors == []
    assert [r["perturbation"] for r in result["rows"]] == ["paraphrase"]
    row = result["rows"][0]
    assert row["changed"] == 4 and row["gap"] == 1.0
    assert len(requests) == 4 and all(m[0]["content"] == PARAPHRASE_INSTRUCTION for m in requests)
    assert {m[1]["content"] for m in requests} <= set(USER)
    assert all(text.startswith("Any news on parcel") for text in candidate.seen)
    with pytest.raises(ValueError, match="no OpenAI-compatible client"):
        _measure(True, config)


def test_run_config_reaches_the_lib_config():
    from ft_pipeline.defs.evaluation import EvaluationRunConfig

    assert EvaluationRunConfig().to_lib().robustness == RobustnessConfig()
    lib = EvaluationRunConfig(
        robustness_perturbations=["typos"], robustness_tolerance=0.1, robustness_gate=False, paraphrase_model="p"
    ).to_lib()
    assert lib.robustness == RobustnessConfig(perturbations=("typos",), tolerance=0.1, gate=False, paraphrase_model="p")
