"""The ``openai`` backend: OpenAI fine-tuning jobs (SFT, DPO, SFT then DPO) through the real SDK.

Also the job half of the ``azure`` backend: Azure OpenAI's fine-tuning API is OpenAI's, so
:class:`OpenAIBackend` runs it with an ``AzureOpenAI`` client under the name ``azure``. The job
logic (idempotent create by run key, polling, events, results) is
:mod:`ft_pipeline.lib.training.openai_job`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ft_pipeline.lib.storage import content_version
from ft_pipeline.lib.training.backends.base import (
    JobHandle,
    PreparedRun,
    TrainingHooks,
    TrainingOutcome,
    TrainingRequest,
)
from ft_pipeline.lib.training.fine_tune import (
    NoPreferenceData,
    openai_preference_files,
    openai_run_key,
    sft_only,
)
from ft_pipeline.lib.training.openai_job import (
    HOSTED_METHODS,
    FineTuneError,
    OpenAIFineTuneConfig,
    OpenAIFineTuneResult,
    StartedJob,
    cancel_job,
    start_fine_tune,
    wait_fine_tune,
)
from ft_pipeline.lib.training.record import ModelRecord, record_path, write_model_record

__all__ = ["OpenAIBackend"]


class OpenAIBackend:
    """Fine-tuning jobs on the OpenAI API (or any server that speaks it, or Azure OpenAI).

    ``sft`` is one job on the SFT splits' chat JSONL, ``dpo`` one job on preference_dataset's
    OpenAI preference JSONL, ``sft_then_dpo`` the SFT job of the splits (the same run key as a plain
    ``sft`` run, so an earlier one is re-attached, not paid for again), then a DPO job on the SFT
    job's model; the record names the original base, so the evaluation compares with it."""

    def __init__(self, client: Any, config: OpenAIFineTuneConfig, *, name: str = "openai") -> None:
        self.client = client
        self.config = config
        self.name = name

    # -- prepare --------------------------------------------------------------------------------
    def prepare(self, request: TrainingRequest) -> PreparedRun:
        config, splits = self.config, request.splits
        if config.method not in HOSTED_METHODS:
            raise ValueError(
                f"method {config.method!r} is trained locally only on the {self.name} backend: "
                f"use backend local_lora, or one of {sorted(HOSTED_METHODS)}"
            )
        files: dict[str, Any] = {"splits": splits, "sft_data_version": None}
        if config.method in ("sft", "sft_then_dpo"):
            files["sft"] = (Path(splits.jsonl("train")), Path(splits.jsonl("validation")))
        if request.augmented is not None:
            sft_only(config.method)
            augmented = request.augmented
            files["sft"] = (Path(augmented.jsonl()), files["sft"][1])
            files["sft_data_version"] = augmented.version
            data_version, data_paths = augmented.version, {**splits.paths, "train": dict(augmented.paths)}
        elif config.method == "sft":
            data_version, data_paths = splits.version, splits.paths
        else:
            files["dpo"] = openai_preference_files(request.preferences, config.method)
            assert request.preferences is not None  # openai_preference_files raised otherwise
            data_version, data_paths = request.preferences.version, request.preferences.paths
        return PreparedRun(
            key=openai_run_key(splits, config, data_version),
            data_version=data_version,
            data_paths=data_paths,
            files=files,
            settings=dict(config.__dict__),
        )

    # -- start / wait ---------------------------------------------------------------------------
    def _start_stage(self, run: PreparedRun, stage: str, config: OpenAIFineTuneConfig) -> StartedJob:
        train, validation = run.files[stage]
        data_version = run.files["sft_data_version"] if stage == "sft" else run.data_version
        key = openai_run_key(run.files["splits"], config, data_version)
        return start_fine_tune(self.client, train, validation, key, config)

    def _stage_config(self, stage: str, model: str | None = None) -> OpenAIFineTuneConfig:
        config = dataclasses.replace(self.config, method=stage)
        return dataclasses.replace(config, model=model) if model else config

    def start(self, run: PreparedRun, hooks: TrainingHooks) -> JobHandle:
        first = "sft" if self.config.method in ("sft", "sft_then_dpo") else "dpo"
        if self.config.method == "sft_then_dpo":
            hooks.on_log(f"sft_then_dpo: SFT job on the splits {run.files['splits'].version}")
        started = self._start_stage(run, first, self._stage_config(first))
        state = {"stage": first, "started": started}
        return JobHandle(job_id=started.job.id, reattached=started.reattached, state=state)

    def wait(self, run: PreparedRun, job: JobHandle, hooks: TrainingHooks) -> JobHandle:
        stage, started = job.state["stage"], job.state["started"]
        result = self._wait(stage, started, hooks)
        if self.config.method == "sft_then_dpo" and stage == "sft":
            if not result.fine_tuned_model:
                raise FineTuneError(f"the SFT job {result.job_id} succeeded without a fine-tuned model id")
            hooks.on_log(f"sft_then_dpo: DPO job on {result.fine_tuned_model}")
            job.state["earlier_tokens"] = result.trained_tokens or 0
            started = self._start_stage(run, "dpo", self._stage_config("dpo", result.fine_tuned_model))
            # In place: a cancel while the DPO stage runs must reach the DPO job.
            job.job_id, job.state["stage"], job.state["started"] = started.job.id, "dpo", started
            job.reattached = job.reattached and started.reattached
            hooks.on_job(started.job.id)
            result = self._wait("dpo", started, hooks)
        job.state["result"] = result
        return job

    def _wait(self, stage: str, started: StartedJob, hooks: TrainingHooks) -> OpenAIFineTuneResult:
        return wait_fine_tune(
            self.client,
            started,
            self._stage_config(stage),
            on_log=hooks.on_log,
            on_metrics=hooks.on_metrics,
        )

    # -- result / cancel ------------------------------------------------------------------------
    def result(self, run: PreparedRun, job: JobHandle, request: TrainingRequest) -> TrainingOutcome:
        result: OpenAIFineTuneResult = job.state["result"]
        earlier_tokens = int(job.state.get("earlier_tokens", 0))
        # sft_then_dpo: both jobs are billed.
        known = result.trained_tokens is not None or earlier_tokens
        trained_tokens = (result.trained_tokens or 0) + earlier_tokens if known else None
        return hosted_outcome(self.record(run, result, request, trained_tokens), result, job.reattached, request)

    def record(
        self, run: PreparedRun, result: OpenAIFineTuneResult, request: TrainingRequest, trained_tokens: int | None
    ) -> ModelRecord:
        """The record of a succeeded job (the azure backend adds its deployment to it)."""
        config_hash = content_version(self.config.__dict__)
        return hosted_record(self.name, run, request, result, self.config.model, config_hash, trained_tokens)

    def cancel(self, job: JobHandle) -> str:
        return cancel_job(self.client, job.job_id)


