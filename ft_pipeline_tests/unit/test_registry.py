"""Model registry: registration, promotion with
compare-and-swap and the staleness guard, rejection, rollback, routing, and two processes racing.

The registry tests run on SQLite and on a real PostgreSQL (a fresh database per test, see the
``postgres_database_url`` fixture; skipped with the reason on machines without PostgreSQL)."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sqlite3

import pytest

from ft_pipeline.lib.registry import (
    ArtifactMissing,
    GateNotPassed,
    ModelRegistry,
    NotFound,
    PromotionConflict,
    RegistryError,
    StaleBaseline,
    local_artifact_exists,
    route_bucket,
)

MODEL = "support-bot"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_url(request, tmp_path):
    """A fresh registry database: a SQLite file, or a new database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    from ft_pipeline_tests.postgres_server import sqlalchemy_url

    return sqlalchemy_url(request.getfixturevalue("postgres_database_url"))


@pytest.fixture
def reg(registry_url):
    with ModelRegistry(registry_url) as registry:
        yield registry


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _candidate(reg: ModelRegistry, n: int, model: str = MODEL, artifact_path=None, backend="local_lora"):
    """Dataset versions, a training run and a registered model version, as the pipeline records them."""
    train = reg.record_dataset_version("support", "train", _sha(f"train-{n}"), 800)
    val = reg.record_dataset_version("support", "validation", _sha(f"val-{n}"), 100)
    run_key = f"rk-{model}-{n}"
    run_id = reg.record_training_run(
        run_key, backend, "tiny-llama", train, val, {"type": "supervised", "lr": 2e-4}, seed=n
    )
    return reg.register_model_version(
        model,
        training_run_id=run_id,
        model_uri=f"lora://models/{run_key}/adapter#sha256={n:08x}",
        backend=backend,
        base_model="tiny-llama",
        run_key=run_key,
        dataset_version=train,
        config_hash=f"cfg{n}",
        metrics={"eval_loss": 1.0 / (n + 1)},
        artifact_path=str(artifact_path) if artifact_path else None,
        tags={"n": n},
    )


def _evaluate(reg: ModelRegistry, mv, *, decision="pass", leakage=True, baseline=..., eval_id=None) -> str:
    """Record an evaluation of ``mv``; the baseline defaults to the current production model."""
    if baseline is ...:
        production = reg.resolve(mv.model_name)
        baseline = production.model_uri if production else None
    eval_id = eval_id or f"eval-{mv.model_name}-v{mv.version}-{decision}-{baseline}"
    eval_ds = reg.record_dataset_version("support", "test", "e" * 64, 120)
    reg.record_evaluation(
        eval_id,
        mv.model_name,
        mv.version,
        suite="primary",
        eval_dataset_version_id=eval_ds,
        baseline_model_uri=baseline,
        base_model_uri="tiny-llama",
        metrics={"win_rate": 0.6, "p_value": 0.01, "n": 120},
        per_example_uri=f"reports/{eval_id}/examples.parquet",
        gate_config={"alpha": 0.05, "min_effect": 0.02},
        decision=decision,
        leakage_checked=leakage,
    )
    return eval_id


def _promote(reg: ModelRegistry, mv, eval_id: str, **kw):
    return reg.promote(mv.model_name, mv.version, evaluation_id=eval_id, reason="better", actor="test", **kw)


# ------------------------------------------------------------------------------------------------
# Registration and lineage rows
# ------------------------------------------------------------------------------------------------


def test_register_versions_increment_and_reregister_is_idempotent(reg):
    v1, v2 = _candidate(reg, 1), _candidate(reg, 2)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.lifecycle == v2.lifecycle == "candidate"
    assert v2.metrics == {"eval_loss": pytest.approx(1 / 3)} and v2.tags == {"n": 2} and v2.evaluation_id is None
    # Same (model, uri) again: the existing version comes back, nothing new is written.
    again = _candidate(reg, 2)
    assert again == v2
    assert [mv.version for mv in reg.list_versions(MODEL)] == [1, 2]
    # Another model numbers its own versions from 1.
    assert _candidate(reg, 7, model="other").version == 1
    assert [mv.model_name for mv in reg.list_versions()] == ["other", MODEL, MODEL]
    assert reg.get_version(MODEL, 2) == v2


