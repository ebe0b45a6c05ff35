"""A fake Azure OpenAI on loopback: the OpenAI fake under Azure's paths and auth, plus the Azure
Resource Manager deployment endpoints, so the real ``openai.AzureOpenAI`` client and the project's
ARM client (httpx) talk to one local server::

    with FakeAzureOpenAI() as fake:
        client = fake.client(api_key="azure-test-key")   # openai.AzureOpenAI
        ...

Data plane (:class:`FakeOpenAI`'s behaviour, unchanged): ``/openai/files``,
``/openai/fine_tuning/jobs...`` with an ``api-version`` query parameter and the ``api-key``
header (never stored: the request log keeps ``"***"``);
``POST /openai/deployments/{deployment}/chat/completions`` answers as the model the deployment
serves, only while that deployment is ``Succeeded`` (else 404 ``DeploymentNotFound``, as Azure
answers for a missing deployment). A deployment named like a base model exists from the start
(the base the evaluation compares with).

Control plane (ARM, bearer token ``arm_token``, ``api-version`` required):
``PUT/GET/DELETE /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/
accounts/{account}/deployments/{name}`` and ``GET .../deployments`` (``{"value": [...]}``).
A created deployment is ``Creating`` and becomes ``Succeeded`` after ``deployment_ticks`` GETs of
it (or ``Failed`` with an error, see :meth:`FakeAzureOpenAI.fail_next_deployment`); a PUT of an
existing deployment of the same model answers 200 and changes nothing; DELETE answers 200, or 204
when there is none. ``inject`` and ``lose_response_after_apply`` work on ARM paths too.
Deliberate choices where the real service is unverified: the body of a failed deployment carries
``properties.error`` [I]; an unknown model name is a 400 ``DeploymentModelNotSupported`` [I].
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import openai

from ft_pipeline_tests.fakes.openai_server import (
    BASE_MODELS,
    FakeOpenAI,
    RecordedRequest,
    Responder,
    _ApiError,
    _error_body,
    _json_response,
    _Response,
)

__all__ = ["AZURE_API_VERSION", "FakeAzureOpenAI"]

AZURE_API_VERSION = "2024-10-21"
_ARM = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.CognitiveServices"
    r"/accounts/(?P<account>[^/]+)/deployments(?:/(?P<name>[^/]+))?"
)
_DEPLOYMENT_CHAT = re.compile(r"/openai/deployments/(?P<name>[^/]+)/chat/completions")


def _shown(deployment: dict) -> dict:
    """A deployment as ARM shows it (without the fake's own ``_`` keys)."""
    return copy.deepcopy({k: v for k, v in deployment.items() if not k.startswith("_")})


def _arm_error(status: int, code: str, message: str) -> _Response:
    return _Response(status, json.dumps({"error": {"code": code, "message": message}}).encode())


class FakeAzureOpenAI(FakeOpenAI):
    """:class:`FakeOpenAI` behind Azure's paths and auth, with ARM model deployments.

    Control plane (beyond FakeOpenAI's): :meth:`fail_next_deployment`; inspection:
    :attr:`deployments`, :attr:`deleted_deployments`."""

    def __init__(
        self,
        *,
        arm_token: str = "fake-arm-token",
        subscription_id: str = "sub-fake",
        resource_group: str = "rg-fake",
        account_name: str = "aoai-fake",
        deployment_ticks: int = 2,
        seed: int = 0,
        **config_overrides: Any,
    ) -> None:
        super().__init__(seed=seed, **config_overrides)
        self.arm_token = arm_token
        self.subscription_id, self.resource_group, self.account_name = subscription_id, resource_group, account_name
        self.deployment_ticks = deployment_ticks
        self._deployments: dict[str, dict] = {}
        self._deployment_ticks: dict[str, int] = {}
        self._failures: list[str] = []
        self.deleted_deployments: list[str] = []
        self.new_deployment_responder: Responder | dict[str, str] | None = None
        """When set, the chat responder (see ``set_responder``) of each model deployed from now on."""
        for model in BASE_MODELS:
            self._deployments[model] = self._deployment_body(model, model, {"name": "Standard", "capacity": 1})
            self._deployments[model]["properties"]["provisioningState"] = "Succeeded"

    # ------------------------------------------------------------------ addresses
    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: the ``azure_endpoint`` of an AzureOpenAI client, and the ARM base URL."""
        return self.base_url.removesuffix("/v1")

    def client(  # type: ignore[override]
        self, api_key: str = "azure-test-key", *, strict: bool = True, max_retries: int = 2, timeout: float = 5.0
    ) -> openai.AzureOpenAI:
        """A real AzureOpenAI client for this fake (strict response validation by default)."""
        return openai.AzureOpenAI(
            azure_endpoint=self.endpoint,
            api_key=api_key,
            api_version=AZURE_API_VERSION,
            max_retries=max_retries,
            timeout=timeout,
            _strict_response_validation=strict,
        )

    # ------------------------------------------------------------------ control plane / inspection
    def fail_next_deployment(self, message: str = "The model could not be deployed (injected).") -> None:
        """The next created deployment ends ``Failed`` with this error message."""
        with self._lock:
            self._failures.append(message)

    @property
    def deployments(self) -> dict[str, dict]:
        """Snapshot of the deployments (base-model ones included), ``{name: ARM body}``."""
        with self._lock:
            return {name: _shown(d) for name, d in self._deployments.items()}

    def _deployment_body(self, name: str, model: str, sku: dict) -> dict:
        arm_id = (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers/"
            f"Microsoft.CognitiveServices/accounts/{self.account_name}/deployments/{name}"
        )
        return {
            "id": arm_id,
            "name": name,
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "sku": sku,
            "properties": {
                "model": {"format": "OpenAI", "name": model, "version": "1"},
                "provisioningState": "Creating",
            },
        }

    # ------------------------------------------------------------------ HTTP
    def _respond(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
        auth: str | None,
        record: RecordedRequest,
    ) -> _Response | None:
        # The same dict as the recorded request's headers: the key is never kept.
        api_key = headers.pop("api-key", None)
        if api_key is not None:
            headers["api-key"] = "***"
        if path.startswith("/subscriptions/"):
            return self._arm(method, path, query, body, auth, record)
        if not path.startswith("/openai/"):
            return _arm_error(404, "NotFound", f"Invalid URL ({method} {path})")
        versions = [v for k, v in query if k == "api-version"]
        if not versions:
            return _arm_error(404, "404", "Resource not found")  # [I] what Azure answers without api-version
        rest = [(k, v) for k, v in query if k != "api-version"]
        data_auth = f"Bearer {api_key}" if api_key else None  # FakeOpenAI checks it against config.api_key
        chat = _DEPLOYMENT_CHAT.fullmatch(path)
        if chat is not None:
            try:
                self._check_auth(data_auth)
                body = self._deployment_request(chat["name"], body)
            except _ApiError as err:
                return _Response(err.status, json.dumps(err.body).encode(), headers=err.headers)
            return super()._respond(method, "/v1/chat/completions", rest, headers, body, data_auth, record)
        if path.startswith("/openai/deployments/"):
            return _arm_error(404, "404", "Resource not found")
        return super()._respond(method, "/v1" + path[len("/openai") :], rest, headers, body, data_auth, record)

    def _deployment_request(self, name: str, body: bytes) -> bytes:
        """The chat body with ``model`` = the model the deployment serves (404 unless Succeeded)."""
        with self._lock:
            deployment = self._deployments.get(name)
            state = deployment["properties"]["provisioningState"] if deployment else None
            if state != "Succeeded":
                raise _ApiError(
                    404,
                    "The API deployment for this resource does not exist. If you created the deployment within "
                    "the last 5 minutes, please wait a moment and try again.",
                    code="DeploymentNotFound",
                )
            model = deployment["properties"]["model"]["name"]  # type: ignore[index]
        request = json.loads(body or b"{}")
        request["model"] = model
        return json.dumps(request).encode()

    def _arm(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: bytes,
        auth: str | None,
        record: RecordedRequest,
    ) -> _Response | None:
        if auth != f"Bearer {self.arm_token}":
            return _arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if not any(k == "api-version" for k, _ in query):
            return _arm_error(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        match = _ARM.fullmatch(path)
        account = (self.subscription_id, self.resource_group, self.account_name)
        if match is None or (match["sub"], match["rg"], match["account"]) != account:
            return _arm_error(404, "ResourceNotFound", "The Resource was not found.")
        with self._lock:
            fault = next((r for r in self._faults if r.matches(method, path)), None)
            if fault is not None:
                fault.remaining -= 1
                record.note = "dropped" if fault.drop_connection else "injected"
                if fault.drop_connection:
                    return None
                payload = fault.body if fault.body is not None else _error_body(fault.status)
                return _Response(fault.status, json.dumps(payload).encode(), headers=dict(fault.headers))
            response = self._arm_apply(method, match["name"], body)
            lost = next((r for r in self._lost if r.matches(method, path)), None)
            if lost is not None:
                lost.remaining -= 1
                record.note = "lost_after_apply"
                return None
            return response

    def _arm_apply(self, method: str, name: str | None, body: bytes) -> _Response:
        if name is None:
            if method != "GET":
                return _arm_error(405, "MethodNotAllowed", f"{method} is not allowed on the deployments list")
            return _json_response({"value": [_shown(d) for d in self._deployments.values()]})
        deployment = self._deployments.get(name)
        if method == "GET":
            if deployment is None:
                return _arm_error(404, "DeploymentNotFound", f"Deployment {name} not found.")
            self._tick_deployment(name)
            return _json_response(_shown(self._deployments[name]))
        if method == "DELETE":
            if deployment is None:
                return _Response(204, b"")
            del self._deployments[name]
            self.deleted_deployments.append(name)
            return _Response(200, b"")
        if method != "PUT":
            return _arm_error(405, "MethodNotAllowed", f"{method} is not allowed on a deployment")
        try:
            request = json.loads(body)
            sku, model = request["sku"], request["properties"]["model"]
            assert isinstance(sku["name"], str) and isinstance(sku["capacity"], int) and sku["capacity"] >= 1
            assert model["format"] == "OpenAI" and isinstance(model["version"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return _arm_error(400, "InvalidRequestContent", "The request content was invalid.")
        if model["name"] not in self._models:
            return _arm_error(400, "DeploymentModelNotSupported", f"The model {model['name']!r} is not supported.")
        if deployment is not None and deployment["properties"]["model"]["name"] == model["name"]:
            if deployment["properties"]["provisioningState"] != "Failed":
                return _json_response(_shown(deployment))
        created = self._deployment_body(name, model["name"], sku)
        if self.new_deployment_responder is not None:
            self._responders[model["name"]] = self.new_deployment_responder
        if self._failures:
            created["_fail"] = self._failures.pop(0)
        self._deployments[name] = created
        self._deployment_ticks[name] = 0
        return _json_response(_shown(created), status=200 if deployment is not None else 201)

    def _tick_deployment(self, name: str) -> None:
        deployment = self._deployments[name]
        properties = deployment["properties"]
        if properties["provisioningState"] != "Creating":
            return
        self._deployment_ticks[name] = self._deployment_ticks.get(name, 0) + 1
        if self._deployment_ticks[name] < self.deployment_ticks:
            return
        failure = deployment.pop("_fail", None)
        if failure is None:
            properties["provisioningState"] = "Succeeded"
        else:
            properties["provisioningState"] = "Failed"
            properties["error"] = {"code": "DeploymentFailed", "message": failure}
