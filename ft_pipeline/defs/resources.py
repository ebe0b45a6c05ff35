"""Every ConfigurableResource of the project: where data lands and is kept, the PII policy, the
OpenAI fine-tuning client, the model registry and the failure notifier.

The one exception is ``GpuPodTrainer`` (defs/k8s_trainer.py), the Kubernetes Pipes client that runs
the trainer in a GPU pod: it is a launcher rather than a setting, needs the optional ``deploy``
extra, and is chosen by ``local_trainer_from_env`` in definitions.py."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dagster as dg
from pydantic import Field

from ft_pipeline.lib.cleaning import ScrubConfig
from ft_pipeline.lib.landing import LandingFolder
from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL
from ft_pipeline.lib.pii import (
    PII_TYPES,
    CustomPiiPattern,
    PersonNameDetectorUnavailable,
    PiiConfig,
    load_custom_patterns,
)
from ft_pipeline.lib.storage import layout, resolve_data_dir
from ft_pipeline.lib.training.backends.azure import (
    ARM_SCOPE,
    AzureBackend,
    AzureDeploymentConfig,
    AzureDeployments,
    delete_rejected_deployment,
)
from ft_pipeline.lib.training.backends.together import DEFAULT_TOGETHER_MODEL
from ft_pipeline.lib.training.openai_job import OpenAIFineTuneConfig
from ft_pipeline.lib.training.record import ModelRecord


class PipelineStorage(dg.ConfigurableResource):
    """The data directory every artifact is written below (README, "Data contracts").

    Empty ``data_dir`` means ``$FT_PIPELINE_DATA_DIR``, else ``data/`` relative to the working
    directory (the repo root for ``make dev`` and ``make demo``)."""

    data_dir: str = Field(
        default="", description="Root of all pipeline artifacts; empty = $FT_PIPELINE_DATA_DIR or ./data"
    )

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

    landing_dir: str = Field(
        default="", description="Folder or fsspec URL watched for log files; empty = <data dir>/raw"
    )
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


class CustomPiiPatternConfig(dg.Config):
    """One kind of personal data of the team's own (see ``ft_pipeline.lib.pii.CustomPiiPattern``)."""

    name: str = Field(description="Type name, upper case (ORDER_ID); matches become <ORDER_ID>.")
    regex: str = Field(description="Python regular expression; its whole match is replaced. Anchor it with \\b.")
    validator: str = Field(
        default="",
        description="Optional check of each match: luhn, iban_mod97 or module:function (str -> bool); empty = none.",
    )
    ignore_case: bool = Field(default=False, description="Match case-insensitively.")


#: HMAC key of the pseudonyms that replace ids holding personal data (see ScrubConfig.id_hash_key).
ID_HASH_KEY_ENV = "FT_PIPELINE_ID_HASH_KEY"


class PiiPolicy(dg.ConfigurableResource):
    """What counts as personal data and how it is removed, for every stage that writes record
    text: ``raw_conversation_logs`` scrubs the parsed records, their quarantine rows and samples
    before storing them; ``cleaned_conversations`` scrubs again after normalization;
    ``curated_dataset``'s ``no_pii_left`` check scans for exactly the same kinds. One policy, so
    no stage keeps what another removes.

    Beyond the built-in types: custom patterns (order ids, usernames, account numbers) from
    ``patterns`` and the JSON/YAML file ``patterns_file`` (``$FT_PIPELINE_PII_PATTERNS``), and
    person names through Presidio over a spaCy model (``pip install 'ft-pipeline[names]'`` plus the
    model; ``person_names_model``, ``$FT_PIPELINE_PII_PERSON_MODEL``). A pattern that does not
    compile or a name model that is not installed fails the run with one clear line, instead of
    scrubbing less than asked. The pseudonym key of ids holding PII is a secret and comes from
    ``$FT_PIPELINE_ID_HASH_KEY`` only."""

    scrub: bool = Field(
        default=True, description="Replace personal data with typed placeholders (<EMAIL>, <ORDER_ID>, …)."
    )
    entities: list[str] = Field(default=list(PII_TYPES), description="Built-in PII types to detect and scrub.")
    redact_private_ips: bool = Field(default=False, description="Also scrub private/loopback IP addresses.")
    patterns: list[CustomPiiPatternConfig] = Field(default_factory=list, description="Custom patterns, inline.")
    patterns_file: str = Field(
        default="", description="JSON or YAML list of {name, regex, validator?, ignore_case?}; empty = none."
    )
    person_names_model: str = Field(
        default="", description="spaCy model package or folder for Presidio's person-name detector; empty = off."
    )

    def custom_patterns(self) -> tuple[CustomPiiPattern, ...]:
        inline = tuple(
            CustomPiiPattern(name=p.name, regex=p.regex, validator=p.validator or None, ignore_case=p.ignore_case)
            for p in self.patterns
        )
        return inline + (load_custom_patterns(self.patterns_file) if self.patterns_file else ())

    def pii_config(self) -> PiiConfig:
        """The detectors: the built-in types plus this policy's patterns and names. A bad pattern,
        an unreadable patterns file or a missing name model fails the run with one clear line."""
        try:
            return PiiConfig(
                entities=tuple(self.entities),
                redact_private_ips=self.redact_private_ips,
                custom_patterns=self.custom_patterns(),
                person_names_model=self.person_names_model,
            )
        except (ValueError, PersonNameDetectorUnavailable) as exc:
            raise dg.Failure(description=f"PII policy: {exc}") from exc

    def scrub_config(self) -> ScrubConfig:
        """The scrubbing the stages apply (the pseudonym key read from the environment)."""
        return ScrubConfig(enabled=self.scrub, pii=self.pii_config(), id_hash_key=os.environ.get(ID_HASH_KEY_ENV, ""))


