"""The fine-tuning stage's services (the ``fine_tuned_model`` asset's lib side).

Local LoRA: :func:`prepare_local_run` says what the trainer process gets (run key, output folder,
the Pipes extras), the asset launches it (the launching is Dagster's), and :func:`record_local_run`
turns the trainer's summary into the :class:`ModelRecord`. Hosted jobs: the run key and files of an
OpenAI-API job (:mod:`ft_pipeline.lib.training.backends.openai` runs it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_pipeline.lib.augmentation import read_augmented_train
from ft_pipeline.lib.manifests import AugmentedTrainManifest, PreferenceManifest, SplitsManifest, read_manifest
from ft_pipeline.lib.storage import content_version, portable_path
from ft_pipeline.lib.training.lora import LoraTrainingConfig, run_key
from ft_pipeline.lib.training.openai_job import (
    OpenAIFineTuneConfig,
)
from ft_pipeline.lib.training.preference_trainer import trl_method
from ft_pipeline.lib.training.record import ModelRecord, record_path, write_model_record

__all__ = [
    "LocalRun",
    "NoAugmentedData",
    "NoPreferenceData",
    "augmented_train_for",
    "openai_preference_files",
    "openai_run_key",
    "prepare_local_run",
    "read_splits",
    "record_local_run",
    "sft_only",
]


def read_splits(splits_folder: str | os.PathLike) -> SplitsManifest | None:
    """The splits the model stages train and evaluate on (``splits/latest.json``); ``None`` before
    the first split. Every model stage reads them through here.

    Raises:
        ManifestError: ``latest.json`` was written by an older ft-pipeline (materialize the splits again).
    """
    return read_manifest(splits_folder, SplitsManifest)


class NoAugmentedData(ValueError):
    """Training on the augmented train split was asked for, but there is none for these splits
    (or the method does not train on the SFT split)."""


def augmented_train_for(splits: SplitsManifest, method: str) -> AugmentedTrainManifest:
    """The augmented train split a run with ``train_on_augmented`` trains on: the one written for
    ``splits`` (``splits/<version>/augmented/latest.json``). Raises :class:`NoAugmentedData` when
    there is none, or for a method other than ``sft`` (preference data is not augmented)."""
    sft_only(method)
    augmented = read_augmented_train(splits)
    if augmented is None:
        raise NoAugmentedData(
            f"train_on_augmented is set but the splits {splits.version} have no augmented train split: "
            "materialize augmented_train_split with enabled=true first"
        )
    return augmented


def sft_only(method: str) -> None:
    """Raises :class:`NoAugmentedData` unless ``method`` trains on the SFT split only."""
    if method != "sft":
        raise NoAugmentedData(
            f"train_on_augmented trains the SFT method only (the preference data is not augmented), not {method!r}"
        )


@dataclass(frozen=True)
class LocalRun:
    """One local LoRA training run, before it starts."""

    key: str
    """The run key: data version, training settings and base model (a retry resumes the same run)."""
    output_dir: Path
    config: LoraTrainingConfig
    extras: dict[str, Any]
    """What the trainer process reads (``pipes_entrypoint``): split files, folders, settings."""
    data_version: str = ""
    """The version of what it trains on: the SFT splits, or preference_dataset for dpo/kto."""
    data_paths: dict[str, Any] | None = None
    """The files of that version (the splits' or the preference data's manifest paths)."""


def prepare_local_run(
    splits: SplitsManifest,
    config: LoraTrainingConfig,
    models_folder: Path,
    base_cache_dir: Path,
    preferences: PreferenceManifest | None = None,
    augmented: AugmentedTrainManifest | None = None,
) -> LocalRun:
    """The run of ``config``: SFT on the splits, or (``config.method`` dpo/kto) the method's TRL
    JSONL of ``preferences``, keyed by the preference data's version, or (sft_then_dpo) both: the
    SFT splits, then the DPO pairs, keyed by the preference data's version (which names the splits
    it was split against). Raises :class:`NoPreferenceData` for a preference method without
    preference examples to train on, or with preference data split against other SFT splits.
    ``augmented`` (sft only, see :func:`augmented_train_for`): train on the augmented train split
    instead of the plain one, keyed by its version (the splits' version and its settings)."""
    files: dict[str, Any] = {}
    if augmented is not None:
        sft_only(config.method)
    if config.method in ("sft", "sft_then_dpo"):
        data_version, data_paths = splits.version, splits.paths
        train_parquet = splits.parquet("train")
        if augmented is not None:
            data_version, train_parquet = augmented.version, augmented.parquet()
            data_paths = {**splits.paths, "train": dict(augmented.paths)}
        files.update(
            {
                "train_parquet": train_parquet,
                "validation_parquet": splits.parquet("validation"),
                "sft_data_version": data_version,
            }
        )
    if config.method != "sft":
        trains_on = trl_method(config.method)
        if preferences is None:
            raise NoPreferenceData(f"local {config.method} training needs preference_dataset: materialize it first")
        if config.method == "sft_then_dpo" and preferences.splits_version != splits.version:
            # The DPO stage must not see pairs placed against other splits than the SFT stage's.
            raise NoPreferenceData(
                f"preference_dataset {preferences.version} was split against splits {preferences.splits_version}, "
                f"not the current splits {splits.version}: materialize preference_dataset again"
            )
        train = Path(preferences.paths["train"][trains_on])
        validation = Path(preferences.paths["validation"][trains_on])
        if not train.exists() or not train.stat().st_size:
            raise NoPreferenceData(f"{train} holds no {trains_on} examples: the logs gave none for training")
        data_version, data_paths = preferences.version, preferences.paths
        files.update(
            {
                "train_jsonl": str(train),
                "validation_jsonl": str(validation) if validation.exists() and validation.stat().st_size else None,
            }
        )
    key = run_key(data_version, config, config.base_model)
    output_dir = models_folder / key
    extras = {
        **files,
        "output_dir": str(output_dir),
        "base_cache_dir": str(base_cache_dir),
        "data_version": data_version,
        "config": dict(config.__dict__),
    }
    return LocalRun(
        key=key, output_dir=output_dir, config=config, extras=extras, data_version=data_version, data_paths=data_paths
    )


def record_local_run(
    run: LocalRun, splits: SplitsManifest, trainer_summary: dict[str, Any], models_folder: Path, data_dir: Path
) -> tuple[ModelRecord, Path]:
    """The record of a finished local run (from the trainer's last Pipes message), written."""
    record = ModelRecord(
        version=run.key,
        path=record_path(models_folder, run.key),
        backend="local_lora",
        run_key=run.key,
        base_model=run.config.base_model,
        data_version=run.data_version or splits.version,
        split_paths=run.data_paths if run.data_paths is not None else splits.paths,
        config=run.extras["config"],
        config_hash=run.config.config_hash(),
        metrics=trainer_summary["metrics"],
        # Relative to the data directory when the base lives there, so the record survives a move.
        base_model_path=portable_path(trainer_summary["base_model_ref"], data_dir),
        base_model_hub_id=trainer_summary.get("base_model_hub_id"),
        adapter_dir=trainer_summary["adapter_dir"],
        tokenizer_dir=trainer_summary["tokenizer_dir"],
        merged_dir=trainer_summary["merged_dir"],
        adapter_version=trainer_summary["adapter_version"],
    )
    return record, write_model_record(models_folder, record)


def openai_run_key(splits: SplitsManifest, config: OpenAIFineTuneConfig, data_version: str | None = None) -> str:
    """The OpenAI job's idempotency key: a rerun with the same data and settings re-attaches.
    ``data_version``: the data the job trains on when it is not the SFT splits (a DPO job's
    preference data).

    An SFT job's key leaves out the preference settings (``method``, ``dpo_beta``), so keys made
    before they existed still find their running jobs after an upgrade."""
    settings = dict(config.__dict__)
    if settings.get("method", "sft") == "sft":
        settings.pop("method", None)
        settings.pop("dpo_beta", None)
    return content_version("openai", data_version or splits.version, settings)


class NoPreferenceData(ValueError):
    """A DPO job was asked for, but there are no preference pairs to train on."""


def openai_preference_files(preferences: PreferenceManifest | None, method: str) -> tuple[Path, Path | None]:
    """The OpenAI preference JSONL (train, validation or None when empty) of a DPO job."""
    if preferences is None:
        raise NoPreferenceData(f"a {method} job needs preference_dataset: materialize it first")
    train = Path(preferences.paths["train"]["openai"])
    validation: Path | None = Path(preferences.paths["validation"]["openai"])
    if not train.exists() or not train.stat().st_size:
        raise NoPreferenceData(f"{train} holds no preference pairs: the logs gave none for training")
    if validation is not None and (not validation.exists() or not validation.stat().st_size):
        validation = None
    return train, validation