def test_lineage_rows_are_idempotent_and_checked(reg):
    a = reg.record_dataset_version("support", "train", "f" * 64, 10, source_uri="data/splits/train.parquet")
    assert reg.record_dataset_version("support", "train", "f" * 64, 10) == a
    assert reg.record_dataset_version("support", "validation", "f" * 64, 10) != a
    # Two contents sharing the 12-character prefix of the id still get distinct ids.
    b = reg.record_dataset_version("support", "train", "f" * 63 + "0", 10)
    assert b != a and reg.record_dataset_version("support", "train", "f" * 63 + "0", 10) == b
    with pytest.raises(RegistryError, match="unknown split"):
        reg.record_dataset_version("support", "holdout", "f" * 64, 10)
    run = reg.record_training_run("rk", "openai", "gpt-4o-mini", a, None, {"type": "supervised"}, 1, status="running")
    # A re-run of the same step returns the same row and moves its status on.
    assert (
        reg.record_training_run(
            "rk", "openai", "gpt-4o-mini", a, None, {}, 1, external_job_id="ftjob-1", status="succeeded"
        )
        == run
    )
    with pytest.raises(NotFound, match="dataset version"):
        reg.record_training_run("rk2", "openai", "gpt-4o-mini", "missing@0", None, {}, 1)
    with pytest.raises(RegistryError, match="backend"):
        reg.record_training_run("rk3", "vertex", "x", a, None, {}, 1)
    with pytest.raises(NotFound, match="training run"):
        reg.register_model_version(
            MODEL,
            training_run_id="tr-nope",
            model_uri="ft:x",
            backend="openai",
            base_model="gpt-4o-mini",
            run_key="rk",
            dataset_version=a,
            config_hash="c",
            metrics={},
        )
    mv = reg.register_model_version(
        MODEL,
        training_run_id=run,
        model_uri="ft:gpt-4o-mini:org::abc",
        backend="openai",
        base_model="gpt-4o-mini",
        run_key="rk",
        dataset_version=a,
        config_hash="c",
        metrics={},
        remote_model_id="ft:gpt-4o-mini:org::abc",
    )
    # One training run yields one model version.
    with pytest.raises(RegistryError, match="already"):
        reg.register_model_version(
            MODEL,
            training_run_id=run,
            model_uri="ft:gpt-4o-mini:org::other",
            backend="openai",
            base_model="gpt-4o-mini",
            run_key="rk",
            dataset_version=a,
            config_hash="c",
            metrics={},
        )
    eval_id = _evaluate(reg, mv)
    assert reg.get_version(MODEL, mv.version).evaluation_id == eval_id
    assert reg.evaluation(eval_id)["gate_config"] == {"alpha": 0.05, "min_effect": 0.02}
    _evaluate(reg, mv, eval_id=eval_id)  # idempotent on eval_id
    with pytest.raises(NotFound):
        reg.evaluation("nope")


def test_for_data_dir_uses_a_wal_sqlite_file(tmp_path):
    with ModelRegistry.for_data_dir(tmp_path / "data") as reg:
        _candidate(reg, 1)
    db = tmp_path / "data" / "registry.db"
    assert db.exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"dataset_versions", "training_runs", "model_versions", "evaluations", "aliases", "alias_events"} <= tables


def test_constraints_do_the_work(reg):
    """The schema itself refuses bad lifecycles and duplicate idempotency keys, not just the API."""
    _candidate(reg, 1)
    with reg._tx(write=True) as conn:
        with pytest.raises(Exception, match="CHECK|constraint"):
            conn.exec_driver_sql("UPDATE model_versions SET lifecycle = 'deployed'")


# ------------------------------------------------------------------------------------------------
# Promotion
# ------------------------------------------------------------------------------------------------


