"""The ``ft-pipeline`` command line: run the pipeline, validate log files, manage the log_files
partitions and the model registry. ``ft-pipeline --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL
from ft_pipeline.lib.training.record import BACKENDS
from ft_pipeline.lib.vllm_command import add_vllm_arguments

if TYPE_CHECKING:  # the CLI imports dagster and the registry only in the commands that need them
    import dagster as dg

    from ft_pipeline.lib.registry import ModelRegistry, ModelVersion
    from ft_pipeline.lib.serving.config import ServeConfig

STAGES = [
    "raw_conversation_logs",
    "cleaned_conversations",
    "curated_dataset",
    "splits",
    "fine_tuned_model",
    "evaluation_report",
    "promoted_model",
]

#: The code location that serves ft_pipeline.definitions in workspace.yaml. Runs launched by
#: ``ft-pipeline run`` carry it in their repository tag, so the UI lists them on the job's page.
CODE_LOCATION = "ft_pipeline"
#: Another location name for that tag, e.g. the Helm deployment's (``ft-pipeline``).
CODE_LOCATION_ENV = "FT_PIPELINE_CODE_LOCATION"
#: The repository name Dagster gives the one ``Definitions`` object of a code location.
REPOSITORY_NAME = "__repository__"
#: Tag of every run ``ft-pipeline run`` launches (to find them among the runs of the instance).
CLI_RUN_TAG = "ft_pipeline/cli"

DESCRIPTION = "Run the fine-tuning pipeline, validate log files, and manage partitions and the model registry."

EPILOG = """\
environment:
  DAGSTER_HOME              the Dagster instance used by run and partitions (make demo and make dev set it)
  FT_PIPELINE_DATA_DIR      the data directory when --data-dir is not given (default: ./data)
  FT_PIPELINE_LANDING_DIR   the landing folder or URL when --landing-dir is not given (default: <data dir>/raw)
  FT_PIPELINE_REGISTRY_URL  the model registry's SQLAlchemy URL when --url is not given
                            (default: <data dir>/registry.db)

