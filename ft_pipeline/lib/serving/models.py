"""The models behind ``ft-pipeline serve``: request model names, loaded versions, hot swap.

* :func:`parse_model_name` reads a request's ``model``: ``<name>`` (the production alias, or the
  A/B challenger), ``<name>@<alias>`` or ``<name>:v<N>``.
* :class:`LocalServedModel` answers with the evaluation's own :class:`LocalGenerator` (same chat
  template, adapter and generation settings: the ``generation`` the version's evaluation recorded
  in its report.json), one request at a time per loaded model. :class:`RemoteServedModel`
  proxies a hosted fine-tuned model (backend ``openai``) with the ``openai`` client.
* :class:`ModelPool` keeps the aliases' versions loaded and polls the registry's alias generation
  counters: a moved alias's new version is loaded fully first, then the reference is swapped, so
  requests in flight finish on the model they started with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_pipeline.lib.evaluation.generation import GenerationConfig, adapter_digest
from ft_pipeline.lib.registry import ModelRegistry, ModelVersion, NotFound, route_bucket
from ft_pipeline.lib.registry_schema import ALIASES
from ft_pipeline.lib.serving.config import ServeConfig
from ft_pipeline.lib.storage import resolve_portable_path
from ft_pipeline.lib.training.record import HOSTED_BACKENDS

__all__ = [
    "ChatRequest",
    "Completion",
    "LocalServedModel",
    "ModelPool",
    "ModelRef",
    "RemoteServedModel",
    "ServedModel",
    "ServingError",
    "evaluated_generation_config",
    "load_served_model",
    "parse_model_name",
]

logger = logging.getLogger("ft_pipeline.serving")


class ServingError(Exception):
    """A request that cannot be answered; the server turns it into an OpenAI-style error body
    ``{"error": {"message", "type", "param", "code"}}`` with HTTP ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------------- names


@dataclass(frozen=True)
class ModelRef:
    """A parsed request ``model``: the registry name and at most one of alias or version."""

    name: str
    alias: str | None = None
    version: int | None = None


_VERSIONED = re.compile(r"^(?P<name>.+):v(?P<version>[0-9]+)$")


def parse_model_name(model: str) -> ModelRef:
    """``name`` / ``name@alias`` / ``name:vN`` -> :class:`ModelRef` (no registry lookup)."""
    if "@" in model:
        name, _, alias = model.rpartition("@")
        return ModelRef(name, alias=alias)
    match = _VERSIONED.match(model)
    if match:
        return ModelRef(match["name"], version=int(match["version"]))
    return ModelRef(model)


def _not_found(model: str, why: str) -> ServingError:
    return ServingError(
        404,
        f"The model `{model}` does not exist: {why}",
        param="model",
        code="model_not_found",
    )


# ------------------------------------------------------------------------------ served models


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request, in the terms of the model that answers it."""

    messages: list[dict[str, str]]
    """``{"role", "content"}`` with string content, in the order given."""
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """One answer and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class ServedModel:
    """A loaded model version that answers chat requests (see the implementations)."""

    version: ModelVersion
    generation: GenerationConfig

    def info(self) -> dict[str, Any]:
        """What /health shows about it."""
        raise NotImplementedError

    def check(self, request: ChatRequest) -> None:
        """Raise :class:`ServingError` (400) when the request does not fit the model."""

    def complete(self, request: ChatRequest) -> Completion:
        raise NotImplementedError

    def stream(self, request: ChatRequest) -> Generator[str | Completion, None, None]:
        """Pieces of the answer as they come, then one :class:`Completion` (the whole answer)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the model holds (called when it is evicted)."""


def evaluated_generation_config(registry: ModelRegistry, version: ModelVersion, data_dir: Path) -> GenerationConfig:
    """The generation settings the version's evaluation answered with: the ``generation`` key of
    the report.json beside the evaluation's per-example file; ``GenerationConfig()`` (the
    evaluation's defaults) when the version has no evaluation or its report does not say."""
    if not version.evaluation_id:
        return GenerationConfig()
    try:
        evaluation = registry.evaluation(version.evaluation_id)
    except NotFound:
        return GenerationConfig()
    examples = resolve_portable_path(str(evaluation.get("per_example_uri") or ""), data_dir)
    report = Path(examples).parent / "report.json" if examples else None
    if report is None or not report.is_file():
        return GenerationConfig()
    recorded = json.loads(report.read_text(encoding="utf-8")).get("generation")
    if not isinstance(recorded, dict):
        return GenerationConfig()
    known = {f.name for f in dataclasses.fields(GenerationConfig)}
    return GenerationConfig(**{k: v for k, v in recorded.items() if k in known})


