"""``ft-pipeline``: the pipeline for people outside the UI.

    ft-pipeline run [--data-dir DIR] [--backend B] [--until ASSET]   register landed files, materialize the graph
    ft-pipeline validate FILE [--strict]               format + quality report for any JSONL/Parquet log
    ft-pipeline sample-data DIR                        write the deterministic sample logs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

STAGES = ["raw_conversation_logs", "cleaned_conversations", "curated_dataset", "splits", "fine_tuned_model"]


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from ft_pipeline.lib.sample_data import write_sample

    for path in write_sample(args.directory, seed=args.seed):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ft_pipeline.lib.cleaning import FILTER_REASONS, clean_conversations
    from ft_pipeline.lib.openai_format import validate_examples, validate_jsonl_file
    from ft_pipeline.lib.records import QUARANTINE_REASONS, ReadConfig, read_log_file

    path = Path(args.file)
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    try:
        parsed = read_log_file(path, ReadConfig(max_record_bytes=args.max_record_bytes) if args.max_record_bytes else ReadConfig())
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cleaned = clean_conversations(parsed.conversations)
    print(f"# {path.name}\n")
    print(f"records: {parsed.n_records}  parsed: {len(parsed.conversations)}  quarantined: {len(parsed.quarantine)}"
          f"  blank lines: {parsed.blank_lines}")
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
    print(f"\nresult: {'FAILED' if errors or not report.ok else 'OK'} ({errors} error(s))")
    return 1 if errors or not report.ok else 0


def _cmd_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from ft_pipeline.definitions import ALL_ASSETS, DATASET_ASSETS, PER_FILE_ASSETS, TRAINING_ASSETS, default_resources
    from ft_pipeline.defs.partitions import log_files_partitions
    from ft_pipeline.defs.resources import PipelineStorage, RawLogStore
    from ft_pipeline.lib.storage import read_latest, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir).resolve()
    resources = {
        **default_resources(),
        "storage": PipelineStorage(data_dir=str(data_dir)),
        "raw_log_store": RawLogStore(landing_dir=args.landing_dir or "", data_dir=str(data_dir)),
    }
    if not os.environ.get("DAGSTER_HOME"):
        print("error: DAGSTER_HOME is not set; `make demo` sets it (or export DAGSTER_HOME=$PWD/.dagster_home)", file=sys.stderr)
        return 2
    until = STAGES.index(args.until)
    instance = dg.DagsterInstance.get()
    files = resources["raw_log_store"].list_files()
    if not files:
        print(f"no log files in {resources['raw_log_store'].root()}; try `ft-pipeline sample-data {data_dir / 'raw'}`", file=sys.stderr)
        return 1
    known = set(instance.get_dynamic_partitions(log_files_partitions.name))
    new = [f for f in files if f not in known]
    if new:
        instance.add_dynamic_partitions(log_files_partitions.name, new)
    print(f"{len(files)} log file(s) in {resources['raw_log_store'].root()} ({len(new)} newly registered)")

    per_file = PER_FILE_ASSETS[: until + 1]
    for name in files:
        result = dg.materialize(per_file, partition_key=name, instance=instance, resources=resources, tags={"ft_pipeline/cli": "run"})
        if not result.success:
            print(f"failed on {name}", file=sys.stderr)
            return 1
        print(f"  {name}: " + ", ".join(_summary(e) for e in result.get_asset_materialization_events()))
    if until >= 2:
        selection = [*DATASET_ASSETS, *TRAINING_ASSETS][: until - 1]
        run_config = {"ops": {"fine_tuned_model": {"config": {"backend": args.backend}}}} if until >= 4 else None
        result = dg.materialize(ALL_ASSETS, selection=selection, instance=instance, resources=resources, raise_on_error=False,
                                run_config=run_config, tags={"ft_pipeline/cli": "run"})
        for event in result.get_asset_materialization_events():
            print(f"  {event.asset_key.to_user_string()}: {_summary(event)}")
        for evaluation in result.get_asset_check_evaluations():
            status = "passed" if evaluation.passed else "FAILED"
            print(f"  check {evaluation.asset_key.to_user_string()}.{evaluation.check_name}: {status}"
                  + ("" if evaluation.passed else f" — {evaluation.description}"))
        if not result.success:
            print("the dataset run failed", file=sys.stderr)
            return 1

    print("\noutputs:")
    for stage in ("cleaned", "curated", "splits", "models"):
        if stage == "cleaned":
            print(f"  cleaned partitions: {data_dir / 'cleaned'}")
            continue
        pointer = read_latest(data_dir / stage)
        if pointer is None:
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


def _summary(event) -> str:
    metadata = event.materialization.metadata
    keys = ["records_in", "parsed", "quarantined", "conversations_in", "kept", "filtered", "removed", "dagster/row_count"]
    parts = []
    for key in keys:
        if key in metadata and not (key == "dagster/row_count" and parts):
            parts.append(f"{key.split('/')[-1]} {metadata[key].value}")
    return " ".join(parts) or event.asset_key.to_user_string()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ft-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="register landed files and materialize the graph in process")
    run.add_argument("--data-dir", default=None, help="data directory (default $FT_PIPELINE_DATA_DIR or ./data)")
    run.add_argument("--landing-dir", default=None, help="landing folder (default <data dir>/raw)")
    run.add_argument("--until", choices=STAGES, default=STAGES[-1], help=f"last stage to materialize (default: {STAGES[-1]})")
    run.add_argument("--backend", choices=["local_lora", "openai"], default="local_lora", help="training backend (default: local_lora on the built-in tiny base)")
    run.set_defaults(func=_cmd_run)

    validate = sub.add_parser("validate", help="format and quality report for a log file; non-zero exit on errors")
    validate.add_argument("file")
    validate.add_argument("--model", default="gpt-4o-mini-2024-07-18", help="OpenAI model whose token limit applies")
    validate.add_argument("--max-record-bytes", type=int, default=None, help="default: the pipeline's own limit (256 KiB)")
    validate.add_argument("--strict", action="store_true", help="also fail when records would be filtered")
    validate.set_defaults(func=_cmd_validate)

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
