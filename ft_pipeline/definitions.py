"""The one Definitions object of the project: assets, checks, resources and jobs."""

from __future__ import annotations

import dagster as dg

from ft_pipeline.defs.cleaned import cleaned_conversations
from ft_pipeline.defs.curated import curated_dataset
from ft_pipeline.defs.raw_logs import raw_conversation_logs
from ft_pipeline.defs.resources import PipelineStorage, RawLogStore
from ft_pipeline.defs.splits import dataset_splits

PER_FILE_ASSETS = [raw_conversation_logs, cleaned_conversations]
DATASET_ASSETS = [curated_dataset, dataset_splits]
ALL_ASSETS = [*PER_FILE_ASSETS, *DATASET_ASSETS]

# Per landed file: parse and clean (one run per partition, as the new-file sensor will launch).
ingest_log_file_job = dg.define_asset_job(
    name="ingest_log_file",
    selection=dg.AssetSelection.assets(*PER_FILE_ASSETS),
    description="Parse and clean one landed log file (one partition).",
)
# Fan-in: everything downstream of the per-file assets.
build_dataset_job = dg.define_asset_job(
    name="build_dataset",
    selection=dg.AssetSelection.assets(*DATASET_ASSETS),
    description="Global dedup of all cleaned files, then the train/validation/test splits.",
)


def default_resources() -> dict[str, object]:
    """Resources for local use: the data directory from $FT_PIPELINE_DATA_DIR (default ./data)."""
    return {
        "storage": PipelineStorage(data_dir=dg.EnvVar("FT_PIPELINE_DATA_DIR").get_value("") or ""),
        "raw_log_store": RawLogStore(
            landing_dir=dg.EnvVar("FT_PIPELINE_LANDING_DIR").get_value("") or "",
            data_dir=dg.EnvVar("FT_PIPELINE_DATA_DIR").get_value("") or "",
        ),
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[ingest_log_file_job, build_dataset_job],
    resources=default_resources(),
)
