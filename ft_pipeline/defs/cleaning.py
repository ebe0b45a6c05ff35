"""cleaned_conversations: normalize, role rules, quality filter, PII scrub, in-file dedup."""

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import (
    ASSET_OWNERS,
    CONVERSATION_DATA_TAGS,
    column_schema,
    counts_check,
    counts_table,
    data_path,
    sample_rows,
)
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import PiiPolicy, PipelineStorage
from ft_pipeline.lib.cleaning import (
    FILTER_REASONS,
    REPAIRS,
    CleaningConfig,
    CleanPartitionResult,
    PartitionNotParsed,
    clean_partition,
)
from ft_pipeline.lib.dedup import DedupConfig
from ft_pipeline.lib.pii import PII_TYPES
from ft_pipeline.lib.storage import legacy_partition_folders, safe_name

CLEANED_CODE_VERSION = "4"  # 4: negative_feedback filter (thumbs down, regenerated)
_DEFAULTS = CleaningConfig()
_DEDUP_DEFAULTS = DedupConfig()


class CleaningRunConfig(dg.Config):
    """Quality thresholds and switches of the cleaning pass (defaults are the documented ones)."""

    min_rating: float = Field(
        default=_DEFAULTS.min_rating, description="Filter conversations rated below this (unrated pass)."
    )
    max_response_time_ms: int = Field(
        default=_DEFAULTS.max_response_time_ms,
        description="Filter conversations whose response time is at or above this.",
    )
    min_assistant_chars: int = Field(
        default=_DEFAULTS.min_assistant_chars, description="Minimum characters of all assistant turns together."
    )
    drop_edited: bool = Field(default=_DEFAULTS.drop_edited, description="Filter replies an agent edited afterwards.")
    drop_negative_feedback: bool = Field(
        default=_DEFAULTS.drop_negative_feedback,
        description="Filter replies the record marks as bad (thumbs down, regenerated: true, rejected: true).",
    )
    min_unique_word_ratio: float = Field(
        default=_DEFAULTS.min_unique_word_ratio,
        description="Assistant text below this distinct/total word ratio is 'repetitive'.",
    )
    repetition_min_words: int = Field(
        default=_DEFAULTS.repetition_min_words,
        description="The repetition rule applies from this many assistant words.",
    )
    merge_consecutive_turns: bool = Field(
        default=_DEFAULTS.merge_consecutive_turns,
        description="Join consecutive same-role messages instead of filtering.",
    )
    drop_leading_assistant: bool = Field(
        default=_DEFAULTS.drop_leading_assistant, description="Drop assistant greetings before the first user turn."
    )
    trim_trailing_user: bool = Field(
        default=_DEFAULTS.trim_trailing_user, description="Drop unanswered user turns at the end instead of filtering."
    )
    minhash_num_perm: int = Field(
        default=_DEDUP_DEFAULTS.num_perm,
        description="MinHash signature length (curated_dataset dedups with the value its partitions were cleaned "
        "with).",
    )
    minhash_ngram: int = Field(
        default=_DEDUP_DEFAULTS.ngram, description="Word shingle size of the MinHash signatures."
    )

    def to_lib(self, pii_policy: PiiPolicy | None = None) -> CleaningConfig:
        """The lib config; what is scrubbed comes from the pipeline's one PII policy."""
        policy = pii_policy or PiiPolicy()
        return CleaningConfig(
            min_rating=self.min_rating,
            max_response_time_ms=self.max_response_time_ms,
            min_assistant_chars=self.min_assistant_chars,
            drop_edited=self.drop_edited,
            drop_negative_feedback=self.drop_negative_feedback,
            min_unique_word_ratio=self.min_unique_word_ratio,
            repetition_min_words=self.repetition_min_words,
            merge_consecutive_turns=self.merge_consecutive_turns,
            drop_leading_assistant=self.drop_leading_assistant,
            trim_trailing_user=self.trim_trailing_user,
            scrub=policy.scrub_config(),
            dedup=DedupConfig(num_perm=self.minhash_num_perm, ngram=self.minhash_ngram),
        )


