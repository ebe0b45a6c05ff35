"""ModelRecord: what ``fine_tuned_model`` hands to ``evaluation_report``.

One record per training run, written twice with the same content: ``models/<run_key>/model.json``
stays with the run's files (it is published with them), and ``models/latest.json`` (a typed
manifest, see :mod:`ft_pipeline.lib.manifests`) tells the next stage which run is the candidate.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from ft_pipeline.lib.manifests import read_manifest, write_manifest
from ft_pipeline.lib.storage import write_text

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "HOSTED_BACKENDS",
    "MODEL_RECORD_FILE",
    "ModelRecord",
    "read_model_record",
    "record_path",
    "write_model_record",
]

Backend = Literal["local_lora", "openai", "azure", "together"]
#: ``local_lora``: TRL + PEFT on a local (or pod) GPU/CPU; ``openai``: an OpenAI fine-tuning job;
#: ``azure``: an Azure OpenAI fine-tuning job and its deployment; ``together``: a Together AI job.
BACKENDS: tuple[Backend, ...] = ("local_lora", "openai", "azure", "together")
#: The backends whose models are called through a provider's API (by ``remote_model_id``).
HOSTED_BACKENDS: tuple[Backend, ...] = ("openai", "azure", "together")
DEFAULT_BACKEND: Backend = "local_lora"
#: The record's copy inside the run folder.
MODEL_RECORD_FILE = "model.json"


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """One trained model and its lineage: how to load or call it, what data and settings made it."""

    KIND: ClassVar[str] = "model_record"
    SCHEMA: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "fine_tuned_model"

    version: str
    """The run key (the ``latest`` pointer's version)."""
    path: str
    """This record's copy in the run folder (``models/<run_key>/model.json``)."""
    backend: str
    run_key: str
    base_model: str
    """The base as configured: a catalog name, a folder, a hub id, or the OpenAI base model id."""
    data_version: str
    """Version of the splits the model was trained on."""
    split_paths: dict[str, dict[str, Any]]
    config: dict[str, Any]
    """The training settings (LoraTrainingConfig or OpenAIFineTuneConfig fields)."""
    config_hash: str
    metrics: dict[str, Any]
    """Training metrics (local: the trainer's summary; OpenAI: the job's result metrics)."""
    # local_lora
    base_model_path: str | None = None
    """Base weights, relative to the data directory when they live there (survives a move)."""
    base_model_hub_id: str | None = None
    adapter_dir: str | None = None
    tokenizer_dir: str | None = None
    merged_dir: str | None = None
    adapter_version: str | None = None
    # openai
    remote_model_id: str | None = None
    job_id: str | None = None
    trained_tokens: int | None = None
    checkpoints: list[Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    # azure: ``remote_model_id`` is the deployment (the name chat calls pass as ``model``)
    fine_tuned_model_id: str | None = None
    """The provider's fine-tuned model when ``remote_model_id`` names a deployment of it (azure)."""

    @property
    def model_uri(self) -> str:
        """How the registry names this model: the hosted model id, or the adapter folder and version."""
        if self.is_hosted:
            return str(self.remote_model_id)
        return f"lora://{self.adapter_dir}#{self.adapter_version}"

    @property
    def is_hosted(self) -> bool:
        """True for a model answered by a provider's API (``openai``, ``azure``, ``together``)."""
        return self.backend in HOSTED_BACKENDS

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")


def write_model_record(models_folder: str | os.PathLike, record: ModelRecord) -> Path:
    """Write ``record`` into its run folder and point ``models/latest.json`` at it; returns the
    run folder's ``model.json``."""
    latest = write_manifest(models_folder, record)
    # The same bytes in the run folder: the record travels with the adapter when it is published.
    return write_text(latest.read_text(encoding="utf-8"), Path(record.path))


def read_model_record(models_folder: str | os.PathLike) -> ModelRecord | None:
    """The candidate's record (``models/latest.json``); ``None`` before the first training run.

    Raises:
        ManifestError: ``latest.json`` was written by an older ft-pipeline.
    """
    return read_manifest(models_folder, ModelRecord)


def record_path(models_folder: str | os.PathLike, run_key: str) -> str:
    """Where the record of ``run_key`` lives in its run folder."""
    return str(Path(models_folder) / run_key / MODEL_RECORD_FILE)
