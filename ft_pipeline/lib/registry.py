"""Model registry: dataset versions, training runs, model versions, evaluations, aliases, audit log.

The tables are in :mod:`ft_pipeline.lib.registry_schema`. The rows are backend-agnostic (OpenAI
``ft:`` models and local LoRA adapters alike) and live in any SQLAlchemy database: a SQLite file
by default, PostgreSQL in production. Only SQLAlchemy Core with portable types is used, so the same
code runs on both; no driver is imported here.

Principles, and why:

- **Aliases are the single source of truth for what serves.** ``production``/``staging`` rows in
  ``aliases`` point at a version; ``model_versions.lifecycle`` is a denormalised view kept in step
  inside the same transaction. Serving resolves the alias row, never a cached version number.
- **Optimistic concurrency.** Every alias row carries a ``generation`` token. A move is
  ``UPDATE ... WHERE generation = :expected`` (0 rows changed = someone else moved it first) or an
  ``INSERT`` when the caller believes the alias is unset (a racing insert fails on the primary key).
  Either way the loser gets :class:`PromotionConflict` and must re-read and re-evaluate.
- **Constraints do the uniqueness work**, not application checks (the ZenML PR #3254 lesson):
  ``UNIQUE(name, split, content_sha256)``, ``UNIQUE(run_key)``, ``PRIMARY KEY(model_name,
  version)``, ``UNIQUE(model_name, model_uri)``, ``UNIQUE(alias_events.idempotency_key)``.
- **Append-only audit log.** Every promote, reject and rollback writes an ``alias_events`` row;
  nothing updates or deletes them. Rollback reads previous holders from it, and re-running a
  promotion with the same idempotency key returns the event already written.
- **Staleness guard.** A candidate is only promoted if the production model its evaluation was
  compared with is still production; otherwise the comparison says nothing about the new incumbent.

SQLite specifics: WAL journal (readers never block the writer), a 30 s busy timeout, foreign keys
on, and write transactions opened with ``BEGIN IMMEDIATE`` so two processes promoting at once
queue on the write lock instead of failing a read-to-write lock upgrade.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any, Literal, TypeVar

from sqlalchemy import (
    Connection,
    and_,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError

from ft_pipeline.lib.registry_schema import (
    ALIASES,
    BACKEND_CHECKS,
    BACKENDS,
    LIFECYCLES,
    OLD_BACKEND_CHECKS,
    SPLITS,
    TERMINAL_RUN_STATUSES,
    alias_events,
    aliases,
    dataset_versions,
    evaluations,
    metadata,
    model_versions,
    review_items,
    review_verdicts,
    training_runs,
)

__all__ = [
    "ALIASES",
    "BACKENDS",
    "LIFECYCLES",
    "SPLITS",
    "AliasEvent",
    "ArtifactMissing",
    "GateNotPassed",
    "ModelRegistry",
    "ModelVersion",
    "NotFound",
    "PromotionConflict",
    "RegistryError",
    "StaleBaseline",
    "local_artifact_exists",
    "route_bucket",
]

_T = TypeVar("_T")

_SQLITE_BUSY_TIMEOUT_MS = 30_000
# Version allocation is max+1; a concurrent register can take the same number first (primary key
# violation), so the allocation is retried a few times before giving up.
_REGISTER_ATTEMPTS = 8


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class RegistryError(Exception):
    """Base class for registry errors."""


class PromotionConflict(RegistryError):
    """The alias moved since the caller read it (compare-and-swap lost): re-read and re-evaluate."""


class StaleBaseline(RegistryError):
    """The production model the candidate was evaluated against is no longer production."""


class GateNotPassed(RegistryError):
    """No passing, leakage-checked evaluation for this version: it may not be promoted."""


class ArtifactMissing(RegistryError):
    """The version's model artifact (adapter dir / remote model) is not loadable."""


class RegistryCorrupt(RegistryError):
    """The registry database file is damaged (SQLite's ``quick_check`` fails, or it is not a database)."""


class NotFound(RegistryError):
    """A referenced model version, evaluation, training run or dataset version does not exist."""


# --------------------------------------------------------------------------------------------
# Value objects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVersion:
    """One immutable model version (its lifecycle and tags are the only fields that change)."""

    model_name: str
    version: int
    model_uri: str
    backend: str
    base_model: str
    lifecycle: str
    training_run_id: str
    run_key: str
    dataset_version: str
    config_hash: str
    metrics: dict[str, Any]
    evaluation_id: str | None
    artifact_path: str | None
    remote_model_id: str | None
    created_at: int
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AliasEvent:
    """One row of the append-only alias audit log."""

    event_id: int
    model_name: str
    alias: str
    from_version: int | None
    to_version: int | None
    action: str
    evaluation_id: str | None
    reason: str | None
    actor: str
    created_at: int


def local_artifact_exists(mv: ModelVersion) -> bool:
    """A ready-made ``check_artifact``: a local adapter directory must still exist on disk.

    Versions without ``artifact_path`` (remote OpenAI models) pass; probing those needs the
    OpenAI client, which the caller owns.
    """
    return mv.artifact_path is None or Path(mv.artifact_path).exists()


def route_bucket(model_name: str, request_id: str) -> float:
    """A stable number in [0, 1) for (model, request): the same request always lands the same way."""
    # A unit separator keeps ("ab", "c") and ("a", "bc") apart.
    digest = hashlib.sha256(f"{model_name}\x1f{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


def _json_default(value: Any) -> Any:
    # numpy scalars and similar expose .item(); everything else is stored as its string form.
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value if value is not None else {}, sort_keys=True, ensure_ascii=False, default=_json_default)


