"""The ``azure`` backend: an Azure OpenAI fine-tuning job, then a deployment of its model.

The job half is :class:`~ft_pipeline.lib.training.backends.openai.OpenAIBackend` run with an
``openai.AzureOpenAI`` client under the name ``azure`` (Azure OpenAI's fine-tuning API is
OpenAI's: upload, idempotent create by run key, polling, events, results). A fine-tuned model
on Azure answers only once it is *deployed*, and a deployment bills hosting hours, so after the
job succeeds :class:`AzureBackend` creates (or re-uses) a deployment of it through Azure Resource
Manager, the control plane (:class:`AzureDeployments`, a REST client over ``httpx`` with an
Azure AD bearer token), and waits until its ``provisioningState`` is ``Succeeded``.

The record of an azure model: ``remote_model_id`` is the **deployment name** (what chat calls
pass as ``model``; the registry's model uri), ``fine_tuned_model_id`` the fine-tuned model the
deployment serves (``<base>.ft-<id>`` on Azure).

The ARM request (``PUT .../providers/Microsoft.CognitiveServices/accounts/{account}/deployments/
{name}?api-version=2023-05-01`` with ``{"sku": {"name", "capacity"}, "properties": {"model":
{"format": "OpenAI", "name", "version": "1"}}}``) follows Microsoft's REST reference
"Deployments - Create Or Update" (learn.microsoft.com/rest/api/aiservices/accountmanagement/
deployments/create-or-update, API version 2023-05-01). Tested against the local fake only
(``ft_pipeline_tests/fakes/azure_server.py``); where a failed deployment keeps its reason is not
documented there: it is read from ``properties.error`` or ``error`` when present [unverified].

Secrets: the ARM token is sent as a header and never appears in a log line, an exception
message or a returned value (every message built from a response is scrubbed of it).
Pure library code: never import dagster here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ft_pipeline.lib.storage import content_version
from ft_pipeline.lib.training.backends.base import (
    JobHandle,
    PreparedRun,
    TrainingHooks,
    TrainingOutcome,
    TrainingRequest,
)
from ft_pipeline.lib.training.backends.openai import OpenAIBackend
from ft_pipeline.lib.training.openai_job import (
    FineTuneError,
    FineTuneTimeout,
    OpenAIFineTuneConfig,
    OpenAIFineTuneResult,
)
from ft_pipeline.lib.training.record import ModelRecord

__all__ = [
    "ARM_SCOPE",
    "AzureBackend",
    "AzureDeploymentConfig",
    "AzureDeployments",
    "Deployment",
    "DeploymentError",
    "delete_rejected_deployment",
]

logger = logging.getLogger(__name__)

#: The Azure AD scope of an Azure Resource Manager token (``DefaultAzureCredential().get_token``).
ARM_SCOPE = "https://management.azure.com/.default"
#: Deployment names: at most this many characters [unverified: the REST reference gives no limit;
#: the Azure portal caps names at 64], of the characters the account names may use.
MAX_DEPLOYMENT_NAME_CHARS = 64
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
SUCCEEDED = "Succeeded"
#: ``provisioningState`` values after which a deployment will not become usable by itself.
FAILED_STATES = frozenset({"Failed", "Canceled"})
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _noop(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class AzureDeploymentConfig:
    """Where and how an azure model is deployed (validated on construction; the account is
    checked when :class:`AzureDeployments` is made, so the defaults stay constructible).

    Attributes:
        subscription_id / resource_group / account_name: the Azure OpenAI (Cognitive Services)
            account the fine-tuning job ran on. Required to deploy. Default ``""``.
        deployment_prefix: deployment names are ``<prefix>-<run key>``: one per run key, so a rerun
            re-uses its deployment. Letters, digits, ``_ . -``. Default ``"ft-pipeline"``.
        sku_name / sku_capacity: the deployment's SKU; ``Standard`` with capacity 1 is the REST
            reference's example (fine-tuned models may offer ``GlobalStandard`` or a developer
            tier in some regions [unverified]). Defaults ``"Standard"`` / 1.
        model_format / model_version: ``properties.model`` besides its name. Defaults
            ``"OpenAI"`` / ``"1"`` (a fine-tuned model's version is ``1``).
        arm_base_url: Azure Resource Manager; overridden only for a fake or a sovereign cloud.
            Default ``https://management.azure.com``.
        api_version: the ARM API version of the deployment calls. Default ``"2023-05-01"``.
        poll_interval_s: delay between ``provisioningState`` polls. Default 10.
        timeout_s: how long a deployment may take to reach ``Succeeded``; then the run fails
            (the deployment is left as it is: a rerun re-uses it). Default 3600.
        request_timeout_s: per ARM request. Default 30.
        max_attempts: per ARM request, for connection errors, 408, 429 and 5xx (the calls are
            idempotent: PUT creates-or-updates, DELETE of a missing deployment is a no-op).
            Default 3.
        delete_rejected: when the evaluation rejects an azure candidate, delete its deployment so
            it stops billing hosting hours. Default True.
    """

    subscription_id: str = ""
    resource_group: str = ""
    account_name: str = ""
    deployment_prefix: str = "ft-pipeline"
    sku_name: str = "Standard"
    sku_capacity: int = 1
    model_format: str = "OpenAI"
    model_version: str = "1"
    arm_base_url: str = "https://management.azure.com"
    api_version: str = "2023-05-01"
    poll_interval_s: float = 10.0
    timeout_s: float = 3600.0
    request_timeout_s: float = 30.0
    max_attempts: int = 3
    delete_rejected: bool = True

    def __post_init__(self) -> None:
        if not self.deployment_prefix or _NAME_CHARS.search(self.deployment_prefix):
            raise ValueError(
                f"deployment_prefix must be letters, digits, '_', '.' or '-', got {self.deployment_prefix!r}"
            )
        if len(self.deployment_prefix) > MAX_DEPLOYMENT_NAME_CHARS - 17:
            raise ValueError(f"deployment_prefix must be at most {MAX_DEPLOYMENT_NAME_CHARS - 17} characters")
        if isinstance(self.sku_capacity, bool) or not isinstance(self.sku_capacity, int) or self.sku_capacity < 1:
            raise ValueError(f"sku_capacity must be an integer >= 1, got {self.sku_capacity!r}")
        if not self.sku_name or not self.api_version or not self.arm_base_url.startswith(("https://", "http://")):
            raise ValueError("sku_name and api_version must be set, and arm_base_url must be an http(s) URL")
        if not (self.poll_interval_s > 0 and self.timeout_s > 0 and self.request_timeout_s > 0):
            raise ValueError("poll_interval_s, timeout_s and request_timeout_s must be > 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")

    def deployment_name(self, run_key: str) -> str:
        """``<prefix>-<run key>``, cleaned to the allowed characters; a name that would be too
        long ends in a hash of the run key instead."""
        name = _NAME_CHARS.sub("-", f"{self.deployment_prefix}-{run_key}")
        if len(name) > MAX_DEPLOYMENT_NAME_CHARS:
            name = f"{self.deployment_prefix}-{hashlib.sha256(run_key.encode()).hexdigest()[:16]}"
        return name

    def missing(self) -> list[str]:
        """The account settings that are not set (a deployment needs all three)."""
        return [n for n in ("subscription_id", "resource_group", "account_name") if not getattr(self, n)]


@dataclass(frozen=True)
class Deployment:
    """A deployment as ARM reports it."""

    name: str
    model: str
    """The model it serves (``properties.model.name``)."""
    state: str
    """``provisioningState``: ``Creating``, ``Succeeded``, ``Failed``, ...; ``Deleted`` after a delete."""
    reused: bool = False
    """True when it existed before this run asked for it (nothing new was created)."""


class DeploymentError(FineTuneError):
    """A deployment could not be created, failed, or an ARM request was refused."""


class DeploymentTimeout(DeploymentError, FineTuneTimeout):
    """The deployment did not reach ``Succeeded`` within ``timeout_s`` (it was left as it is)."""


def _from_body(name: str, body: dict[str, Any], *, reused: bool = False) -> Deployment:
    properties = body.get("properties") or {}
    model = (properties.get("model") or {}).get("name") or ""
    return Deployment(name=name, model=str(model), state=str(properties.get("provisioningState") or ""), reused=reused)


def _arm_error(body: Any) -> str:
    """``code: message`` of an ARM error body (``{"error": {"code", "message"}}``)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code') or 'error'}: {error.get('message') or 'no message'}"
    return "no error details"


class AzureDeployments:
    """Model deployments of one Azure OpenAI account, through the ARM REST API.

    ``token`` returns a bearer token for :data:`ARM_SCOPE` (called before every request; an
    azure-identity credential caches and refreshes it)."""

    def __init__(
        self,
        config: AzureDeploymentConfig,
        token: Callable[[], str],
        *,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        missing = config.missing()
        if missing:
            raise ValueError(f"an azure deployment needs {', '.join(missing)} (the Azure OpenAI account)")
        self.config = config
        self._token = token
        self._http = http or httpx.Client(timeout=config.request_timeout_s)
        self._sleep = sleep
        self._clock = clock
        self._secrets: set[str] = set()

    def url(self, name: str | None = None) -> str:
        """The deployment's ARM URL (the account's deployments without ``name``)."""
        c = self.config
        url = (
            f"{c.arm_base_url.rstrip('/')}/subscriptions/{c.subscription_id}/resourceGroups/{c.resource_group}"
            f"/providers/Microsoft.CognitiveServices/accounts/{c.account_name}/deployments"
        )
        return f"{url}/{name}" if name else url

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _request(self, method: str, name: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One ARM request, retried on connection errors, 408, 429 and 5xx; any other answer is
        returned as it is."""
        last = ""
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                token = self._token()
            except Exception as err:  # noqa: BLE001 - azure-identity raises several kinds; none carries a token
                raise DeploymentError(
                    f"could not get an Azure Resource Manager token ({type(err).__name__}): sign the code location's "
                    f"identity in (DefaultAzureCredential) or set a static token (see AzureOpenAIResource)"
                ) from err
            if len(token) >= 4:
                self._secrets.add(token)
            try:
                response = self._http.request(
                    method,
                    self.url(name),
                    params={"api-version": self.config.api_version},
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.TransportError as err:
                last, wait = type(err).__name__, min(2.0 ** (attempt - 1), 30.0)
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return response
                last = f"HTTP {response.status_code}"
                retry_after = response.headers.get("retry-after", "")
                wait = float(retry_after) if retry_after.isdigit() else min(2.0 ** (attempt - 1), 30.0)
            logger.warning("ARM %s of deployment %s failed (%s), attempt %d", method, name, last, attempt)
            if attempt < self.config.max_attempts:
                self._sleep(wait)
        raise DeploymentError(
            f"Azure deployment {name}: {method} failed after {self.config.max_attempts} attempt(s) ({last})"
        )

    def _fail(self, name: str, method: str, response: httpx.Response) -> DeploymentError:
        try:
            details = _arm_error(response.json())
        except ValueError:
            details = "no error details"
        message = f"Azure deployment {name}: {method} answered HTTP {response.status_code} {details}"
        return DeploymentError(self._scrub(message))

    def get(self, name: str) -> Deployment | None:
        """The deployment, or ``None`` when there is none of that name."""
        response = self._request("GET", name)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(name, "GET", response)
        return _from_body(name, response.json())

    def create(self, name: str, model: str) -> Deployment:
        """Create (or update) the deployment ``name`` of ``model`` (does not wait)."""
        c = self.config
        body = {
            "sku": {"name": c.sku_name, "capacity": c.sku_capacity},
            "properties": {"model": {"format": c.model_format, "name": model, "version": c.model_version}},
        }
        response = self._request("PUT", name, body)
        if response.status_code not in (200, 201):
            raise self._fail(name, "PUT", response)
        return _from_body(name, response.json())

    def wait(self, name: str, *, on_log: Callable[[str], None] = _noop) -> Deployment:
        """Poll until ``provisioningState`` is ``Succeeded``; raise :class:`DeploymentError` when it
        fails or disappears, :class:`DeploymentTimeout` after ``timeout_s``."""
        deadline = self._clock() + self.config.timeout_s
        last_state = None
        while True:
            response = self._request("GET", name)
            if response.status_code == 404:
                raise DeploymentError(f"Azure deployment {name} disappeared while it was being created")
            if response.status_code != 200:
                raise self._fail(name, "GET", response)
            body = response.json()
            deployment = _from_body(name, body)
            if deployment.state != last_state:
                on_log(f"azure deployment {name}: {deployment.state}")
                last_state = deployment.state
            if deployment.state == SUCCEEDED:
                return deployment
            if deployment.state in FAILED_STATES:
                properties = body.get("properties") or {}
                reason = _arm_error(properties if "error" in properties else body)
                message = f"Azure deployment {name} of {deployment.model} {deployment.state}: {reason}"
                raise DeploymentError(self._scrub(message))
            if self._clock() >= deadline:
                raise DeploymentTimeout(
                    f"Azure deployment {name} is still {deployment.state} after {self.config.timeout_s:g} s; it was "
                    f"left as it is: rerun to re-use it, or delete it"
                )
            self._sleep(self.config.poll_interval_s)

    def deploy(
        self,
        name: str,
        model: str,
        *,
        on_log: Callable[[str], None] = _noop,
        on_create: Callable[[str], None] = _noop,
    ) -> Deployment:
        """Deploy ``model`` as ``name`` and wait until it answers, idempotently: an existing
        deployment of the same model is re-used (waited for if still being created), a failed one
        created again, one of another model refused. ``on_create`` is called before a PUT."""
        existing = self.get(name)
        if existing is not None and existing.model != model:
            raise DeploymentError(
                f"Azure deployment {name} exists and serves {existing.model or 'another model'}, not {model}: "
                f"delete it, or set another deployment_prefix"
            )
        reused = existing is not None and existing.state not in FAILED_STATES
        if reused:
            on_log(f"azure deployment {name} of {model} exists ({existing.state}): re-using it")  # type: ignore[union-attr]
        else:
            if existing is not None:
                on_log(f"azure deployment {name} is {existing.state}: creating it again")
            on_create(name)
            created = self.create(name, model)
            on_log(f"azure deployment {name} of {model} requested ({created.state or 'accepted'})")
        return dataclasses.replace(self.wait(name, on_log=on_log), reused=reused)

    def delete(self, name: str) -> bool:
        """Delete the deployment; True when one was deleted (or its deletion accepted), False
        when there was none."""
        response = self._request("DELETE", name)
        if response.status_code in (200, 202):
            return True
        if response.status_code in (204, 404):
            return False
        raise self._fail(name, "DELETE", response)


class AzureBackend(OpenAIBackend):
    """Azure OpenAI fine-tuning jobs (the OpenAI job logic, an ``AzureOpenAI`` client), then a
    deployment of the fine-tuned model named after the run key (re-used by a rerun).

    The run key is the OpenAI backend's key under an ``azure`` namespace (records and registry
    versions never collide with an ``openai`` run on the same data); the jobs keep the OpenAI
    job key in their metadata, so a job started earlier through ``openai_fine_tuning``'s
    ``azure_endpoint`` is re-attached, not paid for again."""

    def __init__(self, client: Any, config: OpenAIFineTuneConfig, deployments: AzureDeployments) -> None:
        super().__init__(client, config, name="azure")
        self.deployments = deployments

    def prepare(self, request: TrainingRequest) -> PreparedRun:
        run = super().prepare(request)
        return dataclasses.replace(run, key=content_version("azure", run.key))

    def wait(self, run: PreparedRun, job: JobHandle, hooks: TrainingHooks) -> JobHandle:
        job = super().wait(run, job, hooks)
        result: OpenAIFineTuneResult = job.state["result"]
        if not result.fine_tuned_model:
            message = f"the job {result.job_id} succeeded without a fine-tuned model id"
            raise FineTuneError(message, job_id=result.job_id)
        name = self.deployments.config.deployment_name(run.key)
        hooks.on_log(f"azure: deploying {result.fine_tuned_model} as {name}")

        def created(deployment: str) -> None:
            # A cancel while the deployment is being created deletes it (it would bill hours).
            job.state["created_deployment"] = deployment

        job.state["deployment"] = self.deployments.deploy(
            name, result.fine_tuned_model, on_log=hooks.on_log, on_create=created
        )
        job.state.pop("created_deployment", None)
        return job

    def record(
        self, run: PreparedRun, result: OpenAIFineTuneResult, request: TrainingRequest, trained_tokens: int | None
    ) -> ModelRecord:
        record = super().record(run, result, request, trained_tokens)
        return dataclasses.replace(
            record,
            remote_model_id=self.deployments.config.deployment_name(run.key),
            fine_tuned_model_id=result.fine_tuned_model,
        )

    def result(self, run: PreparedRun, job: JobHandle, request: TrainingRequest) -> TrainingOutcome:
        outcome = super().result(run, job, request)
        deployment: Deployment = job.state["deployment"]
        headline = {
            **outcome.headline,
            "deployment": deployment.name,
            "deployment_reused": deployment.reused,
            "deployment_state": deployment.state,
        }
        return dataclasses.replace(outcome, headline=headline)

    def cancel(self, job: JobHandle) -> str:
        status = super().cancel(job)
        name = job.state.get("created_deployment")
        if name:
            deleted = self.deployments.delete(name)
            status += f"; deployment {name} {'deleted' if deleted else 'was not there'}"
        return status


def delete_rejected_deployment(
    record: ModelRecord,
    deployments: Callable[[], AzureDeployments],
    *,
    production_uri: str | None,
    log: Callable[[str], None] = _noop,
) -> str | None:
    """After the evaluation rejected ``record``: delete its deployment, so it stops billing.

    Does nothing (returns ``None``) for a model of another backend, with ``delete_rejected`` off,
    or when the deployment is production's (the registry's production model is never touched).
    Returns what happened, in one line for the log and the asset's page."""
    if record.backend != "azure" or not record.remote_model_id:
        return None
    client = deployments()
    name = record.remote_model_id
    if not client.config.delete_rejected:
        outcome = f"rejected candidate's deployment {name} kept (delete_rejected is off): it bills until deleted"
    elif production_uri == name:
        outcome = f"deployment {name} kept: it serves the production model"
    else:
        deleted = client.delete(name)
        outcome = f"rejected candidate's deployment {name} {'deleted' if deleted else 'was already gone'}"
    log(outcome)
    return outcome
