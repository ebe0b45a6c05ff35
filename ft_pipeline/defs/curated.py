"""curated_dataset: the fan-in of every cleaned partition, globally deduplicated."""



import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from ft_pipeline.defs.metadata import counts_table, sample_rows
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import PiiPolicy, PipelineStorage
from ft_pipeline.lib.curation import DEFAULT_CURATION_CONFIG, CurationConfig, curate, scan_dataset_for_pii, signature_params
from ft_pipeline.lib.dedup import DedupConfig, conversation_text, deduplicate
from ft_pipeline.lib.manifests import CleanedManifest, CuratedManifest, read_manifest, write_manifest
from ft_pipeline.lib.pii import PERSON, PII_TYPES, PiiConfig
from ft_pipeline.lib.storage import content_version, hash_values, legacy_partition_folders, safe_name, write_parquet
from ft_pipeline.lib.tokens import TokenCounterConfig

CURATED_CODE_VERSION = "3"
_DEDUP = DedupConfig()

DEDUP_KINDS = {
    "exact_duplicate": "the same normalized conversation as a better copy",
    "near_duplicate": "MinHash-LSH candidate verified by true Jaccard >= threshold",
    "prefix_duplicate": "the first messages of a longer conversation that is kept",
    "branch_duplicate": "same context as a better copy, different final reply",
    "too_many_tokens": "longer than max_tokens; it would be truncated in training",
}


class CurationRunConfig(dg.Config):
    """Global dedup and length limits of the curated dataset (defaults are the documented ones)."""

    near_dup_threshold: float = Field(default=_DEDUP.threshold, description="Jaccard at/above which conversations are near-duplicates.")
    lsh_bands: int | None = Field(default=_DEDUP.bands, description="LSH bands; empty = chosen for the threshold.")
    drop_prefix_duplicates: bool = Field(default=_DEDUP.drop_prefix_duplicates, description="Drop conversations that are the start of a longer kept one.")
    drop_branch_duplicates: bool = Field(default=_DEDUP.drop_branch_duplicates, description="Keep only the best reply among conversations sharing a context.")
    tokenizer: str = Field(
        default=TokenCounterConfig().tokenizer,
        description="Token counter: 'estimate' (about 4 characters per token, labelled as an estimate), "
        "'hf:<local path>' (a local tokenizer, e.g. the training base's), or 'tiktoken:<encoding>' (only if cached).",
    )
    max_tokens: int = Field(default=DEFAULT_CURATION_CONFIG.max_tokens, description="Conversations with more tokens are removed as too_many_tokens.")


def _registered_partitions(context: dg.AssetExecutionContext) -> list[str]:
    return sorted(context.instance.get_dynamic_partitions(log_files_partitions.name))


