"""The fine-tuning backend protocol: what every way of training a model implements.

A backend turns the training data of one run into a :class:`ModelRecord` in five steps::

    prepare  -> which files, which run key (no network, no training)
    start    -> upload and create the job, or re-attach to the one already running for the run key
    wait     -> until the job ends (polling with backoff, events streamed through the hooks)
    result   -> the record of the trained model, written into the models folder
    cancel   -> stop the job (the Dagster run was cancelled)

:func:`train_with` runs the steps; the ``fine_tuned_model`` asset calls it for whichever backend the
run asks for, so adding a provider is one module (a class with these methods, registered in
:mod:`ft_pipeline.lib.training.backends`) and one fake server for its tests. Pure library code:
never import dagster here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ft_pipeline.lib.manifests import AugmentedTrainManifest, PreferenceManifest, SplitsManifest
from ft_pipeline.lib.training.record import ModelRecord

__all__ = [
    "FineTuningBackend",
    "JobHandle",
    "PreparedRun",
    "TrainingHooks",
    "TrainingOutcome",
    "TrainingRequest",
    "train_with",
]


def _ignore(*_: Any) -> None:
    pass


@dataclass(frozen=True)
class TrainingRequest:
    """What one training run trains on and where it writes."""

    method: str
    """``sft``, ``dpo``, ``kto`` or ``sft_then_dpo`` (a backend refuses what it cannot train)."""
    splits: SplitsManifest
    """The SFT splits (``splits/latest.json``)."""
    preferences: PreferenceManifest | None
    """``preference_dataset``'s manifest; ``None`` before it was materialized."""
    models_folder: Path
    """``<data dir>/models``: the run folder and ``latest.json`` go here."""
    data_dir: Path
    """The data directory (records keep paths relative to it where they can)."""
    augmented: AugmentedTrainManifest | None = None
    """``sft`` only: train on this augmented train split (the train split plus perturbed copies)
    instead of the plain one; its version keys the run."""


@dataclass(frozen=True)
class PreparedRun:
    """One run, before anything is uploaded or started."""

    key: str
    """The run key: the same data and settings give the same key, and a retry re-attaches to (or
    resumes) the run of that key instead of paying for a second one."""
    data_version: str
    """The version of what it trains on: the SFT splits, or preference_dataset's for dpo/kto."""
    data_paths: dict[str, Any]
    """The files of that version (the manifest's paths; they go into the record)."""
    files: dict[str, Any]
    """What the backend uploads or reads (e.g. ``train``, ``validation``), backend-specific."""
    settings: dict[str, Any]
    """The training settings, as the record keeps them."""


@dataclass
class TrainingHooks:
    """Where a backend reports progress (the asset passes Dagster's log)."""

    on_log: Callable[[str], None] = _ignore
    """One line per job event or progress step."""
    on_metrics: Callable[[dict[str, Any]], None] = _ignore
    """One call per metrics event (``step``, ``train_loss``, ``valid_loss``, ...)."""
    on_job: Callable[[str], None] = _ignore
    """The id of a job as soon as it is known (so it can be cancelled)."""


@dataclass
class JobHandle:
    """A started (or re-attached) job."""

    job_id: str
    reattached: bool = False
    """True when the job already existed for the run key (nothing new was paid for)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Whatever else the backend needs between ``start``, ``wait`` and ``result``."""


@dataclass(frozen=True)
class TrainingOutcome:
    """A trained model: its record (written) and what the asset shows about the run."""

    record: ModelRecord
    record_file: Path
    """``models/<run_key>/model.json``."""
    headline: dict[str, Any] = field(default_factory=dict)
    """Plain values (text, numbers, booleans) shown as their own metadata rows: job id,
    re-attached, trained tokens, final losses, ..."""
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Name -> key/value mapping, each shown as a two-column table (settings, result metrics)."""
    row_tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Name -> rows, each shown as a table (a job's checkpoints)."""
    paths: dict[str, str] = field(default_factory=dict)
    """Name -> a file or folder under the data directory (shown relative to it)."""
    images: dict[str, str] = field(default_factory=dict)
    """Name -> a PNG file shown inline (the loss plot)."""
    loss_history: list[dict[str, Any]] = field(default_factory=list)
    """Metrics events with a step; ``loss``/``train_loss`` and ``eval_loss``/``valid_loss``
    become the loss sparkline."""


@runtime_checkable
class FineTuningBackend(Protocol):
    """One way of training a model (see the module docstring for the steps)."""

    name: str
    """The record's ``backend`` (``local_lora``, ``openai``, ``azure``, ``together``)."""

    def prepare(self, request: TrainingRequest) -> PreparedRun:
        """Choose the files and compute the run key. Raises ``NoPreferenceData`` (a preference
        method without pairs) or ``ValueError`` (a method this backend cannot train)."""
        ...

    def start(self, run: PreparedRun, hooks: TrainingHooks) -> JobHandle:
        """Upload and create the job, or re-attach to the live one of ``run.key``."""
        ...

    def wait(self, run: PreparedRun, job: JobHandle, hooks: TrainingHooks) -> JobHandle:
        """Block until the job succeeded (returns its final handle) or raise ``FineTuneError``
        (failed, cancelled, timed out). A job of several stages (``sft_then_dpo``) starts the
        next stage here."""
        ...

    def result(self, run: PreparedRun, job: JobHandle, request: TrainingRequest) -> TrainingOutcome:
        """The trained model's record, written into ``request.models_folder``."""
        ...

    def cancel(self, job: JobHandle) -> str:
        """Stop the job; returns its status afterwards."""
        ...


def train_with(
    backend: FineTuningBackend,
    request: TrainingRequest,
    hooks: TrainingHooks,
    *,
    interrupted: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
) -> TrainingOutcome:
    """Prepare, start (or re-attach), wait and collect the result of one run on ``backend``.

    When one of ``interrupted`` is raised while the job runs (the Dagster run was cancelled), the job
    is cancelled too, so nobody keeps paying for it, and the exception propagates."""
    run = backend.prepare(request)
    hooks.on_log(f"{backend.name}: run {run.key} on data {run.data_version}")
    job: JobHandle | None = None
    try:
        job = backend.start(run, hooks)
        hooks.on_job(job.job_id)
        job = backend.wait(run, job, hooks)
    except interrupted:
        if job is not None:
            status = backend.cancel(job)
            hooks.on_log(f"run cancelled: {backend.name} job {job.job_id} is now {status}")
        raise
    return backend.result(run, job, request)