def test_promote_first_version(reg):
    v1 = _candidate(reg, 1)
    assert reg.resolve(MODEL) is None and reg.alias_generation(MODEL, "production") == 0
    eval_id = _evaluate(reg, v1)
    assert reg.evaluation(eval_id)["baseline_model_uri"] is None
    ev = _promote(reg, v1, eval_id, expected_generation=0)
    assert (ev.action, ev.alias, ev.from_version, ev.to_version, ev.evaluation_id) == (
        "promote",
        "production",
        None,
        1,
        eval_id,
    )
    assert reg.resolve(MODEL).version == 1
    assert reg.get_version(MODEL, 1).lifecycle == "production"
    assert reg.alias_generation(MODEL, "production") == 1


def test_promote_second_archives_the_old_holder(reg):
    v1, v2 = _candidate(reg, 1), _candidate(reg, 2)
    _promote(reg, v1, _evaluate(reg, v1))
    e2 = _evaluate(reg, v2)
    assert reg.evaluation(e2)["baseline_model_uri"] == v1.model_uri
    ev = _promote(reg, v2, e2, expected_generation=1)
    assert (ev.from_version, ev.to_version) == (1, 2)
    assert reg.resolve(MODEL).version == 2
    assert [reg.get_version(MODEL, v).lifecycle for v in (1, 2)] == ["archived", "production"]
    assert reg.alias_generation(MODEL, "production") == 2
    log = reg.history(MODEL, "production")
    assert [(e.action, e.from_version, e.to_version, e.actor) for e in log] == [
        ("promote", None, 1, "test"),
        ("promote", 1, 2, "test"),
    ]
    assert log[0].event_id < log[1].event_id


def test_stale_baseline_when_production_changed_since_the_evaluation(reg):
    v1, v2, v3 = (_candidate(reg, n) for n in (1, 2, 3))
    _promote(reg, v1, _evaluate(reg, v1))
    e2, e3 = _evaluate(reg, v2), _evaluate(reg, v3)  # both compared against v1
    _promote(reg, v3, e3)
    with pytest.raises(StaleBaseline) as info:
        _promote(reg, v2, e2)
    # The message names the baseline it was compared with and the production that is there now.
    assert v1.model_uri in str(info.value) and v3.model_uri in str(info.value)
    assert reg.resolve(MODEL).version == 3 and reg.get_version(MODEL, 2).lifecycle == "candidate"
    # An override may not claim a comparison the evaluation never made.
    with pytest.raises(StaleBaseline):
        _promote(reg, v2, e2, expected_baseline_uri=v3.model_uri)
    # After re-evaluating against the current production it goes through.
    assert _promote(reg, v2, _evaluate(reg, v2)).to_version == 2


def test_gate_not_passed_when_evaluation_failed_missing_or_unchecked(reg):
    v1, v2 = _candidate(reg, 1), _candidate(reg, 2)
    with pytest.raises(GateNotPassed, match="no evaluation"):
        _promote(reg, v1, "eval-missing")
    with pytest.raises(GateNotPassed, match="'fail'"):
        _promote(reg, v1, _evaluate(reg, v1, decision="fail"))
    with pytest.raises(GateNotPassed, match="leakage"):
        _promote(reg, v1, _evaluate(reg, v1, leakage=False, eval_id="eval-noleak"))
    with pytest.raises(GateNotPassed, match="not support-bot v1"):
        _promote(reg, v1, _evaluate(reg, v2))
    assert reg.resolve(MODEL) is None and reg.history(MODEL) == []


def test_repromotion_is_a_noop_returning_the_same_event(reg):
    v1, v2 = _candidate(reg, 1), _candidate(reg, 2)
    _promote(reg, v1, _evaluate(reg, v1))
    e2 = _evaluate(reg, v2)
    first = _promote(reg, v2, e2, expected_generation=1)
    # A re-run of the same Dagster step (even with its now-stale generation) changes nothing.
    again = _promote(reg, v2, e2, expected_generation=1)
    assert again == first
    assert reg.alias_generation(MODEL, "production") == 2
    assert len(reg.history(MODEL)) == 2