class OpenAIFineTuningResource(dg.ConfigurableResource):
    """The OpenAI fine-tuning API (or an OpenAI-compatible service, or Azure OpenAI) through the
    real ``openai`` SDK; ``base_url`` points at another OpenAI-compatible server.

    The API key is never a config value: the resource names the environment variable that holds
    it (``api_key_env``, default ``OPENAI_API_KEY``) and reads it when a client is made, so the
    Launchpad and the stored run config show the variable's name, never the key, and runs that
    do not call OpenAI work without one. The key is never logged or stored in metadata."""

    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="Name of the environment variable (of the code location's process) that holds the API key; "
        "the key itself never enters run config.",
    )
    model: str = Field(
        default=DEFAULT_OPENAI_FINE_TUNING_MODEL,
        description="Base model of OpenAI fine-tuning jobs; the splits' JSONL is validated against its token limit "
        "(one setting for both).",
    )
    base_url: str = Field(default="", description="API base URL; empty = the SDK default (https://api.openai.com/v1).")
    azure_endpoint: str = Field(
        default="",
        description="Azure OpenAI endpoint; when set an AzureOpenAI client is used (backend openai: a job only, "
        "never deployed; backend azure, the azure_openai resource, deploys and cleans up).",
    )
    azure_api_version: str = Field(default="2024-10-21", description="Azure OpenAI API version.")
    organization: str = Field(default="", description="OpenAI organization id (optional).")
    max_retries: int = Field(default=2, description="SDK retries for 408/409/429/5xx and connection errors.")
    timeout_s: float = Field(default=60.0, description="Per-request timeout in seconds.")

    def get_client(self):
        import openai

        api_key = os.environ.get(self.api_key_env, "")
        if not api_key:
            raise dg.Failure(description=f"{self.api_key_env} is not set: the openai backend needs an API key")
        if self.azure_endpoint:
            return openai.AzureOpenAI(
                api_key=api_key,
                azure_endpoint=self.azure_endpoint,
                api_version=self.azure_api_version,
                max_retries=self.max_retries,
                timeout=self.timeout_s,
            )
        return openai.OpenAI(
            api_key=api_key,
            base_url=self.base_url or None,
            organization=self.organization or None,
            max_retries=self.max_retries,
            timeout=self.timeout_s,
        )


_AZURE = AzureDeploymentConfig()


