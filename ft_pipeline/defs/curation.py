"""curated_dataset: the fan-in of every cleaned partition, globally deduplicated."""

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import (
    ASSET_OWNERS,
    CONVERSATION_DATA_TAGS,
    column_schema,
    counts_table,
    data_path,
    pii_check,
    sample_rows,
)
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import PiiPolicy, PipelineStorage
from ft_pipeline.lib.curation import DEFAULT_CURATION_CONFIG, CurationConfig, NothingToCurate, curate
from ft_pipeline.lib.dedup import DedupConfig
from ft_pipeline.lib.storage import legacy_partition_folders, safe_name
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

    near_dup_threshold: float = Field(
        default=_DEDUP.threshold, description="Jaccard at/above which conversations are near-duplicates."
    )
    lsh_bands: int | None = Field(default=_DEDUP.bands, description="LSH bands; empty = chosen for the threshold.")
    drop_prefix_duplicates: bool = Field(
        default=_DEDUP.drop_prefix_duplicates, description="Drop conversations that are the start of a longer kept one."
    )
    drop_branch_duplicates: bool = Field(
        default=_DEDUP.drop_branch_duplicates,
        description="Keep only the best reply among conversations sharing a context.",
    )
    tokenizer: str = Field(
        default=TokenCounterConfig().tokenizer,
        description="Token counter: 'estimate' (about 4 characters per token, labelled as an estimate), "
        "'hf:<local path>' (a local tokenizer, e.g. the training base's), or 'tiktoken:<encoding>' (only if cached).",
    )
    max_tokens: int = Field(
        default=DEFAULT_CURATION_CONFIG.max_tokens,
        description="Conversations with more tokens are removed as too_many_tokens.",
    )

    def to_lib(self) -> CurationConfig:
        """The lib config. MinHash num_perm/ngram are not set here: they are the ones the cleaned
        partitions' signatures were computed with (cleaned_conversations' settings)."""
        dedup = DedupConfig(
            threshold=self.near_dup_threshold,
            bands=self.lsh_bands,
            drop_prefix_duplicates=self.drop_prefix_duplicates,
            drop_branch_duplicates=self.drop_branch_duplicates,
        )
        return CurationConfig(
            dedup=dedup, tokens=TokenCounterConfig(tokenizer=self.tokenizer), max_tokens=self.max_tokens
        )


def _registered_partitions(context: dg.AssetExecutionContext) -> list[str]:
    return sorted(context.instance.get_dynamic_partitions(log_files_partitions.name))


@dg.asset(
    deps=["cleaned_conversations"],
    group_name="dataset",
    code_version=CURATED_CODE_VERSION,
    kinds={"parquet"},
    owners=ASSET_OWNERS,
    tags=CONVERSATION_DATA_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            "no_pii_left",
            asset="curated_dataset",
            blocking=True,
            description="A fresh PII scan of every text column (messages, ids, metadata, tags) finds nothing.",
        ),
        dg.AssetCheckSpec(
            "no_duplicates_left", asset="curated_dataset", description="No exact, prefix or near duplicate remains."
        ),
    ],
)
def curated_dataset(
    context: dg.AssetExecutionContext, config: CurationRunConfig, storage: PipelineStorage, pii_policy: PiiPolicy
) -> dg.MaterializeResult:
    """Every cleaned partition together, deduplicated globally: exact (hash of the normalized
    conversation), near (MinHash-LSH over word shingles, candidates verified by true Jaccard),
    prefix and branch duplicates; the best copy is kept (higher rating, not edited, faster).
    Token counts per conversation; over-long ones removed. Written to
    ``curated/<version>/conversations.parquet`` with ``removed.parquet`` (reason per row) beside it,
    and a manifest naming the dedup parameters used (the splits' leakage check reads them)."""
    partitions = _registered_partitions(context)
    try:
        curated = curate(
            {name: storage.folder("cleaned") / safe_name(name) for name in partitions},
            storage.folder("curated"),
            config.to_lib(),
            pii=pii_policy.pii_config(),
            code_version=CURATED_CODE_VERSION,
            settings=(config.model_dump(),),
        )
    except (NothingToCurate, ValueError) as exc:  # ValueError: signature parameters that differ, an old manifest
        raise dg.Failure(description=str(exc)) from exc
    _warn_missing(context, storage, curated.missing)
    result = curated.curation
    tokens = result.token_stats
    return dg.MaterializeResult(
        metadata={
            "conversations_in": result.n_in,
            "kept": result.n_kept,
            "removed": len(result.removed),
            "removed_by_kind": counts_table(result.removed_counts, DEDUP_KINDS),
            "partitions": len(curated.partitions),
            "partitions_not_cleaned": len(curated.missing),
            "lsh_candidate_pairs": result.candidate_pairs,
            "lsh_verified_pairs": result.verified_pairs,
            "token_counter": result.token_counter,
            **{f"tokens_{name}": float(tokens.get(name, 0)) for name in ("p50", "p90", "max", "mean", "total")},
            "sample": sample_rows(result.sample),
            "path": data_path(curated.manifest.path, storage.root()),
            "removed_path": data_path(curated.manifest.removed_path, storage.root()),
            "dagster/row_count": result.n_kept,
            "dagster/column_schema": column_schema(curated.manifest.path),
        },
        # The folder's name: curated/<version>/conversations.parquet.
        data_version=dg.DataVersion(curated.version),
        check_results=[
            pii_check(curated.pii_scan, pii_policy.pii_config()),
            _duplicates_check(curated.duplicates_left, result.n_kept),
        ],
    )


def _warn_missing(context: dg.AssetExecutionContext, storage: PipelineStorage, missing: list[str]) -> None:
    if not missing:
        return
    context.log.warning(
        f"{len(missing)} registered partition(s) have no cleaned output yet and are left out: {missing[:10]}"
    )
    legacy = [name for name in missing if legacy_partition_folders(storage.root(), name)]
    if legacy:
        context.log.warning(
            f"{len(legacy)} of them have data under the old folder naming (two file names could share a folder), "
            f"which is not read: materialize ingest_log_file for them again (`ft-pipeline run` does): {legacy[:10]}"
        )


def _duplicates_check(left: dict[str, int], n_kept: int) -> dg.AssetCheckResult:
    if not n_kept:
        return dg.AssetCheckResult(check_name="no_duplicates_left", passed=True, description="empty dataset")
    return dg.AssetCheckResult(
        check_name="no_duplicates_left",
        passed=not left,
        severity=dg.AssetCheckSeverity.ERROR,
        description="no duplicates left" if not left else f"duplicates left: {left}",
        metadata={"duplicates_left": counts_table(left, DEDUP_KINDS)},
    )
