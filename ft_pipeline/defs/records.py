"""raw_conversation_logs: parse one landed file, quarantine what cannot be used."""

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import counts_table, sample_rows
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import PiiPolicy, PipelineStorage, RawLogStore
from ft_pipeline.lib.records import QUARANTINE_REASONS, ReadConfig, ingest_log_file
from ft_pipeline.lib.storage import safe_name

RAW_CODE_VERSION = "3"  # 3: parsed records are stored scrubbed


class RawLogsRunConfig(dg.Config):
    """Parsing limits for landed files."""

    max_record_bytes: int = Field(
        default=ReadConfig().max_record_bytes,
        description="Records larger than this many bytes are quarantined as oversize_record.",
    )


@dg.asset(
    partitions_def=log_files_partitions,
    group_name="dataset",
    code_version=RAW_CODE_VERSION,
    kinds={"parquet"},
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
    ``ingest_log_file``)."""
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
            "blank_lines": result.blank_lines,
            "quarantine_reasons": counts_table(counts, QUARANTINE_REASONS),
            "source_formats": dg.MetadataValue.json(result.source_formats),
            "path": dg.MetadataValue.path(str(result.parsed_path)),
            "quarantine_path": dg.MetadataValue.path(str(result.quarantine_path)),
            "pii_found": dg.MetadataValue.json(result.pii_counts),
            "sample": sample_rows(result.records, pii=scrub.pii),
            "dagster/row_count": len(result.records),
            "version": result.version,
            # The new-log-files sensor compares this with a landed file's hash: same content, no new run.
            "source_sha256": result.source_sha256,
        },
        data_version=dg.DataVersion(result.version),
    )