Run 'ft-pipeline COMMAND --help' for the options of a command."""

REGISTRY_URL_ENV = "FT_PIPELINE_REGISTRY_URL"
LANDING_DIR_ENV = "FT_PIPELINE_LANDING_DIR"


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
    from ft_pipeline.definitions import default_resources
    from ft_pipeline.defs.partitions import LOG_FILES_PARTITION
    from ft_pipeline.defs.resources import ModelRegistryResource, PipelineStorage, RawLogStore
    from ft_pipeline.lib.storage import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir).resolve()
    raw_log_store = RawLogStore(landing_dir=_landing_dir(args), data_dir=str(data_dir))
    resources = {
        **default_resources(),
        "storage": PipelineStorage(data_dir=str(data_dir)),
        "raw_log_store": raw_log_store,
        "model_registry": ModelRegistryResource(
            url=os.environ.get(REGISTRY_URL_ENV, ""),
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
    import dagster as dg

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

    # The named jobs of ft_pipeline.definitions, so each run shows on its job's page in the UI
    # (dg.materialize would run them as __ephemeral_asset_job__).
    plan = _job_plan(resources, until)
    tags = _run_tags()
    ingest = plan[0]
    for name in files:
        result = ingest.job.execute_in_process(
            instance=instance,
            partition_key=name,
            run_config=ingest.config(run_config),
            asset_selection=ingest.selection,
            tags=tags,
            raise_on_error=False,
        )
        if not result.success:
            print(f"failed on {name}", file=sys.stderr)
            _print_failures(result)
            return 1
        print(f"  {name}: " + ", ".join(_summary(e) for e in result.get_asset_materialization_events()))
    for planned in plan[1:]:
        result = planned.job.execute_in_process(
            instance=instance,
            run_config=planned.config(run_config),
            asset_selection=planned.selection,
            tags=tags,
            raise_on_error=False,
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
                print(f"the {planned.job.name} run failed", file=sys.stderr)
                _print_failures(result)
                return 1
    _print_outputs(data_dir, until)
    return 0


def _cmd_replace_hosted_model(args: argparse.Namespace) -> int:
    """Provider exit: the job replace_hosted_model in process (see README "Leaving a hosted provider")."""
    if not os.environ.get("DAGSTER_HOME"):
        print("error: DAGSTER_HOME is not set (export DAGSTER_HOME=$PWD/.dagster_home)", file=sys.stderr)
        return 2
    missing = _missing_registry(args)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    import dagster as dg

    from ft_pipeline.definitions import ALL_ASSETS, default_resources
    from ft_pipeline.defs.provider_exit import JOB_NAME, replace_hosted_model_job, replacement_run_config
    from ft_pipeline.defs.resources import ModelRegistryResource, PipelineStorage
    from ft_pipeline.lib.storage import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir).resolve()
    args.backend = "local_lora"  # the replacement is a local model; --set cannot change that
    try:
        run_config = replacement_run_config(_run_config(args, STAGES.index("promoted_model")))
    except ValueError as err:
        print(f"error: --set: {err}", file=sys.stderr)
        return 2
    resources = {
        **default_resources(),
        "storage": PipelineStorage(data_dir=str(data_dir)),
        "model_registry": ModelRegistryResource(
            url=args.url or os.environ.get(REGISTRY_URL_ENV, ""),
            data_dir=str(data_dir),
            publish_url=os.environ.get("FT_PIPELINE_PUBLISH_URL", ""),
        ),
    }
    defs = dg.Definitions(assets=ALL_ASSETS, jobs=[replace_hosted_model_job], resources=resources)
    result = defs.resolve_job_def(JOB_NAME).execute_in_process(
        instance=dg.DagsterInstance.get(), run_config=run_config, tags=_run_tags(), raise_on_error=False
    )
    for event in result.get_asset_materialization_events():
        print(f"  {event.asset_key.to_user_string() if event.asset_key else '?'}: {_summary(event)}")
    gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
    failed_steps = {e.step_key for e in result.get_step_failure_events()}
    if failed_steps and not (gate and not gate[0].passed and failed_steps <= {"evaluation_report"}):
        print(f"the {JOB_NAME} run failed", file=sys.stderr)
        _print_failures(result)
        return 1
    _print_outputs(data_dir, STAGES.index("promoted_model"))
    if gate and not gate[0].passed:
        print("\nnot replaced: the hosted model stays production (the gate above says why)", file=sys.stderr)
        return 1
    return 0


class _PlannedRun(NamedTuple):
    """One run of a named job: the job, the assets to materialize (``None``: all of the job's) and
    the steps that materialize them."""

    job: dg.JobDefinition
    selection: Sequence[dg.AssetKey] | None
    steps: frozenset[str]

    def config(self, run_config: dict | None) -> dict | None:
        """The part of the run config (from --set and --backend) for this run's steps."""
        ops = {op: config for op, config in (run_config or {}).get("ops", {}).items() if op in self.steps}
        return {"ops": ops} if ops else None


def _job_plan(resources: dict[str, object], until: int) -> list[_PlannedRun]:
    """The runs that materialize the stages up to ``STAGES[until]``: ``ingest_log_file`` (once per
    partition), then the smallest named job holding the downstream stages asked for
    (``build_dataset`` or ``train_model``), each with the asset subset to run."""
    import dagster as dg

    from ft_pipeline.definitions import (
        ALL_ASSETS,
        AUGMENTATION_ASSETS,
        DOWNSTREAM_ASSETS,
        PER_FILE_ASSETS,
        PREFERENCE_ASSETS,
        build_dataset_job,
        ingest_log_file_job,
        train_model_job,
    )

    defs = dg.Definitions(
        assets=ALL_ASSETS, jobs=[ingest_log_file_job, build_dataset_job, train_model_job], resources=resources
    )

    def planned(job_name: str, assets: list[dg.AssetsDefinition]) -> _PlannedRun:
        job = defs.resolve_job_def(job_name)
        keys = {key for asset in assets for key in asset.keys}
        whole = set(job.asset_layer.selected_asset_keys)
        if not keys <= whole:
            raise RuntimeError(
                f"job {job_name} does not materialize {sorted(k.to_user_string() for k in keys - whole)}"
            )
        return _PlannedRun(job, None if keys == whole else sorted(keys), frozenset(asset.op.name for asset in assets))

    plan = [planned(ingest_log_file_job.name, PER_FILE_ASSETS[: until + 1])]
    if until >= 2:
        downstream = DOWNSTREAM_ASSETS[: until - 1]
        if until >= STAGES.index("splits"):
            # The preference data is built from the cleaned partitions against the SFT splits.
            downstream = [*downstream, *PREFERENCE_ASSETS]
            # The augmented train split (it only counts while its `enabled` is off).
            downstream = [*downstream, *AUGMENTATION_ASSETS]
        dataset_keys = set(defs.resolve_job_def(build_dataset_job.name).asset_layer.selected_asset_keys)
        in_dataset_job = all(set(asset.keys) <= dataset_keys for asset in downstream)
        plan.append(planned(build_dataset_job.name if in_dataset_job else train_model_job.name, downstream))
    return plan


def _run_tags() -> dict[str, str]:
    """Tags of every run ``ft-pipeline run`` launches. The repository tag is what the UI's job
    pages filter runs by; runs executed in process do not get it by themselves."""
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    location = os.environ.get(CODE_LOCATION_ENV) or CODE_LOCATION
    return {CLI_RUN_TAG: "run", REPOSITORY_LABEL_TAG: f"{REPOSITORY_NAME}@{location}"}


def _print_failures(result: dg.ExecuteInProcessResult) -> None:
    """One line per failed step: the step and the innermost error's first line."""
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        message = error.message.strip().splitlines()[0] if error is not None and error.message.strip() else "failed"
        print(f"  {event.step_key}: {message}", file=sys.stderr)


def _print_outputs(data_dir: Path, until: int) -> None:
    """Where the latest outputs are, read from the stages' typed manifests; the decision, its rules
    and the first answers side by side when the evaluation ran."""
    from ft_pipeline.lib.evaluation.summary import read_evaluation_summary
    from ft_pipeline.lib.manifests import CuratedManifest, ManifestError, SplitsManifest, read_manifest
    from ft_pipeline.lib.training.record import read_model_record

    print("\noutputs:")
    print(f"  cleaned partitions: {data_dir / 'cleaned'}")
    try:
        curated = read_manifest(data_dir / "curated", CuratedManifest)
        if curated is not None:
            print(f"  curated    {curated.path}")
        splits = read_manifest(data_dir / "splits", SplitsManifest)
        if splits is not None:
            for split in splits.paths:
                print(f"  {split:<10} {splits.parquet(split)}\n  {'':<10} {splits.jsonl(split)}")
        record = read_model_record(data_dir / "models") if until >= 4 else None
        if record is not None:
            where = record.adapter_dir or record.remote_model_id
            print(f"  model      {where} ({record.backend}, run key {record.run_key})")
        summary = read_evaluation_summary(data_dir / "reports") if until >= 5 else None
    except ManifestError as err:  # an output written by an older ft-pipeline, not rebuilt by this run
        print(f"  {err}")
        summary = None
    if summary is not None:
        print(f"  report     {Path(summary.path).with_name('report.md')}")
    print(f"  quarantine {data_dir / 'quarantine'}")
    if summary is None:
        return
    verdict = (
        "already production" if summary.already_production else ("PROMOTE" if summary.passed else "DO NOT PROMOTE")
    )
    print(f"\ndecision: {verdict}")
    for rule in summary.rules:
        mark = "info" if rule.get("informational") else "pass" if rule["passed"] else "FAIL"
        print(f"  [{mark}] {rule['rule']}: {rule['detail']}")
    report = json.loads(Path(summary.path).read_text(encoding="utf-8"))
    _print_preference_accuracy((report.get("extra") or {}).get("preference_accuracy"))
    _print_side_by_side(report)


def _print_preference_accuracy(preference: dict | None) -> None:
    """A candidate trained on preferences: its preference accuracy on the held-out pairs."""
    if not preference:
        return
    if preference.get("status") != "measured":
        print(f"\npreference accuracy: not measured: {preference.get('reason')}")
        return
    print(
        f"\npreference accuracy on {preference['n_pairs']} held-out pairs: candidate {preference['candidate']:.4f}, "
        f"base {preference['base']:.4f}, delta {preference['delta']:+.4f}, "
        f"{preference['confidence']:.0%} CI [{preference['ci_low']:+.4f}, {preference['ci_high']:+.4f}]"
    )


def _print_side_by_side(report: dict) -> None:
    """The first test prompts with the reference, the base's and the candidate's answers."""
    rows = report.get("side_by_side") or []
    if not rows:
        return
    primary = report.get("answer_metric") or report.get("primary_metric", "rougeL")
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
    """Run config from --backend and every --set ASSET.FIELD=VALUE (VALUE parsed as JSON when it can be).

    ASSET is an asset (``train_split``), ``splits`` for the three splits, or the step that
    materializes it (the name the Launchpad shows its config under)."""
    from ft_pipeline.definitions import ALL_ASSETS

    step_of = {key.to_user_string(): asset.op.name for asset in ALL_ASSETS for key in asset.keys}
    step_of["splits"] = step_of["train_split"]
    steps = set(step_of.values())
    ops: dict[str, dict] = {}
    if until >= 4:
        ops.setdefault(step_of["fine_tuned_model"], {})["backend"] = args.backend
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        asset, dot, field = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set expects ASSET.FIELD=VALUE, got {item!r}")
        op = step_of.get(asset, asset)
        if op not in steps:
            raise SystemExit(
                f"--set {item!r}: {asset!r} is not an asset of the pipeline ({', '.join(sorted(step_of))})"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        ops.setdefault(op, {})[field] = value
    return {"ops": {op: {"config": fields} for op, fields in ops.items()}} if ops else None


def _landing_dir(args: argparse.Namespace) -> str:
    return args.landing_dir or os.environ.get(LANDING_DIR_ENV, "")


def _data_dir_origin(args: argparse.Namespace) -> str:
    """Where the data directory came from, for error messages."""
    from ft_pipeline.lib.storage import DATA_DIR_ENV

    if args.data_dir:
        return "from --data-dir"
    if os.environ.get(DATA_DIR_ENV):
        return f"from ${DATA_DIR_ENV}"
    return "the default: data/ in the current directory"


_DATA_DIR_FIX = (
    "Pass --data-dir DIR or set FT_PIPELINE_DATA_DIR to the data directory of a pipeline, or create one with "
    "`make demo` or `ft-pipeline run`"
)
_REGISTRY_FIX = (
    "Pass --data-dir DIR or --url URL, or set FT_PIPELINE_DATA_DIR or FT_PIPELINE_REGISTRY_URL; a new data "
    "directory gets its registry from `make demo` or `ft-pipeline run`"
)


def _missing_data_dir(args: argparse.Namespace, *, looked_for: str = "", fix: str = _DATA_DIR_FIX) -> str | None:
    """Why the data directory cannot be used (``None``: it exists)."""
    from ft_pipeline.lib.storage import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir).resolve()
    if data_dir.is_dir():
        return None
    return f"data directory {data_dir} does not exist ({_data_dir_origin(args)}{looked_for}). {fix}"


def _missing_registry(args: argparse.Namespace) -> str | None:
    """Why the registry the options name does not exist (``None``: it does, or it is on a database
    server, which the registry itself connects to). Opening a registry creates it; a typo in
    --data-dir must not create an empty one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from ft_pipeline.lib.storage import resolve_data_dir

    fix = _REGISTRY_FIX
    url = args.url or os.environ.get(REGISTRY_URL_ENV)
    if url:
        origin = "--url" if args.url else f"${REGISTRY_URL_ENV}"
        try:
            parsed = make_url(url)
        except ArgumentError:
            return f"{origin} is not a SQLAlchemy URL (e.g. sqlite:///data/registry.db or postgresql+psycopg2://…)"
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:") or parsed.query:
            return None
        path = Path(parsed.database).resolve()
        return None if path.is_file() else f"no registry at {path} (from {origin} {url}). {fix}"
    data_dir = resolve_data_dir(args.data_dir).resolve()
    looked = data_dir / "registry.db"
    missing_dir = _missing_data_dir(args, looked_for=f"; looked for the registry at {looked}", fix=fix)
    if missing_dir is not None:
        return missing_dir
    return None if looked.is_file() else f"no registry at {looked} (data directory {_data_dir_origin(args)}). {fix}"


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table: a header, then one line per row, columns aligned."""
    cells = [list(columns), *[["-" if value is None else str(value) for value in row] for row in rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip())


def _when(timestamp: object) -> str:
    if isinstance(timestamp, (int, float)):
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    return str(timestamp)


def _location(v: ModelVersion) -> str:
    return v.remote_model_id or v.artifact_path or v.model_uri


def _cmd_partitions(args: argparse.Namespace) -> int:
    import shutil

    import dagster as dg

    from ft_pipeline.defs.partitions import LOG_FILES_PARTITION
    from ft_pipeline.defs.resources import RawLogStore
    from ft_pipeline.lib.storage import layout, partition_artifacts, resolve_data_dir, safe_name

    if not os.environ.get("DAGSTER_HOME"):
        print(
            "error: DAGSTER_HOME is not set (export DAGSTER_HOME=$PWD/.dagster_home, as the Makefile does)",
            file=sys.stderr,
        )
        return 2
    missing = _missing_data_dir(args)
    if missing is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    data_dir = resolve_data_dir(args.data_dir).resolve()
    landing = RawLogStore(landing_dir=_landing_dir(args), data_dir=str(data_dir))
    instance = dg.DagsterInstance.get()
    known = sorted(instance.get_dynamic_partitions(LOG_FILES_PARTITION))
    if args.action == "list":
        if not known:
            print(
                f"no {LOG_FILES_PARTITION} partitions registered; `ft-pipeline run` or the new_log_files sensor "
                "registers one per landed file"
            )
            return 0
        folders = layout(data_dir)
        landed = set(landing.list_files())

        def done(stage: str, key: str) -> str:
            return "yes" if (folders[stage] / safe_name(key) / "latest.json").exists() else "no"

        _print_table(
            ["PARTITION", "LANDED", "PARSED", "CLEANED"],
            [[key, "yes" if key in landed else "no", done("parsed", key), done("cleaned", key)] for key in known],
        )
        print(f"{len(known)} partition(s) of {LOG_FILES_PARTITION}; landing folder {landing.root()}", file=sys.stderr)
        return 0
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


def _open_registry(args: argparse.Namespace) -> ModelRegistry | int:
    """The registry --url / --data-dir name, or the exit code after printing why it cannot be used."""
    from ft_pipeline.lib.registry import ModelRegistry, RegistryError
    from ft_pipeline.lib.storage import resolve_data_dir

    # Never create a registry (or a data directory) as a side effect of a wrong --data-dir or --url.
    missing = _missing_registry(args)
    if missing is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    url = args.url or os.environ.get(REGISTRY_URL_ENV)
    try:
        return ModelRegistry(url) if url else ModelRegistry.for_data_dir(resolve_data_dir(args.data_dir).resolve())
    except RegistryError as err:  # a corrupt database: one line, not a SQLAlchemy traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


def _cmd_registry(args: argparse.Namespace) -> int:
    from ft_pipeline.lib.registry import RegistryError, local_artifact_exists

    registry = _open_registry(args)
    if isinstance(registry, int):
        return registry
    try:
        if args.action == "list":
            versions = registry.list_versions(args.model)
            if not versions:
                print("no model versions registered" + (f" for {args.model}" if args.model else ""))
                return 0
            _print_table(
                ["MODEL", "VERSION", "LIFECYCLE", "BACKEND", "CREATED", "EVALUATION", "LOCATION"],
                [
                    [
                        v.model_name,
                        v.version,
                        v.lifecycle,
                        v.backend,
                        _when(v.created_at),
                        v.evaluation_id,
                        _location(v),
                    ]
                    for v in versions
                ],
            )
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
            events = registry.history(args.model)
            if not events:
                print(f"no alias moves recorded for {args.model}")
                return 0
            _print_table(
                ["EVENT", "WHEN", "ACTION", "ALIAS", "CHANGE", "BY", "EVALUATION", "REASON"],
                [
                    [
                        f"#{e.event_id}",
                        _when(e.created_at),
                        e.action,
                        e.alias,
                        f"v{e.from_version} -> v{e.to_version}",
                        e.actor,
                        e.evaluation_id,
                        e.reason,
                    ]
                    for e in events
                ],
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
    finally:
        registry.close()
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    """``ft-pipeline review import|show``: human verdicts on an evaluation's review sample."""
    from ft_pipeline.lib.evaluation.review import ReviewFileError, import_review_file, kappa_with_ci
    from ft_pipeline.lib.registry import RegistryError

    registry = _open_registry(args)
    if isinstance(registry, int):
        return registry
    try:
        if args.action == "import":
            try:
                done = import_review_file(registry, args.file, reviewer=args.reviewer)
            except ReviewFileError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            evaluations = ", ".join(f"{e} ({n})" for e, n in done.by_eval.items()) or "none"
            print(
                f"read {done.rows} rows of {args.file}: imported {done.imported} verdicts by {done.reviewer} "
                f"(new {done.new}, updated {done.updated}, unchanged {done.unchanged}; evaluations: {evaluations}), "
                f"skipped {done.skipped_blank} blank (not reviewed), rejected {len(done.rejected)}"
            )
            for reason in done.rejected:
                print(f"rejected: {reason}", file=sys.stderr)
            return 1 if done.rejected else 0
        sample = registry.review_sample(args.eval_id)
        if not sample:
            print(f"error: the registry has no review sample for evaluation {args.eval_id}", file=sys.stderr)
            return 1
        verdicts = registry.review_verdicts(eval_id=args.eval_id)
        judged = sum(1 for item in sample if item["judge_verdict"])
        print(
            f"evaluation {args.eval_id}: review sample of {len(sample)} examples "
            f"({judged} judged by {sample[0]['judge_model'] or 'no judge'}), {len(verdicts)} human verdicts"
        )
        if verdicts:
            by_reviewer = Counter((v["reviewer"], v["preferred"]) for v in verdicts)
            reviewers = sorted({v["reviewer"] for v in verdicts})
            _print_table(
                ["REVIEWER", "CANDIDATE", "BASE", "TIE"],
                [[r, *(by_reviewer[(r, p)] for p in ("candidate", "base", "tie"))] for r in reviewers],
            )
        pairs = [(v["judge_verdict"], v["preferred"]) for v in verdicts if v["judge_verdict"]]
        if pairs:
            kappa = kappa_with_ci([j for j, _ in pairs], [h for _, h in pairs])
            print(
                f"judge vs human on this evaluation: Cohen's kappa {kappa.kappa:.3f}, 95% CI "
                f"[{kappa.ci_low:.3f}, {kappa.ci_high:.3f}], raw agreement {kappa.raw_agreement:.3f}, n={kappa.n}"
            )
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        registry.close()
    return 0


def _serve_vllm(args: argparse.Namespace) -> int:
    """``ft-pipeline serve --engine vllm``: vLLM's command or Kubernetes manifest for the registry's
    production and staging adapters (ft_pipeline/lib/vllm_command.py), or vLLM itself where it is
    installed; never started on a machine without it."""
    from ft_pipeline.lib.registry import ModelRegistry
    from ft_pipeline.lib.storage import resolve_data_dir
    from ft_pipeline.lib.vllm_command import VllmSettings, run_vllm_engine

    missing = _missing_registry(args)
    if missing is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    data_dir = resolve_data_dir(args.data_dir).resolve()
    url = args.url or os.environ.get(REGISTRY_URL_ENV)
    registry = ModelRegistry(url) if url else ModelRegistry.for_data_dir(data_dir)
    try:
        return run_vllm_engine(
            registry,
            args.model,
            data_dir,
            VllmSettings(host=args.host, port=args.port),
            print_command=args.print_command,
            print_manifest=args.print_manifest,
            image=args.vllm_image,
            fetch_image=args.fetch_image,
        )
    finally:
        registry.close()


def _cmd_serve(args: argparse.Namespace) -> int:
    """``ft-pipeline serve``: the OpenAI-compatible server (ft_pipeline/lib/serving) in the foreground."""
    if args.engine == "vllm":
        return _serve_vllm(args)
    import logging

    from ft_pipeline.lib.registry import ModelRegistry, RegistryError
    from ft_pipeline.lib.serving import DEFAULT_ASSIGNMENT_LOG, ServeConfig
    from ft_pipeline.lib.serving.server import build_server, serve
    from ft_pipeline.lib.storage import resolve_data_dir

    missing = _missing_registry(args)  # never create an empty registry from a wrong --data-dir
    if missing is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    data_dir = resolve_data_dir(args.data_dir).resolve()
    try:
        config = ServeConfig(
            model_name=args.model,
            host=args.host,
            port=args.port,
            poll_interval_s=args.poll_interval,
            challenger_alias=args.challenger_alias,
            challenger_share=args.challenger_share,
            assignment_log=args.assignment_log or str(data_dir / DEFAULT_ASSIGNMENT_LOG),
            max_tokens_limit=args.max_tokens_limit,
            max_context_tokens=args.max_context_tokens,
            device=args.device,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = args.url or os.environ.get(REGISTRY_URL_ENV)
    try:
        registry = ModelRegistry(url) if url else ModelRegistry.for_data_dir(data_dir)
        server = build_server(registry, config, data_dir=data_dir)
    except RegistryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    production = server.pool.holder("production")
    if production is None:
        if server.pool.last_error:
            server.stop()
            print(f"error: {server.pool.last_error}", file=sys.stderr)
            return 1
        print(f"{config.model_name} has no production version yet; serving starts when one is promoted")
    else:
        print(f"serving {config.model_name} v{production.version} (production)")
    print(f"OpenAI-compatible API on http://{config.host}:{config.port}/v1 (health: /health, metrics: /metrics)")
    serve(server, config)
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
        "pairs",
        "kto_examples",
        "dropped",
        "dagster/row_count",
        "augmented_copies",
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


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ft-pipeline")
    except PackageNotFoundError:
        return "unknown (the package is not installed)"


def _add_location_options(
    parser: argparse.ArgumentParser, *, landing: bool = False, url: bool = False, repeated: bool = False
) -> None:
    """--data-dir (and --landing-dir, --url) on ``parser``. The copies on a command's subcommands
    (``repeated``) default to SUPPRESS, so ``registry --data-dir X history`` and ``registry history
    --data-dir X`` both work: an option left out below does not overwrite the value given above."""
    default = argparse.SUPPRESS if repeated else None
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default,
        help="data directory (default: $FT_PIPELINE_DATA_DIR, else ./data)",
    )
    if landing:
        parser.add_argument(
            "--landing-dir",
            metavar="DIR|URL",
            default=default,
            help="folder or fsspec URL where log files land (default: $FT_PIPELINE_LANDING_DIR, else <data dir>/raw)",
        )
    if url:
        parser.add_argument(
            "--url",
            default=default,
            help="SQLAlchemy URL of the registry, instead of <data dir>/registry.db "
            "(default: $FT_PIPELINE_REGISTRY_URL)",
        )


class _HelpFormatter(argparse.HelpFormatter):
    """Options and commands in a column wide enough for the longest (``sample-data``) beside their
    help; the commands listed under their title without a line for the COMMAND placeholder."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(command) for command in action._get_subactions())
        return super()._format_action(action)


class _TopHelpFormatter(argparse.RawDescriptionHelpFormatter, _HelpFormatter):
    """The top-level help: its epilog (the environment variables) laid out as written."""


def _add_command(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str = ""
) -> argparse.ArgumentParser:
    """A subcommand whose one-line ``summary`` is listed in its parent's help and opens its own."""
    return sub.add_parser(
        name,
        help=summary,
        formatter_class=_HelpFormatter,
        description=f"{summary[0].upper()}{summary[1:]}." + (f" {description}" if description else ""),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ft-pipeline",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_TopHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    run = _add_command(
        sub,
        "run",
        "register the landed log files and run the pipeline's jobs in process",
        "One log_files partition per landed file; an ingest_log_file run for each, then a train_model run "
        "(build_dataset when --until stops at the dataset), against the Dagster instance in $DAGSTER_HOME. "
        "What make demo runs.",
    )
    _add_location_options(run, landing=True)
    run.add_argument(
        "--until",
        choices=STAGES,
        default=STAGES[-1],
        metavar="STAGE",
        help=f"last stage to materialize: {', '.join(STAGES)} (default: {STAGES[-1]})",
    )
    run.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="local_lora",
        metavar="BACKEND",
        help=f"training backend: {', '.join(BACKENDS)} (default: local_lora, on the built-in default base)",
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="ASSET.FIELD=VALUE",
        help="override a config field, e.g. --set fine_tuned_model.learning_rate=0.003 (repeatable)",
    )
    run.set_defaults(func=_cmd_run)

    replace = _add_command(
        sub,
        "replace-hosted-model",
        "replace the hosted production model with a local LoRA model proven no worse",
        "Provider exit: runs the job replace_hosted_model in process (Dagster instance in $DAGSTER_HOME): trains a "
        "local_lora candidate on the splits the hosted production model was trained on, evaluates it against that "
        "model with the gate's non_inferiority rule and promotes it only if the gate passes. The hosted model is "
        "called through the openai_fine_tuning resource (OPENAI_API_KEY, OPENAI_BASE_URL). Exit code 1 when the "
        "hosted model stays production.",
    )
    _add_location_options(replace, url=True)
    replace.add_argument(
        "--set",
        action="append",
        metavar="ASSET.FIELD=VALUE",
        help="override a config field, e.g. --set evaluation_report.non_inferiority_margin=0.01 (repeatable)",
    )
    replace.set_defaults(func=_cmd_replace_hosted_model)

    validate = _add_command(
        sub,
        "validate",
        "format and quality report for a JSONL or Parquet log file",
        "The pipeline's parsing, quality, PII and OpenAI-format checks. Exit code 1 on errors.",
    )
    validate.add_argument("file", help="the log file")
    validate.add_argument(
        "--model", default=DEFAULT_OPENAI_FINE_TUNING_MODEL, help="OpenAI model whose token limit applies"
    )
    validate.add_argument(
        "--max-record-bytes", type=int, default=None, help="default: the pipeline's own limit (256 KiB)"
    )
    validate.add_argument("--strict", action="store_true", help="also fail when records would be filtered")
    validate.set_defaults(func=_cmd_validate)

    sample = _add_command(sub, "sample-data", "write the deterministic sample logs into DIR")
    sample.add_argument("directory", metavar="DIR")
    sample.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    sample.set_defaults(func=_cmd_sample_data)

    partitions = _add_command(
        sub,
        "partitions",
        "list or delete log_files partitions (one per landed file)",
        "Uses the Dagster instance in $DAGSTER_HOME.",
    )
    _add_location_options(partitions, landing=True)
    part_actions = partitions.add_subparsers(dest="action", required=True, title="subcommands", metavar="SUBCOMMAND")
    part_list = _add_command(
        part_actions, "list", "every registered partition, and whether it is landed, parsed and cleaned"
    )
    _add_location_options(part_list, landing=True, repeated=True)
    delete = _add_command(part_actions, "delete", "unregister one partition, so the next dataset build leaves it out")
    _add_location_options(delete, landing=True, repeated=True)
    delete.add_argument("name", help="the partition key (the file name relative to the landing folder)")
    delete.add_argument("--purge", action="store_true", help="also delete its parsed, cleaned and quarantined data")
    partitions.set_defaults(func=_cmd_partitions)

    registry = _add_command(
        sub,
        "registry",
        "the model registry: list, show, promote, roll back, history",
        "The registry is <data dir>/registry.db unless --url (or $FT_PIPELINE_REGISTRY_URL) names another.",
    )
    _add_location_options(registry, url=True)
    actions = registry.add_subparsers(dest="action", required=True, title="subcommands", metavar="SUBCOMMAND")
    list_cmd = _add_command(actions, "list", "every registered version")
    list_cmd.add_argument("model", nargs="?", default=None, help="only this model's versions")
    show = _add_command(actions, "show", "one version as JSON (default: the one behind --alias)")
    show.add_argument("model")
    show.add_argument("version", nargs="?", type=int, default=None)
    show.add_argument("--alias", default="production", help="default: production")
    history = _add_command(actions, "history", "the append-only audit log of alias moves")
    history.add_argument("model")
    promote = _add_command(actions, "promote", "move an alias to a version that passed its evaluation")
    promote.add_argument("model")
    promote.add_argument("version", type=int)
    promote.add_argument("--evaluation", required=True, help="id of the passing evaluation")
    promote.add_argument("--alias", default="production", help="default: production")
    promote.add_argument("--reason", required=True, help="why, for the audit log")
    rollback = _add_command(actions, "rollback", "point the alias back to the previous version (no retraining)")
    rollback.add_argument("model")
    rollback.add_argument("--to", type=int, default=None, help="a specific earlier version")
    rollback.add_argument("--alias", default="production", help="default: production")
    rollback.add_argument("--reason", required=True, help="why, for the audit log")
    for action in (list_cmd, show, history, promote, rollback):
        _add_location_options(action, url=True, repeated=True)
    registry.set_defaults(func=_cmd_registry)

    review = _add_command(
        sub,
        "review",
        "human review of an evaluation: import a filled review sample, show the verdicts",
        "Every evaluation writes reports/EVAL_ID/review_sample.csv (and .jsonl): blinded answers A and B; fill in "
        "preferred (A, B or tie; blank = not reviewed) and note. The verdicts go to the registry (<data dir>/"
        "registry.db unless --url or $FT_PIPELINE_REGISTRY_URL names another).",
    )
    _add_location_options(review, url=True)
    review_actions = review.add_subparsers(dest="action", required=True, title="subcommands", metavar="SUBCOMMAND")
    review_import = _add_command(
        review_actions,
        "import",
        "record the verdicts of a filled review sample (CSV or JSONL)",
        "Every row is checked: a bad one is rejected with its line number (exit code 1), the others are recorded. "
        "The latest verdict per evaluation, example and reviewer wins, so a corrected file can be imported again.",
    )
    review_import.add_argument("file", metavar="FILE", help="the filled review_sample.csv or .jsonl")
    review_import.add_argument(
        "--reviewer",
        default=os.environ.get("USER", "") or "unknown",
        metavar="NAME",
        help="who reviewed (default: $USER)",
    )
    review_show = _add_command(review_actions, "show", "an evaluation's review sample, its verdicts and the kappa")
    review_show.add_argument("eval_id", metavar="EVAL_ID")
    for action in (review_import, review_show):
        _add_location_options(action, url=True, repeated=True)
    review.set_defaults(func=_cmd_review)

    serve_cmd = _add_command(
        sub,
        "serve",
        "serve the registry's production model over an OpenAI-compatible API",
        "POST /v1/chat/completions (streaming too), GET /v1/models, /health and /metrics. A request's model "
        "names the registered model (production), <name>@staging or <name>:v<N>. Local versions answer with the "
        "evaluation's generator and generation settings; hosted (openai) versions are proxied. A promotion or "
        "rollback is picked up within --poll-interval seconds.",
    )
    _add_location_options(serve_cmd, url=True)
    serve_defaults = _serve_defaults()
    serve_cmd.add_argument(
        "--engine",
        choices=["transformers", "vllm"],
        default="transformers",
        help="transformers: this process answers (default); vllm: for GPU clusters",
    )
    add_vllm_arguments(serve_cmd)  # --print-command, --print-manifest, the images (--engine vllm)
    serve_cmd.add_argument(
        "--model", default=serve_defaults.model_name, help=f"registered model (default: {serve_defaults.model_name})"
    )
    serve_cmd.add_argument("--host", default=serve_defaults.host, help=f"default: {serve_defaults.host}")
    serve_cmd.add_argument("--port", type=int, default=serve_defaults.port, help=f"default: {serve_defaults.port}")
    serve_cmd.add_argument(
        "--poll-interval",
        type=float,
        default=serve_defaults.poll_interval_s,
        metavar="SECONDS",
        help="how often the aliases are checked for a promotion or rollback "
        f"(default: {serve_defaults.poll_interval_s})",
    )
    serve_cmd.add_argument(
        "--challenger-share",
        type=float,
        default=serve_defaults.challenger_share,
        metavar="SHARE",
        help="A/B: share of the bare-name requests (by X-Request-Id) the challenger answers (default: 0, off)",
    )
    serve_cmd.add_argument(
        "--challenger-alias",
        default=serve_defaults.challenger_alias,
        metavar="ALIAS",
        help=f"A/B: the challenger alias (default: {serve_defaults.challenger_alias})",
    )
    serve_cmd.add_argument(
        "--assignment-log",
        default="",
        metavar="FILE",
        help="A/B: JSON lines of the assignments (default: <data dir>/serving/assignments.jsonl)",
    )
    serve_cmd.add_argument(
        "--max-tokens-limit",
        type=int,
        default=serve_defaults.max_tokens_limit,
        metavar="N",
        help=f"largest max_tokens a request may ask for (default: {serve_defaults.max_tokens_limit})",
    )
    serve_cmd.add_argument(
        "--max-context-tokens",
        type=int,
        default=serve_defaults.max_context_tokens,
        metavar="N",
        help=f"largest prompt plus max_tokens (default: {serve_defaults.max_context_tokens})",
    )
    serve_cmd.add_argument("--device", default="", help="torch device (default: cuda when available, else cpu)")
    serve_cmd.set_defaults(func=_cmd_serve)
    return parser


def _serve_defaults() -> ServeConfig:
    """The server's documented defaults, which the serve options show (a light import)."""
    from ft_pipeline.lib.serving.config import ServeConfig

    return ServeConfig()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
