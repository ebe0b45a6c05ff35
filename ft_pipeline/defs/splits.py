"""train_split / validation_split / test_split: grouped, hash-stable, seeded."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import (
    ASSET_OWNERS,
    CONVERSATION_DATA_TAGS,
    column_schema,
    counts_table,
    data_path,
    key_value_table,
    sample_rows,
    table,
)
from ft_pipeline.defs.resources import OpenAIFineTuningResource, PiiPolicy, PipelineStorage
from ft_pipeline.lib.dedup import DedupConfig
from ft_pipeline.lib.exports import (
    ALPACA_SKIP_REASONS,
    DEFAULT_LICENSE,
    ExportsResult,
    export_splits,
    removal_counts,
    source_counts,
)
from ft_pipeline.lib.manifests import CleanedManifest, CuratedManifest, read_manifest
from ft_pipeline.lib.splits import LeakageReport, SplitConfig, SplitsResult, check_min_sizes, make_splits
from ft_pipeline.lib.storage import safe_name

SPLITS_CODE_VERSION = "2"
_SPLIT = SplitConfig()


class SplitRunConfig(dg.Config):
    """How the curated dataset is split (defaults are the documented ones)."""

    train_fraction: float = Field(default=_SPLIT.train_fraction, description="Share of groups in train.")
    validation_fraction: float = Field(default=_SPLIT.validation_fraction, description="Share of groups in validation.")
    test_fraction: float = Field(default=_SPLIT.test_fraction, description="Share of groups in test.")
    seed: int = Field(default=_SPLIT.seed, description="Salt of the split hash.")
    group_by_user: bool = Field(default=_SPLIT.group_by_user, description="Keep one user's conversations in one split.")
    first_turn_min_words: int = Field(
        default=_SPLIT.first_turn_min_words,
        description="Group conversations sharing a first user turn of at least this many words (0 = off).",
    )
    first_turn_max_shared: int = Field(
        default=_SPLIT.first_turn_max_shared,
        description="A first turn shared by more conversations than this is boilerplate and links nothing.",
    )
    stratify_by_tag: bool = Field(
        default=_SPLIT.stratify_by_tag,
        description="Exact per-tag proportions (a group near a cut-off may move as data grows).",
    )
    min_train_examples: int = Field(
        default=_SPLIT.min_train_examples, description="Minimum train size (OpenAI requires 10)."
    )
    min_validation_examples: int = Field(default=_SPLIT.min_validation_examples, description="Minimum validation size.")
    min_test_examples: int = Field(default=_SPLIT.min_test_examples, description="Minimum test size.")
    exports: bool = Field(
        default=True,
        description="Also write splits/<version>/exports/: Alpaca JSONL, a `datasets` save_to_disk folder "
        "and a dataset card (README.md). Not part of the version: the split content is the same.",
    )
    export_license: str = Field(
        default=DEFAULT_LICENSE,
        description="Hugging Face licence id the dataset card names; `other` = the team's own terms "
        "(logged customer conversations are rarely open data).",
    )

    def to_lib(self) -> SplitConfig:
        return SplitConfig(
            train_fraction=self.train_fraction,
            validation_fraction=self.validation_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
            group_by_user=self.group_by_user,
            first_turn_min_words=self.first_turn_min_words,
            first_turn_max_shared=self.first_turn_max_shared,
            stratify_by_tag=self.stratify_by_tag,
            min_train_examples=self.min_train_examples,
            min_validation_examples=self.min_validation_examples,
            min_test_examples=self.min_test_examples,
        )


_ASSET_OF = {"train": "train_split", "validation": "validation_split", "test": "test_split"}
_DESCRIBED = {
    "train": "Training conversations",
    "validation": "Validation conversations (early stopping and perplexity)",
    "test": "Frozen test conversations (the evaluation's)",
}
# Run-config fields that change only the exports, never the split content: kept out of the version.
_EXPORT_FIELDS = {"exports", "export_license"}
#: The step that writes the three split assets: the Launchpad shows their config under this name.
SPLITS_STEP = "train_validation_test_split"
# A split too small to train on or to evaluate with stops its consumers; validation only warns them.
_SIZE_CHECK_BLOCKS = {"train": True, "validation": False, "test": True}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            asset,
            deps=["curated_dataset"],
            group_name="dataset",
            code_version=SPLITS_CODE_VERSION,
            kinds={"parquet"},
            owners=ASSET_OWNERS,
            tags=CONVERSATION_DATA_TAGS,
            description=f"{_DESCRIBED[split]}: splits/<version>/{split}.parquet and {split}.jsonl (OpenAI chat "
            f"format). All three splits are written by one step, configured in the Launchpad under "
            f"`{SPLITS_STEP}` (SplitRunConfig).",
        )
        for split, asset in _ASSET_OF.items()
    ],
    check_specs=[
        *(
            dg.AssetCheckSpec(
                "no_leakage",
                asset=_ASSET_OF[split],
                blocking=True,
                description="No group, exact duplicate or near duplicate is shared between splits.",
            )
            for split in ("train", "test")
        ),
        *(
            dg.AssetCheckSpec(
                "minimum_size",
                asset=asset,
                blocking=_SIZE_CHECK_BLOCKS[split],
                description=f"The {split} split has at least its configured minimum number of examples.",
            )
            for split, asset in _ASSET_OF.items()
        ),
        dg.AssetCheckSpec(
            "openai_format",
            asset="train_split",
            blocking=True,
            description="train.jsonl passes the OpenAI chat fine-tuning format checks.",
        ),
        dg.AssetCheckSpec(
            "openai_format",
            asset="validation_split",
            description="validation.jsonl passes the OpenAI chat format checks.",
        ),
    ],
    name=SPLITS_STEP,
)
def train_validation_test_split(
    context: dg.AssetExecutionContext,
    config: SplitRunConfig,
    storage: PipelineStorage,
    openai_fine_tuning: OpenAIFineTuningResource,
    pii_policy: PiiPolicy,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Split the curated dataset 80/10/10 (configurable) by group: one user's conversations and
    conversations sharing a context or a long first turn stay together. A group's split is a
    hash of its key and the seed, so an example keeps its split when new data arrives. Written to
    ``splits/<version>/{train,validation,test}.{parquet,jsonl}``; the three assets' DataVersion is
    that folder's version. The leakage check uses the near-duplicate parameters curated_dataset ran
    with; the JSONL is validated against the token limit of ``openai_fine_tuning.model``. With
    ``exports`` on, ``splits/<version>/exports/`` also holds the splits as Alpaca JSONL, a
    ``datasets`` folder and a dataset card (same version: they are derived from the split files)."""
    curated_manifest = read_manifest(storage.folder("curated"), CuratedManifest)
    if curated_manifest is None:
        raise dg.Failure(description="curated_dataset has not been materialized yet")
    result = make_splits(
        curated_manifest,
        storage.folder("splits"),
        config.to_lib(),
        openai_model=openai_fine_tuning.model,
        code_version=SPLITS_CODE_VERSION,
        settings=(config.model_dump(exclude=_EXPORT_FIELDS),),
    )
    version = result.manifest.version
    context.log.info(f"splits written to {storage.folder('splits') / version}: {result.sizes}")
    exports = _export(result, curated_manifest, config, storage, pii_policy) if config.exports else None
    for name, split in result.splits.items():
        yield dg.MaterializeResult(
            asset_key=_ASSET_OF[name],
            metadata={
                "dagster/row_count": split.rows,
                "share": split.share,
                "groups": split.groups,
                "largest_group": split.largest_group,
                "tags": counts_table(split.tags),
                "sample": sample_rows(split.sample, n=2),
                "path": data_path(split.parquet_path, storage.root()),
                "jsonl_path": data_path(split.jsonl_path, storage.root()),
                "curated_version": curated_manifest.version,
                "dagster/column_schema": column_schema(split.parquet_path),
                **(_export_metadata(exports, name, storage) if exports else {}),
            },
            # One version for the folder and its three files.
            data_version=dg.DataVersion(version),
        )
    yield from _checks(result)


