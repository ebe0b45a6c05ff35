"""``ft-pipeline``: the pipeline for people outside the UI.

commands:
    ft-pipeline run [--data-dir DIR] [--backend B] [--until ASSET]   register landed files, materialize the graph
    ft-pipeline validate FILE [--strict]               format + quality report for any JSONL/Parquet log
    ft-pipeline sample-data DIR                        write the deterministic sample logs
    ft-pipeline registry list|show|promote|rollback|history   the model registry
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL

if TYPE_CHECKING:  # the CLI imports dagster and the registry only in the commands that need them
    import dagster as dg

    from ft_pipeline.lib.registry import ModelRegistry, ModelVersion

STAGES = [
    "raw_conversation_logs",
    "cleaned_conversations",
    "curated_dataset",
    "splits",
    "fine_tuned_model",
    "evaluation_report",
    "promoted_model",
]


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from ft_pipeline.lib.sample_data import write_sample

    for path in write_sample(args.directory, seed=args.seed):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ft_pipeline.lib.cleaning import FILTER_REASONS, clean_conversations
    from ft_pipeline.lib.openai_format import (
        MAX_FILE_BYTES,
        MIN_TRAINING_EXAMPLES,
        validate_examples,
        validate_jsonl_file,
    )
    from ft_pipeline.lib.records import QUARANTINE_REASONS, ReadConfig, read_log_file

    path = Path(args.file)
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    try:
        parsed = read_log_file(
            path, ReadConfig(max_record_bytes=args.max_record_bytes) if args.max_record_bytes else ReadConfig()
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cleaned = clean_conversations(parsed.conversations)
    print(f"# {path.name}\n")
    print(
        f"records: {parsed.n_records}  parsed: {len(parsed.conversations)}  quarantined: {len(parsed.quarantine)}"
        f"  blank lines: {parsed.blank_lines}"
    )
    print(f"after cleaning: kept {len(cleaned.kept)}, filtered {len(cleaned.filtered)}\n")
    if len(parsed.quarantine):
        print("## Quarantined records (errors)")
        for reason, group in parsed.quarantine.groupby("reason"):
            lines = ", ".join(str(n) for n in group["source_line"].head(8))
            more = " …" if len(group) > 8 else ""
            print(f"  {reason:<24} {len(group):>6}  lines {lines}{more}  — {QUARANTINE_REASONS.get(reason, '')}")
        print()
    if len(cleaned.filtered):
        print("## Filtered by the quality rules (warnings)")
        for reason, count in Counter(cleaned.filtered["filter_reason"]).most_common():
            print(f"  {reason:<28} {count:>6}  — {FILTER_REASONS.get(reason, '')}")
        print()
    if cleaned.pii_counts:
        print("## Personal data found (it would be scrubbed)")
        for pii_type, count in sorted(cleaned.pii_counts.items()):
            print(f"  {pii_type:<14} {count:>6}")
        print()
    if cleaned.repairs:
        print("## Repairs applied: " + ", ".join(f"{k} {v}" for k, v in sorted(cleaned.repairs.items())) + "\n")
    formats = Counter(parsed.conversations["source_format"]) if len(parsed.conversations) else Counter()
    if path.suffix == ".jsonl" and formats and set(formats) == {"openai"}:
        report = validate_jsonl_file(path, model=args.model, require_min_examples=True)
        print("## OpenAI chat fine-tuning format (the file as it is)")
    else:
        report = validate_examples([{"messages": m} for m in cleaned.kept["messages"]], model=args.model)
        print("## OpenAI chat fine-tuning format (the cleaned conversations as they would be exported)")
    print(report.to_markdown())
    errors = len(parsed.quarantine) + sum(report.format_errors.values())
    if args.strict:
        errors += len(cleaned.filtered)
    # A failure always says why: a clean file can still fail the upload rules (too few examples, too large).
    reasons = [f"{errors} error(s)"]
    if report.require_min_examples and report.n_examples < MIN_TRAINING_EXAMPLES:
        reasons.append(
            f"{report.n_examples} example(s); an OpenAI fine-tuning job needs at least {MIN_TRAINING_EXAMPLES}"
        )
    if report.file_bytes is not None and report.file_bytes > MAX_FILE_BYTES:
        reasons.append(f"{report.file_bytes:,} bytes; the upload limit is {MAX_FILE_BYTES:,}")
    print(f"\nresult: {'FAILED' if errors or not report.ok else 'OK'} ({'; '.join(reasons)})")
    return 1 if errors or not report.ok else 0


def _cmd_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from ft_pipeline.definitions import ALL_ASSETS, DOWNSTREAM_ASSETS, PER_FILE_ASSETS, default_resources
    from ft_pipeline.defs.partitions import LOG_FILES_PARTITION
    from ft_pipeline.defs.resources import ModelRegistryResource, PipelineStorage, RawLogStore
    from ft_pipeline.lib.storage import read_latest, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir).resolve()
    raw_log_store = RawLogStore(landing_dir=args.landing_dir or "", data_dir=str(data_dir))
    resources = {
        **default_resources(),
        "storage": PipelineStorage(data_dir=str(data_dir)),
        "raw_log_store": raw_log_store,
        "model_registry": ModelRegistryResource(
            url=os.environ.get("FT_PIPELINE_REGISTRY_URL", ""),
            data_dir=str(data_dir),
            publish_url=os.environ.get("FT_PIPELINE_PUBLISH_URL", ""),
        ),
    }
    if not os.environ.get("DAGSTER_HOME"):
        print(
            "error: DAGSTER_HOME is not set; `make demo` sets it (or export DAGSTER_HOME=$PWD/.dagster_home)",
            file=sys.stderr,
        )
        return 2
    until = STAGES.index(args.until)
    run_config = _run_config(args, until)  # a malformed --set fails before any work
    instance = dg.DagsterInstance.get()
    files = raw_log_store.list_files()
    if not files:
        print(
            f"no log files in {raw_log_store.root()}; try `ft-pipeline sample-data {data_dir / 'raw'}`", file=sys.stderr
        )
        return 1
    known = set(instance.get_dynamic_partitions(LOG_FILES_PARTITION))
    new = [f for f in files if f not in known]
    if new:
        instance.add_dynamic_partitions(LOG_FILES_PARTITION, new)
    print(f"{len(files)} log file(s) in {raw_log_store.root()} ({len(new)} newly registered)")

    per_file = PER_FILE_ASSETS[: until + 1]
    for name in files:
        result = dg.materialize(
            per_file, partition_key=name, instance=instance, resources=resources, tags={"ft_pipeline/cli": "run"}
        )
        if not result.success:
            print(f"failed on {name}", file=sys.stderr)
            return 1
        print(f"  {name}: " + ", ".join(_summary(e) for e in result.get_asset_materialization_events()))
    if until >= 2:
        selection = DOWNSTREAM_ASSETS[: until - 1]
        result = dg.materialize(
            ALL_ASSETS,
            selection=selection,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config=run_config,
            tags={"ft_pipeline/cli": "run"},
        )
        for event in result.get_asset_materialization_events():
            print(f"  {event.asset_key.to_user_string() if event.asset_key else '?'}: {_summary(event)}")
        for evaluation in result.get_asset_check_evaluations():
            status = "passed" if evaluation.passed else "FAILED"
            print(
                f"  check {evaluation.asset_key.to_user_string()}.{evaluation.check_name}: {status}"
                + ("" if evaluation.passed else f" — {evaluation.description}")
            )
        if not result.success:
            # A candidate that fails the promotion gate is a decision, not a pipeline error: the
            # blocking check stops promoted_model and the decision is printed below.
            gate_failed = any(
                not e.passed and e.check_name == "promotion_gate" for e in result.get_asset_check_evaluations()
            )
            failed_steps = {e.step_key for e in result.get_step_failure_events()}
            if not (gate_failed and failed_steps <= {"evaluation_report"}):
                print("the run failed", file=sys.stderr)
                return 1

    print("\noutputs:")
    for stage in ("cleaned", "curated", "splits", "models", "reports"):
        if stage == "cleaned":
            print(f"  cleaned partitions: {data_dir / 'cleaned'}")
            continue
        pointer = read_latest(data_dir / stage)
        if pointer is None:
            continue
        if stage == "reports":
            if until >= 5:
                report = json.loads(Path(pointer["path"]).read_text())
                decision = report["decision"]
                verdict = (
                    "already production"
                    if report.get("already_production")
                    else ("PROMOTE" if decision["passed"] else "DO NOT PROMOTE")
                )
                print(f"  report     {Path(pointer['path']).with_name('report.md')}")
                print(f"\ndecision: {verdict}")
                for rule in decision["rules"]:
                    print(f"  [{'pass' if rule['passed'] else 'FAIL'}] {rule['rule']}: {rule['detail']}")
                _print_side_by_side(report)
            continue
        if stage == "models":
            if until >= 4:
                record = json.loads(Path(pointer["path"]).read_text())
                where = record.get("adapter_dir") or record.get("remote_model_id")
                print(f"  model      {where} ({record['backend']}, run key {record['run_key']})")
            continue
        if stage == "splits":
            for split, paths in pointer["paths"].items():
                print(f"  {split:<10} {paths['parquet']}\n  {'':<10} {paths['jsonl']}")
        else:
            print(f"  curated    {pointer['path']}")
    print(f"  quarantine {data_dir / 'quarantine'}")
    return 0


def _print_side_by_side(report: dict) -> None:
    """The first test prompts with the reference, the base's and the candidate's answers."""
    rows = report.get("side_by_side") or []
    if not rows:
        return
    primary = report.get("primary_metric", "rougeL")
    print(f"\nanswers side by side (first {len(rows)} test prompts; {primary} vs the reference):")
    for row in rows:
        print(f"\n  user:      {_one_line(row['prompt'])}")
        print(f"  reference: {_one_line(row['reference'])}")
        for role in ("base", "candidate", "production"):
            answer = row["answers"].get(role)
            if answer is not None:
                score = answer.get(primary)
                label = f"{role} ({'n/a' if score is None else f'{score:.2f}'})"
                print(f"  {label + ':':<18} {_one_line(answer['text'])}")


def _one_line(text: str, width: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _run_config(args: argparse.Namespace, until: int) -> dict | None:
    """Run config from --backend and every --set ASSET.FIELD=VALUE (VALUE parsed as JSON when it can be)."""
    ops: dict[str, dict] = {}
    if until >= 4:
        ops.setdefault("fine_tuned_model", {})["backend"] = args.backend
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        asset, dot, field = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set expects ASSET.FIELD=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        op = "dataset_splits" if asset in ("splits", "train_split", "validation_split", "test_split") else asset
        ops.setdefault(op, {})[field] = value
    return {"ops": {op: {"config": fields} for op, fields in ops.items()}} if ops else None


def _registry(args: argparse.Namespace) -> ModelRegistry:
    from ft_pipeline.lib.registry import ModelRegistry
    from ft_pipeline.lib.storage import resolve_data_dir

    url = args.url or os.environ.get("FT_PIPELINE_REGISTRY_URL")
    return ModelRegistry(url) if url else ModelRegistry.for_data_dir(resolve_data_dir(args.data_dir).resolve())


def _version_row(v: ModelVersion) -> str:
    where = v.remote_model_id or v.artifact_path or v.model_uri
    return f"{v.model_name:<24} v{v.version:<4} {v.lifecycle:<10} {v.backend:<10} {where}"


def _cmd_partitions(args: argparse.Namespace) -> int:
    import shutil

    import dagster as dg

    from ft_pipeline.defs.partitions import LOG_FILES_PARTITION
    from ft_pipeline.defs.resources import RawLogStore
    from ft_pipeline.lib.storage import partition_artifacts, resolve_data_dir

    if not os.environ.get("DAGSTER_HOME"):
        print(
            "error: DAGSTER_HOME is not set (export DAGSTER_HOME=$PWD/.dagster_home, as the Makefile does)",
            file=sys.stderr,
        )
        return 2
    instance = dg.DagsterInstance.get()
    known = sorted(instance.get_dynamic_partitions(LOG_FILES_PARTITION))
    if args.action == "list":
        for key in known:
            print(key)
        print(f"{len(known)} partition(s) of {LOG_FILES_PARTITION}", file=sys.stderr)
        return 0
    data_dir = resolve_data_dir(args.data_dir).resolve()
    if args.name not in known:
        print(
            f"error: {args.name!r} is not a partition of {LOG_FILES_PARTITION} ({len(known)} registered)",
            file=sys.stderr,
        )
        return 1
    instance.delete_dynamic_partition(LOG_FILES_PARTITION, args.name)
    print(f"deleted partition {args.name!r}: the next curated_dataset no longer includes it")
    if args.purge:
        for path in partition_artifacts(data_dir, args.name):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            print(f"  removed {path}")
    landing = RawLogStore(landing_dir=args.landing_dir or "", data_dir=str(data_dir))
    if landing.folder().exists(args.name):
        print(
            f"note: {args.name} is still in the landing folder {landing.root()}; remove it, or `ft-pipeline run` "
            "registers it again"
        )
    print(
        "curated datasets, splits and models built before keep their copies until the next build_dataset/train_model "
        "run"
    )
    return 0


def _cmd_registry(args: argparse.Namespace) -> int:
    from ft_pipeline.lib.registry import RegistryError, local_artifact_exists
    from ft_pipeline.lib.storage import resolve_data_dir

    if not (args.url or os.environ.get("FT_PIPELINE_REGISTRY_URL")):
        # Never create a registry (or a data directory) as a side effect of the wrong --data-dir.
        data_dir = resolve_data_dir(args.data_dir).resolve()
        if not (data_dir / "registry.db").exists():
            where = (
                f"data directory {data_dir} does not exist"
                if not data_dir.is_dir()
                else f"no registry at {data_dir / 'registry.db'}"
            )
            print(
                f"error: {where}; pass --data-dir (or set FT_PIPELINE_DATA_DIR / FT_PIPELINE_REGISTRY_URL)",
                file=sys.stderr,
            )
            return 2
    try:
        registry = _registry(args)
    except RegistryError as err:  # a corrupt database: one line, not a SQLAlchemy traceback
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        if args.action == "list":
            versions = registry.list_versions(args.model)
            if not versions:
                print("no model versions registered")
            for v in versions:
                print(_version_row(v))
        elif args.action == "show":
            version = (
                registry.resolve(args.model, args.alias)
                if args.version is None
                else registry.get_version(args.model, args.version)
            )
            if version is None:
                print(f"{args.model} has no '{args.alias}' version", file=sys.stderr)
                return 1
            print(json.dumps(version.__dict__, indent=2, default=str))
        elif args.action == "history":
            for e in registry.history(args.model):
                when = (
                    datetime.fromtimestamp(e.created_at, UTC).isoformat(timespec="seconds")
                    if isinstance(e.created_at, (int, float))
                    else e.created_at
                )
                print(
                    f"#{e.event_id:<4} {when}  {e.action:<9} {e.alias:<11} v{e.from_version} -> v{e.to_version}  "
                    f"by {e.actor}  eval {e.evaluation_id or '-'}  {e.reason or ''}"
                )
        elif args.action == "promote":
            current = registry.resolve(args.model, args.alias)
            if current is not None and current.version == args.version:
                # Promoting the holder again changes nothing; say so instead of echoing the old
                # event (which printed "vNone -> v1") and silently dropping --reason.
                print(
                    f"{args.model} v{args.version} is already {args.alias}: nothing changed, the reason was not "
                    "recorded"
                )
                return 0
            event = registry.promote(
                args.model,
                args.version,
                alias=args.alias,
                evaluation_id=args.evaluation,
                reason=args.reason,
                actor=f"cli:{os.environ.get('USER', 'unknown')}",
                check_artifact=local_artifact_exists,
            )
            print(f"{args.alias}: v{event.from_version} -> v{event.to_version}")
        elif args.action == "rollback":
            event = registry.rollback(
                args.model,
                alias=args.alias,
                to_version=args.to,
                reason=args.reason,
                actor=f"cli:{os.environ.get('USER', 'unknown')}",
                check_artifact=local_artifact_exists,
            )
            print(f"rolled back {args.alias}: v{event.from_version} -> v{event.to_version}")
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _summary(event: dg.DagsterEvent) -> str:
    metadata = event.materialization.metadata
    keys = [
        "records_in",
        "parsed",
        "quarantined",
        "conversations_in",
        "kept",
        "filtered",
        "removed",
        "dagster/row_count",
        "backend",
        "train_loss",
        "eval_loss",
        "fine_tuned_model",
        "decision",
        "candidate_version",
        "production_version",
    ]
    parts: list[str] = []
    for key in keys:
        if key in metadata and not (key == "dagster/row_count" and parts):
            value = metadata[key].value
            parts.append(
                f"{key.split('/')[-1]} {value:.4g}" if isinstance(value, float) else f"{key.split('/')[-1]} {value}"
            )
    return " ".join(parts) or (event.asset_key.to_user_string() if event.asset_key else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        # The module docstring is the description; its "commands:" line at column 0 keeps the command
        # lines indented (formatters dedent a docstring to its least-indented line).
        prog="ft-pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="register landed files and materialize the graph in process")
    run.add_argument("--data-dir", default=None, help="data directory (default $FT_PIPELINE_DATA_DIR or ./data)")
    run.add_argument("--landing-dir", default=None, help="landing folder (default <data dir>/raw)")
    run.add_argument(
        "--until", choices=STAGES, default=STAGES[-1], help=f"last stage to materialize (default: {STAGES[-1]})"
    )
    run.add_argument(
        "--backend",
        choices=["local_lora", "openai"],
        default="local_lora",
        help="training backend (default: local_lora on the built-in tiny base)",
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="ASSET.FIELD=VALUE",
        help="override a config field, e.g. --set fine_tuned_model.learning_rate=0.003 (repeatable)",
    )
    run.set_defaults(func=_cmd_run)

    validate = sub.add_parser("validate", help="format and quality report for a log file; non-zero exit on errors")
    validate.add_argument("file")
    validate.add_argument(
        "--model", default=DEFAULT_OPENAI_FINE_TUNING_MODEL, help="OpenAI model whose token limit applies"
    )
    validate.add_argument(
        "--max-record-bytes", type=int, default=None, help="default: the pipeline's own limit (256 KiB)"
    )
    validate.add_argument("--strict", action="store_true", help="also fail when records would be filtered")
    validate.set_defaults(func=_cmd_validate)

    registry = sub.add_parser("registry", help="model registry: list, show, promote, rollback, history")
    registry.add_argument(
        "--data-dir", default=None, help="data directory holding registry.db (default $FT_PIPELINE_DATA_DIR or ./data)"
    )
    registry.add_argument("--url", default=None, help="SQLAlchemy URL instead (default $FT_PIPELINE_REGISTRY_URL)")
    actions = registry.add_subparsers(dest="action", required=True)
    list_cmd = actions.add_parser("list", help="every registered version")
    list_cmd.add_argument("model", nargs="?", default=None)
    show = actions.add_parser("show", help="one version (default: the one behind --alias)")
    show.add_argument("model")
    show.add_argument("version", nargs="?", type=int, default=None)
    show.add_argument("--alias", default="production")
    history = actions.add_parser("history", help="the append-only audit log of alias moves")
    history.add_argument("model")
    promote = actions.add_parser("promote", help="move an alias to a version that passed its evaluation")
    promote.add_argument("model")
    promote.add_argument("version", type=int)
    promote.add_argument("--evaluation", required=True, help="id of the passing evaluation")
    promote.add_argument("--alias", default="production")
    promote.add_argument("--reason", required=True)
    rollback = actions.add_parser("rollback", help="point the alias back to the previous version (no retraining)")
    rollback.add_argument("model")
    rollback.add_argument("--to", type=int, default=None, help="a specific earlier version")
    rollback.add_argument("--alias", default="production")
    rollback.add_argument("--reason", required=True)
    registry.set_defaults(func=_cmd_registry)

    partitions = sub.add_parser("partitions", help="list or delete log_files partitions (one per landed file)")
    partitions.add_argument("--data-dir", default=None, help="data directory (default $FT_PIPELINE_DATA_DIR or ./data)")
    partitions.add_argument("--landing-dir", default=None, help="landing folder (default <data dir>/raw)")
    part_actions = partitions.add_subparsers(dest="action", required=True)
    part_actions.add_parser("list", help="every registered partition")
    delete = part_actions.add_parser("delete", help="unregister one partition, so the next dataset build leaves it out")
    delete.add_argument("name", help="the partition key (the file name relative to the landing folder)")
    delete.add_argument("--purge", action="store_true", help="also delete its parsed, cleaned and quarantined data")
    partitions.set_defaults(func=_cmd_partitions)

    sample = sub.add_parser("sample-data", help="write the deterministic sample logs into DIR")
    sample.add_argument("directory")
    sample.add_argument("--seed", type=int, default=7)
    sample.set_defaults(func=_cmd_sample_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
