"""augmented_train_split: seeded typo and case/whitespace copies of train user turns (off by default)."""

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
    sample_rows,
)
from ft_pipeline.defs.resources import OpenAIFineTuningResource, PiiPolicy, PipelineStorage
from ft_pipeline.defs.splits import _leakage_check
from ft_pipeline.lib.augmentation import (
    AUGMENTATION_KINDS,
    AugmentationConfig,
    AugmentationResult,
    make_augmented_train,
)
from ft_pipeline.lib.manifests import CuratedManifest, read_manifest
from ft_pipeline.lib.training.fine_tune import read_splits

AUGMENTATION_CODE_VERSION = "1"
_AUG = AugmentationConfig()


class AugmentationRunConfig(dg.Config):
    """Whether and how the train split gets perturbed copies of its user turns (defaults are the
    documented ones; off unless ``enabled``)."""

    enabled: bool = Field(
        default=_AUG.enabled,
        description="Write the augmented train split. Off: nothing is written, the asset records the plain "
        "split's counts, and training uses the plain split.",
    )
    kinds: list[str] = Field(
        default=list(_AUG.kinds),
        description=f"Perturbations the copies use, in turn: {', '.join(AUGMENTATION_KINDS)} (keyboard typos, "
        "lower/upper case and spacing, punctuation removed). Placeholders, URLs, e-mails and numbers stay intact.",
    )
    copies_per_example: int = Field(
        default=_AUG.copies_per_example, description="Copies of each selected train example (one kind each)."
    )
    fraction: float = Field(
        default=_AUG.fraction,
        description="Share of train examples that get copies (chosen by a hash of seed and conversation id).",
    )
    seed: int = Field(default=_AUG.seed, description="Salt of the choice of examples, of the kinds and of the typos.")
    typo_rate: float = Field(
        default=_AUG.typo_rate,
        description="Per-letter typo rate (typos) and per-space change rate (case_whitespace).",
    )

    def to_lib(self) -> AugmentationConfig:
        return AugmentationConfig(
            enabled=self.enabled,
            kinds=tuple(self.kinds),
            copies_per_example=self.copies_per_example,
            fraction=self.fraction,
            seed=self.seed,
            typo_rate=self.typo_rate,
        )


_DESCRIPTIONS = {
    "typos": "Keyboard typos in user turns: QWERTY-neighbour substitutions, drops, swaps.",
    "case_whitespace": "User turns lower- or upper-cased, spaces doubled or removed after punctuation.",
    "punctuation": "Punctuation removed from user turns.",
}


@dg.asset(
    deps=["train_split"],
    group_name="dataset",
    code_version=AUGMENTATION_CODE_VERSION,
    kinds={"parquet"},
    owners=ASSET_OWNERS,
    tags=CONVERSATION_DATA_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            "no_leakage",
            asset="augmented_train_split",
            blocking=True,
            description="No copy shares a group, an exact hash or near-duplicate text with validation or test.",
        ),
        dg.AssetCheckSpec(
            "openai_format",
            asset="augmented_train_split",
            blocking=True,
            description="The augmented train.jsonl passes the OpenAI chat fine-tuning format checks.",
        ),
    ],
)
def augmented_train_split(
    context: dg.AssetExecutionContext,
    config: AugmentationRunConfig,
    storage: PipelineStorage,
    openai_fine_tuning: OpenAIFineTuningResource,
    pii_policy: PiiPolicy,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The train split plus seeded, perturbed copies of a share of its conversations: every USER
    turn of a copy gets typos or case/whitespace changes, system and assistant turns stay as they
    are. Off by default (``enabled``): it then only records the plain train split's counts and
    writes nothing; training uses the plain split. On: writes
    ``splits/<version>/augmented/<augmented version>/train.parquet`` and ``train.jsonl`` (OpenAI chat
    format) and ``splits/<version>/augmented/latest.json``, which ``fine_tuned_model`` reads with
    ``train_on_augmented``. Validation and test are never augmented. A copy keeps its source's
    split group and hashes (``augmented_from`` names the source, ``augmentation`` the kind), so the
    leakage check, run again here against validation and test, sees it where its source is. Its
    DataVersion derives from the splits' version and the augmentation settings."""
    splits = read_splits(storage.folder("splits"))
    if splits is None:
        raise dg.Failure(description="the splits have not been materialized yet")
    curated = read_manifest(storage.folder("curated"), CuratedManifest)
    if curated is None:
        raise dg.Failure(description="curated_dataset has not been materialized yet")
    try:
        lib_config = config.to_lib()
    except ValueError as err:
        raise dg.Failure(description=f"augmented_train_split config: {err}") from None
    result = make_augmented_train(
        splits,
        lib_config,
        curated.dedup_config(),
        code_version=AUGMENTATION_CODE_VERSION,
        openai_model=openai_fine_tuning.model,
    )
    counts = result.counts
    metadata: dict[str, Any] = {
        "enabled": result.enabled,
        "source_examples": counts.source_examples,
        "selected_examples": counts.selected_examples,
        "augmented_copies": counts.augmented_copies,
        "dagster/row_count": counts.total_examples,
        "splits_version": result.splits_version,
    }
    if result.manifest is None:
        context.log.info(
            f"augmentation is off: training uses the plain train split ({counts.source_examples} examples)"
        )
        yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(result.version))
        # Nothing written, nothing to check: training uses train_split, checked by its own checks.
        for check in ("no_leakage", "openai_format"):
            yield dg.AssetCheckResult(
                asset_key="augmented_train_split",
                check_name=check,
                passed=True,
                description=f"augmentation off: nothing written (train_split's own {check} check applies)",
                metadata={"enabled": False},
            )
        return
    context.log.info(
        f"augmented train split {result.version}: {counts.source_examples} examples + "
        f"{counts.augmented_copies} copies {counts.copies}"
    )
    metadata.update(
        {
            "copies_per_kind": counts_table(counts.copies, _DESCRIPTIONS),
            "unchanged_copies": sum(counts.unchanged.values()),
            "unchanged_per_kind": counts_table(
                counts.unchanged, {k: "Copies not written: no user turn changed." for k in counts.unchanged}
            ),
            "settings": dg.MetadataValue.text(", ".join(f"{k}={v}" for k, v in lib_config.settings().items())),
            "sample_copies": sample_rows(result.sample, n=3, pii=pii_policy.pii_config()),
            "path": data_path(result.manifest.parquet(), storage.root()),
            "jsonl_path": data_path(result.manifest.jsonl(), storage.root()),
            "dagster/column_schema": column_schema(result.manifest.parquet()),
        }
    )
    yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(result.version))
    yield from _checks(result, curated)


def _checks(result: AugmentationResult, curated: CuratedManifest) -> Iterator[dg.AssetCheckResult]:
    assert result.leakage is not None and result.format is not None  # written when enabled
    yield _leakage_check("augmented_train_split", result.leakage, curated.dedup_config())
    report = result.format
    yield dg.AssetCheckResult(
        asset_key="augmented_train_split",
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