def _request_config(base: GenerationConfig, request: ChatRequest) -> GenerationConfig:
    """The evaluation's settings with what the request may change: max_tokens, temperature, seed."""
    changes: dict[str, Any] = {}
    if request.max_tokens is not None:
        changes["max_new_tokens"] = request.max_tokens
    if request.temperature is not None:
        changes["temperature"] = request.temperature
    if request.seed is not None:
        changes["seed"] = request.seed
    return dataclasses.replace(base, **changes) if changes else base


class LocalServedModel(ServedModel):
    """A local LoRA version (or a base model) answered by the evaluation's ``LocalGenerator``.

    The base path recorded in the version's tags may be relative to the data directory (the
    evaluation resolves it the same way). Calls are serialized per model with a lock: one
    generation at a time on the model's weights (the CPU has no spare cores for two anyway).
    """

    def __init__(
        self, version: ModelVersion, generation: GenerationConfig, *, data_dir: Path, config: ServeConfig
    ) -> None:
        from ft_pipeline.lib.evaluation.generation import LocalGenerator
        from ft_pipeline.lib.quiet_logs import quiet_third_party_logs

        tags = version.tags or {}
        base_path = tags.get("base_model_path")
        if not base_path:
            raise ValueError(f"{version.model_name} v{version.version} has no base_model_path tag: cannot load it")
        quiet_third_party_logs()
        adapter = resolve_portable_path(version.artifact_path, data_dir) if version.artifact_path else None
        tokenizer_dir = tags.get("tokenizer_dir")
        self.version = version
        self.generation = generation
        self.adapter_digest = adapter_digest(adapter) if adapter else None
        self.generator = LocalGenerator(
            resolve_portable_path(str(base_path), data_dir),
            adapter,
            resolve_portable_path(str(tokenizer_dir), data_dir) if tokenizer_dir else None,
            generation,
            device=config.device or None,
        )
        self.lock = threading.Lock()
        positions = getattr(self.generator.model.config, "max_position_embeddings", None)
        self.max_context_tokens = min(config.max_context_tokens, int(positions or config.max_context_tokens))

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.version.backend,
            "adapter_digest": self.adapter_digest,
            "generator": self.generator.name,
            "max_new_tokens": self.generation.max_new_tokens,
            "temperature": self.generation.temperature,
        }

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the prompt as the evaluation renders it (chat template, generation prompt)."""
        text = self.generator._render([messages])[0]
        return len(self.generator.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check(self, request: ChatRequest) -> None:
        wanted = _request_config(self.generation, request).max_new_tokens
        with self.lock:  # the tokenizer is shared with the generation (a fast tokenizer is not reentrant)
            prompt = self.prompt_tokens(request.messages)
        if prompt + wanted > self.max_context_tokens:
            raise ServingError(
                400,
                f"This model's maximum context length is {self.max_context_tokens} tokens. However, you requested "
                f"{prompt + wanted} tokens ({prompt} in the messages, {wanted} in the completion). Please reduce "
                "the length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )

    def stream(self, request: ChatRequest) -> Generator[str | Completion, None, None]:
        # Both endpoints' paths: LocalGenerator.generate_stream, which renders, configures and
        # seeds exactly as generate() (a test asserts the answers equal the evaluation's), and
        # also returns the generated token ids for the usage counts.
        config = _request_config(self.generation, request)
        pieces: list[str] = []
        with self.lock:
            prompt_tokens = self.prompt_tokens(request.messages)
            self.generator.config = config
            with contextlib.closing(self.generator.generate_stream(request.messages)) as generated:
                new_ids = yield from _collect(generated, pieces)
        eos = bool(new_ids) and new_ids[-1] in self.generator.eos_token_ids
        yield Completion("".join(pieces), prompt_tokens, len(new_ids), "stop" if eos else "length")

    def complete(self, request: ChatRequest) -> Completion:
        *_, completion = self.stream(request)
        assert isinstance(completion, Completion)
        return completion


def _collect(generated: Generator[str, None, list[int]], pieces: list[str]) -> Generator[str, None, list[int]]:
    """Re-yield the pieces (keeping them) and return the generator's result."""
    while True:
        try:
            piece = next(generated)
        except StopIteration as done:
            return list(done.value or [])
        pieces.append(piece)
        yield piece


def _provider_client(backend: str, config: ServeConfig) -> Any:
    """The OpenAI-compatible client of a hosted backend's provider: OpenAI (or ``openai_base_url``),
    Together AI's OpenAI-compatible endpoint, or Azure OpenAI (deployment names as model ids). The
    key is read from the environment variable the config names, never logged."""
    import openai

    key_env = {"together": config.together_api_key_env, "azure": config.azure_api_key_env}.get(
        backend, config.openai_api_key_env
    )
    key = os.environ.get(key_env, "")
    if not key:
        raise ValueError(f"{key_env} is not set: backend {backend} versions need an API key")
    timeout, retries = config.openai_timeout_s, config.openai_max_retries
    if backend == "azure":
        if not config.azure_endpoint:
            raise ValueError("azure_endpoint is not set: backend azure versions need the Azure OpenAI endpoint")
        return openai.AzureOpenAI(
            api_key=key,
            azure_endpoint=config.azure_endpoint,
            api_version=config.azure_api_version,
            timeout=timeout,
            max_retries=retries,
        )
    base_url = config.together_base_url if backend == "together" else config.openai_base_url or None
    return openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=retries)


