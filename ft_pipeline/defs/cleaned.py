"""cleaned_conversations: normalize, role rules, quality filter, PII scrub, in-file dedup."""


import dagster as dg
import pandas as pd
from pydantic import Field

from ft_pipeline.defs.metadata import counts_table, sample_rows
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import PiiPolicy, PipelineStorage
from ft_pipeline.lib.cleaning import FILTER_REASONS, CleaningConfig, clean_conversations
from ft_pipeline.lib.dedup import DedupConfig
from ft_pipeline.lib.manifests import CleanedManifest, write_manifest
from ft_pipeline.lib.pii import PII_TYPES
from ft_pipeline.lib.storage import content_version, hash_values, legacy_partition_folders, read_latest, safe_name, write_parquet

CLEANED_CODE_VERSION = "3"
_DEFAULTS = CleaningConfig()
_DEDUP_DEFAULTS = DedupConfig()


class CleaningRunConfig(dg.Config):
    """Quality thresholds and switches of the cleaning pass (defaults are the documented ones)."""

    min_rating: float = Field(default=_DEFAULTS.min_rating, description="Filter conversations rated below this (unrated pass).")
    max_response_time_ms: int = Field(default=_DEFAULTS.max_response_time_ms, description="Filter conversations whose response time is at or above this.")
    min_assistant_chars: int = Field(default=_DEFAULTS.min_assistant_chars, description="Minimum characters of all assistant turns together.")
    drop_edited: bool = Field(default=_DEFAULTS.drop_edited, description="Filter replies an agent edited afterwards.")
    min_unique_word_ratio: float = Field(default=_DEFAULTS.min_unique_word_ratio, description="Assistant text below this distinct/total word ratio is 'repetitive'.")
    repetition_min_words: int = Field(default=_DEFAULTS.repetition_min_words, description="The repetition rule applies from this many assistant words.")
    merge_consecutive_turns: bool = Field(default=_DEFAULTS.merge_consecutive_turns, description="Join consecutive same-role messages instead of filtering.")
    drop_leading_assistant: bool = Field(default=_DEFAULTS.drop_leading_assistant, description="Drop assistant greetings before the first user turn.")
    trim_trailing_user: bool = Field(default=_DEFAULTS.trim_trailing_user, description="Drop unanswered user turns at the end instead of filtering.")
    minhash_num_perm: int = Field(default=_DEDUP_DEFAULTS.num_perm, description="MinHash signature length (curated_dataset dedups with the value its partitions were cleaned with).")
    minhash_ngram: int = Field(default=_DEDUP_DEFAULTS.ngram, description="Word shingle size of the MinHash signatures.")

    def to_lib(self, pii_policy: PiiPolicy | None = None) -> CleaningConfig:
        """The lib config; what is scrubbed comes from the pipeline's one PII policy."""
        policy = pii_policy or PiiPolicy()
        return CleaningConfig(
            min_rating=self.min_rating,
            max_response_time_ms=self.max_response_time_ms,
            min_assistant_chars=self.min_assistant_chars,
            drop_edited=self.drop_edited,
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
    kinds={"parquet"},
)
def cleaned_conversations(
    context: dg.AssetExecutionContext, config: CleaningRunConfig, storage: PipelineStorage, pii_policy: PiiPolicy
) -> dg.MaterializeResult:
    """The conversations of one landed file, cleaned: Unicode NFC and whitespace normalization,
    role rules, the quality filter (rating, response time, reply length, edits, repetition),
    PII replaced by typed placeholders, in-file exact duplicates dropped, and per-record dedup
    signatures for the global dedup. Kept rows go to ``cleaned/<partition>/<version>.parquet``,
    filtered rows (with a reason code) beside it in ``<version>.filtered.parquet``."""
    name = context.partition_key
    pointer = read_latest(storage.folder("parsed") / safe_name(name))
    if pointer is None:
        old = " (data under the old folder naming is not read: materialize it again)" if legacy_partition_folders(storage.root(), name) else ""
        raise dg.Failure(description=f"raw_conversation_logs has not been materialized for partition {name!r}{old}")
    parsed = pd.read_parquet(pointer["path"])
    lib_config = config.to_lib(pii_policy)
    result = clean_conversations(parsed, lib_config)
    version = content_version(CLEANED_CODE_VERSION, pointer["version"], config.model_dump(), *pii_policy.version_parts())

    folder = storage.folder("cleaned") / safe_name(name)
    kept_path = write_parquet(result.kept, folder / f"{version}.parquet")
    filtered_path = write_parquet(result.filtered, folder / f"{version}.filtered.parquet")
    manifest = CleanedManifest(
        version=version,
        path=str(kept_path),
        filtered_path=str(filtered_path),
        parsed_version=pointer["version"],
        minhash_num_perm=config.minhash_num_perm,
        minhash_ngram=config.minhash_ngram,
    )
    write_manifest(folder, manifest)

    n_in = len(parsed)
    assert result.n_in == n_in, "cleaning lost records"  # the lib guarantees it; a bug must not pass silently
    kept_share = len(result.kept) / n_in if n_in else 0.0
    return dg.MaterializeResult(
        metadata={
            "conversations_in": n_in,
            "kept": len(result.kept),
            "filtered": len(result.filtered),
            "kept_share": round(kept_share, 4),
            "filter_reasons": counts_table(result.filter_counts, FILTER_REASONS),
            "pii_found": dg.MetadataValue.json({**{t: 0 for t in PII_TYPES}, **result.pii_counts}),
            "pii_total": sum(result.pii_counts.values()),
            "repairs": dg.MetadataValue.json(result.repairs),
            "path": dg.MetadataValue.path(str(kept_path)),
            "filtered_path": dg.MetadataValue.path(str(filtered_path)),
            "sample": sample_rows(result.kept),
            "filtered_sample": sample_rows(result.filtered),
            "dagster/row_count": len(result.kept),
            "version": version,
        },
        data_version=dg.DataVersion(
            content_version(version, hash_values(result.kept["exact_hash"]) if len(result.kept) else "")
        ),
    )
