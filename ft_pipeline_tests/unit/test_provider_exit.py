"""Provider exit: the gate's non-inferiority rule, the plan of a hosted model's replacement, and
what the registry records when the replacement is promoted."""

import json

import pytest

from ft_pipeline.lib.evaluation.gate import PromotionGate, evaluate_gate
from ft_pipeline.lib.evaluation.promotion import promote_candidate
from ft_pipeline.lib.evaluation.summary import EvaluationSummary
from ft_pipeline.lib.manifests import SplitsManifest
from ft_pipeline.lib.provider_exit import (
    ReplacementRefused,
    check_replacement_candidate,
    is_hosted,
    plan_replacement,
    replaced_model,
    replacement_reason,
)
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline.lib.training.record import ModelRecord
from ft_pipeline_tests.conftest import register_evaluated_version

MODEL = "bot"
HOSTED_ID = "ft:gpt-4o-mini-2024-07-18:org:bot:abc123"


def _comparison(delta, ci_low, ci_high):
    return {"rougeL": {"delta": delta, "ci_low": ci_low, "ci_high": ci_high}}


def _gate(gate, versus_production):
    return evaluate_gate(
        gate,
        versus_base=_comparison(0.2, 0.1, 0.3),
        versus_production=versus_production,
        regression_scores=None,
        train_test_overlap=0,
    )


def test_non_inferiority_passes_within_the_margin_and_fails_beyond_it():
    gate = PromotionGate(production_rule="non_inferiority", non_inferiority_margin=0.02)
    # Slightly worse than production on average, but the CI lower bound stays above -0.02.
    passed = _gate(gate, _comparison(-0.005, -0.015, 0.004))
    rule = next(r for r in passed.rules if r.rule == "non_inferior_to_production")
    assert passed.passed and rule.passed
    assert rule.numbers == {"delta": -0.005, "ci_low": -0.015, "ci_high": 0.004, "non_inferiority_margin": 0.02}
    assert "-0.0050" in rule.detail and "-0.0150" in rule.detail and "−0.02 (non-inferiority margin)" in rule.detail
    # The same numbers fail the default superiority rule (the candidate does not beat production).
    assert not _gate(PromotionGate(), _comparison(-0.005, -0.015, 0.004)).passed
    # A lower bound at or below -margin is not non-inferior.
    failed = _gate(gate, _comparison(-0.01, -0.02, 0.0))
    assert not failed.passed
    assert [r.rule for r in failed.failed_rules] == ["non_inferior_to_production"]
    assert "non_inferior_to_production failed" in failed.description()
    # beats_base stays: a candidate no worse than production but not better than base fails.
    worse_than_base = evaluate_gate(
        gate,
        versus_base=_comparison(0.0, -0.01, 0.01),
        versus_production=_comparison(0.0, -0.01, 0.01),
        regression_scores=None,
        train_test_overlap=0,
    )
    assert [r.rule for r in worse_than_base.failed_rules] == ["beats_base"]


def test_a_production_rule_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="production_rule must be one of superiority, non_inferiority"):
        PromotionGate(production_rule="at_least_as_good")
    with pytest.raises(ValueError, match="non_inferiority_margin must be >= 0"):
        PromotionGate(non_inferiority_margin=-0.1)


# -- the plan -------------------------------------------------------------------------------------


def _splits(data_dir, version):
    paths = {}
    for name in ("train", "validation", "test"):
        folder = data_dir / "splits" / version
        folder.mkdir(parents=True, exist_ok=True)
        for kind in ("parquet", "jsonl"):
            (folder / f"{name}.{kind}").write_text("x")
        paths[name] = {"parquet": str(folder / f"{name}.parquet"), "jsonl": str(folder / f"{name}.jsonl")}
    return SplitsManifest(version=version, curated_version="c", paths=paths)


