"""preference_dataset: DPO pairs and KTO examples from the logs' own signals (ratings, thumbs,
regenerations, agents' edits), split against the SFT splits so nothing leaks."""

from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import (
    ASSET_OWNERS,
    CONVERSATION_DATA_TAGS,
    column_schema,
    counts_check,
    counts_table,
    data_path,
    pii_check,
    table,
)
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import OpenAIFineTuningResource, PiiPolicy, PipelineStorage
from ft_pipeline.lib.manifests import SplitsManifest, read_manifest
from ft_pipeline.lib.preference_dataset import (
    EXCLUDED,
    PreferenceDatasetConfig,
    PreferenceDatasetResult,
    build_preference_dataset,
)
from ft_pipeline.lib.preferences import DROP_REASONS, PAIR_RULES, PreferenceConfig
from ft_pipeline.lib.storage import safe_name

PREFERENCES_CODE_VERSION = "1"
_PREF = PreferenceConfig()
_DATASET = PreferenceDatasetConfig()


class PreferenceRunConfig(dg.Config):
    """Which signals make preference data, and how examples the SFT splits have not seen are placed
    (defaults are the documented ones)."""

    kto_good_rating: float = Field(
        default=_PREF.kto_good_rating, description="A reply rated at least this is a desirable KTO example."
    )
    kto_bad_rating: float = Field(
        default=_PREF.kto_bad_rating, description="A reply rated at most this is an undesirable KTO example."
    )
    min_rating_gap: float = Field(
        default=_PREF.min_rating_gap,
        description="Two replies to one prompt make a pair by rating only when their ratings differ by this much.",
    )
    use_edits: bool = Field(default=_PREF.use_edits, description="Agent-edited reply over the model's original.")
    use_regenerations: bool = Field(
        default=_PREF.use_regenerations, description="The accepted reply over the one the user regenerated."
    )
    use_ratings: bool = Field(default=_PREF.use_ratings, description="Pairs and KTO labels from ratings.")
    use_thumbs: bool = Field(default=_PREF.use_thumbs, description="Pairs and KTO labels from thumbs up/down.")
    seed: int = Field(
        default=_DATASET.seed, description="Salt of the hash placing examples the SFT splits have not seen."
    )
    validation_fraction: float = Field(
        default=_DATASET.validation_fraction, description="Share of unseen prompt groups placed in validation."
    )
    test_fraction: float = Field(
        default=_DATASET.test_fraction, description="Share of unseen prompt groups placed in test."
    )
    first_turn_min_words: int = Field(
        default=_DATASET.first_turn_min_words,
        description="A first user turn of at least this many words links an example to the SFT split holding it.",
    )

    def to_lib(self) -> PreferenceDatasetConfig:
        return PreferenceDatasetConfig(
            preferences=PreferenceConfig(
                kto_good_rating=self.kto_good_rating,
                kto_bad_rating=self.kto_bad_rating,
                min_rating_gap=self.min_rating_gap,
                use_edits=self.use_edits,
                use_regenerations=self.use_regenerations,
                use_ratings=self.use_ratings,
                use_thumbs=self.use_thumbs,
            ),
            seed=self.seed,
            validation_fraction=self.validation_fraction,
            test_fraction=self.test_fraction,
            first_turn_min_words=self.first_turn_min_words,
        )


