"""The whole graph in process on the tiny base: raw sample -> promoted model, then the registry's
behaviour across runs (already production, a stale baseline, rollback from the CLI)."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from ft_pipeline.cli import main as cli
from ft_pipeline.definitions import DOWNSTREAM_ASSETS, EVALUATION_ASSETS
from ft_pipeline.defs.metadata import INLINE_MARKDOWN_LIMIT
from ft_pipeline.defs.resources import ModelRegistryResource
from ft_pipeline.lib.publish import verify_published
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline_tests.conftest import register_evaluated_version, resources_for
from ft_pipeline_tests.dagster.test_fine_tuned_model import assert_model_metadata
from ft_pipeline_tests.dagster.whole_graph import TRAIN, evaluate_sample
from ft_pipeline_tests.dagster.whole_graph import check_evaluations as _checks
from ft_pipeline_tests.dagster.whole_graph import run_assets as _run

# The whole graph with training and evaluation, then registry scenarios (minutes on 2 cores).
pytestmark = pytest.mark.slow


def _evaluate_sample(root: Path) -> Path:
    """Raw sample -> ... -> evaluation_report once, not yet promoted. The scenarios below copy its
    data directory so each starts from that state. (One test function, not a module-scoped
    fixture: Dagster's log handlers must not outlive pytest's per-test output capture.)"""
    data_dir = root / "data"
    home = root / "home"
    home.mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        evaluate_sample(instance, data_dir, resources_for(data_dir))
        _assert_model_and_report_metadata(instance, data_dir)
    return data_dir


def _latest(instance, key):
    return instance.get_latest_materialization_event(dg.AssetKey(key))


def _assert_model_and_report_metadata(instance, data_dir):
    """What the UI shows on the model's and the evaluation's pages, without a click."""
    model = _latest(instance, "fine_tuned_model").asset_materialization
    _, record = assert_model_metadata(model, "local_lora", data_dir)
    # The input's version as Dagster shows it on train_split.
    train_split = _latest(instance, "train_split").asset_materialization
    assert record["data_version"] == train_split.tags["dagster/data_version"]

    report = _latest(instance, "evaluation_report").asset_materialization.metadata
    assert report["decision"].value == "promote"
    means = {role: report[f"{role}_rougeL"].value for role in ("candidate", "base")}
    delta = report["delta_vs_base_rougeL"].value
    assert delta == pytest.approx(means["candidate"] - means["base"], abs=2e-4)  # each rounded to 4 places
    assert report["delta_vs_base_rougeL_ci_low"].value <= delta <= report["delta_vs_base_rougeL_ci_high"].value
    assert "production_rougeL" not in report  # no production model yet
    assert not [k for k, v in report.items() if isinstance(v, dg.JsonMetadataValue)]
    # The robustness suite (report only on the tiny base): one row per perturbation, the worst gap.
    robustness = [r.data["perturbation"] for r in report["robustness"].value.records]
    assert robustness == ["punctuation"]
    assert isinstance(report["robustness_worst_degradation_gap"].value, float)
    chart = report["chart"].value
    assert chart.startswith("![primary metric by model](data:image/svg+xml;base64,")
    assert len(chart) < INLINE_MARKDOWN_LIMIT
    # The first test prompts with reference, both answers and their scores.
    examples = report["examples"].value
    assert [c.name for c in examples.schema.columns] == ["example", "part", "rougeL", "text"]
    stored = pd.read_parquet(data_dir / report["examples_path"].value)
    candidate_rows = stored[stored["model"] == "candidate"]
    n_shown = min(10, candidate_rows["prompt"].nunique())
    records = [r.data for r in examples.records]
    assert len(records) == 4 * n_shown
    assert [r["part"] for r in records[:4]] == ["prompt", "reference", "candidate", "base"]
    assert {r["example"] for r in records} == set(range(1, n_shown + 1))
    assert records[0]["text"] == " ".join(candidate_rows["prompt"].iloc[0].split())[:200]
    assert records[0]["rougeL"] is None and records[1]["rougeL"] is None
    assert records[2]["rougeL"] == pytest.approx(candidate_rows["rougeL"].iloc[0], abs=1e-4)
    assert all(len(r["text"]) <= 200 for r in records)
    # The gate's rules as a table, on the materialization and on the check.
    rules = {r.data["rule"]: r.data for r in report["gate_rules"].value.records}
    assert rules["beats_base"]["passed"] is True and "95% CI" in rules["beats_base"]["detail"]
    # The prompted baseline (the base with a system prompt and few-shot examples) is compared too.
    assert report["prompted_ci_low"].value <= report["prompted_delta"].value <= report["prompted_ci_high"].value
    assert rules["beats_prompting"]["passed"] is True and "candidate − prompted" in rules["beats_prompting"]["detail"]
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("evaluation_report"), "promotion_gate")]
    )
    evaluation = next(iter(check.values())).evaluation
    assert {r.data["rule"] for r in evaluation.metadata["gate_rules"].value.records} == set(rules)


def _copy(evaluated, tmp_path):
    # Records keep absolute paths to the fixture's model files; those are only read, and anything
    # a test writes goes into its own copy.
    data_dir = tmp_path / "data"
    shutil.copytree(evaluated, data_dir)
    return data_dir, resources_for(data_dir)


def test_raw_sample_to_promoted_model_then_registry_scenarios(instance, tmp_path, capsys):
    evaluated = _evaluate_sample(tmp_path / "evaluated")
    _promote_then_retrain_scenario(evaluated, instance, tmp_path / "a", capsys)
    _stale_baseline_scenario(evaluated, instance, tmp_path / "b")


def _promote_then_retrain_scenario(evaluated, instance, tmp_path, capsys):
    data_dir, resources = _copy(evaluated, tmp_path)
    # Promotion publishes the model's files to object storage first (a file:// URL here).
    bucket = f"file://{tmp_path / 'bucket'}"
    resources["model_registry"] = ModelRegistryResource(data_dir=str(data_dir), publish_url=bucket)
    promoted = _run(instance, resources, [DOWNSTREAM_ASSETS[-1]])
    assert promoted.success
    registry = ModelRegistry.for_data_dir(data_dir)
    production = registry.resolve("ft-pipeline-assistant")
    assert production is not None and production.version == 1 and production.lifecycle == "production"
    assert production.tags["published_uri"] == f"{bucket}/ft-pipeline-assistant/v1"
    assert verify_published(production.tags["published_uri"]) == []
    published = tmp_path / "bucket" / "ft-pipeline-assistant" / "v1"
    assert (published / "adapter" / "adapter_config.json").exists() and not (published / "checkpoints").exists()
    metadata = promoted.asset_materializations_for_node("promoted_model")[0].metadata
    assert metadata["published_uri"].value == production.tags["published_uri"]
    report_pointer = json.loads((data_dir / "reports" / "latest.json").read_text())
    report = json.loads(Path(report_pointer["path"]).read_text())
    assert (
        report["test_split_hash"]
        and report["dataset_version"]
        and report["model_ids"]["candidate"].startswith("local:")
    )
    for name in ("report.md", "examples.parquet", "metrics.png", "deltas.png"):
        assert (Path(report_pointer["path"]).parent / name).exists()

    # Evaluating the same model again: it is already production, nothing moves.
    again = _run(instance, resources, EVALUATION_ASSETS)
    assert again.success
    assert registry.resolve("ft-pipeline-assistant").version == 1
    assert len([e for e in registry.history("ft-pipeline-assistant") if e.action == "promote"]) == 1
    rules = {
        r["rule"]: r["detail"]
        for r in json.loads(Path(json.loads((data_dir / "reports" / "latest.json").read_text())["path"]).read_text())[
            "decision"
        ]["rules"]
    }
    assert rules["beats_production"] == "the candidate is production already (v1)"

    # A second candidate (another seed) is compared with production too; whatever the gate says,
    # the registry stays consistent: promoted -> v2 in production, rejected -> v1 untouched.
    second = _run(instance, resources, DOWNSTREAM_ASSETS[2:], train={**TRAIN, "seed": 7})
    gate = _checks(second)[("evaluation_report", "promotion_gate")]
    versus_production = second.asset_materializations_for_node("evaluation_report")[0].metadata
    assert {"production_rougeL", "delta_vs_production_rougeL_ci_low"} <= set(versus_production)
    report = json.loads(Path(json.loads((data_dir / "reports" / "latest.json").read_text())["path"]).read_text())
    assert report["production_version"] == 1 and "production" in report["comparisons"]
    current = registry.resolve("ft-pipeline-assistant")
    if gate.passed:
        assert current.version == 2 and registry.get_version("ft-pipeline-assistant", 1).lifecycle == "archived"
        capsys.readouterr()
        assert (
            cli(
                [
                    "registry",
                    "--data-dir",
                    str(data_dir),
                    "rollback",
                    "ft-pipeline-assistant",
                    "--reason",
                    "test rollback",
                ]
            )
            == 0
        )
        assert "v2 -> v1" in capsys.readouterr().out
        assert registry.resolve("ft-pipeline-assistant").version == 1
    else:
        assert "do not promote" in gate.description
        assert current.version == 1
        assert registry.get_version("ft-pipeline-assistant", 2).lifecycle == "rejected"

    capsys.readouterr()
    assert cli(["registry", "--data-dir", str(data_dir), "history", "ft-pipeline-assistant"]) == 0
    history = capsys.readouterr().out
    assert "promote" in history and "vNone -> v1" in history
    assert cli(["registry", "--data-dir", str(data_dir), "list"]) == 0
    assert "ft-pipeline-assistant" in capsys.readouterr().out


def _stale_baseline_scenario(evaluated, instance, tmp_path):
    """Production changed between evaluation and promotion: promoted_model refuses with a clear message."""
    data_dir, resources = _copy(evaluated, tmp_path)
    # Meanwhile another version reaches production by its own (passing) evaluation.
    registry = ModelRegistry.for_data_dir(data_dir)
    other = register_evaluated_version(
        registry,
        "ft-pipeline-assistant",
        model_uri="lora://elsewhere#1",
        backend="local_lora",
        base_model="tiny",
        eval_id="manual-eval",
    )
    registry.promote("ft-pipeline-assistant", other.version, evaluation_id="manual-eval", reason="hotfix", actor="test")

    result = _run(instance, resources, [DOWNSTREAM_ASSETS[-1]])
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "not promoted" in failure
    assert registry.resolve("ft-pipeline-assistant").version == other.version