@dg.asset(
    partitions_def=log_files_partitions,
    deps=["raw_conversation_logs"],
    group_name="dataset",
    code_version=CLEANED_CODE_VERSION,
    kinds={"parquet", "pandas"},
    owners=ASSET_OWNERS,
    tags=CONVERSATION_DATA_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            "counts_add_up",
            asset="cleaned_conversations",
            blocking=True,
            description="Conversations in = rows of the partition's parsed file = rows kept + rows filtered: "
            "no conversation lost.",
        )
    ],
)
def cleaned_conversations(
    context: dg.AssetExecutionContext, config: CleaningRunConfig, storage: PipelineStorage, pii_policy: PiiPolicy
) -> dg.MaterializeResult:
    """The conversations of one landed file, cleaned: Unicode NFC and whitespace normalization,
    role rules, the quality filter (rating, response time, reply length, edits, repetition),
    PII replaced by typed placeholders, in-file exact duplicates dropped, and per-record dedup
    signatures for the global dedup. Kept rows go to ``cleaned/<partition>/<version>.parquet``,
    filtered rows (with a reason code) beside it in ``<version>.filtered.parquet``; ``<version>``
    is the data version Dagster shows. Check, per file: ``counts_add_up`` (blocking)."""
    name = context.partition_key
    lib_config = config.to_lib(pii_policy)
    try:
        result = clean_partition(
            storage.folder("parsed") / safe_name(name),
            storage.folder("cleaned") / safe_name(name),
            lib_config,
            code_version=CLEANED_CODE_VERSION,
            settings=(config.model_dump(), *lib_config.scrub.version_parts()),
        )
    except PartitionNotParsed:
        old = (
            " (data under the old folder naming is not read: materialize it again)"
            if legacy_partition_folders(storage.root(), name)
            else ""
        )
        raise dg.Failure(
            description=f"raw_conversation_logs has not been materialized for partition {name!r}{old}"
        ) from None
    cleaned, n_in = result.cleaned, result.n_in
    kept_share = len(cleaned.kept) / n_in if n_in else 0.0
    pii = lib_config.scrub.pii  # the samples are scrubbed with the pipeline's policy even when storage is not
    return dg.MaterializeResult(
        metadata={
            "conversations_in": n_in,
            "kept": len(cleaned.kept),
            "filtered": len(cleaned.filtered),
            "kept_share": round(kept_share, 4),
            "filter_reasons": counts_table(cleaned.filter_counts, FILTER_REASONS),
            "pii_found": counts_table({**{t: 0 for t in PII_TYPES}, **cleaned.pii_counts}),
            "pii_total": sum(cleaned.pii_counts.values()),
            "repairs": counts_table({**{r: 0 for r in REPAIRS}, **cleaned.repairs}, REPAIRS),
            "repairs_total": sum(cleaned.repairs.values()),
            "path": data_path(result.manifest.path, storage.root()),
            "filtered_path": data_path(result.manifest.filtered_path, storage.root()),
            "sample": sample_rows(cleaned.kept, pii=pii),
            "filtered_sample": sample_rows(cleaned.filtered, pii=pii),
            "dagster/row_count": len(cleaned.kept),
            "dagster/column_schema": column_schema(result.manifest.path),
        },
        # The kept file's name: cleaned/<partition>/<version>.parquet.
        data_version=dg.DataVersion(result.version),
        check_results=[_counts_check(result)],
    )


def _counts_check(result: CleanPartitionResult) -> dg.AssetCheckResult:
    return counts_check(
        result.counts_add_up,
        f"{result.n_in} conversations in ({result.n_parsed} in the parsed file), "
        f"{result.stored_kept} kept + {result.stored_filtered} filtered",
        accounted="every conversation accounted for",
        lost="the counts differ, conversations were lost",
        numbers={
            "conversations_in": result.n_in,
            "parsed": result.n_parsed,
            "kept": result.stored_kept,
            "filtered": result.stored_filtered,
        },
    )