class RemoteServedModel(ServedModel):
    """A hosted fine-tuned model (backend ``openai``, ``azure`` or ``together``), proxied with the
    ``openai`` client to its ``remote_model_id`` at its provider. The key comes from the
    environment variable the config names and is never logged; provider errors keep their
    status, with the key scrubbed from the message."""

    def __init__(
        self,
        version: ModelVersion,
        generation: GenerationConfig,
        *,
        config: ServeConfig,
        client: Any | None = None,
    ) -> None:
        if not version.remote_model_id:
            raise ValueError(f"{version.model_name} v{version.version} has no remote model id")
        self.version = version
        self.generation = generation
        self.remote_model_id = version.remote_model_id
        self.client = client if client is not None else _provider_client(version.backend, config)

    def info(self) -> dict[str, Any]:
        return {"backend": self.version.backend, "adapter_digest": None, "remote_model_id": self.remote_model_id}

    def _error(self, err: Exception) -> ServingError:
        import openai

        message = getattr(err, "message", None) or str(err)
        key = getattr(self.client, "api_key", None)
        if isinstance(key, str) and len(key) >= 4:
            message = message.replace(key, "***")
        if isinstance(err, openai.APIStatusError):
            status = err.status_code if 400 <= err.status_code < 600 else 502
            return ServingError(status, f"the provider answered: {message}", type_="upstream_error", code=None)
        return ServingError(502, f"the provider could not be reached: {type(err).__name__}", type_="upstream_error")

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        config = _request_config(self.generation, request)
        return dict(
            model=self.remote_model_id,
            messages=request.messages,
            temperature=config.temperature,
            seed=config.seed,
            max_completion_tokens=config.max_new_tokens,
        )

    def complete(self, request: ChatRequest) -> Completion:
        import openai

        try:
            response = self.client.chat.completions.create(**self._arguments(request))
        except openai.OpenAIError as err:
            raise self._error(err) from None
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            choice.message.content or "",
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
            choice.finish_reason or "stop",
        )

    def stream(self, request: ChatRequest) -> Generator[str | Completion, None, None]:
        import openai

        pieces: list[str] = []
        finish, usage = "stop", None
        try:
            chunks = self.client.chat.completions.create(
                **self._arguments(request), stream=True, stream_options={"include_usage": True}
            )
            for chunk in chunks:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                        yield choice.delta.content
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except openai.OpenAIError as err:
            raise self._error(err) from None
        yield Completion(
            "".join(pieces), usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0, finish
        )


def load_served_model(
    registry: ModelRegistry, version: ModelVersion, *, data_dir: Path, config: ServeConfig
) -> ServedModel:
    """Load a registered version for serving, with the generation settings its evaluation used."""
    generation = evaluated_generation_config(registry, version, data_dir)
    if version.backend in HOSTED_BACKENDS:
        return RemoteServedModel(version, generation, config=config)
    return LocalServedModel(version, generation, data_dir=data_dir, config=config)


# -------------------------------------------------------------------------------------- pool

Loader = Callable[[ModelVersion], ServedModel]