def test_cas_refuses_a_stale_generation(reg):
    v1, v2 = _candidate(reg, 1), _candidate(reg, 2)
    _promote(reg, v1, _evaluate(reg, v1))
    with pytest.raises(PromotionConflict, match="expected generation 7 but it is 1"):
        _promote(reg, v2, _evaluate(reg, v2), expected_generation=7)
    assert reg.resolve(MODEL).version == 1
    # Believing an alias is unset when it is set: the INSERT hits the primary key (the racing-insert path).
    _promote(reg, v1, _evaluate(reg, v1, eval_id="smoke-1"), alias="staging")
    with pytest.raises(PromotionConflict, match="unset"):
        _promote(reg, v2, _evaluate(reg, v2, eval_id="smoke-2"), alias="staging", expected_generation=0)
    assert reg.resolve(MODEL, "staging").version == 1


def test_staging_alias_and_lifecycles(reg):
    v1, v2 = _candidate(reg, 1), _candidate(reg, 2)
    _promote(reg, v1, _evaluate(reg, v1))
    # A smoke eval before staging did not compare against production: the caller says which one it expects.
    smoke = _evaluate(reg, v2, baseline=None, eval_id="smoke-v2")
    with pytest.raises(StaleBaseline):
        _promote(reg, v2, smoke, alias="staging")
    _promote(reg, v2, smoke, alias="staging", expected_baseline_uri=v1.model_uri)
    assert reg.resolve(MODEL, "staging").version == 2 and reg.get_version(MODEL, 2).lifecycle == "staging"
    # Promoted to production while still pointed at by staging: production outranks staging.
    _promote(reg, v2, _evaluate(reg, v2))
    assert reg.get_version(MODEL, 2).lifecycle == "production"
    assert reg.get_version(MODEL, 1).lifecycle == "archived"
    v3 = _candidate(reg, 3)
    _promote(reg, v3, _evaluate(reg, v3, eval_id="smoke-v3"), alias="staging")
    # v2 lost staging but still serves production, so it is not archived.
    assert reg.get_version(MODEL, 2).lifecycle == "production" and reg.get_version(MODEL, 3).lifecycle == "staging"
    with pytest.raises(RegistryError, match="unknown alias"):
        _promote(reg, v3, "smoke-v3", alias="canary")


def test_promote_with_a_failing_artifact_check_changes_nothing(reg, tmp_path):
    v1 = _candidate(reg, 1, artifact_path=tmp_path / "gone")
    with pytest.raises(ArtifactMissing):
        _promote(reg, v1, _evaluate(reg, v1), check_artifact=local_artifact_exists)
    assert reg.resolve(MODEL) is None
    (tmp_path / "gone").mkdir()
    assert _promote(reg, v1, _evaluate(reg, v1), check_artifact=local_artifact_exists).to_version == 1


# ------------------------------------------------------------------------------------------------
# Rejection and rollback
# ------------------------------------------------------------------------------------------------


def test_reject_leaves_production_untouched(reg):
    v1, v2 = _candidate(reg, 1), _candidate(reg, 2)
    _promote(reg, v1, _evaluate(reg, v1))
    failed = _evaluate(reg, v2, decision="fail")
    ev = reg.reject(MODEL, 2, evaluation_id=failed, reason="worse on refunds", actor="dagster:run-1")
    assert (ev.action, ev.alias, ev.from_version, ev.to_version, ev.evaluation_id) == (
        "reject",
        "production",
        1,
        1,
        failed,
    )
    assert reg.resolve(MODEL).version == 1 and reg.alias_generation(MODEL, "production") == 1
    rejected = reg.get_version(MODEL, 2)
    assert rejected.lifecycle == "rejected" and rejected.tags["rejected_reason"] == "worse on refunds"
    assert reg.reject(MODEL, 2, evaluation_id=failed, reason="again", actor="x") == ev  # idempotent
    # The serving version is rolled back, not rejected.
    with pytest.raises(RegistryError, match="roll it back"):
        reg.reject(MODEL, 1, evaluation_id=None, reason="x", actor="x")
    # A newer passing evaluation supersedes a gate rejection.
    assert _promote(reg, v2, _evaluate(reg, v2)).to_version == 2
    assert reg.get_version(MODEL, 2).lifecycle == "production"


