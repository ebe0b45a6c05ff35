"""raw_conversation_logs: parse one landed file, quarantine what cannot be used."""


from collections import Counter

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import counts_table, sample_rows
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import PiiPolicy, PipelineStorage, RawLogStore
from ft_pipeline.lib.cleaning import scrub_parsed_records
from ft_pipeline.lib.pii import scrub_pii
from ft_pipeline.lib.records import QUARANTINE_REASONS, ReadConfig, read_log_file
from ft_pipeline.lib.storage import content_version, file_sha256, safe_name, write_latest, write_parquet

RAW_CODE_VERSION = "3"  # 3: parsed records are stored scrubbed


class RawLogsConfig(dg.Config):
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
    context: dg.AssetExecutionContext, config: RawLogsConfig, raw_log_store: RawLogStore, storage: PipelineStorage,
    pii_policy: PiiPolicy,
) -> dg.MaterializeResult:
    """One landed log file (JSONL, JSONL.gz or Parquet; raw, OpenAI or ShareGPT records), parsed
    and schema-checked. Records that cannot be used go to ``quarantine/<partition>.parquet`` with
    a reason code, the source file and line; a broken file never fails the run. The parsed
    records are written to ``parsed/<partition>/<version>.parquet``."""
    name = context.partition_key
    landing = raw_log_store.folder()
    if not landing.exists(name):
        raise dg.Failure(
            description=f"log file {name!r} is registered as a partition but is missing from {raw_log_store.root()}",
            metadata={"landing_dir": raw_log_store.root()},
        )
    scrub = pii_policy.scrub_config()  # before any work: a bad pattern or a missing name model fails here
    path = landing.fetch(name, storage.folder("landing_cache"))
    read_config = ReadConfig(max_record_bytes=config.max_record_bytes)
    try:
        result = read_log_file(path, read_config, source_name=name)
        source_sha256 = file_sha256(path)
        version = content_version(RAW_CODE_VERSION, source_sha256, read_config.max_record_bytes, *pii_policy.version_parts())
    finally:
        if landing.remote:
            path.unlink(missing_ok=True)  # only the downloaded copy; the landed object stays

    # Nothing outside the landing folder holds raw personal data: the parsed records are stored
    # scrubbed, and so is the quarantine's raw text (kept for people to inspect) and its detail.
    scrubbed = scrub_parsed_records(result.conversations, scrub)
    folder = storage.folder("parsed") / safe_name(name)
    parsed_path = write_parquet(scrubbed.records, folder / f"{version}.parquet")
    quarantine = result.quarantine.copy()
    if scrub.enabled:
        for column in ("raw_text", "detail"):
            quarantine[column] = [scrub_pii(str(text), scrub.pii)[0] for text in quarantine[column]]
    quarantine_path = write_parquet(quarantine, storage.folder("quarantine") / f"{safe_name(name)}.parquet")
    write_latest(folder, version, path=str(parsed_path), quarantine_path=str(quarantine_path), source=name)

    counts = result.quarantine_counts
    if counts:
        context.log.warning(f"{name}: quarantined {len(quarantine)} of {result.n_records} records: {dict(counts)}")
    formats = Counter(result.conversations["source_format"])
    return dg.MaterializeResult(
        metadata={
            "records_in": result.n_records,
            "parsed": len(result.conversations),
            "quarantined": len(quarantine),
            "blank_lines": result.blank_lines,
            "quarantine_reasons": counts_table(counts, QUARANTINE_REASONS),
            "source_formats": dg.MetadataValue.json(dict(formats)),
            "path": dg.MetadataValue.path(str(parsed_path)),
            "quarantine_path": dg.MetadataValue.path(str(quarantine_path)),
            "pii_found": dg.MetadataValue.json(dict(sorted(scrubbed.pii_counts.items()))),
            "sample": sample_rows(scrubbed.records, pii=scrub.pii),
            "dagster/row_count": len(result.conversations),
            "version": version,
            # The new-log-files sensor compares this with a landed file's hash: same content, no new run.
            "source_sha256": source_sha256,
        },
        data_version=dg.DataVersion(version),
    )