def hosted_record(
    backend: str,
    run: PreparedRun,
    request: TrainingRequest,
    result: OpenAIFineTuneResult,
    base_model: str,
    config_hash: str,
    trained_tokens: int | None,
) -> ModelRecord:
    """The record of a succeeded hosted job (any provider): the provider's model id, job, tokens,
    checkpoints and result metrics over the run's data."""
    return ModelRecord(
        version=run.key,
        path=record_path(request.models_folder, run.key),
        backend=backend,
        run_key=run.key,
        base_model=base_model,
        data_version=run.data_version,
        split_paths=run.data_paths,
        config=run.settings,
        config_hash=config_hash,
        metrics=result.result_metrics or {},
        remote_model_id=result.fine_tuned_model,
        job_id=result.job_id,
        trained_tokens=trained_tokens,
        checkpoints=result.checkpoints,
        hyperparameters=result.hyperparameters,
    )


def hosted_outcome(
    record: ModelRecord, result: OpenAIFineTuneResult, reattached: bool, request: TrainingRequest
) -> TrainingOutcome:
    """``record`` written, and what the asset shows of a hosted job: the same rows for every provider."""
    record_file = write_model_record(request.models_folder, record)
    return TrainingOutcome(
        record=record,
        record_file=record_file,
        headline=hosted_headline(result, record.trained_tokens, reattached),
        tables={"result_metrics": result.result_metrics or {}, "hyperparameters": result.hyperparameters or {}},
        row_tables={"checkpoints": checkpoint_rows(result.checkpoints)},
        paths={"model_record": str(record_file)},
        loss_history=list(result.metrics),
    )


def hosted_headline(result: OpenAIFineTuneResult, trained_tokens: int | None, reattached: bool) -> dict[str, Any]:
    """The rows every hosted job shows: model, job, re-attached, tokens and its final losses."""
    final = result.metrics[-1] if result.metrics else {}
    headline: dict[str, Any] = {
        "fine_tuned_model": result.fine_tuned_model or "",
        "job_id": result.job_id,
        "reattached": reattached,
        "trained_tokens": trained_tokens or 0,
        "metrics_events": len(result.metrics),
    }
    for name in ("train_loss", "valid_loss", "full_valid_loss"):
        if isinstance(final.get(name), int | float):
            headline[name] = float(final[name])
    return headline


def checkpoint_rows(checkpoints: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A job's checkpoints (the API keeps the last few), one row each, with their losses."""
    losses = ("train_loss", "valid_loss", "full_valid_loss")
    return [
        {
            "step": c.get("step_number"),
            "checkpoint_model": c.get("fine_tuned_model_checkpoint"),
            **{name: (c.get("metrics") or {}).get(name) for name in losses},
        }
        for c in checkpoints or []
    ]


__all__ += ["checkpoint_rows", "hosted_headline", "hosted_outcome", "hosted_record", "NoPreferenceData"]