def test_rollback_restores_the_previous_version(reg):
    v1, v2 = _candidate(reg, 1), _candidate(reg, 2)
    _promote(reg, v1, _evaluate(reg, v1))
    _promote(reg, v2, _evaluate(reg, v2))
    ev = reg.rollback(MODEL, reason="error rate up 3x", actor="sensor:prod-monitor")
    assert (ev.action, ev.from_version, ev.to_version, ev.evaluation_id) == ("rollback", 2, 1, None)
    assert reg.resolve(MODEL).version == 1 and reg.alias_generation(MODEL, "production") == 3
    bad = reg.get_version(MODEL, 2)
    assert bad.lifecycle == "rejected" and bad.tags["rollback_reason"] == "error rate up 3x" and bad.tags["n"] == 2
    assert reg.get_version(MODEL, 1).lifecycle == "production"
    assert [e.action for e in reg.history(MODEL)] == ["promote", "promote", "rollback"]
    # No retraining or re-registration happened.
    assert [mv.version for mv in reg.list_versions(MODEL)] == [1, 2]
    # Nothing earlier and non-rejected is left to roll back to.
    with pytest.raises(NotFound):
        reg.rollback(MODEL, reason="again", actor="x")
    # An offline evaluation cannot clear a production rollback.
    with pytest.raises(RegistryError, match="rolled back from production"):
        _promote(reg, v2, _evaluate(reg, v2, eval_id="re-eval-v2"))


def test_rollback_refuses_when_the_artifact_is_missing(reg, tmp_path):
    adapter = tmp_path / "adapter-v1"
    adapter.mkdir()
    v1, v2 = _candidate(reg, 1, artifact_path=adapter), _candidate(reg, 2, artifact_path=tmp_path / "adapter-v2")
    _promote(reg, v1, _evaluate(reg, v1))
    _promote(reg, v2, _evaluate(reg, v2))
    with pytest.raises(ArtifactMissing, match="v1"):
        reg.rollback(MODEL, reason="bad", actor="x", check_artifact=lambda mv: False)
    adapter.rmdir()
    with pytest.raises(ArtifactMissing):
        reg.rollback(MODEL, reason="bad", actor="x", check_artifact=local_artifact_exists)
    # Refused means untouched.
    assert reg.resolve(MODEL).version == 2 and reg.get_version(MODEL, 2).lifecycle == "production"
    assert [e.action for e in reg.history(MODEL)] == ["promote", "promote"]


def test_rollback_skips_unloadable_and_rejected_holders(reg):
    v1, v2, v3, v4 = (_candidate(reg, n) for n in (1, 2, 3, 4))
    for mv in (v1, v2, v3):
        _promote(reg, mv, _evaluate(reg, mv))
    # The most recent previous holder (v2) has lost its artifact: fall back to v1.
    ev = reg.rollback(MODEL, reason="bad", actor="x", check_artifact=lambda mv: mv.version != 2)
    assert (ev.from_version, ev.to_version) == (3, 1)
    _promote(reg, v4, _evaluate(reg, v4))
    # Previous holders, newest first: v1, v3 (rejected), v2: v1 it is.
    assert reg.rollback(MODEL, reason="bad too", actor="x").to_version == 1


def test_rollback_to_an_explicit_version(reg):
    v1, v2, v3 = (_candidate(reg, n) for n in (1, 2, 3))
    for mv in (v1, v2, v3):
        _promote(reg, mv, _evaluate(reg, mv))
    ev = reg.rollback(MODEL, to_version=1, reason="back to the known good one", actor="oncall")
    assert (ev.from_version, ev.to_version, ev.reason) == (3, 1, "back to the known good one")
    assert [reg.get_version(MODEL, v).lifecycle for v in (1, 2, 3)] == ["production", "archived", "rejected"]
    with pytest.raises(RegistryError, match="rejected"):
        reg.rollback(MODEL, to_version=3, reason="x", actor="x")
    with pytest.raises(RegistryError, match="already points"):
        reg.rollback(MODEL, to_version=1, reason="x", actor="x")
    with pytest.raises(NotFound):
        reg.rollback(MODEL, to_version=99, reason="x", actor="x")
    with pytest.raises(NotFound, match="unset"):
        reg.rollback("unknown-model", reason="x", actor="x")


# ------------------------------------------------------------------------------------------------
# Reads and routing
# ------------------------------------------------------------------------------------------------