def _register(registry, *, backend, model_uri, remote_model_id=None, dataset_version="s1", run_key="hosted-run"):
    dataset = registry.record_dataset_version("curated", "train", "0" * 64, 1)
    run = registry.record_training_run(run_key, backend, "gpt-4o-mini-2024-07-18", dataset, None, {}, 0)
    return registry.register_model_version(
        MODEL,
        training_run_id=run,
        model_uri=model_uri,
        backend=backend,
        base_model="gpt-4o-mini-2024-07-18",
        run_key=run_key,
        dataset_version=dataset_version,
        config_hash="h",
        metrics={},
        remote_model_id=remote_model_id,
    )


def _make_production(registry, version):
    eval_id = f"e-prod-{version.version}"
    registry.record_evaluation(
        eval_id,
        MODEL,
        version.version,
        suite="test",
        eval_dataset_version_id=registry.record_dataset_version("curated", "eval", "1" * 64, 1),
        baseline_model_uri=None,
        base_model_uri="b",
        metrics={},
        per_example_uri="-",
        gate_config={},
        decision="pass",
        leakage_checked=True,
    )
    registry.promote(MODEL, version.version, evaluation_id=eval_id, reason="first", actor="test")


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_registry(request, tmp_path):
    """The registry on SQLite, and on a real PostgreSQL server (skipped without one)."""
    if request.param == "sqlite":
        return ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    from ft_pipeline_tests.postgres_server import sqlalchemy_url

    return ModelRegistry(sqlalchemy_url(request.getfixturevalue("postgres_database_url")))


def _hosted_production(registry):
    version = _register(registry, backend="openai", model_uri=HOSTED_ID, remote_model_id=HOSTED_ID)
    _make_production(registry, version)
    return version


@pytest.fixture
def hosted(registry):
    return _hosted_production(registry)


def test_nothing_to_replace_without_a_hosted_production_model(registry, tmp_path):
    with pytest.raises(ReplacementRefused, match="bot has no production model: there is no hosted model to replace"):
        plan_replacement(registry, MODEL, current_splits=None, data_dir=tmp_path)
    local = _register(registry, backend="local_lora", model_uri="lora:///m#1", run_key="local-run")
    _make_production(registry, local)
    assert not is_hosted(local)
    with pytest.raises(ReplacementRefused, match="a local_lora model .* not a hosted one"):
        plan_replacement(registry, MODEL, current_splits=_splits(tmp_path, "s1"), data_dir=tmp_path)


def test_the_plan_uses_the_current_splits_when_the_hosted_model_was_trained_on_them(registry, hosted, tmp_path):
    current = _splits(tmp_path, "s1")
    plan = plan_replacement(registry, MODEL, current_splits=current, data_dir=tmp_path)
    assert plan.splits == current and plan.same_splits
    assert (plan.backend, plan.remote_model_id, plan.production_version) == ("openai", HOSTED_ID, 1)
    assert plan.tags() == {
        "replaced_model_id": HOSTED_ID,
        "replaced_backend": "openai",
        "replaced_version": 1,
        "replaced_model_uri": HOSTED_ID,
    }


def test_changed_splits_use_the_hosted_models_files_or_fail_when_they_are_gone(registry, hosted, tmp_path):
    old = _splits(tmp_path, "s1")
    current = _splits(tmp_path, "s2")
    plan = plan_replacement(registry, MODEL, current_splits=current, data_dir=tmp_path)
    assert plan.splits.version == "s1" and plan.splits.paths == old.paths and not plan.same_splits
    assert "trained on splits s1, not the current ones (the current splits are s2)" in plan.note
    # The hosted model's training record names its split files wherever they are.
    moved = _splits(tmp_path / "elsewhere", "s1")
    record = tmp_path / "models" / "hosted-run" / "model.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"data_version": "s1", "split_paths": moved.paths, "config": {"method": "sft"}}))
    assert plan_replacement(registry, MODEL, current_splits=current, data_dir=tmp_path).splits.paths == moved.paths
    # Gone everywhere: a clear refusal naming both versions.
    for splits in (old, moved):
        for paths in splits.paths.values():
            (tmp_path / paths["parquet"]).unlink()
    with pytest.raises(ReplacementRefused) as refused:
        plan_replacement(registry, MODEL, current_splits=current, data_dir=tmp_path)
    assert "trained on splits s1, but their files are gone" in str(refused.value)
    assert "the current splits are s2" in str(refused.value) and "restore splits/s1/" in str(refused.value)


