"""The OpenAI-compatible HTTP API of ``ft-pipeline serve`` (a FastAPI app).

Endpoints: ``POST /v1/chat/completions`` (``stream: true`` as server-sent events ending with
``data: [DONE]``), ``GET /v1/models``, ``GET /health`` and ``GET /metrics`` (Prometheus text,
from a registry of this app's own). Every error, a malformed body included, is an OpenAI-style
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for bad input; a request
can never crash the server. Each response carries ``X-Request-Id`` (the client's, or a new one),
``X-Model-Version`` and ``X-Model-Alias``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ft_pipeline.lib.registry import ModelVersion, route_bucket
from ft_pipeline.lib.serving.config import ServeConfig
from ft_pipeline.lib.serving.models import ChatRequest, Completion, ModelPool, ServedModel, ServingError

__all__ = ["REQUEST_ID_HEADER", "AssignmentLog", "ServingMetrics", "create_app", "validate_chat_request"]

logger = logging.getLogger("ft_pipeline.serving")

#: The header that carries the request id (A/B routing key); generated when absent.
REQUEST_ID_HEADER = "X-Request-Id"
_MAX_REQUEST_ID = 128
#: Roles a request may use; ``developer`` (the newer name of ``system``) is answered as ``system``.
ROLES = ("system", "developer", "user", "assistant")


# ---------------------------------------------------------------------------------- request body


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Any = None
    content: Any = None


class ChatCompletionBody(BaseModel):
    """The fields of an OpenAI chat-completions request the server reads (others are accepted and
    ignored, as the OpenAI API ignores what a model does not support)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[_Message]
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    n: int | None = None
    stream_options: dict[str, Any] | None = None


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ServingError:
    return ServingError(400, message, param=param, code=code)


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _bad(f"messages[{index}].content: only text parts are supported", f"messages[{index}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"messages[{index}].content must be a string or a list of text parts", f"messages[{index}].content")


def validate_chat_request(body: ChatCompletionBody, config: ServeConfig) -> ChatRequest:
    """The checks every model shares: messages (present, known roles, a system message only
    first, the last from the user, text content), ``n``, ``max_tokens`` and ``temperature``.
    Raises :class:`ServingError` (400)."""
    if not body.messages:
        raise _bad("'messages' must contain at least one message", "messages", "missing_messages")
    if len(body.messages) > config.max_request_messages:
        raise _bad(f"at most {config.max_request_messages} messages per request", "messages")
    messages: list[dict[str, str]] = []
    for i, message in enumerate(body.messages):
        role = message.role
        if role not in ROLES:
            raise _bad(
                f"Invalid value for 'messages[{i}].role': {role!r}; supported roles: {', '.join(ROLES)}",
                f"messages[{i}].role",
                "invalid_role",
            )
        role = "system" if role == "developer" else role
        if role == "system" and i > 0:
            raise _bad(f"messages[{i}]: a system message may only come first", f"messages[{i}].role", "invalid_role")
        messages.append({"role": role, "content": _content_text(message.content, i)})
    if messages[-1]["role"] != "user":
        raise _bad(
            f"the last message must be the user's, not {messages[-1]['role']!r}: the model answers a user turn",
            f"messages[{len(messages) - 1}].role",
            "invalid_role",
        )
    if body.n not in (None, 1):
        raise _bad("only n=1 is supported", "n")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    if max_tokens is not None and not 1 <= max_tokens <= config.max_tokens_limit:
        raise _bad(f"{param} must be within 1..{config.max_tokens_limit}, got {max_tokens}", param)
    if body.temperature is not None and not 0.0 <= body.temperature <= 2.0:
        raise _bad(f"temperature must be within 0..2, got {body.temperature}", "temperature")
    if body.seed is not None and body.seed < 0:
        raise _bad(f"seed must be >= 0, got {body.seed}", "seed")
    return ChatRequest(messages, max_tokens=max_tokens, temperature=body.temperature, seed=body.seed)


# ---------------------------------------------------------------------------- metrics and logs


class ServingMetrics:
    """Prometheus metrics of one app, in a registry of its own (two apps in one process, as in the
    tests, never share counters). Labelled by model name and version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.requests = Counter(
            "ft_serve_requests", "Chat completion requests answered", [*labels, "alias"], registry=self.registry
        )
        self.errors = Counter(
            "ft_serve_errors",
            "Chat completion requests answered with an error",
            [*labels, "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ft_serve_request_latency_seconds",
            "Time from request to the last byte of the answer",
            labels,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80),
            registry=self.registry,
        )
        self.prompt_tokens = Counter("ft_serve_prompt_tokens", "Prompt tokens read", labels, registry=self.registry)
        self.completion_tokens = Counter(
            "ft_serve_completion_tokens", "Completion tokens generated", labels, registry=self.registry
        )
        self.alias_version = Gauge(
            "ft_serve_alias_version",
            "Version each alias serves (0 = unset)",
            ["model", "alias"],
            registry=self.registry,
        )

    def answered(self, model: ServedModel, alias: str | None, completion: Completion, seconds: float) -> None:
        labels = (model.version.model_name, str(model.version.version))
        self.requests.labels(*labels, alias or "-").inc()
        self.latency.labels(*labels).observe(seconds)
        self.prompt_tokens.labels(*labels).inc(completion.prompt_tokens)
        self.completion_tokens.labels(*labels).inc(completion.completion_tokens)

    def failed(self, model_name: str, version: ModelVersion | None, status: int) -> None:
        self.errors.labels(model_name, str(version.version) if version else "none", str(status)).inc()


class AssignmentLog:
    """One JSON line per A/B assignment, appended (thread-safe) to ``path``; off when empty."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)


# ------------------------------------------------------------------------------------------ app


async def _in_thread(items: Callable[[], Generator[Any, None, None]]) -> AsyncIterator[Any]:
    """Iterate the blocking generator ``items()`` in a thread of its own, without blocking the event
    loop. When the consumer stops early (the client went away and the response is cancelled), the
    generator is closed in its thread at its next item, which releases what it holds (a local
    model's lock and its generation, stopped at the next token)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()
    end = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody reads any more
            stop.set()

    def produce() -> None:
        generator = items()
        try:
            for item in generator:
                if stop.is_set():
                    break
                put(item)
        except BaseException as err:  # noqa: BLE001 - raised again in the consumer
            put(_Failed(err))
        finally:
            generator.close()
            put(end)

    threading.Thread(target=produce, name="ft-serve-stream", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is end:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def _error_response(err: ServingError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _request_id(request: Request) -> str:
    given = (request.headers.get(REQUEST_ID_HEADER) or "").strip()
    return given[:_MAX_REQUEST_ID] if given else uuid.uuid4().hex


def _served_id(model: ServedModel) -> str:
    return f"{model.version.model_name}:v{model.version.version}"


def create_app(
    pool: ModelPool,
    config: ServeConfig,
    *,
    metrics: ServingMetrics | None = None,
    assignments: AssignmentLog | None = None,
) -> FastAPI:
    """The API over a started :class:`ModelPool` (the caller starts and stops the pool)."""
    metrics = metrics or ServingMetrics()
    assignments = assignments or AssignmentLog(config.assignment_log)
    app = FastAPI(title="ft-pipeline serve", summary="OpenAI-compatible chat completions for the registry's models")
    app.state.pool, app.state.metrics, app.state.assignments = pool, metrics, assignments

    @app.middleware("http")
    async def _with_request_id(request: Request, call_next: Any) -> Response:
        """Every answer, an error included, carries the request id (the client's or a new one)."""
        request.state.request_id = _request_id(request)
        response = await call_next(request)
        response.headers.setdefault(REQUEST_ID_HEADER, request.state.request_id)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        else:
            where = ".".join(loc) or "body"
            message, param = f"{where}: {first.get('msg', 'invalid request')}", ".".join(loc) or None
        return _error_response(ServingError(400, message, param=param, code="invalid_request"))

    @app.exception_handler(ServingError)
    async def _serving(request: Request, exc: ServingError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(ServingError(exc.status_code, str(exc.detail), code=None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s", request.url.path)
        return _error_response(
            ServingError(500, f"internal error: {type(exc).__name__}", type_="server_error", code="internal_error")
        )

    @app.get("/health")
    async def health() -> JSONResponse:
        """The production version served now (and the A/B challenger when on)."""
        production = pool.holder("production")
        body: dict[str, Any] = {
            "status": "ok" if production is not None else "no production version",
            "model": pool.name,
            "alias": "production",
            "version": production.version if production else None,
            "model_uri": production.model_uri if production else None,
            "adapter_digest": None,
            "last_error": pool.last_error,
        }
        if production is not None:
            body.update(await run_in_threadpool(lambda: pool.get(production).info()))
        challenger = pool.holder(config.challenger_alias)
        body["challenger"] = {
            "alias": config.challenger_alias,
            "share": config.challenger_share,
            "version": challenger.version if challenger else None,
        }
        return JSONResponse(body, status_code=200 if production is not None else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The names a request may use: the model (production), each set alias, their versions."""
        data = []
        seen = set()
        for alias in ("production", "staging"):
            holder = pool.holder(alias)
            if holder is None:
                continue
            ids = [f"{pool.name}@{alias}", f"{pool.name}:v{holder.version}"]
            if alias == "production":
                ids.insert(0, pool.name)
            for model_id in ids:
                if model_id not in seen:
                    seen.add(model_id)
                    data.append(
                        {"id": model_id, "object": "model", "created": holder.created_at, "owned_by": "ft-pipeline"}
                    )
        return {"object": "list", "data": data}

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format."""
        for alias in ("production", "staging"):
            holder = pool.holder(alias)
            metrics.alias_version.labels(pool.name, alias).set(holder.version if holder else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionBody, request: Request) -> Response:
        """An OpenAI chat completion from the version the request's ``model`` names."""
        started = time.perf_counter()
        request_id: str = request.state.request_id
        headers = {REQUEST_ID_HEADER: request_id}
        model: ServedModel | None = None
        alias: str | None = None
        try:
            chat = validate_chat_request(body, config)
            alias, served = await run_in_threadpool(pool.resolve, body.model, request_id)
            model = served
            headers.update({"X-Model-Version": str(served.version.version), "X-Model-Alias": alias or "-"})
            await run_in_threadpool(served.check, chat)
            if body.stream:
                include_usage = bool((body.stream_options or {}).get("include_usage"))
                return StreamingResponse(
                    _sse(served, alias, chat, body.model, request_id, started, include_usage),
                    media_type="text/event-stream",
                    headers={**headers, "Cache-Control": "no-cache"},
                )
            completion = await run_in_threadpool(served.complete, chat)
        except ServingError as err:
            metrics.failed(pool.name, model.version if model else None, err.status)
            _assigned(body.model, request_id, alias, model, err.status)
            return _error_response(err, headers)
        metrics.answered(served, alias, completion, time.perf_counter() - started)
        _assigned(body.model, request_id, alias, served, 200)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": _served_id(served),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": completion.text, "refusal": None},
                        "finish_reason": completion.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "total_tokens": completion.prompt_tokens + completion.completion_tokens,
                },
            },
            headers=headers,
        )

    def _assigned(requested: str, request_id: str, alias: str | None, model: ServedModel | None, status: int) -> None:
        """A/B log: one line per bare-name request while a challenger share is configured."""
        if config.challenger_share <= 0 or requested != pool.name or alias is None:
            return
        assignments.write(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request_id": request_id,
                "model": pool.name,
                "alias": alias,
                "version": model.version.version if model else None,
                "bucket": round(route_bucket(pool.name, request_id), 6),
                "challenger_share": config.challenger_share,
                "status": status,
            }
        )

    async def _sse(
        model: ServedModel,
        alias: str | None,
        chat: ChatRequest,
        requested: str,
        request_id: str,
        started: float,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, the content pieces, a finish chunk, the usage chunk
        when asked for, ``[DONE]``. An error after the first byte is an ``error`` event."""
        cid, created, served = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), _served_id(model)

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": served,
                "choices": choices,
            }
            return f"data: {json.dumps({**chunk, **extra})}\n\n"

        def delta(content: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}]

        status = 200
        try:
            yield event(delta({"role": "assistant", "content": ""}))
            completion: Completion | None = None
            async for piece in _in_thread(lambda: model.stream(chat)):
                if isinstance(piece, Completion):
                    completion = piece
                else:
                    yield event(delta({"content": piece}))
            assert completion is not None
            yield event(delta({}, completion.finish_reason))
            if include_usage:
                usage = {
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "total_tokens": completion.prompt_tokens + completion.completion_tokens,
                }
                yield event([], usage=usage)
            metrics.answered(model, alias, completion, time.perf_counter() - started)
        except ServingError as err:
            status = err.status
            metrics.failed(pool.name, model.version, status)
            yield f"data: {json.dumps(err.body())}\n\n"
        except Exception as err:  # noqa: BLE001 - the stream has started: report, never crash
            status = 500
            logger.exception("stream failed")
            metrics.failed(pool.name, model.version, status)
            body = ServingError(500, f"internal error: {type(err).__name__}", type_="server_error").body()
            yield f"data: {json.dumps(body)}\n\n"
        finally:
            _assigned(requested, request_id, alias, model, status)
        yield "data: [DONE]\n\n"

    return app
