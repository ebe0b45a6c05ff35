"""The ``local_lora`` backend: TRL + PEFT LoRA/QLoRA (SFT, DPO, KTO, SFT then DPO) in a trainer
process of its own.

The process is launched by whoever runs the pipeline (Dagster Pipes: a subprocess locally, a GPU
pod in production), so the backend takes a ``launch`` callable: it gets the run's extras (what
:mod:`ft_pipeline.lib.training.pipes_entrypoint` reads) and returns the trainer's last summary.
Launching is synchronous: ``wait`` has nothing left to wait for, and a cancelled Dagster run stops
the process through Pipes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ft_pipeline.lib.training.backends.base import (
    JobHandle,
    PreparedRun,
    TrainingHooks,
    TrainingOutcome,
    TrainingRequest,
)
from ft_pipeline.lib.training.fine_tune import LocalRun, prepare_local_run, record_local_run
from ft_pipeline.lib.training.lora import LoraTrainingConfig

__all__ = ["LocalLoraBackend", "TRAINER_HEADLINE_METRICS"]

#: The trainer's metrics shown as their own rows (plotted across runs), with their types; the
#: others go into the ``training_details`` table.
TRAINER_HEADLINE_METRICS: dict[str, type] = {
    "train_loss": float,
    "eval_loss": float,
    "global_step": int,
    "max_steps": int,
    "epochs": float,
    "train_tokens": int,
    "tokens_per_second": float,
    "train_runtime_s": float,
    "peak_memory_mb": float,
    "train_examples": int,
    "validation_examples": int,
    "trainable_parameters": int,
    "early_stopped": bool,
    "device": str,
}


class LocalLoraBackend:
    """LoRA training of ``config`` through ``launch`` (see the module docstring)."""

    name = "local_lora"

    def __init__(
        self,
        config: LoraTrainingConfig,
        base_cache_dir: Path,
        launch: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.config = config
        self.base_cache_dir = base_cache_dir
        self.launch = launch

    def prepare(self, request: TrainingRequest) -> PreparedRun:
        local = prepare_local_run(
            request.splits,
            self.config,
            request.models_folder,
            self.base_cache_dir,
            request.preferences,
            request.augmented,
        )
        return PreparedRun(
            key=local.key,
            data_version=local.data_version,
            data_paths=local.data_paths or request.splits.paths,
            files={"local_run": local},
            settings=local.extras["config"],
        )

    def start(self, run: PreparedRun, hooks: TrainingHooks) -> JobHandle:
        local: LocalRun = run.files["local_run"]
        hooks.on_log(f"training run {local.key} into {local.output_dir}")
        summary = self.launch(local.extras)
        return JobHandle(job_id=local.key, reattached=bool(summary.get("resumed_from")), state={"summary": summary})

    def wait(self, run: PreparedRun, job: JobHandle, hooks: TrainingHooks) -> JobHandle:
        return job  # the trainer process has ended when launch returns

    def result(self, run: PreparedRun, job: JobHandle, request: TrainingRequest) -> TrainingOutcome:
        local: LocalRun = run.files["local_run"]
        summary = job.state["summary"]
        record, record_file = record_local_run(local, request.splits, summary, request.models_folder, request.data_dir)
        metrics = record.metrics
        headline: dict[str, Any] = {"adapter_digest": record.adapter_version or ""}
        for name, kind in TRAINER_HEADLINE_METRICS.items():
            value = metrics.get(name)
            if value is not None and not isinstance(value, dict | list):
                # Floats to 4 decimals: readable at a glance (the record keeps every digit).
                headline[name] = round(float(value), 4) if kind is float else kind(value)
        headline.update({"config_hash": record.config_hash, "resumed_from": summary["resumed_from"] or ""})
        return TrainingOutcome(
            record=record,
            record_file=record_file,
            headline=headline,
            tables={
                "training_details": {k: v for k, v in metrics.items() if k not in TRAINER_HEADLINE_METRICS},
            },
            paths={
                "adapter_dir": summary["adapter_dir"],
                "model_record": str(record_file),
                "model_card": summary["model_card"],
            },
            images={"loss_curve": summary["loss_plot"]},
            loss_history=list(summary.get("loss_history") or []),
        )

    def cancel(self, job: JobHandle) -> str:
        # Pipes ends the trainer process when the Dagster run is cancelled; nothing remote to stop.
        return "terminated"
