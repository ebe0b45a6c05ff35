"""promote_candidate: the promotion stage's service, on a SQLite registry."""

import pytest

from ft_pipeline.lib.evaluation.promotion import NotPromoted, promote_candidate
from ft_pipeline.lib.evaluation.summary import EvaluationSummary
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline_tests.conftest import register_evaluated_version

MODEL = "bot"


def _summary(version, eval_id, *, passed=True, production_uri=None, already=False):
    return EvaluationSummary(
        version=eval_id,
        path="report.json",
        model_name=MODEL,
        candidate_version=version.version,
        candidate_uri=version.model_uri,
        production_version=None,
        production_uri=production_uri,
        already_production=already,
        passed=passed,
        rules=[{"rule": "primary", "passed": passed, "detail": "better"}],
    )


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")


def _version(registry, n):
    return register_evaluated_version(
        registry, MODEL, model_uri=f"ft:v{n}", backend="openai", base_model="b", eval_id=f"e{n}", run_key=f"run{n}"
    )


def test_a_passing_candidate_is_promoted_and_audited(registry):
    v1 = _version(registry, 1)
    promotion = promote_candidate(_summary(v1, "e1"), registry, publish_url="", actor="test")
    assert (promotion.decision, promotion.production_version, promotion.previous_version) == ("promoted", 1, None)
    assert registry.resolve(MODEL).version == 1 and promotion.audit_event_id is not None
    assert promotion.published is None
    # The production model re-evaluated: nothing moves.
    again = promote_candidate(_summary(v1, "e1", passed=False, already=True), registry, publish_url="", actor="test")
    assert (again.decision, again.production_version) == ("already production", 1)


def test_a_failed_gate_or_a_moved_production_is_not_promoted(registry):
    v1, v2 = _version(registry, 1), _version(registry, 2)
    with pytest.raises(NotPromoted, match="did not pass the promotion gate"):
        promote_candidate(_summary(v1, "e1", passed=False), registry, publish_url="", actor="test")
    promote_candidate(_summary(v1, "e1"), registry, publish_url="", actor="test")
    # v2 was evaluated against no production, but v1 is production now.
    with pytest.raises(NotPromoted, match="not promoted"):
        promote_candidate(_summary(v2, "e2"), registry, publish_url="", actor="test")
    assert registry.resolve(MODEL).version == 1