class AzureOpenAIResource(dg.ConfigurableResource):
    """Azure OpenAI for the ``azure`` backend: fine-tuning jobs and chat calls through the real
    ``openai.AzureOpenAI`` client (data plane), and the deployments of fine-tuned models through
    Azure Resource Manager (control plane; a deployment bills hosting hours).

    Secrets never enter config: the data-plane API key is read from the variable ``api_key_env``
    names (default ``AZURE_OPENAI_API_KEY``) when a client is made; the ARM token comes from
    azure-identity's ``DefaultAzureCredential`` (managed identity, workload identity, ``az
    login``, ...), or, when the variable ``arm_token_env`` names is set, is that variable's value
    (a static bearer token, e.g. from ``az account get-access-token``; the tests' fake accepts
    one). Neither is ever logged or stored in metadata."""

    endpoint: str = Field(
        default="", description="Azure OpenAI endpoint, https://<resource>.openai.azure.com ($AZURE_OPENAI_ENDPOINT)."
    )
    api_version: str = Field(default="2024-10-21", description="Azure OpenAI data-plane API version.")
    api_key_env: str = Field(
        default="AZURE_OPENAI_API_KEY",
        description="Name of the environment variable that holds the data-plane API key (never the key itself).",
    )
    model: str = Field(
        default=DEFAULT_OPENAI_FINE_TUNING_MODEL,
        description="Base model of the fine-tuning jobs. The evaluation calls the base through a deployment of this "
        "name (create it once).",
    )
    max_retries: int = Field(default=2, description="SDK retries for 408/409/429/5xx and connection errors.")
    timeout_s: float = Field(default=60.0, description="Per-request timeout of data-plane calls in seconds.")
    subscription_id: str = Field(default=_AZURE.subscription_id, description="Subscription of the Azure account.")
    resource_group: str = Field(default=_AZURE.resource_group, description="Resource group of the account.")
    account_name: str = Field(default=_AZURE.account_name, description="The Azure OpenAI (Cognitive Services) account.")
    deployment_prefix: str = Field(
        default=_AZURE.deployment_prefix,
        description="Deployments are named <prefix>-<run key> (at most 64 characters: a hash of the run key past "
        "that); a rerun re-uses its deployment.",
    )
    sku_name: str = Field(default=_AZURE.sku_name, description="Deployment SKU (Standard, GlobalStandard, ...).")
    sku_capacity: int = Field(default=_AZURE.sku_capacity, description="Deployment capacity (units of the SKU).")
    arm_base_url: str = Field(
        default=_AZURE.arm_base_url, description="Azure Resource Manager URL (overridden for a fake or another cloud)."
    )
    arm_api_version: str = Field(default=_AZURE.api_version, description="ARM API version of the deployment calls.")
    arm_token_env: str = Field(
        default="FT_PIPELINE_AZURE_ARM_TOKEN",
        description="Name of an environment variable holding a static ARM bearer token; unset = "
        "DefaultAzureCredential.",
    )
    deployment_poll_interval_s: float = Field(
        default=_AZURE.poll_interval_s, description="Seconds between deployment state polls."
    )
    deployment_timeout_s: float = Field(
        default=_AZURE.timeout_s, description="How long a deployment may take to succeed before the run fails."
    )
    delete_rejected: bool = Field(
        default=_AZURE.delete_rejected,
        description="When the evaluation rejects an azure candidate, delete its deployment (it bills hosting hours).",
    )

    def get_client(self):
        """The data-plane client (fine-tuning jobs, files, chat on deployments)."""
        import openai

        api_key = os.environ.get(self.api_key_env, "")
        if not api_key:
            raise dg.Failure(description=f"{self.api_key_env} is not set: the azure backend needs an API key")
        if not self.endpoint:
            raise dg.Failure(description="the azure backend needs an endpoint ($AZURE_OPENAI_ENDPOINT)")
        return openai.AzureOpenAI(
            api_key=api_key,
            azure_endpoint=self.endpoint,
            api_version=self.api_version,
            max_retries=self.max_retries,
            timeout=self.timeout_s,
        )

    def chat_client(self):
        """The client azure models answer through: the same client, ``model`` = the deployment name."""
        return self.get_client()

    def deployment_config(self) -> AzureDeploymentConfig:
        return AzureDeploymentConfig(
            subscription_id=self.subscription_id,
            resource_group=self.resource_group,
            account_name=self.account_name,
            deployment_prefix=self.deployment_prefix,
            sku_name=self.sku_name,
            sku_capacity=self.sku_capacity,
            arm_base_url=self.arm_base_url,
            api_version=self.arm_api_version,
            poll_interval_s=self.deployment_poll_interval_s,
            timeout_s=self.deployment_timeout_s,
            delete_rejected=self.delete_rejected,
        )

    def deployments(self) -> AzureDeployments:
        """The ARM deployments client of the account (fails clearly when the account is not set)."""
        static = os.environ.get(self.arm_token_env, "") if self.arm_token_env else ""
        if static:

            def token() -> str:
                return static

        else:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise dg.Failure(
                    description="the azure backend's deployments need an Azure token: pip install 'ft-pipeline[azure]' "
                    f"(azure-identity's DefaultAzureCredential), or set {self.arm_token_env}"
                ) from None

            credential = DefaultAzureCredential()

            def token() -> str:
                return credential.get_token(ARM_SCOPE).token

        try:
            return AzureDeployments(self.deployment_config(), token)
        except ValueError as err:
            raise dg.Failure(description=f"azure deployments: {err}") from None

    def backend(self, config: OpenAIFineTuneConfig) -> AzureBackend:
        """The ``azure`` fine-tuning backend for one run's job settings."""
        return AzureBackend(self.get_client(), config, self.deployments())

    def delete_rejected_deployment(
        self, record: ModelRecord, production_uri: str | None, log: Callable[[str], None]
    ) -> str | None:
        """After a failed gate: delete an azure candidate's deployment (see delete_rejected); None
        for a model of another backend."""
        return delete_rejected_deployment(record, self.deployments, production_uri=production_uri, log=log)