@dg.asset(
    deps=["cleaned_conversations", "train_split", "validation_split", "test_split"],
    group_name="dataset",
    code_version=PREFERENCES_CODE_VERSION,
    kinds={"parquet"},
    owners=ASSET_OWNERS,
    tags=CONVERSATION_DATA_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            "no_pii_left",
            asset="preference_dataset",
            blocking=True,
            description="A fresh PII scan of every prompt, reply, id and tag finds nothing.",
        ),
        dg.AssetCheckSpec(
            "no_leakage",
            asset="preference_dataset",
            blocking=True,
            description="No preference train/validation example shares a user, context or long first turn with the "
            "SFT test split, and no preference test example shares one with the SFT train split.",
        ),
        dg.AssetCheckSpec(
            "counts_add_up",
            asset="preference_dataset",
            blocking=True,
            description="Every cleaned conversation (kept or filtered) is in exactly one pair, KTO example or "
            "dropped row.",
        ),
        dg.AssetCheckSpec(
            "openai_format",
            asset="preference_dataset",
            description="train.openai.jsonl and validation.openai.jsonl pass the OpenAI preference format checks.",
        ),
    ],
)
def preference_dataset(
    context: dg.AssetExecutionContext,
    config: PreferenceRunConfig,
    storage: PipelineStorage,
    pii_policy: PiiPolicy,
    openai_fine_tuning: OpenAIFineTuningResource,
) -> dg.MaterializeResult:
    """Preference data built from what the logs already say about replies, with the same care for
    leakage and accounting as the SFT data. DPO pairs (same prompt, two replies, one preferred):
    an agent's edited reply over the model's original (``edited`` plus ``original_content``), the
    reply the user accepted over the one they regenerated (``regenerated``), the higher-rated or
    thumbed-up reply. KTO examples: a single reply rated >= 4 or <= 2, or with thumbs. Ties,
    contradictory votes and conversations without a signal are dropped with a reason; every
    cleaned conversation (also those the SFT quality filter removed: they hold the negative
    signal) ends in exactly one place. Split against the SFT splits, written to
    ``preferences/<version>/`` as Parquet and as TRL DPO, TRL KTO and OpenAI/Azure DPO JSONL."""
    splits = read_manifest(storage.folder("splits"), SplitsManifest)
    if splits is None:
        raise dg.Failure(description="the SFT splits have not been materialized yet")
    partitions = sorted(context.instance.get_dynamic_partitions(log_files_partitions.name))
    pii = pii_policy.pii_config()
    try:
        result = build_preference_dataset(
            {name: storage.folder("cleaned") / safe_name(name) for name in partitions},
            splits,
            storage.folder("preferences"),
            config.to_lib(),
            pii=pii,
            openai_model=openai_fine_tuning.model,
            code_version=PREFERENCES_CODE_VERSION,
            settings=(config.model_dump(),),
        )
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from exc
    if result.missing:
        context.log.warning(f"{len(result.missing)} partition(s) have no cleaned output yet: {result.missing[:10]}")
    build, root = result.build, storage.root()
    paths = result.manifest.paths
    return dg.MaterializeResult(
        metadata={
            "conversations_in": build.n_in,
            "pairs": build.n_pairs,
            "kto_examples": build.n_kto,
            "dropped": build.n_dropped,
            "pairs_by_rule": counts_table(build.pair_counts, PAIR_RULES),
            "kto_by_label": counts_table(build.kto_counts),
            "dropped_by_reason": counts_table(build.dropped_counts, DROP_REASONS),
            "splits": _split_table(result.split_counts),
            "partitions": len(result.partitions),
            "pairs_path": data_path(paths["all"]["pairs"], root),
            "kto_path": data_path(paths["all"]["kto"], root),
            "dropped_path": data_path(paths["all"]["dropped"], root),
            "train_dpo_jsonl": data_path(paths["train"]["dpo"], root),
            "train_openai_jsonl": data_path(paths["train"]["openai"], root),
            "train_kto_jsonl": data_path(paths["train"]["kto"], root),
            "dagster/row_count": build.n_pairs + build.n_kto,
            "dagster/column_schema": column_schema(paths["all"]["pairs"]),
        },
        # The folder's name: preferences/<version>/.
        data_version=dg.DataVersion(result.version),
        check_results=[
            pii_check(result.pii_scan, pii),
            _leakage_check(result.leakage, result.split_counts),
            _counts_check(result),
            _format_check(result),
        ],
    )


def _split_table(split_counts: Mapping[str, Mapping[str, int]]) -> dg.MetadataValue:
    return table(
        [{"split": name, **counts} for name, counts in split_counts.items()],
        [
            dg.TableColumn("split", "string", description=f"{EXCLUDED}: touches the SFT test split and another one."),
            dg.TableColumn("pairs", "int"),
            dg.TableColumn("kto", "int"),
        ],
    )


def _leakage_check(leakage: Mapping[str, int], split_counts: Mapping[str, Mapping[str, int]]) -> dg.AssetCheckResult:
    excluded = split_counts.get(EXCLUDED, {})
    return dg.AssetCheckResult(
        check_name="no_leakage",
        passed=not leakage,
        severity=dg.AssetCheckSeverity.ERROR,
        description="nothing shared with the SFT split it must stay away from"
        if not leakage
        else f"leakage: {dict(leakage)}",
        metadata={
            "leaked": counts_table(dict(leakage)),
            "excluded_pairs": int(excluded.get("pairs", 0)),
            "excluded_kto": int(excluded.get("kto", 0)),
        },
    )


def _counts_check(result: PreferenceDatasetResult) -> dg.AssetCheckResult:
    build = result.build
    accounted = build.conversations_accounted
    return counts_check(
        accounted == build.n_in,
        f"{build.n_in} conversations in: {build.n_pairs} pairs, {build.n_kto} KTO examples, "
        f"{build.n_dropped} dropped ({accounted} accounted for)",
        accounted="every conversation in exactly one place",
        lost=f"{build.n_in - accounted} conversations unaccounted for",
        numbers={"conversations_in": build.n_in, "accounted_for": accounted},
    )


def _format_check(result: PreferenceDatasetResult) -> dg.AssetCheckResult:
    """Format errors fail the check; too few pairs for a hosted DPO job is said, not failed (local
    DPO trains on any number)."""
    reports: dict[str, Any] = result.formats
    failures = {name: r.n_format_errors for name, r in reports.items() if r.n_format_errors}
    notes = [
        f"{name}: {r.n_examples} pairs" + ("" if r.ok or name != "train" else " (an OpenAI DPO job needs at least 10)")
        for name, r in reports.items()
    ]
    return dg.AssetCheckResult(
        check_name="openai_format",
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("format valid; " if not failures else f"format errors {failures}; ") + "; ".join(notes),
        metadata={name: dg.MetadataValue.md(r.to_markdown()) for name, r in reports.items()},
    )