@dg.asset(
    deps=["cleaned_conversations"],
    group_name="dataset",
    code_version=CURATED_CODE_VERSION,
    kinds={"parquet"},
    check_specs=[
        dg.AssetCheckSpec("no_pii_left", asset="curated_dataset", blocking=True, description="A fresh PII scan of every text column (messages, ids, metadata, tags) finds nothing."),
        dg.AssetCheckSpec("no_duplicates_left", asset="curated_dataset", description="No exact, prefix or near duplicate remains."),
    ],
)
def curated_dataset(
    context: dg.AssetExecutionContext, config: CurationRunConfig, storage: PipelineStorage, pii_policy: PiiPolicy
) -> dg.MaterializeResult:
    """Every cleaned partition together, deduplicated globally: exact (hash of the normalized
    conversation), near (MinHash-LSH over word shingles, candidates verified by true Jaccard),
    prefix and branch duplicates; the best copy is kept (higher rating, not edited, faster).
    Token counts per conversation; over-long ones removed. Written to
    ``curated/<version>/conversations.parquet`` with ``removed.parquet`` (reason per row) beside it."""
    partitions = _registered_partitions(context)
    inputs: list[tuple[str, CleanedManifest]] = []
    missing = []
    for name in partitions:
        manifest = read_manifest(storage.folder("cleaned") / safe_name(name), CleanedManifest)
        if manifest is None:
            missing.append(name)
            continue
        inputs.append((name, manifest))
    if missing:
        context.log.warning(f"{len(missing)} registered partition(s) have no cleaned output yet and are left out: {missing[:10]}")
        legacy = [name for name in missing if legacy_partition_folders(storage.root(), name)]
        if legacy:
            context.log.warning(
                f"{len(legacy)} of them have data under the old folder naming (two file names could share a folder), "
                f"which is not read: materialize ingest_log_file for them again (`ft-pipeline run` does): {legacy[:10]}"
            )
    if not inputs:
        raise dg.Failure(description="no cleaned partitions to curate: materialize cleaned_conversations first")
    try:
        # The signature parameters are set once, on cleaned_conversations; the dedup uses what they were.
        num_perm, ngram = signature_params({n: (m.minhash_num_perm, m.minhash_ngram) for n, m in inputs})
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from exc

    lib_config = CurationConfig(
        dedup=DedupConfig(
            num_perm=num_perm,
            ngram=ngram,
            threshold=config.near_dup_threshold,
            bands=config.lsh_bands,
            drop_prefix_duplicates=config.drop_prefix_duplicates,
            drop_branch_duplicates=config.drop_branch_duplicates,
        ),
        tokens=TokenCounterConfig(tokenizer=config.tokenizer),
        max_tokens=config.max_tokens,
    )
    version = content_version(CURATED_CODE_VERSION, [(n, m.version) for n, m in inputs], config.model_dump())
    folder = storage.folder("curated") / version
    result = curate([m.path for _, m in inputs], folder / "conversations.parquet", lib_config)
    removed_path = write_parquet(result.removed, folder / "removed.parquet")
    write_manifest(
        storage.folder("curated"), CuratedManifest.of(version, str(result.output_path), str(removed_path), lib_config.dedup)
    )

    checks = [_pii_check(result.output_path, pii_policy.pii_config()), _duplicates_check(result.output_path, lib_config.dedup)]
    exact_hashes = pq.read_table(result.output_path, columns=["exact_hash"]).column("exact_hash").to_pylist() if result.n_kept else []
    assert result.n_in == result.n_kept + len(result.removed), "curation lost records"
    return dg.MaterializeResult(
        metadata={
            "partitions": len(inputs),
            "partitions_not_cleaned": len(missing),
            "conversations_in": result.n_in,
            "kept": result.n_kept,
            "removed": len(result.removed),
            "removed_by_kind": counts_table(result.removed_counts, DEDUP_KINDS),
            "lsh_candidate_pairs": result.candidate_pairs,
            "lsh_verified_pairs": result.verified_pairs,
            "token_counter": result.token_counter,
            "token_stats": dg.MetadataValue.json(result.token_stats),
            "tokens_p50": float(result.token_stats.get("p50", 0)),
            "tokens_p90": float(result.token_stats.get("p90", 0)),
            "path": dg.MetadataValue.path(str(result.output_path)),
            "removed_path": dg.MetadataValue.path(str(removed_path)),
            "sample": sample_rows(result.sample),
            "dagster/row_count": result.n_kept,
            "version": version,
        },
        data_version=dg.DataVersion(content_version(version, hash_values(exact_hashes))),
        check_results=checks,
    )


def _pii_check(path, pii: PiiConfig) -> dg.AssetCheckResult:
    scan = scan_dataset_for_pii(path, pii)
    kinds = [*PII_TYPES, *(p.name for p in pii.custom_patterns), *([PERSON] if pii.person_names_model else [])]
    return dg.AssetCheckResult(
        check_name="no_pii_left",
        passed=scan.total == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description="no PII found by a fresh scan" if scan.total == 0 else f"{scan.total} PII matches left: {scan.found}",
        metadata={"pii_left": dg.MetadataValue.json({t: scan.found.get(t, 0) for t in kinds}), "examples": dg.MetadataValue.json(scan.examples)},
    )


def _duplicates_check(path, dedup: DedupConfig) -> dg.AssetCheckResult:
    columns = ["conversation_id", "exact_hash", "context_hash", "prefix_hashes", "minhash", "rating", "edited", "response_time_ms"]
    curated = pq.read_table(path, columns=columns).to_pandas() if pq.ParquetFile(path).metadata.num_rows else None
    if curated is None:
        return dg.AssetCheckResult(check_name="no_duplicates_left", passed=True, description="empty dataset")

    def load_texts(rows):
        messages = pq.read_table(path, columns=["messages"]).column("messages")
        return [conversation_text(m) for m in messages.take(pa.array([int(i) for i in rows])).to_pylist()]

    # Re-run dedup over the output: anything it would still remove is a duplicate left behind.
    again = deduplicate(curated, dedup, load_texts=load_texts)
    left = {k: v for k, v in again.counts.items() if v}
    return dg.AssetCheckResult(
        check_name="no_duplicates_left",
        passed=not left,
        severity=dg.AssetCheckSeverity.ERROR,
        description="no duplicates left" if not left else f"duplicates left: {left}",
        metadata={"duplicates_left": dg.MetadataValue.json(left)},
    )