def test_unknown_model_resolves_to_none(reg):
    assert reg.resolve("nope") is None and reg.resolve("nope", "staging") is None
    assert reg.alias_generation("nope", "production") == 0
    assert reg.history("nope") == [] and reg.list_versions("nope") == []
    assert reg.route("nope", "req-1", challenger_share=0.5) is None
    with pytest.raises(NotFound):
        reg.get_version("nope", 1)


def test_route_is_deterministic_and_honours_the_share(reg):
    v1, v2 = _candidate(reg, 1), _candidate(reg, 2)
    _promote(reg, v1, _evaluate(reg, v1))
    ids = [f"req-{i}" for i in range(10_000)]
    # Without a challenger every request goes to production, whatever the share.
    assert {reg.route(MODEL, "req-1", challenger_share=0.9).version} == {1}
    _promote(reg, v2, _evaluate(reg, v2, eval_id="smoke-v2"), alias="staging")
    assert reg.route(MODEL, "req-1").version == 1  # share 0: production only
    share = 0.2
    # The split is a pure function of (model, request id); the database only names the holders.
    to_challenger = [route_bucket(MODEL, r) < share for r in ids]
    assert abs(sum(to_challenger) / len(ids) - share) < 0.02
    sample = ids[:300]
    routed = [reg.route(MODEL, r, challenger_share=share).version for r in sample]
    assert routed == [2 if c else 1 for c in to_challenger[:300]]
    assert routed == [reg.route(MODEL, r, challenger_share=share).version for r in sample]
    assert all(reg.route(MODEL, r, challenger_share=1.0).version == 2 for r in sample[:20])
    with pytest.raises(ValueError):
        reg.route(MODEL, "r", challenger_share=1.5)


# ------------------------------------------------------------------------------------------------
# Two processes racing for the same alias
# ------------------------------------------------------------------------------------------------


def _race_worker(url: str, jobs: list[tuple], barrier, results) -> None:
    """Child process: for each round, wait for the other process, then promote at once."""
    reg = ModelRegistry(url)
    for model, version, eval_id, alias, expected in jobs:
        barrier.wait(timeout=60)
        try:
            ev = reg.promote(
                model,
                version,
                alias=alias,
                evaluation_id=eval_id,
                expected_generation=expected,
                reason="race",
                actor=f"pid:{os.getpid()}",
            )
            results.put((model, version, "won", ev.event_id))
        except (PromotionConflict, StaleBaseline) as exc:
            results.put((model, version, type(exc).__name__, str(exc)))
        except BaseException as exc:  # reported to the parent, which fails the test
            results.put((model, version, "error", repr(exc)))
    reg.close()