def _loads(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _mv(row: RowMapping) -> ModelVersion:
    return ModelVersion(
        model_name=row["model_name"],
        version=int(row["version"]),
        model_uri=row["model_uri"],
        backend=row["backend"],
        base_model=row["base_model"],
        lifecycle=row["lifecycle"],
        training_run_id=row["training_run_id"],
        run_key=row["run_key"],
        dataset_version=row["dataset_version"],
        config_hash=row["config_hash"],
        metrics=_loads(row["metrics_json"]),
        evaluation_id=row["evaluation_id"],
        artifact_path=row["artifact_path"],
        remote_model_id=row["remote_model_id"],
        created_at=int(row["created_at"]),
        tags=_loads(row["tags_json"]),
    )


def _event(row: RowMapping) -> AliasEvent:
    return AliasEvent(
        event_id=int(row["event_id"]),
        model_name=row["model_name"],
        alias=row["alias"],
        from_version=row["from_version"],
        to_version=row["to_version"],
        action=row["action"],
        evaluation_id=row["eval_id"],
        reason=row["reason"],
        actor=row["actor"],
        created_at=int(row["created_at"]),
    )


def _version_is(model_name: str, version: int) -> Any:
    """WHERE clause for one model version."""
    return and_(model_versions.c.model_name == model_name, model_versions.c.version == version)


def _check_alias(alias: str) -> None:
    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}; expected one of {ALIASES}")


def _describe(mv: ModelVersion | None) -> str:
    return "nothing (unset)" if mv is None else f"{mv.model_name} v{mv.version} ({mv.model_uri})"