def _pii_policy_text(policy: PiiPolicy) -> str:
    if not policy.scrub:
        return "not scrubbed (the PiiPolicy resource has scrub off)"
    kinds = [*policy.entities, *(p.name for p in policy.custom_patterns())]
    names = "; person names too" if policy.person_names_model else ""
    return (
        f"scrubbed: personal data replaced by typed placeholders (`<EMAIL>`, …) for {', '.join(kinds)}{names}; "
        "ids holding PII pseudonymized (keyed by FT_PIPELINE_ID_HASH_KEY)"
    )


def _export(
    result: SplitsResult, curated: CuratedManifest, config: SplitRunConfig, storage: PipelineStorage, pii: PiiPolicy
) -> ExportsResult:
    """Write the exports of the splits just written, with the cleaning filter counts of the
    partitions they come from (their latest cleaned version) and the curation's removals."""
    parquets = {name: result.manifest.parquet(name) for name in result.splits}
    sources = source_counts(parquets)
    cleaning: dict[str, int] = {}
    for source in sources:
        cleaned = read_manifest(storage.folder("cleaned") / safe_name(source), CleanedManifest)
        for reason, n in (removal_counts(cleaned.filtered_path) if cleaned else {}).items():
            cleaning[reason] = cleaning.get(reason, 0) + n
    return export_splits(
        parquets,
        storage.folder("splits") / result.manifest.version / "exports",
        version=result.manifest.version,
        pii_policy=_pii_policy_text(pii),
        license=config.export_license,
        filters={"cleaning": cleaning, "curation": removal_counts(curated.removed_path)},
        sources=sources,
    )


