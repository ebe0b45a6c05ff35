"""The model registry's tables (SQLAlchemy Core): dataset versions, training runs, model
versions, evaluations, aliases, the append-only alias audit log, and the human review of an
evaluation (its review sample and the reviewers' verdicts).

Portable types only (Text/String/Integer/BigInteger/Boolean; JSON stored as text), so one schema
serves SQLite and PostgreSQL. :mod:`ft_pipeline.lib.registry` reads and writes these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "ACTIONS",
    "ALIASES",
    "BACKENDS",
    "BACKEND_CHECKS",
    "OLD_BACKEND_CHECKS",
    "LIFECYCLES",
    "REVIEW_PREFERENCES",
    "SPLITS",
    "TERMINAL_RUN_STATUSES",
    "alias_events",
    "aliases",
    "dataset_versions",
    "evaluations",
    "metadata",
    "model_versions",
    "review_items",
    "review_verdicts",
    "training_runs",
]

ALIASES = ("staging", "production")
BACKENDS = ("openai", "local_lora", "azure", "together")
#: The backend constraint of registries made before azure and together existed (upgraded on open).
OLD_BACKEND_CHECKS = ("backend IN ('openai', 'local_lora')",)
#: Tables whose ``backend`` column carries the constraint, and its name.
BACKEND_CHECKS = {"training_runs": "ck_training_runs_backend", "model_versions": "ck_model_versions_backend"}
LIFECYCLES = ("candidate", "staging", "production", "archived", "rejected")
# Lineage splits (train, validation), evaluation sets (eval, regression), and the splitter's "test".
SPLITS = ("train", "validation", "test", "eval", "regression")
ACTIONS = ("promote", "rollback", "demote", "approve", "reject")
TERMINAL_RUN_STATUSES = ("succeeded", "failed", "cancelled")
#: What a reviewer (or the judge) preferred on one example of a review sample.
REVIEW_PREFERENCES = ("candidate", "base", "tie")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = MetaData()

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("dataset_version_id", String(255), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("split", String(32), nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("n_examples", Integer, nullable=False),
    Column("example_hashes_uri", Text),
    Column("source_uri", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("dagster_run_id", String(64)),
    Column("partition_key", String(255)),
    UniqueConstraint("name", "split", "content_sha256", name="uq_dataset_versions_content"),
    CheckConstraint(_in("split", SPLITS), name="ck_dataset_versions_split"),
)

training_runs = Table(
    "training_runs",
    metadata,
    Column("training_run_id", String(64), primary_key=True),
    Column("run_key", String(255), nullable=False, unique=True),
    Column("backend", String(32), nullable=False),
    Column("base_model", String(255), nullable=False),
    Column("train_dataset_version_id", String(255), ForeignKey("dataset_versions.dataset_version_id"), nullable=False),
    Column("val_dataset_version_id", String(255), ForeignKey("dataset_versions.dataset_version_id")),
    Column("method_json", Text, nullable=False),
    Column("seed", Integer),
    Column("external_job_id", String(255), unique=True),
    Column("status", String(32), nullable=False),  # open string: mirrors the job status
    Column("error_json", Text),
    Column("trained_tokens", BigInteger),
    Column("result_file_ids", Text),
    Column("checkpoints_json", Text),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("dagster_run_id", String(64)),
    CheckConstraint(_in("backend", BACKENDS), name="ck_training_runs_backend"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("model_name", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("model_uri", String(1024), nullable=False),
    Column("training_run_id", String(64), ForeignKey("training_runs.training_run_id"), nullable=False, unique=True),
    Column("lifecycle", String(16), nullable=False, default="candidate"),
    # Denormalised from the training run / caller so a ModelVersion reads from one row.
    Column("backend", String(32), nullable=False),
    Column("base_model", String(255), nullable=False),
    Column("run_key", String(255), nullable=False),
    Column("dataset_version", String(255), nullable=False),
    Column("config_hash", String(128), nullable=False),
    Column("metrics_json", Text, nullable=False, default="{}"),
    Column("evaluation_id", String(255)),  # the evaluation behind the latest decision
    Column("artifact_path", Text),
    Column("remote_model_id", String(255)),
    Column("tags_json", Text, nullable=False, default="{}"),
    Column("description", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("retain_until", BigInteger),  # never delete a remote ft model before this
    PrimaryKeyConstraint("model_name", "version", name="pk_model_versions"),
    UniqueConstraint("model_name", "model_uri", name="uq_model_versions_uri"),
    CheckConstraint(_in("lifecycle", LIFECYCLES), name="ck_model_versions_lifecycle"),
    CheckConstraint(_in("backend", BACKENDS), name="ck_model_versions_backend"),
)

evaluations = Table(
    "evaluations",
    metadata,
    Column("eval_id", String(255), primary_key=True),
    Column("model_name", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("suite", String(255), nullable=False),
    Column("eval_dataset_version_id", String(255), ForeignKey("dataset_versions.dataset_version_id"), nullable=False),
    Column("baseline_model_uri", String(1024)),  # production at eval time (staleness guard)
    Column("base_model_uri", String(1024)),
    Column("metrics_json", Text, nullable=False),
    Column("per_example_uri", Text, nullable=False),
    Column("judge_json", Text),
    Column("gate_config_json", Text, nullable=False),
    Column("decision", String(8), nullable=False),
    Column("leakage_checked", Boolean, nullable=False),
    Column("code_version", String(64)),
    Column("created_at", BigInteger, nullable=False),
    Column("dagster_run_id", String(64)),
    ForeignKeyConstraint(
        ["model_name", "version"],
        ["model_versions.model_name", "model_versions.version"],
        name="fk_evaluations_version",
    ),
    CheckConstraint("decision IN ('pass', 'fail')", name="ck_evaluations_decision"),
)

aliases = Table(
    "aliases",
    metadata,
    Column("model_name", String(255), nullable=False),
    Column("alias", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("generation", Integer, nullable=False, default=1),  # optimistic-concurrency token
    Column("updated_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("model_name", "alias", name="pk_aliases"),
    ForeignKeyConstraint(
        ["model_name", "version"], ["model_versions.model_name", "model_versions.version"], name="fk_aliases_version"
    ),
    CheckConstraint(_in("alias", ALIASES), name="ck_aliases_alias"),
)

alias_events = Table(
    "alias_events",
    metadata,
    Column("event_id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(255), nullable=False),
    Column("alias", String(32), nullable=False),
    Column("from_version", Integer),  # NULL = unset
    Column("to_version", Integer),
    Column("action", String(16), nullable=False),
    Column("eval_id", String(255), ForeignKey("evaluations.eval_id")),
    Column("reason", Text),
    Column("actor", String(255), nullable=False),
    Column("idempotency_key", String(512), unique=True),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint(_in("action", ACTIONS), name="ck_alias_events_action"),
    # SQLite AUTOINCREMENT: event ids are never reused, so the id order is the log order.
    # (A dialect keyword: other databases ignore it and use their own sequence.)
    sqlite_autoincrement=True,
)

# Human review (lib/evaluation/review.py). New tables only: ``metadata.create_all(checkfirst=True)``,
# which runs whenever a registry is opened, adds them to an existing database (the registry's
# migration path for additive changes); no existing table changes.

review_items = Table(
    "review_items",
    metadata,
    Column("eval_id", String(255), ForeignKey("evaluations.eval_id"), nullable=False),
    Column("example_id", String(255), nullable=False),
    Column("tag", String(255), nullable=False),
    # The hidden key: the reviewer sees the answers as A and B; this says which one the candidate's is.
    Column("candidate_side", String(1), nullable=False),
    Column("judge_verdict", String(16)),  # NULL: no judge (or not judged)
    Column("judge_model", String(255)),
    Column("selected_by", String(16), nullable=False),  # 'tag' or 'disagreement'
    Column("created_at", BigInteger, nullable=False),
    PrimaryKeyConstraint("eval_id", "example_id", name="pk_review_items"),
    CheckConstraint("candidate_side IN ('A', 'B')", name="ck_review_items_side"),
    CheckConstraint(
        "judge_verdict IS NULL OR " + _in("judge_verdict", REVIEW_PREFERENCES), name="ck_review_items_judge"
    ),
)

review_verdicts = Table(
    "review_verdicts",
    metadata,
    Column("eval_id", String(255), nullable=False),
    Column("example_id", String(255), nullable=False),
    Column("reviewer", String(255), nullable=False),
    Column("preferred", String(16), nullable=False),
    Column("note", Text),
    Column("source", Text),  # the imported file's name
    Column("updated_at", BigInteger, nullable=False),
    # One verdict per reviewer and example: a re-import replaces it (the latest wins).
    PrimaryKeyConstraint("eval_id", "example_id", "reviewer", name="pk_review_verdicts"),
    ForeignKeyConstraint(
        ["eval_id", "example_id"],
        ["review_items.eval_id", "review_items.example_id"],
        name="fk_review_verdicts_item",
    ),
    CheckConstraint(_in("preferred", REVIEW_PREFERENCES), name="ck_review_verdicts_preferred"),
)
