"""The one Definitions object of the project: assets, checks, resources and jobs."""

from __future__ import annotations

import os

import dagster as dg

from ft_pipeline.defs.augmentation import augmented_train_split
from ft_pipeline.defs.automation import (
    make_new_log_files_sensor,
    make_nightly_retrain_schedule,
    record_run_failures,
)
from ft_pipeline.defs.cleaning import cleaned_conversations
from ft_pipeline.defs.curation import curated_dataset
from ft_pipeline.defs.evaluation import evaluation_report, promoted_model
from ft_pipeline.defs.preferences import preference_dataset
from ft_pipeline.defs.provider_exit import replace_hosted_model_job
from ft_pipeline.defs.records import raw_conversation_logs
from ft_pipeline.defs.resources import (
    AzureOpenAIResource,
    FailureNotifier,
    ModelRegistryResource,
    OpenAIFineTuningResource,
    PiiPolicy,
    PipelineStorage,
    RawLogStore,
    TogetherResource,
)
from ft_pipeline.defs.splits import train_validation_test_split
from ft_pipeline.defs.training import fine_tuned_model

PER_FILE_ASSETS = [raw_conversation_logs, cleaned_conversations]
DATASET_ASSETS = [curated_dataset, train_validation_test_split]
TRAINING_ASSETS = [fine_tuned_model]
EVALUATION_ASSETS = [evaluation_report, promoted_model]
DOWNSTREAM_ASSETS = [*DATASET_ASSETS, *TRAINING_ASSETS, *EVALUATION_ASSETS]
# Preference data (DPO pairs, KTO examples): beside the SFT dataset, built in the same jobs.
PREFERENCE_ASSETS = [preference_dataset]
# The optional augmented train split (off unless configured): beside the splits, in the same jobs.
AUGMENTATION_ASSETS = [augmented_train_split]
ALL_ASSETS = [*PER_FILE_ASSETS, *DOWNSTREAM_ASSETS, *PREFERENCE_ASSETS, *AUGMENTATION_ASSETS]

# Per landed file: parse and clean (one run per partition, as the new-file sensor will launch).
ingest_log_file_job = dg.define_asset_job(
    name="ingest_log_file",
    selection=dg.AssetSelection.assets(*PER_FILE_ASSETS),
    description="Parse and clean one landed log file (one partition).",
)
# Fan-in: everything downstream of the per-file assets.
build_dataset_job = dg.define_asset_job(
    name="build_dataset",
    selection=dg.AssetSelection.assets(*DATASET_ASSETS, *PREFERENCE_ASSETS, *AUGMENTATION_ASSETS),
    description="Global dedup of all cleaned files, then the train/validation/test splits and the preference data.",
)
train_model_job = dg.define_asset_job(
    name="train_model",
    selection=dg.AssetSelection.assets(*DOWNSTREAM_ASSETS, *PREFERENCE_ASSETS, *AUGMENTATION_ASSETS),
    description="Curated dataset, splits, preference data, fine-tuned model, evaluation and promotion.",
)


new_log_files_sensor = make_new_log_files_sensor(ingest_log_file_job)
nightly_retrain_schedule = make_nightly_retrain_schedule(train_model_job)


def local_trainer_from_env() -> dg.PipesClient:
    """$FT_PIPELINE_TRAINER: ``subprocess`` (default; a process beside the run worker) or ``k8s``
    (a pod on a GPU node, settings from FT_PIPELINE_K8S_*; see deploy/README.md)."""
    kind = os.environ.get("FT_PIPELINE_TRAINER", "subprocess") or "subprocess"
    if kind == "subprocess":
        return dg.PipesSubprocessClient()
    if kind == "k8s":
        from ft_pipeline.defs.k8s_trainer import GpuPodTrainer

        return GpuPodTrainer.from_env()
    raise ValueError(f"FT_PIPELINE_TRAINER must be 'subprocess' or 'k8s', got {kind!r}")


def default_resources() -> dict[str, object]:
    """Resources for local use: the data directory from $FT_PIPELINE_DATA_DIR (default ./data)."""
    return {
        "local_trainer": local_trainer_from_env(),
        "failure_notifier": FailureNotifier(webhook_url=os.environ.get("FT_PIPELINE_FAILURE_WEBHOOK", "")),
        # The API key is read from $OPENAI_API_KEY when a client is made (never part of run config).
        "openai_fine_tuning": OpenAIFineTuningResource(
            base_url=os.environ.get("OPENAI_BASE_URL", ""),
            azure_endpoint=os.environ.get("AZURE_OPENAI_ENDPOINT", ""),
        ),
        # backend azure: keys and tokens from the environment when a client is made (see AzureOpenAIResource).
        "azure_openai": AzureOpenAIResource(
            endpoint=os.environ.get("AZURE_OPENAI_ENDPOINT", ""),
            subscription_id=os.environ.get("FT_PIPELINE_AZURE_SUBSCRIPTION_ID", ""),
            resource_group=os.environ.get("FT_PIPELINE_AZURE_RESOURCE_GROUP", ""),
            account_name=os.environ.get("FT_PIPELINE_AZURE_ACCOUNT", ""),
            arm_base_url=os.environ.get("FT_PIPELINE_AZURE_ARM_URL", "") or "https://management.azure.com",
        ),
        # The API key is read from $TOGETHER_API_KEY when a client is made (never part of run config).
        "together": TogetherResource(base_url=os.environ.get("TOGETHER_BASE_URL", "")),
        "storage": PipelineStorage(data_dir=dg.EnvVar("FT_PIPELINE_DATA_DIR").get_value("") or ""),
        "model_registry": ModelRegistryResource(
            url=os.environ.get("FT_PIPELINE_REGISTRY_URL", ""),
            data_dir=dg.EnvVar("FT_PIPELINE_DATA_DIR").get_value("") or "",
            publish_url=os.environ.get("FT_PIPELINE_PUBLISH_URL", ""),
        ),
        "pii_policy": PiiPolicy(
            patterns_file=os.environ.get("FT_PIPELINE_PII_PATTERNS", ""),
            person_names_model=os.environ.get("FT_PIPELINE_PII_PERSON_MODEL", ""),
        ),
        "raw_log_store": RawLogStore(
            landing_dir=dg.EnvVar("FT_PIPELINE_LANDING_DIR").get_value("") or "",
            data_dir=dg.EnvVar("FT_PIPELINE_DATA_DIR").get_value("") or "",
        ),
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[ingest_log_file_job, build_dataset_job, train_model_job, replace_hosted_model_job],
    schedules=[nightly_retrain_schedule],
    sensors=[new_log_files_sensor, record_run_failures],
    resources=default_resources(),
)