def test_two_processes_promoting_at_once_exactly_one_wins(registry_url):
    url = registry_url
    reg = ModelRegistry(url)
    rounds = []  # (model, alias, expected generation, candidate A, candidate B, previous holder)
    for r in range(5):  # first production: both evaluated against "no production"
        model = f"race-first-{r}"
        a, b = _candidate(reg, 1, model), _candidate(reg, 2, model)
        rounds.append((model, "production", 0, (a, _evaluate(reg, a)), (b, _evaluate(reg, b)), None))
    for r in range(3):  # replacing production: both evaluated against v1
        model = f"race-next-{r}"
        v1, a, b = (_candidate(reg, n, model) for n in (1, 2, 3))
        _promote(reg, v1, _evaluate(reg, v1))
        rounds.append((model, "production", 1, (a, _evaluate(reg, a)), (b, _evaluate(reg, b)), 1))
    # Staging: production does not move, so the staleness guard cannot stop the loser; only the
    # compare-and-swap can (racing INSERTs when unset, UPDATE ... WHERE generation when set).
    for r in range(4):
        model = f"race-staging-{r}"
        a, b = _candidate(reg, 1, model), _candidate(reg, 2, model)
        rounds.append((model, "staging", 0, (a, _evaluate(reg, a)), (b, _evaluate(reg, b)), None))
    for r in range(4):
        model = f"race-staging-next-{r}"
        v1, a, b = (_candidate(reg, n, model) for n in (1, 2, 3))
        _promote(reg, v1, _evaluate(reg, v1), alias="staging")
        rounds.append((model, "staging", 1, (a, _evaluate(reg, a)), (b, _evaluate(reg, b)), 1))

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    # Side 0 promotes candidate A of every round, side 1 candidate B, round by round in lockstep.
    jobs = [
        [(model, cands[side][0].version, cands[side][1], alias, gen) for model, alias, gen, *cands, _ in rounds]
        for side in (0, 1)
    ]
    procs = [ctx.Process(target=_race_worker, args=(url, jobs[side], barrier, results)) for side in (0, 1)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * len(rounds))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    by_model: dict[str, list[tuple]] = {}
    for model, version, result, detail in outcomes:
        by_model.setdefault(model, []).append((version, result, detail))
    assert not [o for o in outcomes if o[2] == "error"], outcomes
    for model, alias, gen, (a, _), (b, _), previous in rounds:
        pair = sorted(by_model[model], key=lambda o: o[1] != "won")
        (winner, won, _), (loser, lost, _) = pair
        assert won == "won", pair
        expected_losses = {"PromotionConflict"} if alias == "staging" else {"PromotionConflict", "StaleBaseline"}
        assert lost in expected_losses, pair
        assert reg.resolve(model, alias).version == winner
        assert reg.alias_generation(model, alias) == gen + 1
        moves = [
            e for e in reg.history(model, alias) if e.action == "promote" and e.to_version in (a.version, b.version)
        ]
        assert len(moves) == 1 and (moves[0].from_version, moves[0].to_version) == (previous, winner)
        assert reg.get_version(model, loser).lifecycle == "candidate"
        assert reg.get_version(model, winner).lifecycle == alias
    reg.close()


def _with_old_backend_check(registry_url: str) -> None:
    """Turn a fresh registry's backend constraint into the one registries had before the azure and
    together backends (only openai and local_lora allowed)."""
    from sqlalchemy import create_engine

    from ft_pipeline.lib.registry_schema import BACKEND_CHECKS, OLD_BACKEND_CHECKS

    ModelRegistry(registry_url).close()
    engine = create_engine(registry_url)
    with engine.begin() as conn:
        for table, constraint in BACKEND_CHECKS.items():
            if engine.dialect.name == "sqlite":
                (sql,) = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).one()
                new_check = "backend IN ('openai', 'local_lora', 'azure', 'together')"
                assert new_check in sql
                (schema_version,) = conn.exec_driver_sql("PRAGMA schema_version").one()
                conn.exec_driver_sql("PRAGMA writable_schema = ON")
                conn.exec_driver_sql(
                    "UPDATE sqlite_master SET sql = ? WHERE name = ?",
                    (sql.replace(new_check, OLD_BACKEND_CHECKS[0]), table),
                )
                conn.exec_driver_sql(f"PRAGMA schema_version = {schema_version + 1}")
                conn.exec_driver_sql("PRAGMA writable_schema = OFF")
            else:
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({OLD_BACKEND_CHECKS[0]})")
    engine.dispose()


def test_a_registry_made_before_the_azure_and_together_backends_accepts_their_models(registry_url):
    _with_old_backend_check(registry_url)
    # The old constraint is really there: before the upgrade a together run is refused.
    from sqlalchemy import create_engine
    from sqlalchemy.exc import IntegrityError

    engine = create_engine(registry_url)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO dataset_versions (dataset_version_id, name, split, content_sha256, n_examples, created_at) "
            "VALUES ('d', 'n', 'train', 'x', 1, 1)"
        )
        conn.exec_driver_sql(
            "INSERT INTO training_runs (training_run_id, run_key, backend, base_model, train_dataset_version_id, "
            "method_json, status) VALUES ('t', 'rk', 'together', 'b', 'd', '{}', 'succeeded')"
        )
    engine.dispose()
    with ModelRegistry(registry_url) as upgraded:
        for n, backend in enumerate(("together", "azure", "openai", "local_lora")):
            version = _candidate(upgraded, n, backend=backend)
            assert upgraded.get_version(MODEL, version.version).backend == backend
    with ModelRegistry(registry_url) as reopened:  # a second open changes nothing
        assert [v.backend for v in reopened.list_versions(MODEL)] == ["together", "azure", "openai", "local_lora"]
