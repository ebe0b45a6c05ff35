"""raw_conversation_logs: parse one landed file, quarantine what cannot be used."""

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import (
    ASSET_OWNERS,
    CONVERSATION_DATA_TAGS,
    column_schema,
    counts_check,
    counts_table,
    data_path,
    quarantine_sample,
    sample_rows,
)
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import PiiPolicy, PipelineStorage, RawLogStore
from ft_pipeline.lib.pii import PII_TYPES
from ft_pipeline.lib.records import (
    QUARANTINE_REASONS,
    SOURCE_FORMATS,
    IngestCheckConfig,
    IngestResult,
    ReadConfig,
    ingest_log_file,
)
from ft_pipeline.lib.storage import safe_name

RAW_CODE_VERSION = "3"  # 3: parsed records are stored scrubbed


class RawLogsRunConfig(dg.Config):
    """Parsing limits for landed files, and the ceiling of the quarantine_rate check."""

    max_record_bytes: int = Field(
        default=ReadConfig().max_record_bytes,
        description="Records larger than this many bytes are quarantined as oversize_record.",
    )
    max_quarantine_rate: float = Field(
        default=IngestCheckConfig().max_quarantine_rate,
        description="The quarantine_rate check warns (it does not fail the run) when more than this share of a "
        "file's records is quarantined (0.05: a healthy export quarantines next to nothing; more points to a "
        "changed format or a truncated upload).",
    )


@dg.asset(
    partitions_def=log_files_partitions,
    group_name="dataset",
    code_version=RAW_CODE_VERSION,
    kinds={"parquet", "pandas"},
    owners=ASSET_OWNERS,
    tags=CONVERSATION_DATA_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            "counts_add_up",
            asset="raw_conversation_logs",
            blocking=True,
            description="Records in = rows of the parsed file + rows of the quarantine file: no record lost.",
        ),
        dg.AssetCheckSpec(
            "quarantine_rate",
            asset="raw_conversation_logs",
            description="The share of the file's records quarantined is at most max_quarantine_rate (a warning).",
        ),
    ],
)
def raw_conversation_logs(
    context: dg.AssetExecutionContext,
    config: RawLogsRunConfig,
    raw_log_store: RawLogStore,
    storage: PipelineStorage,
    pii_policy: PiiPolicy,
) -> dg.MaterializeResult:
    """One landed log file (JSONL, JSONL.gz or Parquet; raw, OpenAI or ShareGPT records), parsed
    and schema-checked. Records that cannot be used go to ``quarantine/<partition>.parquet`` with
    a reason code, the source file and line; a broken file never fails the run. The parsed
    records are written, PII scrubbed, to ``parsed/<partition>/<version>.parquet`` (lib
    ``ingest_log_file``); ``<version>`` is the data version Dagster shows. Checks, per file:
    ``counts_add_up`` (blocking) and ``quarantine_rate`` (a warning)."""
    name = context.partition_key
    landing = raw_log_store.folder()
    if not landing.exists(name):
        raise dg.Failure(
            description=f"log file {name!r} is registered as a partition but is missing from {raw_log_store.root()}",
            metadata={"landing_dir": raw_log_store.root()},
        )
    scrub = pii_policy.scrub_config()  # before any work: a bad pattern or a missing name model fails here
    path = landing.fetch(name, storage.folder("landing_cache"))
    try:
        result = ingest_log_file(
            path,
            name,
            storage.folder("parsed") / safe_name(name),
            storage.folder("quarantine") / f"{safe_name(name)}.parquet",
            read_config=ReadConfig(max_record_bytes=config.max_record_bytes),
            scrub=scrub,
            code_version=RAW_CODE_VERSION,
            policy_version=scrub.version_parts(),
        )
    finally:
        if landing.remote:
            path.unlink(missing_ok=True)  # only the downloaded copy; the landed object stays

    counts = result.quarantine_counts
    if counts:
        context.log.warning(
            f"{name}: quarantined {len(result.quarantine)} of {result.n_records} records: {dict(counts)}"
        )
    return dg.MaterializeResult(
        metadata={
            "records_in": result.n_records,
            "parsed": len(result.records),
            "quarantined": len(result.quarantine),
            "quarantine_rate": round(result.quarantine_rate, 4),
            "blank_lines": result.blank_lines,
            "quarantine_reasons": counts_table(counts, QUARANTINE_REASONS),
            # Scrubbed again with the pipeline's policy: the quarantine holds the records' raw text.
            "quarantine_sample": quarantine_sample(result.quarantine, pii=scrub.pii),
            "source_formats": counts_table(result.source_formats, SOURCE_FORMATS),
            "pii_found": counts_table({**{t: 0 for t in PII_TYPES}, **result.pii_counts}),
            "pii_total": sum(result.pii_counts.values()),
            "path": data_path(result.parsed_path, storage.root()),
            "quarantine_path": data_path(result.quarantine_path, storage.root()),
            "sample": sample_rows(result.records, pii=scrub.pii),
            "dagster/row_count": len(result.records),
            "dagster/column_schema": column_schema(result.parsed_path),
            # The new-log-files sensor compares this with a landed file's hash: same content, no new run.
            "source_sha256": result.source_sha256,
        },
        # The parsed file's name: parsed/<partition>/<version>.parquet.
        data_version=dg.DataVersion(result.version),
        check_results=[_counts_check(result), _quarantine_rate_check(result, config.max_quarantine_rate)],
    )


def _counts_check(result: IngestResult) -> dg.AssetCheckResult:
    return counts_check(
        result.counts_add_up,
        f"{result.n_records} records in, {result.stored_parsed} parsed + {result.stored_quarantined} quarantined",
        accounted="every record accounted for",
        lost=f"{result.n_records - result.stored_parsed - result.stored_quarantined} records lost",
        numbers={
            "records_in": result.n_records,
            "parsed": result.stored_parsed,
            "quarantined": result.stored_quarantined,
        },
    )


def _quarantine_rate_check(result: IngestResult, ceiling: float) -> dg.AssetCheckResult:
    rate = result.quarantine_rate
    passed = rate <= ceiling
    return dg.AssetCheckResult(
        check_name="quarantine_rate",
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(result.quarantine)} of {result.n_records} records quarantined ({rate:.1%}), "
        + (
            f"within the ceiling of {ceiling:.1%}"
            if passed
            else f"over the ceiling of {ceiling:.1%}: see quarantine_sample"
        ),
        metadata={
            "quarantine_rate": round(rate, 4),
            "max_quarantine_rate": ceiling,
            "quarantined": len(result.quarantine),
            "records_in": result.n_records,
        },
    )