#: The ``together`` SDK's default base URL (``together._client.Together``); its API paths start
#: with ``/v1``, and ``<base URL>/v1`` is its OpenAI-compatible endpoint (``/v1/chat/completions``).
TOGETHER_DEFAULT_BASE_URL = "https://api.together.ai"


class TogetherResource(dg.ConfigurableResource):
    """Together AI through the ``together`` SDK (fine-tuning jobs, ``backend: together``) and its
    OpenAI-compatible endpoint (the evaluation's chat client for Together models).

    Like the OpenAI resource, the API key is never a config value: ``api_key_env`` names the
    environment variable that holds it (default ``TOGETHER_API_KEY``, the SDK's own), read when a
    client is made; it is never logged or stored in metadata."""

    api_key_env: str = Field(
        default="TOGETHER_API_KEY",
        description="Name of the environment variable that holds the Together API key; the key itself never "
        "enters run config.",
    )
    model: str = Field(default=DEFAULT_TOGETHER_MODEL, description="Base model of Together fine-tuning jobs.")
    base_url: str = Field(
        default="",
        description=f"API base URL without /v1 (the SDK's TOGETHER_BASE_URL); empty = {TOGETHER_DEFAULT_BASE_URL}.",
    )
    max_retries: int = Field(default=2, description="SDK retries for 408/409/429/5xx and connection errors.")
    timeout_s: float = Field(default=60.0, description="Per-request timeout in seconds.")

    def _api_key(self) -> str:
        api_key = os.environ.get(self.api_key_env, "")
        if not api_key:
            raise dg.Failure(description=f"{self.api_key_env} is not set: the together backend needs an API key")
        return api_key

    def root_url(self) -> str:
        """The base URL the SDK is given (no trailing slash)."""
        return (self.base_url or TOGETHER_DEFAULT_BASE_URL).rstrip("/")

    def get_client(self):
        """A ``together.Together`` client (fine-tuning)."""
        import together

        return together.Together(
            api_key=self._api_key(), base_url=self.root_url(), max_retries=self.max_retries, timeout=self.timeout_s
        )

    def chat_client(self):
        """An ``openai.OpenAI`` client at ``<base URL>/v1``, Together's OpenAI-compatible endpoint
        (what the evaluation answers Together models through)."""
        import openai

        return openai.OpenAI(
            api_key=self._api_key(),
            base_url=f"{self.root_url()}/v1",
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
        "before it is promoted, as <publish_url>/<model>/v<version>/; empty = not published (served from the data "
        "dir).",
    )

    def get(self):
        from ft_pipeline.lib.registry import ModelRegistry

        if self.url:
            return ModelRegistry(self.url)
        return ModelRegistry.for_data_dir(resolve_data_dir(self.data_dir or None).resolve())


class FailureNotifier(dg.ConfigurableResource):
    """Where run failures are reported besides the Dagster log and ``run_failures.jsonl``: an
    optional webhook (Slack-compatible JSON ``{"text": ...}``). Empty = log only."""

    webhook_url: str = Field(default="", description="POST target for failure messages; empty = none.")

    def notify(self, text: str) -> None:
        if not self.webhook_url:
            return
        request = urllib.request.Request(
            self.webhook_url, data=json.dumps({"text": text}).encode(), headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=10).close()