def test_a_hosted_model_trained_on_preferences_is_refused(registry, hosted, tmp_path):
    record = tmp_path / "models" / "hosted-run" / "model.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"data_version": "p1", "split_paths": {}, "config": {"method": "dpo"}}))
    with pytest.raises(ReplacementRefused, match="trained with dpo on preference data"):
        plan_replacement(registry, MODEL, current_splits=_splits(tmp_path, "s1"), data_dir=tmp_path)


def _record(backend, data_version):
    return ModelRecord(
        version="r",
        path="m.json",
        backend=backend,
        run_key="r",
        base_model="tiny",
        data_version=data_version,
        split_paths={},
        config={},
        config_hash="h",
        metrics={},
    )


def test_the_candidate_must_be_local_and_trained_on_the_hosted_models_splits(registry, hosted, tmp_path):
    plan = plan_replacement(registry, MODEL, current_splits=_splits(tmp_path, "s1"), data_dir=tmp_path)
    check_replacement_candidate(plan, _record("local_lora", "s1"))
    for record in (_record("openai", "s1"), _record("local_lora", "s2")):
        with pytest.raises(ReplacementRefused, match="run the whole replace_hosted_model job"):
            check_replacement_candidate(plan, record)
    with pytest.raises(ReplacementRefused, match="no candidate yet"):
        check_replacement_candidate(plan, None)


def test_a_promoted_replacement_names_the_hosted_model_in_its_tags_and_the_audit_log(any_registry, tmp_path):
    registry = any_registry
    _hosted_production(registry)
    plan = plan_replacement(registry, MODEL, current_splits=_splits(tmp_path, "s1"), data_dir=tmp_path)
    candidate = register_evaluated_version(
        registry, MODEL, model_uri="lora:///m#2", backend="local_lora", base_model="tiny", eval_id="e2", run_key="r2"
    )
    # The candidate's evaluation compared it with the hosted model (what promotion checks).
    registry.record_evaluation(
        "e2-vs-hosted",
        MODEL,
        candidate.version,
        suite="test",
        eval_dataset_version_id=registry.record_dataset_version("curated", "eval", "2" * 64, 1),
        baseline_model_uri=HOSTED_ID,
        base_model_uri="tiny",
        metrics={},
        per_example_uri="-",
        gate_config={},
        decision="pass",
        leakage_checked=True,
    )
    rules = [
        {"rule": "beats_base", "passed": True, "detail": "rougeL candidate − base = +0.2000"},
        {"rule": "non_inferior_to_production", "passed": True, "detail": "rougeL candidate − production = -0.0050"},
    ]
    summary = EvaluationSummary(
        version="e2-vs-hosted",
        path="report.json",
        model_name=MODEL,
        candidate_version=candidate.version,
        candidate_uri=candidate.model_uri,
        production_version=1,
        production_uri=HOSTED_ID,
        already_production=False,
        passed=True,
        rules=rules,
    )
    promotion = promote_candidate(
        summary,
        registry,
        publish_url="",
        actor="test",
        reason=replacement_reason(plan, summary),
        tags_on_success=plan.tags(),
    )
    assert (promotion.production_version, promotion.previous_version) == (candidate.version, 1)
    promoted = registry.resolve(MODEL)
    assert replaced_model(promoted) == plan.tags()
    assert replaced_model(registry.get_version(MODEL, 1)) is None
    event = registry.history(MODEL, "production")[-1]
    assert event.reason == (
        f"replaces hosted openai model {HOSTED_ID} (bot v1): rougeL candidate − production = -0.0050"
    )
    # An evaluation against another production model is not this replacement's.
    with pytest.raises(ReplacementRefused, match="not with the hosted production model"):
        replacement_reason(plan, EvaluationSummary(**{**summary.__dict__, "production_uri": "lora:///other"}))