class ModelPool:
    """The served model line: which version each alias points at, the loaded versions, hot swap.

    ``refresh()`` (the poller calls it every ``poll_interval_s``) reads each alias's generation
    counter, a cheap read that changes on every move. For a moved alias the new holder is loaded
    *before* the alias table points at it, so the old version serves until the new one is ready and
    requests already running keep their reference to the old one. The production alias and, with
    A/B on, the challenger are kept loaded; other aliases and ``:v<N>`` versions load on first use
    into a small LRU cache (``max_loaded_models``). A version that fails to load is logged and
    retried on the next poll; the alias keeps serving its previous version meanwhile.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        config: ServeConfig,
        loader: Loader,
        *,
        on_swap: Callable[[str, ModelVersion | None], None] | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.loader = loader
        self.on_swap = on_swap
        self._lock = threading.Lock()
        self._aliases: dict[str, ModelVersion | None] = {alias: None for alias in ALIASES}
        self._generations: dict[str, int] = {alias: -1 for alias in ALIASES}
        self._loaded: OrderedDict[int, ServedModel] = OrderedDict()
        self._load_locks: dict[int, threading.Lock] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return self.config.model_name

    def _preloaded(self, alias: str) -> bool:
        return alias == "production" or (alias == self.config.challenger_alias and self.config.challenger_share > 0)

    # -- loading -----------------------------------------------------------------------------

    def _pinned(self) -> set[int]:
        return {mv.version for mv in self._aliases.values() if mv is not None}

    def get(self, version: ModelVersion) -> ServedModel:
        """The loaded model of ``version`` (loaded now if it is not)."""
        with self._lock:
            model = self._loaded.get(version.version)
            if model is not None:
                self._loaded.move_to_end(version.version)
                return model
            load_lock = self._load_locks.setdefault(version.version, threading.Lock())
        with load_lock:  # one load per version, however many requests wait for it
            with self._lock:
                model = self._loaded.get(version.version)
            if model is None:
                model = self.loader(version)
            with self._lock:
                self._loaded[version.version] = model
                self._loaded.move_to_end(version.version)
                self._evict()
        return model

    def _evict(self) -> None:
        pinned = self._pinned()
        for v in list(self._loaded):
            if len(self._loaded) <= self.config.max_loaded_models:
                break
            if v not in pinned:
                # Requests still holding it finish; it is freed when the last one lets go.
                self._loaded.pop(v).close()

    # -- aliases -----------------------------------------------------------------------------

    def refresh(self) -> list[str]:
        """Pick up alias moves; returns the aliases that changed. Never raises for a version that
        fails to load (it is logged, kept in ``last_error`` and retried next time)."""
        changed = []
        for alias in ALIASES:
            generation = self.registry.alias_generation(self.name, alias)
            if generation == self._generations[alias]:
                continue
            holder = self.registry.resolve(self.name, alias)
            if holder is not None and self._preloaded(alias):
                try:
                    self.get(holder)
                except Exception as err:  # noqa: BLE001 - a broken version must not stop serving
                    self.last_error = f"{self.name}@{alias} v{holder.version} failed to load: {err}"
                    logger.error(self.last_error)
                    continue
            with self._lock:
                self._aliases[alias] = holder
                self._generations[alias] = generation
                self._evict()
            changed.append(alias)
            logger.info(
                "%s@%s now serves %s",
                self.name,
                alias,
                f"v{holder.version}" if holder is not None else "nothing (unset)",
            )
            if self.on_swap is not None:
                self.on_swap(alias, holder)
        return changed

    def holder(self, alias: str) -> ModelVersion | None:
        """The version the server serves for ``alias`` now."""
        with self._lock:
            return self._aliases.get(alias)

    def start(self) -> None:
        """Load the served aliases now, then poll in a daemon thread."""
        self.refresh()
        self._poller = threading.Thread(target=self._poll, name="ft-serve-alias-poller", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.config.poll_interval_s):
            try:
                self.refresh()
            except Exception as err:  # noqa: BLE001 - a registry hiccup is retried next poll
                self.last_error = f"registry poll failed: {type(err).__name__}: {err}"
                logger.error(self.last_error)

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=self.config.poll_interval_s + 5)

    # -- requests ----------------------------------------------------------------------------

    def resolve(self, model: str, request_id: str) -> tuple[str | None, ServedModel]:
        """The model that answers a request's ``model`` (and the alias it was reached by; None for
        ``:v<N>``). A bare name is routed: a request whose stable bucket (the registry's
        ``route_bucket``, what ``ModelRegistry.route`` uses) is below ``challenger_share`` goes to
        the challenger alias when it is set, every other one to production."""
        ref = parse_model_name(model)
        if ref.name != self.name:
            raise _not_found(
                model, f"this server serves {self.name!r} ({self.name}, {self.name}@<alias>, {self.name}:v<N>)"
            )
        if ref.version is not None:
            try:
                version = self.registry.get_version(self.name, ref.version)
            except NotFound:
                raise _not_found(model, f"{self.name} has no version {ref.version}") from None
            return None, self._get_or_503(version)
        alias = ref.alias
        if alias is None:
            alias = "production"
            share = self.config.challenger_share
            if share > 0 and route_bucket(self.name, request_id) < share:
                if self.holder(self.config.challenger_alias) is not None:
                    alias = self.config.challenger_alias
        if alias not in ALIASES:
            raise _not_found(model, f"unknown alias {alias!r} (aliases: {', '.join(ALIASES)})")
        holder = self.holder(alias)
        if holder is None:
            raise _not_found(model, f"{self.name}@{alias} is not set in the registry")
        return alias, self._get_or_503(holder)

    def _get_or_503(self, version: ModelVersion) -> ServedModel:
        try:
            return self.get(version)
        except Exception as err:  # noqa: BLE001 - a version that cannot be loaded is unavailable, not a crash
            logger.error("%s v%s failed to load: %s", version.model_name, version.version, err)
            raise ServingError(
                503,
                f"{version.model_name} v{version.version} could not be loaded: {type(err).__name__}",
                type_="server_error",
                code="model_unavailable",
            ) from None
