"""Resources shared by the dataset assets: where the pipeline keeps its data."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from ft_pipeline.lib.landing import LandingFolder
from ft_pipeline.lib.storage import layout, resolve_data_dir


class PipelineStorage(dg.ConfigurableResource):
    """The data directory every artifact is written below (DESIGN.md §3).

    Empty ``data_dir`` means ``$FT_PIPELINE_DATA_DIR``, else ``data/`` relative to the working
    directory (the repo root for ``make dev`` and ``make demo``)."""

    data_dir: str = Field(default="", description="Root of all pipeline artifacts; empty = $FT_PIPELINE_DATA_DIR or ./data")

    def root(self) -> Path:
        return resolve_data_dir(self.data_dir or None).resolve()

    def folder(self, name: str) -> Path:
        return layout(self.root())[name]


class RawLogStore(dg.ConfigurableResource):
    """The landing zone of raw conversation log files: one dynamic partition per file.

    ``landing_dir`` is a local folder or an fsspec URL for object storage (``s3://bucket/logs``
    with ``s3fs`` installed, ``gs://…``, ``abfs://…``); empty means ``<data dir>/raw``. Files are
    matched by suffix (.jsonl, .jsonl.gz, .json.gz, .ndjson, .parquet); hidden and temporary files
    are ignored. Files on object storage are downloaded into ``<data dir>/landing_cache`` to be read."""

    landing_dir: str = Field(default="", description="Folder or fsspec URL watched for log files; empty = <data dir>/raw")
    data_dir: str = Field(default="", description="Data directory used when landing_dir is empty")

    def folder(self) -> LandingFolder:
        if self.landing_dir:
            return LandingFolder(self.landing_dir)
        return LandingFolder(resolve_data_dir(self.data_dir or None) / "raw")

    def root(self) -> str:
        """Where files land, as shown to people: a local path or the URL."""
        return self.folder().describe()

    def list_files(self) -> list[str]:
        """Names (relative to the landing folder) of the log files present now, sorted."""
        return self.folder().list_files()

class OpenAIFineTuningResource(dg.ConfigurableResource):
    """The OpenAI fine-tuning API (or an OpenAI-compatible service, or Azure OpenAI) through the
    real ``openai`` SDK. The key comes from ``OPENAI_API_KEY`` and is never logged or stored in
    metadata; ``base_url`` points at another OpenAI-compatible server."""

    api_key: str = Field(
        default="",
        description="API key; set through EnvVar('OPENAI_API_KEY').",
        json_schema_extra={"dagster__is_secret": True},
    )
    base_url: str = Field(default="", description="API base URL; empty = the SDK default (https://api.openai.com/v1).")
    azure_endpoint: str = Field(default="", description="Azure OpenAI endpoint; when set an AzureOpenAI client is used.")
    azure_api_version: str = Field(default="2024-10-21", description="Azure OpenAI API version.")
    organization: str = Field(default="", description="OpenAI organization id (optional).")
    max_retries: int = Field(default=2, description="SDK retries for 408/409/429/5xx and connection errors.")
    timeout_s: float = Field(default=60.0, description="Per-request timeout in seconds.")

    def get_client(self):
        import openai

        if not self.api_key:
            raise dg.Failure(description="OPENAI_API_KEY is not set: the openai backend needs an API key")
        if self.azure_endpoint:
            return openai.AzureOpenAI(
                api_key=self.api_key,
                azure_endpoint=self.azure_endpoint,
                api_version=self.azure_api_version,
                max_retries=self.max_retries,
                timeout=self.timeout_s,
            )
        return openai.OpenAI(
            api_key=self.api_key,
            base_url=self.base_url or None,
            organization=self.organization or None,
            max_retries=self.max_retries,
            timeout=self.timeout_s,
        )


class ModelRegistryResource(dg.ConfigurableResource):
    """The model registry (versions, aliases, audit log) over SQLAlchemy: a SQLite file in the data
    directory by default, any SQLAlchemy URL (e.g. postgresql+psycopg2://…) in production; and
    optionally the object storage promoted models are published to."""

    url: str = Field(default="", description="SQLAlchemy URL; empty = sqlite:///<data dir>/registry.db")
    data_dir: str = Field(default="", description="Data directory used when url is empty")
    publish_url: str = Field(
        default="",
        description="Object storage (fsspec URL, e.g. s3://bucket/models) that a local model's files are published to "
        "before it is promoted, as <publish_url>/<model>/v<version>/; empty = not published (served from the data dir).",
    )

    def get(self):
        from ft_pipeline.lib.registry import ModelRegistry

        if self.url:
            return ModelRegistry(self.url)
        return ModelRegistry.for_data_dir(resolve_data_dir(self.data_dir or None).resolve())