def _export_metadata(exports: ExportsResult, split: str, storage: PipelineStorage) -> dict[str, Any]:
    alpaca = exports.alpaca[split]
    return {
        "alpaca_path": data_path(alpaca.path, storage.root()),
        "alpaca_records": alpaca.records,
        "alpaca_skipped": sum(alpaca.skipped.values()),
        "alpaca_skipped_reasons": counts_table(alpaca.skipped, ALPACA_SKIP_REASONS),
        "datasets_path": data_path(exports.hf_folder, storage.root()),
        "dataset_card_path": data_path(exports.card_path, storage.root()),
    }


def _checks(result: SplitsResult) -> Iterator[dg.AssetCheckResult]:
    for split in ("train", "test"):
        yield _leakage_check(_ASSET_OF[split], result.leakage, result.leakage_dedup)
    for name, asset in _ASSET_OF.items():
        size, minimum = result.sizes.get(name, 0), result.minimum_sizes[name]
        yield dg.AssetCheckResult(
            asset_key=asset,
            check_name="minimum_size",
            passed=size >= minimum,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{size} examples (minimum {minimum})"
            if size >= minimum
            else check_min_sizes({name: size}, {name: minimum})[0],
            metadata={"examples": size, "minimum": minimum},
        )
    for name, report in result.formats.items():
        yield dg.AssetCheckResult(
            asset_key=_ASSET_OF[name],
            check_name="openai_format",
            passed=report.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            description="format valid"
            if report.ok
            else f"format errors {report.format_errors}; warnings {report.warnings}",
            metadata={
                "report": dg.MetadataValue.md(report.to_markdown()),
                "format_errors": counts_table(report.format_errors),
            },
        )


def _leakage_check(asset: str, leakage: LeakageReport, dedup: DedupConfig) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name="no_leakage",
        passed=not leakage.leaked,
        severity=dg.AssetCheckSeverity.ERROR,
        description="no leakage between splits"
        if not leakage.leaked
        else (
            f"leakage: {leakage.shared_groups} shared groups, {leakage.exact_duplicates} exact and "
            f"{leakage.near_duplicates} near duplicates across splits"
        ),
        metadata={
            "shared_groups": leakage.shared_groups,
            "exact_duplicates_across_splits": leakage.exact_duplicates,
            "near_duplicates_across_splits": leakage.near_duplicates,
            "near_duplicate_examples": table(
                [
                    {
                        "conversations": " / ".join(f"{k}: {v}" for k, v in example.items() if k != "jaccard"),
                        "jaccard": example.get("jaccard"),
                    }
                    for example in leakage.near_duplicate_examples
                ],
                [dg.TableColumn("conversations", "string"), dg.TableColumn("jaccard", "float")],
            ),
            # Informational: share of validation/test final replies found verbatim in train.
            "final_reply_overlap_informational": key_value_table(
                leakage.final_reply_overlap, key="split", value="share"
            ),
            # The parameters of curated_dataset's dedup, read from its manifest.
            "near_dup_threshold": dedup.threshold,
            "minhash_num_perm": dedup.num_perm,
            "minhash_ngram": dedup.ngram,
            "lsh_bands": dedup.band_params()[0],
        },
    )