def _install_sqlite_pragmas(engine: Engine) -> None:
    """WAL, busy timeout, foreign keys, and SQLAlchemy-controlled BEGIN for a SQLite engine."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 driver (its legacy mode does not BEGIN before SELECT)
        # so every transaction, reads included, is a real SQLite transaction that we open below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL may have to wait for another process.
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE): a deferred transaction that reads
        # and then writes can fail with SQLITE_BUSY on the upgrade, which the busy timeout does not
        # cover; IMMEDIATE makes concurrent writers queue instead. Readers stay DEFERRED.
        conn.exec_driver_sql(conn.get_execution_options().get("ft_registry_begin", "BEGIN"))


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


class ModelRegistry:
    """The model registry over one SQLAlchemy database (created on first use).

    Every public method is one transaction. Methods that change state are idempotent where the
    pipeline may re-run them (dataset versions, training runs, model versions, evaluations,
    promotions, rejections), so a retried Dagster step never duplicates rows.
    """

    def __init__(self, url: str) -> None:
        """Open (and create the tables of) the registry at a SQLAlchemy URL, e.g.
        ``sqlite:///data/registry.db`` or ``postgresql+psycopg2://user@host/db``."""
        self.url = url
        self._engine = create_engine(url)
        self._sqlite = self._engine.dialect.name == "sqlite"
        if self._sqlite:
            _install_sqlite_pragmas(self._engine)
            self._check_sqlite_integrity()
        self._create_tables()
        self._upgrade_backend_checks()

    def _check_sqlite_integrity(self) -> None:
        """SQLite's ``quick_check`` before anything reads or writes: a damaged file is one clear
        error, not a SQLAlchemy traceback, and never a promotion written into a broken database."""
        where = self._engine.url.database or self.url
        try:
            with self._engine.connect() as conn:
                # One line per problem (SQLite may put a line break inside one), so the error is one line.
                rows = [" ".join(str(r[0]).split()) for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
        except DBAPIError as err:
            self._engine.dispose()
            raise RegistryCorrupt(f"registry database {where} is corrupt: {err.orig}") from None
        if rows != ["ok"]:
            self._engine.dispose()
            raise RegistryCorrupt(
                f"registry database {where} is corrupt: {'; '.join(rows[:3])}"
                + (f" (and {len(rows) - 3} more problems)" if len(rows) > 3 else "")
            )

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> ModelRegistry:
        """The default registry: the SQLite file ``<data_dir>/registry.db``."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{(data_dir / 'registry.db').as_posix()}")

    def close(self) -> None:
        """Release pooled connections (the registry may still be used afterwards; it reconnects)."""
        self._engine.dispose()

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelRegistry({self._engine.url.render_as_string(hide_password=True)!r})"

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction; committed on success, rolled back on any exception."""
        with self._engine.connect() as conn:
            if write and self._sqlite:
                conn.execution_options(ft_registry_begin="BEGIN IMMEDIATE")
            with conn.begin():
                yield conn

    def _write(self, body: Callable[[Connection], _T], *, attempts: int, failure: str) -> _T:
        """Run ``body`` in a write transaction. A unique-key violation means a concurrent writer
        got there first: the transaction is rolled back and ``body`` runs again (it then finds the
        other writer's row, or takes the next number); after ``attempts`` it is a RegistryError."""
        for attempt in range(1, attempts + 1):
            try:
                with self._tx(write=True) as conn:
                    return body(conn)
            except IntegrityError as exc:
                if attempt == attempts:
                    raise RegistryError(f"{failure}: {exc.orig}") from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _dataset_version_exists(conn: Connection, dataset_version_id: str) -> bool:
        query = select(dataset_versions.c.dataset_version_id).where(
            dataset_versions.c.dataset_version_id == dataset_version_id
        )
        return conn.execute(query).first() is not None

    def _create_tables(self) -> None:
        # Two processes may open a fresh database at once; a lost CREATE race surfaces as an
        # "already exists" error, and the second pass then finds the tables (checkfirst).
        for attempt in range(2):
            try:
                with self._tx(write=True) as conn:
                    metadata.create_all(conn, checkfirst=True)
                return
            except DBAPIError:
                if attempt:
                    raise

    def _upgrade_backend_checks(self) -> None:
        """Registries made before the azure and together backends check ``backend`` against the
        old list, and would refuse their models: widen the check in place (rows are untouched).
        SQLite cannot alter a CHECK constraint, and its documented way to change one without
        touching the stored rows is to edit the table's schema text (``writable_schema``)."""
        allowed = f"backend IN ({', '.join(repr(b) for b in BACKENDS)})"
        with self._tx(write=True) as conn:
            for table, constraint in BACKEND_CHECKS.items():
                if self._sqlite:
                    row = conn.exec_driver_sql(
                        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                    ).first()
                    sql = str(row[0]) if row else ""
                    old = next((check for check in OLD_BACKEND_CHECKS if check in sql), None)
                    if old is None:
                        continue
                    (schema_version,) = conn.exec_driver_sql("PRAGMA schema_version").one()
                    conn.exec_driver_sql("PRAGMA writable_schema = ON")
                    conn.exec_driver_sql(
                        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                        (sql.replace(old, allowed), table),
                    )
                    conn.exec_driver_sql(f"PRAGMA schema_version = {int(schema_version) + 1}")
                    conn.exec_driver_sql("PRAGMA writable_schema = OFF")
                else:
                    row = conn.exec_driver_sql(
                        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %(name)s",
                        {"name": constraint},
                    ).first()
                    if row is None or all(f"'{b}'" in str(row[0]) for b in BACKENDS):
                        continue
                    conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
                    conn.exec_driver_sql(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({allowed})")

    @staticmethod
    def _version_row(conn: Connection, model_name: str, version: int) -> ModelVersion | None:
        row = conn.execute(select(model_versions).where(_version_is(model_name, version))).mappings().first()
        return _mv(row) if row else None

    @staticmethod
    def _alias_row(conn: Connection, model_name: str, alias: str, lock: bool = False) -> RowMapping | None:
        query = select(aliases).where(aliases.c.model_name == model_name, aliases.c.alias == alias)
        if lock:
            # Row lock on PostgreSQL (a concurrent writer waits, then sees our commit); SQLite
            # renders nothing here because BEGIN IMMEDIATE already serialises writers.
            query = query.with_for_update()
        return conn.execute(query).mappings().first()

    def _holder(self, conn: Connection, model_name: str, alias: str, lock: bool = False) -> ModelVersion | None:
        row = self._alias_row(conn, model_name, alias, lock)
        return self._version_row(conn, model_name, int(row["version"])) if row else None

    @staticmethod
    def _event_by_key(conn: Connection, key: str) -> AliasEvent | None:
        row = conn.execute(select(alias_events).where(alias_events.c.idempotency_key == key)).mappings().first()
        return _event(row) if row else None

    @staticmethod
    def _cas(conn: Connection, model_name: str, alias: str, version: int, expected: int, now: int) -> None:
        """Move ``alias`` to ``version`` iff its generation is still ``expected`` (0 = unset)."""
        if expected == 0:
            # The caller believes the alias is unset: INSERT, and let the primary key reject a
            # row that appeared meanwhile (the racing-insert case). Raising aborts the whole
            # transaction, so no savepoint is needed (PostgreSQL would need one to continue).
            try:
                conn.execute(
                    insert(aliases).values(
                        model_name=model_name, alias=alias, version=version, generation=1, updated_at=now
                    )
                )
            except IntegrityError as exc:
                raise PromotionConflict(
                    f"{model_name}/{alias}: expected the alias to be unset (generation 0) but another writer set it "
                    "first"
                ) from exc
            return
        result = conn.execute(
            update(aliases)
            .where(aliases.c.model_name == model_name, aliases.c.alias == alias, aliases.c.generation == expected)
            .values(version=version, generation=aliases.c.generation + 1, updated_at=now)
        )
        if result.rowcount != 1:
            current = conn.execute(
                select(aliases.c.generation).where(aliases.c.model_name == model_name, aliases.c.alias == alias)
            ).scalar()
            raise PromotionConflict(
                f"{model_name}/{alias}: expected generation {expected} but it is {current or 0}; "
                "the alias moved since it was read — re-read and re-evaluate"
            )

    @staticmethod
    def _set_lifecycle(conn: Connection, model_name: str, version: int, lifecycle: str, **extra: Any) -> None:
        conn.execute(
            update(model_versions).where(_version_is(model_name, version)).values(lifecycle=lifecycle, **extra)
        )

    def _settle_old_holder(self, conn: Connection, old: ModelVersion) -> None:
        """The version that just lost an alias: keep the label of an alias it still holds, else archive."""
        held = {
            r
            for (r,) in conn.execute(
                select(aliases.c.alias).where(aliases.c.model_name == old.model_name, aliases.c.version == old.version)
            )
        }
        if "production" in held:
            lifecycle = "production"
        elif "staging" in held:
            lifecycle = "staging"
        elif old.lifecycle == "rejected":
            lifecycle = "rejected"  # a rejection is never softened to "archived"
        else:
            lifecycle = "archived"
        self._set_lifecycle(conn, old.model_name, old.version, lifecycle)

    def _settle_new_holder(self, conn: Connection, model_name: str, version: int, alias: str) -> None:
        # production outranks staging: a production version later also pointed at by staging stays "production".
        held = {
            r
            for (r,) in conn.execute(
                select(aliases.c.alias).where(aliases.c.model_name == model_name, aliases.c.version == version)
            )
        }
        self._set_lifecycle(conn, model_name, version, "production" if "production" in held else alias)

    @staticmethod
    def _append_event(
        conn: Connection,
        *,
        model_name: str,
        alias: str,
        from_version: int | None,
        to_version: int | None,
        action: str,
        eval_id: str | None,
        reason: str | None,
        actor: str,
        idempotency_key: str | None,
        now: int,
    ) -> AliasEvent:
        values = dict(
            model_name=model_name,
            alias=alias,
            from_version=from_version,
            to_version=to_version,
            action=action,
            eval_id=eval_id,
            reason=reason,
            actor=actor,
            idempotency_key=idempotency_key,
            created_at=now,
        )
        result = conn.execute(insert(alias_events).values(**values))
        return _event({"event_id": result.inserted_primary_key[0], **values})  # type: ignore[arg-type,index]

    # -- lineage rows --------------------------------------------------------------------------

    def record_dataset_version(
        self, name: str, split: str, content_sha256: str, n_examples: int, source_uri: str | None = None
    ) -> str:
        """Record a content-addressed dataset version; idempotent on (name, split, sha). Returns its id."""
        if split not in SPLITS:
            raise RegistryError(f"unknown split {split!r}; expected one of {SPLITS}")
        key = (
            dataset_versions.c.name == name,
            dataset_versions.c.split == split,
            dataset_versions.c.content_sha256 == content_sha256,
        )

        def write(conn: Connection) -> str:
            existing = conn.execute(select(dataset_versions.c.dataset_version_id).where(*key)).scalar()
            if existing is not None:
                return existing
            # "<name>:<split>@<sha[:12]>": the split is part of the id because the same content
            # may be recorded under two splits (the unique key is name, split, sha).
            dataset_version_id = f"{name}:{split}@{content_sha256[:12]}"
            if self._dataset_version_exists(conn, dataset_version_id):
                # A different content shares the short prefix: fall back to the full hash.
                dataset_version_id = f"{name}:{split}@{content_sha256}"
            conn.execute(
                insert(dataset_versions).values(
                    dataset_version_id=dataset_version_id,
                    name=name,
                    split=split,
                    content_sha256=content_sha256,
                    n_examples=int(n_examples),
                    source_uri=source_uri,
                    created_at=_now(),
                )
            )
            return dataset_version_id

        # Another writer inserting the same content first (a PostgreSQL race): the retry reads it back.
        return self._write(
            write, attempts=2, failure=f"could not record dataset version {name}:{split}@{content_sha256[:12]}"
        )

    def record_training_run(
        self,
        run_key: str,
        backend: str,
        base_model: str,
        train_dataset_version_id: str,
        val_dataset_version_id: str | None,
        method: dict[str, Any],
        seed: int | None,
        external_job_id: str | None = None,
        status: str = "succeeded",
        trained_tokens: int | None = None,
        dagster_run_id: str | None = None,
    ) -> str:
        """Record a training attempt; idempotent on ``run_key`` (returns the existing id and updates
        its status, plus the job id / tokens / Dagster run when given). Returns the training run id."""
        if backend not in BACKENDS:
            raise RegistryError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        now = _now()
        # Deterministic id: the same run key always maps to the same row, even across a lost race.
        training_run_id = "tr-" + hashlib.sha256(run_key.encode("utf-8")).hexdigest()[:20]
        finished = now if status in TERMINAL_RUN_STATUSES else None

        def write(conn: Connection) -> str:
            existing = conn.execute(select(training_runs).where(training_runs.c.run_key == run_key)).mappings().first()
            if existing is not None:
                changes: dict[str, Any] = {"status": status}
                for column, value in (
                    ("external_job_id", external_job_id),
                    ("trained_tokens", trained_tokens),
                    ("dagster_run_id", dagster_run_id),
                ):
                    if value is not None:
                        changes[column] = value
                if finished is not None and existing["finished_at"] is None:
                    changes["finished_at"] = finished
                conn.execute(update(training_runs).where(training_runs.c.run_key == run_key).values(**changes))
                return existing["training_run_id"]
            for ds in (train_dataset_version_id, val_dataset_version_id):
                if ds is not None and not self._dataset_version_exists(conn, ds):
                    raise NotFound(f"dataset version {ds!r} is not recorded; call record_dataset_version first")
            conn.execute(
                insert(training_runs).values(
                    training_run_id=training_run_id,
                    run_key=run_key,
                    backend=backend,
                    base_model=base_model,
                    train_dataset_version_id=train_dataset_version_id,
                    val_dataset_version_id=val_dataset_version_id,
                    method_json=_dumps(method),
                    seed=seed,
                    external_job_id=external_job_id,
                    status=status,
                    trained_tokens=trained_tokens,
                    started_at=now,
                    finished_at=finished,
                    dagster_run_id=dagster_run_id,
                )
            )
            return training_run_id

        # A lost race on run_key retries and updates; a second violation (e.g. the external job id
        # already used by another run key) is an error.
        return self._write(write, attempts=2, failure=f"could not record training run {run_key!r}")

    def register_model_version(
        self,
        model_name: str,
        *,
        training_run_id: str,
        model_uri: str,
        backend: str,
        base_model: str,
        run_key: str,
        dataset_version: str,
        config_hash: str,
        metrics: dict[str, Any],
        artifact_path: str | None = None,
        remote_model_id: str | None = None,
        tags: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Register a trained model as the next version of ``model_name`` (lifecycle ``candidate``).

        The version is ``max + 1`` allocated in the same transaction; a concurrent registration
        that took the number first is retried. Idempotent on (model_name, model_uri): registering
        the same model again returns the existing version.
        """
        if backend not in BACKENDS:
            raise RegistryError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

        def write(conn: Connection) -> ModelVersion:
            row = (
                conn.execute(
                    select(model_versions).where(
                        model_versions.c.model_name == model_name, model_versions.c.model_uri == model_uri
                    )
                )
                .mappings()
                .first()
            )
            if row is not None:
                existing = _mv(row)
                if existing.training_run_id != training_run_id:
                    raise RegistryError(
                        f"{model_uri} is already {model_name} v{existing.version} from training run "
                        f"{existing.training_run_id}, not {training_run_id}"
                    )
                return existing
            run = (
                conn.execute(select(training_runs).where(training_runs.c.training_run_id == training_run_id))
                .mappings()
                .first()
            )
            if run is None:
                raise NotFound(f"training run {training_run_id!r} is not recorded; call record_training_run first")
            if run["run_key"] != run_key or run["backend"] != backend:
                raise RegistryError(
                    f"training run {training_run_id} has run_key={run['run_key']!r} backend={run['backend']!r}, "
                    f"but the registration says run_key={run_key!r} backend={backend!r}"
                )
            taken = conn.execute(
                select(model_versions.c.model_name, model_versions.c.version).where(
                    model_versions.c.training_run_id == training_run_id
                )
            ).first()
            if taken is not None:
                raise RegistryError(f"training run {training_run_id} is already registered as {taken[0]} v{taken[1]}")
            version = (
                int(
                    conn.execute(
                        select(func.coalesce(func.max(model_versions.c.version), 0)).where(
                            model_versions.c.model_name == model_name
                        )
                    ).scalar_one()
                )
                + 1
            )
            values = dict(
                model_name=model_name,
                version=version,
                model_uri=model_uri,
                training_run_id=training_run_id,
                lifecycle="candidate",
                backend=backend,
                base_model=base_model,
                run_key=run_key,
                dataset_version=dataset_version,
                config_hash=config_hash,
                metrics_json=_dumps(metrics),
                evaluation_id=None,
                artifact_path=str(artifact_path) if artifact_path is not None else None,
                remote_model_id=remote_model_id,
                tags_json=_dumps(tags or {}),
                created_at=_now(),
            )
            conn.execute(insert(model_versions).values(**values))
            return _mv(values)  # type: ignore[arg-type]

        # A concurrent registration taking this version number (or this uri) is retried: the next
        # pass either finds our uri registered (idempotent return) or takes max+1.
        return self._write(
            write,
            attempts=_REGISTER_ATTEMPTS,
            failure=f"could not allocate a version for {model_name} after {_REGISTER_ATTEMPTS} attempts",
        )

    def record_evaluation(
        self,
        eval_id: str,
        model_name: str,
        version: int,
        *,
        suite: str,
        eval_dataset_version_id: str,
        baseline_model_uri: str | None,
        base_model_uri: str | None,
        metrics: dict[str, Any],
        per_example_uri: str,
        gate_config: dict[str, Any],
        decision: Literal["pass", "fail"],
        leakage_checked: bool,
        dagster_run_id: str | None = None,
    ) -> None:
        """Record an evaluation report of one version; idempotent on ``eval_id``.

        ``baseline_model_uri`` is the production model the candidate was compared with (None when
        there was no production); promotion refuses if production has changed since.
        """
        if decision not in ("pass", "fail"):
            raise RegistryError(f"decision must be 'pass' or 'fail', not {decision!r}")

        def write(conn: Connection) -> None:
            existing = conn.execute(select(evaluations).where(evaluations.c.eval_id == eval_id)).mappings().first()
            if existing is not None:
                if (existing["model_name"], int(existing["version"])) != (model_name, int(version)):
                    raise RegistryError(
                        f"evaluation {eval_id} is recorded for {existing['model_name']} v{existing['version']}, "
                        f"not {model_name} v{version}"
                    )
                return
            if self._version_row(conn, model_name, version) is None:
                raise NotFound(f"{model_name} v{version} is not registered")
            if not self._dataset_version_exists(conn, eval_dataset_version_id):
                raise NotFound(f"dataset version {eval_dataset_version_id!r} is not recorded")
            conn.execute(
                insert(evaluations).values(
                    eval_id=eval_id,
                    model_name=model_name,
                    version=int(version),
                    suite=suite,
                    eval_dataset_version_id=eval_dataset_version_id,
                    baseline_model_uri=baseline_model_uri,
                    base_model_uri=base_model_uri,
                    metrics_json=_dumps(metrics),
                    per_example_uri=str(per_example_uri),
                    gate_config_json=_dumps(gate_config),
                    decision=decision,
                    leakage_checked=bool(leakage_checked),
                    created_at=_now(),
                    dagster_run_id=dagster_run_id,
                )
            )
            # The version points at its latest evaluation until a decision (promote or
            # reject) pins the one that decided it.
            conn.execute(update(model_versions).where(_version_is(model_name, version)).values(evaluation_id=eval_id))

        # A concurrent writer recording the same eval_id first: the retry finds it.
        self._write(write, attempts=2, failure=f"could not record evaluation {eval_id}")

    def update_tags(self, model_name: str, version: int, tags: dict[str, Any]) -> ModelVersion:
        """Merge ``tags`` into a version's tags (e.g. where its files were published); returns it."""
        with self._tx(write=True) as conn:
            mv = self._version_row(conn, model_name, version)
            if mv is None:
                raise NotFound(f"{model_name} v{version} is not registered")
            conn.execute(
                update(model_versions)
                .where(_version_is(model_name, version))
                .values(tags_json=_dumps({**mv.tags, **tags}))
            )
            updated = self._version_row(conn, model_name, version)
            assert updated is not None  # the row read and updated above, in this transaction
            return updated

    # -- reads ---------------------------------------------------------------------------------

    def get_version(self, model_name: str, version: int) -> ModelVersion:
        """One version; :class:`NotFound` if it is not registered."""
        with self._tx() as conn:
            mv = self._version_row(conn, model_name, version)
        if mv is None:
            raise NotFound(f"{model_name} v{version} is not registered")
        return mv

    def list_versions(self, model_name: str | None = None) -> list[ModelVersion]:
        """All versions (of one model, or of all), ordered by model name and version."""
        query = select(model_versions).order_by(model_versions.c.model_name, model_versions.c.version)
        if model_name is not None:
            query = query.where(model_versions.c.model_name == model_name)
        with self._tx() as conn:
            return [_mv(r) for r in conn.execute(query).mappings()]

    def resolve(self, model_name: str, alias: str = "production") -> ModelVersion | None:
        """The version an alias points at now, or None when unset (or the model is unknown)."""
        with self._tx() as conn:
            return self._holder(conn, model_name, alias)

    def alias_generation(self, model_name: str, alias: str) -> int:
        """The alias's concurrency token: 0 when unset, +1 on every move."""
        with self._tx() as conn:
            row = self._alias_row(conn, model_name, alias)
        return int(row["generation"]) if row else 0

    def history(self, model_name: str, alias: str | None = None) -> list[AliasEvent]:
        """The append-only audit log of a model (optionally one alias), oldest first."""
        query = select(alias_events).where(alias_events.c.model_name == model_name).order_by(alias_events.c.event_id)
        if alias is not None:
            query = query.where(alias_events.c.alias == alias)
        with self._tx() as conn:
            return [_event(r) for r in conn.execute(query).mappings()]

    def evaluation(self, eval_id: str) -> dict[str, Any]:
        """An evaluation row as a dict (JSON columns decoded); :class:`NotFound` if missing."""
        with self._tx() as conn:
            row = conn.execute(select(evaluations).where(evaluations.c.eval_id == eval_id)).mappings().first()
        if row is None:
            raise NotFound(f"evaluation {eval_id!r} is not recorded")
        out = dict(row)
        for column in ("metrics_json", "gate_config_json", "judge_json"):
            out[column.removesuffix("_json")] = _loads(out.pop(column))
        out["leakage_checked"] = bool(out["leakage_checked"])
        return out

    def route(
        self, model_name: str, request_id: str, *, challenger_alias: str = "staging", challenger_share: float = 0.0
    ) -> ModelVersion | None:
        """Deterministic A/B routing: a request whose stable bucket is below ``challenger_share``
        goes to the challenger alias (when set), every other request to production."""
        if not 0.0 <= challenger_share <= 1.0:
            raise ValueError(f"challenger_share must be within [0, 1], not {challenger_share}")
        with self._tx() as conn:
            if challenger_share > 0.0 and route_bucket(model_name, request_id) < challenger_share:
                challenger = self._holder(conn, model_name, challenger_alias)
                if challenger is not None:
                    return challenger
            return self._holder(conn, model_name, "production")

    # -- decisions -------------------------------------------------------------------------------

    def promote(
        self,
        model_name: str,
        version: int,
        *,
        alias: str = "production",
        evaluation_id: str,
        expected_generation: int | None = None,
        expected_baseline_uri: str | None = ...,  # type: ignore[assignment]
        reason: str,
        actor: str,
        check_artifact: Callable[[ModelVersion], bool] | None = None,
    ) -> AliasEvent:
        """Point ``alias`` at ``version`` in one transaction, with compare-and-swap.

        Preconditions, checked inside the transaction:

        - ``evaluation_id`` is an evaluation of this version with decision ``pass`` and
          ``leakage_checked`` (else :class:`GateNotPassed`);
        - the production model it was compared with is still production (else
          :class:`StaleBaseline`). ``expected_baseline_uri`` defaults to the evaluation's
          ``baseline_model_uri``; pass it only for a non-production alias whose evaluation did not
          compare against production (a smoke eval before staging). For ``production`` it must
          equal the evaluation's baseline;
        - ``check_artifact(version)`` is true (else :class:`ArtifactMissing`). It runs *before*
          the write transaction so a slow probe never holds the database lock; the CAS on the
          generation read before the probe still guarantees nothing moved in between.

        Then ``aliases`` moves iff its generation is still ``expected_generation`` (default: the
        generation read in this call), the previous holder becomes ``archived`` (unless it still
        holds another alias), the candidate ``production``/``staging``, and an ``alias_events``
        row with idempotency key ``promote:<model>:<version>:<eval_id>`` is appended. Re-running
        the same promotion returns that event and changes nothing. A lost race raises
        :class:`PromotionConflict`.

        A version rejected by a failed gate may be promoted on a newer passing evaluation; one
        rolled back from production may not (:class:`RegistryError`).
        """
        _check_alias(alias)
        key = f"promote:{model_name}:{version}:{evaluation_id}"
        expected = expected_generation
        if check_artifact is not None:
            with self._tx() as conn:
                done = self._event_by_key(conn, key)
                if done is not None:
                    return done
                mv = self._version_row(conn, model_name, version)
                row = self._alias_row(conn, model_name, alias)
            if mv is None:
                raise NotFound(f"{model_name} v{version} is not registered")
            if expected is None:
                expected = int(row["generation"]) if row else 0
            if not check_artifact(mv):
                raise ArtifactMissing(f"{_describe(mv)}: artifact check failed (artifact_path={mv.artifact_path!r})")
        try:
            with self._tx(write=True) as conn:
                done = self._event_by_key(conn, key)
                if done is not None:
                    return done
                now = _now()
                candidate = self._version_row(conn, model_name, version)
                if candidate is None:
                    raise NotFound(f"{model_name} v{version} is not registered")
                if candidate.lifecycle == "rejected" and "rollback_reason" in candidate.tags:
                    # Rolled back for misbehaving in production: an offline evaluation cannot clear
                    # that verdict. (A gate rejection can be superseded by a newer passing evaluation.)
                    raise RegistryError(
                        f"{_describe(candidate)} was rolled back from production "
                        f"({candidate.tags['rollback_reason']!r}); register and evaluate a new version"
                    )
                self._check_gate(conn, candidate, evaluation_id)
                baseline = self._expected_baseline(conn, candidate, alias, evaluation_id, expected_baseline_uri)
                # Locked so production cannot move between this staleness check and the commit,
                # even when the alias being moved is another one (staging).
                production = self._holder(conn, model_name, "production", lock=True)
                current_uri = production.model_uri if production else None
                if current_uri != baseline:
                    raise StaleBaseline(
                        f"{_describe(candidate)} was evaluated ({evaluation_id}) against production "
                        f"{baseline or 'nothing (no production)'}, but production is now "
                        f"{current_uri or 'nothing (unset)'}; re-evaluate against the current production"
                    )
                row = self._alias_row(conn, model_name, alias, lock=True)
                old = self._version_row(conn, model_name, int(row["version"])) if row else None
                if expected is None:
                    expected = int(row["generation"]) if row else 0
                self._cas(conn, model_name, alias, version, expected, now)
                if old is not None and old.version != version:
                    self._settle_old_holder(conn, old)
                self._settle_new_holder(conn, model_name, version, alias)
                conn.execute(
                    update(model_versions).where(_version_is(model_name, version)).values(evaluation_id=evaluation_id)
                )
                try:
                    return self._append_event(
                        conn,
                        model_name=model_name,
                        alias=alias,
                        from_version=old.version if old else None,
                        to_version=version,
                        action="promote",
                        eval_id=evaluation_id,
                        reason=reason,
                        actor=actor,
                        idempotency_key=key,
                        now=now,
                    )
                except IntegrityError as exc:
                    # The same promotion committed concurrently (possible on PostgreSQL only).
                    raise PromotionConflict(f"{key} was written concurrently") from exc
        except PromotionConflict:
            # A duplicate run of this very promotion that won the race is success, not a conflict.
            with self._tx() as conn:
                done = self._event_by_key(conn, key)
            if done is not None:
                return done
            raise

    @staticmethod
    def _check_gate(conn: Connection, candidate: ModelVersion, evaluation_id: str) -> RowMapping:
        ev = conn.execute(select(evaluations).where(evaluations.c.eval_id == evaluation_id)).mappings().first()
        if ev is None:
            raise GateNotPassed(f"no evaluation {evaluation_id!r} is recorded for {_describe(candidate)}")
        if (ev["model_name"], int(ev["version"])) != (candidate.model_name, candidate.version):
            raise GateNotPassed(
                f"evaluation {evaluation_id} is of {ev['model_name']} v{ev['version']}, "
                f"not {candidate.model_name} v{candidate.version}"
            )
        if ev["decision"] != "pass":
            raise GateNotPassed(
                f"evaluation {evaluation_id} ({ev['suite']}) decided {ev['decision']!r} for {_describe(candidate)}"
            )
        if not ev["leakage_checked"]:
            raise GateNotPassed(f"evaluation {evaluation_id} was not leakage-checked (eval ∩ train hashes unverified)")
        return ev

    @staticmethod
    def _expected_baseline(
        conn: Connection, candidate: ModelVersion, alias: str, evaluation_id: str, override: str | None | EllipsisType
    ) -> str | None:
        evaluated = conn.execute(
            select(evaluations.c.baseline_model_uri).where(evaluations.c.eval_id == evaluation_id)
        ).scalar()
        if override is ...:
            return evaluated
        if alias == "production" and override != evaluated:
            # An override may not claim a comparison the evaluation never made.
            raise StaleBaseline(
                f"expected_baseline_uri {override!r} differs from the baseline evaluation {evaluation_id} "
                f"compared {_describe(candidate)} with ({evaluated!r})"
            )
        return override

    def reject(
        self, model_name: str, version: int, *, evaluation_id: str | None, reason: str, actor: str
    ) -> AliasEvent:
        """Mark a version ``rejected`` (it failed its gate) and log it; aliases are not touched.

        The audit row has action ``reject``, alias ``production`` and from = to = the current
        production version. Idempotent on ``reject:<model>:<version>:<eval_id>``. A version that
        serves production cannot be rejected this way: use :meth:`rollback`.
        """
        key = f"reject:{model_name}:{version}:{evaluation_id}"
        with self._tx(write=True) as conn:
            done = self._event_by_key(conn, key)
            if done is not None:
                return done
            mv = self._version_row(conn, model_name, version)
            if mv is None:
                raise NotFound(f"{model_name} v{version} is not registered")
            if evaluation_id is not None:
                ev = conn.execute(
                    select(evaluations.c.model_name, evaluations.c.version).where(
                        evaluations.c.eval_id == evaluation_id
                    )
                ).first()
                if ev is None:
                    raise NotFound(f"evaluation {evaluation_id!r} is not recorded")
                if (ev[0], int(ev[1])) != (model_name, int(version)):
                    raise RegistryError(
                        f"evaluation {evaluation_id} is of {ev[0]} v{ev[1]}, not {model_name} v{version}"
                    )
            production = self._holder(conn, model_name, "production", lock=True)
            if production is not None and production.version == mv.version:
                raise RegistryError(f"{_describe(mv)} serves production; roll it back instead of rejecting it")
            now = _now()
            tags = {**mv.tags, "rejected_reason": reason, "rejected_by": actor, "rejected_at": now}
            self._set_lifecycle(
                conn,
                model_name,
                version,
                "rejected",
                tags_json=_dumps(tags),
                **({"evaluation_id": evaluation_id} if evaluation_id is not None else {}),
            )
            current = production.version if production else None
            return self._append_event(
                conn,
                model_name=model_name,
                alias="production",
                from_version=current,
                to_version=current,
                action="reject",
                eval_id=evaluation_id,
                reason=reason,
                actor=actor,
                idempotency_key=key,
                now=now,
            )

    def rollback(
        self,
        model_name: str,
        *,
        alias: str = "production",
        to_version: int | None = None,
        reason: str,
        actor: str,
        check_artifact: Callable[[ModelVersion], bool] | None = None,
    ) -> AliasEvent:
        """Point ``alias`` back at an earlier version; no retraining, no re-registration.

        Target: ``to_version``, or by default the most recent previous holder of the alias (the
        ``from_version`` of its audit events, newest first) that is not ``rejected`` and whose
        ``check_artifact`` passes. The probe runs before the write transaction (see
        :meth:`promote`); the move itself is the same compare-and-swap. The version rolled back
        from becomes ``rejected`` with the reason in its tags.

        Raises :class:`NotFound` when the alias is unset or there is no earlier holder,
        :class:`ArtifactMissing` when no eligible target passes ``check_artifact``, and
        :class:`PromotionConflict` when the alias moved meanwhile.
        """
        _check_alias(alias)
        with self._tx() as conn:
            row = self._alias_row(conn, model_name, alias)
            if row is None:
                raise NotFound(f"{model_name}/{alias} is unset; there is nothing to roll back")
            current_version, generation = int(row["version"]), int(row["generation"])
            if to_version is not None:
                target = self._version_row(conn, model_name, to_version)
                if target is None:
                    raise NotFound(f"{model_name} v{to_version} is not registered")
                if target.version == current_version:
                    raise RegistryError(f"{model_name}/{alias} already points at v{current_version}")
                if target.lifecycle == "rejected":
                    raise RegistryError(f"{_describe(target)} is rejected ({target.tags}); choose another version")
                options = [target]
            else:
                options = []
                seen = {current_version}
                previous = conn.execute(
                    select(alias_events.c.from_version)
                    .where(
                        alias_events.c.model_name == model_name,
                        alias_events.c.alias == alias,
                        alias_events.c.from_version.is_not(None),
                        alias_events.c.action.in_(("promote", "rollback")),
                    )
                    .order_by(alias_events.c.event_id.desc())
                ).scalars()
                for v in previous:
                    if v in seen:
                        continue
                    seen.add(v)
                    mv = self._version_row(conn, model_name, int(v))
                    if mv is not None and mv.lifecycle != "rejected":
                        options.append(mv)
                if not options:
                    raise NotFound(f"{model_name}/{alias} has no earlier, non-rejected holder to roll back to")
        target = None
        for mv in options:
            if check_artifact is None or check_artifact(mv):
                target = mv
                break
        if target is None:
            raise ArtifactMissing(
                f"{model_name}/{alias}: no rollback target has a loadable artifact (tried "
                + ", ".join(f"v{mv.version} {mv.artifact_path or mv.model_uri}" for mv in options)
                + ")"
            )
        with self._tx(write=True) as conn:
            now = _now()
            fresh = self._version_row(conn, model_name, target.version)
            if fresh is None or fresh.lifecycle == "rejected":
                raise PromotionConflict(f"{_describe(target)} was rejected meanwhile; re-read and retry")
            old = self._version_row(conn, model_name, current_version)
            self._cas(conn, model_name, alias, target.version, generation, now)
            assert old is not None  # the alias row's foreign key guarantees it
            tags = {**old.tags, "rollback_reason": reason, "rolled_back_by": actor, "rolled_back_at": now}
            self._set_lifecycle(conn, model_name, current_version, "rejected", tags_json=_dumps(tags))
            self._settle_new_holder(conn, model_name, target.version, alias)
            return self._append_event(
                conn,
                model_name=model_name,
                alias=alias,
                from_version=current_version,
                to_version=target.version,
                action="rollback",
                eval_id=None,
                reason=reason,
                actor=actor,
                idempotency_key=None,
                now=now,
            )

    # -- human review (lib/evaluation/review.py) -----------------------------------------------

    def record_review_sample(self, eval_id: str, items: Sequence[Mapping[str, Any]]) -> int:
        """Record an evaluation's review sample: per example its ``example_id``, ``tag``,
        ``candidate_side`` (``A``/``B``: the hidden key of the blinded file), ``judge_verdict``
        (candidate/base/tie or None), ``judge_model`` and ``selected_by``. Idempotent: an example
        already recorded for ``eval_id`` is kept as it is. Returns how many rows were added."""

        def write(conn: Connection) -> int:
            if conn.execute(select(evaluations.c.eval_id).where(evaluations.c.eval_id == eval_id)).first() is None:
                raise NotFound(f"evaluation {eval_id!r} is not recorded")
            known = set(
                conn.execute(select(review_items.c.example_id).where(review_items.c.eval_id == eval_id)).scalars()
            )
            now = _now()
            rows = [
                {
                    "eval_id": eval_id,
                    "example_id": str(item["example_id"]),
                    "tag": str(item["tag"]),
                    "candidate_side": str(item["candidate_side"]),
                    "judge_verdict": item.get("judge_verdict"),
                    "judge_model": item.get("judge_model"),
                    "selected_by": str(item["selected_by"]),
                    "created_at": now,
                }
                for item in items
                if str(item["example_id"]) not in known
            ]
            if rows:
                conn.execute(insert(review_items), rows)
            return len(rows)

        return self._write(write, attempts=2, failure=f"could not record the review sample of {eval_id}")

    def review_sample(self, eval_id: str) -> list[dict[str, Any]]:
        """The review sample recorded for ``eval_id`` (empty when there is none), by example id."""
        query = select(review_items).where(review_items.c.eval_id == eval_id).order_by(review_items.c.example_id)
        with self._tx() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def record_review_verdicts(
        self, eval_id: str, verdicts: Sequence[Mapping[str, Any]], *, reviewer: str, source: str = ""
    ) -> dict[str, int]:
        """Record a reviewer's verdicts (``example_id``, ``preferred``: candidate/base/tie, ``note``)
        on examples of ``eval_id``'s review sample, in one transaction. The latest verdict per
        (evaluation, example, reviewer) wins: re-importing replaces, never duplicates. Returns the
        counts ``new``, ``updated`` and ``unchanged``."""

        def write(conn: Connection) -> dict[str, int]:
            counts = {"new": 0, "updated": 0, "unchanged": 0}
            now = _now()
            for verdict in verdicts:
                key = and_(
                    review_verdicts.c.eval_id == eval_id,
                    review_verdicts.c.example_id == str(verdict["example_id"]),
                    review_verdicts.c.reviewer == reviewer,
                )
                values = {"preferred": str(verdict["preferred"]), "note": verdict.get("note") or None}
                existing = conn.execute(select(review_verdicts).where(key)).mappings().first()
                if existing is None:
                    row = {"eval_id": eval_id, "example_id": str(verdict["example_id"]), "reviewer": reviewer}
                    conn.execute(insert(review_verdicts).values(**row, **values, source=source, updated_at=now))
                    counts["new"] += 1
                elif {k: existing[k] for k in values} == values:
                    counts["unchanged"] += 1
                else:
                    conn.execute(update(review_verdicts).where(key).values(**values, source=source, updated_at=now))
                    counts["updated"] += 1
            return counts

        return self._write(write, attempts=2, failure=f"could not record the review verdicts of {eval_id}")

    def review_verdicts(
        self, *, eval_id: str | None = None, model_name: str | None = None, judge_model: str | None = None
    ) -> list[dict[str, Any]]:
        """Human verdicts with their example's review-sample row (``tag``, ``judge_verdict``,
        ``judge_model``, ``selected_by``) and evaluation (``model_name``, ``version``): of one
        evaluation, of every evaluation of a model, and/or on examples a given judge model judged."""
        query = (
            select(
                review_verdicts,
                review_items.c.tag,
                review_items.c.judge_verdict,
                review_items.c.judge_model,
                review_items.c.selected_by,
                evaluations.c.model_name,
                evaluations.c.version,
            )
            .join(
                review_items,
                and_(
                    review_items.c.eval_id == review_verdicts.c.eval_id,
                    review_items.c.example_id == review_verdicts.c.example_id,
                ),
            )
            .join(evaluations, evaluations.c.eval_id == review_verdicts.c.eval_id)
            .order_by(review_verdicts.c.eval_id, review_verdicts.c.example_id, review_verdicts.c.reviewer)
        )
        if eval_id is not None:
            query = query.where(review_verdicts.c.eval_id == eval_id)
        if model_name is not None:
            query = query.where(evaluations.c.model_name == model_name)
        if judge_model is not None:
            query = query.where(review_items.c.judge_model == judge_model)
        with self._tx() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
