"""A faithful, deterministic, in-process fake of the OpenAI files / fine-tuning / chat API.

Follows the public API as the ``openai`` SDK models it. The real ``openai`` SDK talks
to it over HTTP on ``127.0.0.1:<ephemeral>``, so every layer of the SDK (query
serialisation, multipart, retries, pagination, strict response validation) is exercised::

    with FakeOpenAI() as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test-...",
                               _strict_response_validation=True, max_retries=2)
        ...

What it implements (all under ``/v1``):

* files: ``POST/GET /files``, ``GET/DELETE /files/{id}``, ``GET /files/{id}/content``
  (multipart parsed by hand plus ``email.parser`` for part headers; no ``cgi``);
* fine-tuning: ``POST/GET /fine_tuning/jobs`` (``metadata[k]=v`` filter,
  ``after``/``limit`` cursors), ``GET /fine_tuning/jobs/{id}``, ``POST …/cancel``,
  ``POST …/pause`` / ``…/resume`` (only with ``config.allow_paused_status``),
  ``GET …/events`` (newest first), ``GET …/checkpoints`` (newest first);
* ``POST /chat/completions`` (also ``stream=true``), ``GET /models``, ``GET/DELETE /models/{id}``.

Methods: ``supervised`` (chat JSONL: ``{"messages": [...]}`` per line) and ``dpo`` (preference
JSONL: ``{"input": {"messages": [...]}, "preferred_output": [one assistant message],
"non_preferred_output": [one assistant message]}`` per line, the input ending in a user turn);
the job object echoes the ``method`` it was created with (DPO hyperparameters include
``beta``, resolved to ``config.default_dpo_beta`` once running). A training or validation file
whose first line is in the *other* method's format (chat lines for a DPO job, preference lines
for a supervised one) is rejected at create with a 400 ``invalid_training_file`` /
``invalid_validation_file`` [I: the real API may instead fail the job while validating files];
every other format error fails the job in ``validating_files``, line by line, as below.

Job state machine (one *tick* per ``retrieve`` or ``list_events`` call for that job,
applied before responding; see :meth:`FakeOpenAI.advance` to tick by hand)::

    validating_files -> failed (invalid file, error.code "invalid_training_file"/"invalid_validation_file")
    validating_files -> queued -> running -> (ticks_per_epoch ticks per epoch) -> succeeded
    running -> failed (outcome "fail_training": error.code "training_failed", in epoch 2)
    running stays running forever (outcome "stall")
    {validating_files, queued, running, paused} -> cancelled (finished_at is set to "now")

Deliberate choices where the real API is unverified are marked ``[I]`` in comments.

Self-validation: every JSON body is validated with the SDK's own pydantic models before it
is sent. A failure (or any other crash inside the fake, e.g. in a scripted responder) is
recorded in :attr:`FakeOpenAI.validation_errors` and answered with a 500 carrying
``x-should-retry: false``, so a test sees the fake's bug instead of a retry loop; test
fixtures should assert ``fake.validation_errors == []`` on teardown.

Secrets: the request log never stores the ``Authorization`` value (``"Bearer ***"``), and
no response ever echoes any part of the API key (the real 401 message shows a masked key;
this fake omits it entirely).
"""

from __future__ import annotations

import base64
import collections
import copy
import csv
import email.parser
import email.policy
import io
import json
import math
import random
import re
import socket
import string
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import openai
from openai.types import FileDeleted, FileObject, Model, ModelDeleted
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

__all__ = ["FakeConfig", "FakeOpenAI", "RecordedRequest", "Responder", "examples_jsonl", "preference_jsonl"]

#: A scripted chat responder: ``fn(messages, request_body) -> assistant content``.
Responder = Callable[[list[dict], dict], str]

FILE_PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}
TERMINAL_STATUSES = {"succeeded", "failed", "cancelled"}
OUTCOMES = {"succeed", "fail_validation", "fail_training", "stall"}
CHAT_ROLES = {"system", "user", "assistant", "tool", "function", "developer"}
TRAINING_ROLES = {"system", "user", "assistant", "tool", "function"}
TRAINING_MESSAGE_KEYS = {"role", "content", "name", "function_call", "tool_calls", "tool_call_id", "weight"}
#: Top-level keys of a DPO (preference) training line, and the keys its ``input`` may hold.
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
PREFERENCE_INPUT_KEYS = {"messages", "tools", "parallel_tool_calls"}
#: What each method's lines look like, for error messages.
METHOD_LINE_FORMATS = {
    "supervised": "a 'messages' list (the chat format)",
    "dpo": "'input' (with 'messages'), 'preferred_output' and 'non_preferred_output' (the preference format)",
}
BASE_MODELS = (
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-mini",
    "gpt-4o-2024-08-06",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "babbage-002",
    "davinci-002",
)
RESULT_CSV_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
_BASE62 = string.ascii_letters + string.digits
_START_EPOCH = 1_721_764_800  # 2024-07-23T20:00:00Z, the timestamp in the reference's example job


@dataclass
class FakeConfig:
    """Knobs a test may flip on ``fake.config`` (all read at the moment they matter).

    Attributes:
        api_key: if set, only ``Authorization: Bearer <api_key>`` is accepted; otherwise any
            non-empty bearer token is. Default None.
        ticks_per_epoch: running ticks per epoch (one metrics event each; a checkpoint at the
            last tick of every epoch). Default 2, so a default 3-epoch job finishes in 8 ticks.
        default_outcome: outcome of a job when neither ``outcome_for_next_job`` nor
            ``metadata["_fake_outcome"]`` says otherwise. Default "succeed".
        auto_advance_on_poll: tick a job on each ``retrieve`` / ``list_events`` of it. Default True.
        result_file_base64: store the result CSV base64-encoded, as the real API appears to
            (observed, not documented); False stores plain CSV. Default True.
        allow_paused_status: enable ``pause``/``resume``. ``"paused"`` is not in the SDK's
            status Literal, so a strict client fails on it; off by default.
        honor_metadata_filter: apply ``metadata[k]=v`` on ``GET /fine_tuning/jobs``. False
            mimics a server that ignores the filter (clients must filter too). Default True.
        min_training_examples: validation minimum for the training file. Default 10.
        default_n_epochs / default_batch_size / default_learning_rate_multiplier: what "auto"
            resolves to once a job starts running. Defaults 3 / 1 / 1.8.
        default_dpo_beta: what a DPO job's ``beta="auto"`` resolves to once running. Default
            0.1 [I].
        org_slug: the org part of fine-tuned model names. Default "fake-org".
        organization_id: ``organization_id`` of jobs and ``owned_by`` of fine-tuned models.
            Default "org-fake".
        self_validate: validate every JSON response with the SDK's models. Default True.
        max_checkpoints: checkpoints kept per job (the real API keeps the last 3). Default 3.
        chat_latency_s: seconds every chat completion takes (slept outside the fake's lock, so
            concurrent requests overlap as on a real server). Default 0.
    """

    api_key: str | None = None
    ticks_per_epoch: int = 2
    default_outcome: str = "succeed"
    auto_advance_on_poll: bool = True
    result_file_base64: bool = True
    allow_paused_status: bool = False
    honor_metadata_filter: bool = True
    min_training_examples: int = 10
    chat_latency_s: float = 0.0
    default_n_epochs: int = 3
    default_batch_size: int = 1
    default_learning_rate_multiplier: float = 1.8
    default_dpo_beta: float = 0.1
    org_slug: str = "fake-org"
    organization_id: str = "org-fake"
    self_validate: bool = True
    max_checkpoints: int = 3


@dataclass(eq=False)  # identity equality: two identical polls are still two requests
class RecordedRequest:
    """One request as the server saw it. ``headers`` keys are lower-case; the
    ``authorization`` value is always stored as ``"Bearer ***"`` (never the key)."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    note: str = ""  # "injected", "dropped", "lost_after_apply" or ""

    @property
    def retry_count(self) -> int:
        """The SDK's ``x-stainless-retry-count`` header (0 for a first attempt)."""
        return int(self.headers.get("x-stainless-retry-count", "0") or 0)

    @property
    def json(self) -> Any:
        """The body parsed as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def query_dict(self) -> dict[str, str]:
        """Query parameters, last value wins."""
        return dict(self.query)


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    remaining: int
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    drop_connection: bool = False

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.method in (method, "*") and bool(self.pattern.search(path))


@dataclass
class _StoredFile:
    obj: dict
    data: bytes


@dataclass
class _Plan:
    n_epochs: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    ticks_per_epoch: int
    final_model: str

    @property
    def total_ticks(self) -> int:
        return self.n_epochs * self.ticks_per_epoch

    def step_at(self, tick: int) -> int:
        """The (strictly increasing) training step reached at running tick ``tick`` (1-based)."""
        epoch, within = divmod(tick - 1, self.ticks_per_epoch)
        return epoch * self.steps_per_epoch + math.ceil(self.steps_per_epoch * (within + 1) / self.ticks_per_epoch)


@dataclass
class _Job:
    obj: dict
    outcome: str
    events: list[dict] = field(default_factory=list)  # oldest first
    checkpoints: list[dict] = field(default_factory=list)  # oldest first
    train_examples: list[dict] = field(default_factory=list)
    validation_examples: list[dict] = field(default_factory=list)
    plan: _Plan | None = None
    tick: int = 0  # running ticks done
    metric_rows: list[dict] = field(default_factory=list)


class _ApiError(Exception):
    """An HTTP error answered with the OpenAI error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers or {}


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json_response(obj: Any, status: int = 200) -> _Response:
    return _Response(status, json.dumps(obj).encode())


def _error_body(status: int) -> dict:
    kinds = {
        400: ("invalid_request_error", "Bad request (injected)."),
        401: ("invalid_request_error", "Incorrect API key provided."),
        404: ("invalid_request_error", "Not found (injected)."),
        408: ("timeout", "Request timed out (injected)."),
        409: ("invalid_request_error", "Conflict (injected)."),
        429: ("requests", "Rate limit reached (injected). Please try again later."),
    }
    type_, message = kinds.get(
        status, ("server_error", "The server had an error while processing your request (injected).")
    )
    code = "rate_limit_exceeded" if status == 429 else None
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _normalise(text: str) -> str:
    """Key for the memorising responder: case- and whitespace-insensitive."""
    return " ".join(text.split()).casefold()


def _content_text(content: Any) -> str:
    """Text of a message content (a string, or a list of ``{"type": "text", "text": ...}`` parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _count_tokens(text: str) -> int:
    """Whitespace tokens: crude and deterministic; the fake needs a count, not the real tokenizer."""
    return len(text.split())


def _example_messages(example: dict) -> list[dict]:
    """Every message of a validated example: a chat line's ``messages``, or a preference line's
    input messages followed by both outputs."""
    if "messages" in example:
        return list(example["messages"])
    return [*example["input"]["messages"], *example["preferred_output"], *example["non_preferred_output"]]


def _learned_conversation(example: dict) -> list[dict]:
    """The conversation a fine-tuned model learns to continue: a chat line's messages, or a
    preference line's input followed by its preferred output."""
    if "messages" in example:
        return list(example["messages"])
    return [*example["input"]["messages"], *example["preferred_output"]]


def _example_tokens(example: dict) -> int:
    return sum(_count_tokens(_content_text(m.get("content"))) for m in _example_messages(example))


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _message_error(message: Any, where: str, *, keys: set[str]) -> str | None:
    """What is wrong with one training message (``keys``: the keys it may have), or None."""
    if not isinstance(message, dict) or "role" not in message:
        return f"Invalid file format. {where}: missing 'role'."
    if message["role"] not in TRAINING_ROLES:
        return f"Invalid file format. {where}: unrecognized role {message['role']!r}."
    unknown = sorted(set(message) - keys)
    if unknown:
        return f"Invalid file format. {where}: unrecognized key(s) {', '.join(unknown)}."
    if "weight" in message and message["weight"] not in (0, 1):
        return f"Invalid file format. {where}: weight must be 0 or 1."
    content = message.get("content")
    if not (
        isinstance(content, (str, list))
        or (
            content is None
            and message["role"] == "assistant"
            and ("tool_calls" in message or "function_call" in message)
        )
    ):
        return f"Invalid file format. {where}: missing or invalid 'content'."
    return None


def _jsonl_lines(data: bytes) -> tuple[list[tuple[int, str]], str | None]:
    """The non-blank lines of a UTF-8 file with their 1-based numbers, or an error message."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], "Invalid file format. The file is not valid UTF-8."
    # [I] trailing/blank lines are tolerated
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()], None


def _chat_example_error(example: Any, line_no: int) -> str | None:
    """What is wrong with one supervised (chat) line, or None."""
    if not isinstance(example, dict) or not isinstance(example.get("messages"), list) or not example["messages"]:
        return f"Invalid file format. Line {line_no}: expected an object with a non-empty 'messages' list."
    for msg_no, message in enumerate(example["messages"], start=1):
        error = _message_error(message, f"Line {line_no}, message {msg_no}", keys=TRAINING_MESSAGE_KEYS)
        if error is not None:
            return error
    if not any(m["role"] == "assistant" for m in example["messages"]):
        return f"Invalid file format. Line {line_no}: no assistant message."
    return None


def _preference_example_error(example: Any, line_no: int) -> str | None:
    """What is wrong with one DPO (preference) line, or None: ``input.messages`` a non-empty
    list of valid messages (no ``weight``, an SFT-only control) ending in a user turn, and each
    output a list of exactly one assistant message with string content."""
    if not isinstance(example, dict):
        return f"Invalid file format. Line {line_no}: expected a JSON object."
    missing = [key for key in PREFERENCE_KEYS if key not in example]
    if missing:
        return f"Invalid file format. Line {line_no}: missing key(s) {', '.join(missing)}."
    inp = example["input"]
    if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list) or not inp["messages"]:
        return f"Invalid file format. Line {line_no}: 'input' must be an object with a non-empty 'messages' list."
    unknown = sorted(set(inp) - PREFERENCE_INPUT_KEYS)
    if unknown:
        return f"Invalid file format. Line {line_no}: unrecognized key(s) {', '.join(unknown)} in 'input'."
    for msg_no, message in enumerate(inp["messages"], start=1):
        where = f"Line {line_no}, input message {msg_no}"
        error = _message_error(message, where, keys=TRAINING_MESSAGE_KEYS - {"weight"})
        if error is not None:
            return error
    if inp["messages"][-1]["role"] != "user":
        return f"Invalid file format. Line {line_no}: the input must end with a user message."  # [I] wording
    for key in PREFERENCE_KEYS[1:]:
        output = example[key]
        if not (
            isinstance(output, list)
            and len(output) == 1
            and isinstance(output[0], dict)
            and output[0].get("role") == "assistant"
            and isinstance(output[0].get("content"), str)
            and set(output[0]) <= {"role", "content"}
        ):
            return (
                f"Invalid file format. Line {line_no}: '{key}' must be a list of exactly one assistant "
                "message with string content."
            )
    return None


def _validate_training_jsonl(
    data: bytes, *, method: str = "supervised", min_examples: int
) -> tuple[list[dict], str | None]:
    """Apply the API's training-file rules for ``method`` (line format, minimum examples).
    Returns (examples, error message)."""
    lines, error = _jsonl_lines(data)
    if error is not None:
        return [], error
    check = _preference_example_error if method == "dpo" else _chat_example_error
    examples: list[dict] = []
    for line_no, line in lines:
        try:
            example = json.loads(line)
        except ValueError:
            return [], f"Invalid file format. Line {line_no}: the line is not valid JSON."
        error = check(example, line_no)
        if error is not None:
            return [], error
        examples.append(example)
    if len(examples) < min_examples:
        return [], f"File has {len(examples)} example(s), but must have at least {min_examples} examples."
    return examples, None


def _line_method(data: bytes) -> tuple[int, str] | None:
    """``(line number, method)`` of the first non-blank line when it is recognisably a chat
    (``"supervised"``) or preference (``"dpo"``) line; None otherwise (left to validation)."""
    lines, error = _jsonl_lines(data)
    if error is not None or not lines:
        return None
    line_no, line = lines[0]
    try:
        example = json.loads(line)
    except ValueError:
        return None
    if not isinstance(example, dict):
        return None
    if "messages" in example and not any(key in example for key in PREFERENCE_KEYS):
        return line_no, "supervised"
    if any(key in example for key in PREFERENCE_KEYS) and "messages" not in example:
        return line_no, "dpo"
    return None


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Parse multipart/form-data into ``{name: (filename, bytes)}``.

    The body is split on the boundary by hand (byte-exact, so uploaded files round-trip
    unchanged); each part's headers are parsed with ``email.parser`` (``cgi`` is gone in 3.13).
    """
    header_parser = email.parser.BytesHeaderParser(policy=email.policy.HTTP)
    ctype = header_parser.parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1"))
    boundary = ctype.get_param("boundary")
    if ctype.get_content_type() != "multipart/form-data" or not boundary:
        raise _ApiError(400, "Expected a multipart/form-data body with a boundary.")
    delimiter = b"--" + str(boundary).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        chunk = chunk[:-2] if chunk.endswith(b"\r\n") else chunk
        raw_headers, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise _ApiError(400, "Malformed multipart part.")
        headers = header_parser.parsebytes(raw_headers + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not name:
            raise _ApiError(400, "Multipart part without a name.")
        fields[str(name)] = (headers.get_filename(), payload)
    return fields


def _paginate(items: list[dict], after: str | None, limit: int) -> tuple[list[dict], bool]:
    """Cursor pagination: the ``limit`` items that follow the one whose id is ``after``."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        # [I] an unknown cursor yields an empty page rather than an error
        start = ids.index(after) + 1 if after in ids else len(items)
    page = items[start : start + limit]
    return page, start + limit < len(items)


class FakeOpenAI:
    """The fake server plus its control plane (plain Python methods, no HTTP needed).

    Control plane: :meth:`outcome_for_next_job`, :meth:`inject`, :meth:`lose_response_after_apply`,
    :meth:`set_responder`, :meth:`advance`, :meth:`pause` / :meth:`resume`, :meth:`add_event`,
    :meth:`fail`, :meth:`register_model`;
    inspection: :attr:`jobs`, :attr:`files`, :attr:`requests`, :attr:`validation_errors`,
    :meth:`file_bytes`, :meth:`requests_matching`.
    """

    def __init__(self, config: FakeConfig | None = None, *, seed: int = 0, **config_overrides: Any):
        """``config`` (or keyword overrides of :class:`FakeConfig` fields) and the RNG ``seed``
        that makes ids, default job seeds and loss curves reproducible."""
        self.config = config or FakeConfig()
        for key, value in config_overrides.items():
            if not hasattr(self.config, key):
                raise TypeError(f"unknown FakeConfig field {key!r}")
            setattr(self.config, key, value)
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._clock = _START_EPOCH
        self._files: dict[str, _StoredFile] = {}
        self._jobs: dict[str, _Job] = {}
        self._models: dict[str, dict] = {
            m: {"id": m, "object": "model", "created": _START_EPOCH - 86400, "owned_by": "system"} for m in BASE_MODELS
        }
        self._memory: dict[str, dict[str, str]] = {}  # fine-tuned model -> {normalised user text: answer}
        self._responders: dict[str, Responder | dict[str, str]] = {}
        self._outcomes: collections.deque[str] = collections.deque()
        self._faults: list[_Rule] = []
        self._lost: list[_Rule] = []
        self._requests: list[RecordedRequest] = []
        self.validation_errors: list[str] = []
        self.chat_in_flight = 0
        self.max_chat_in_flight = 0
        """Most chat completions being answered at once (reset it to 0 to measure a phase)."""
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., _Response]]] = [
            ("POST", re.compile(r"/files"), self._create_file),
            ("GET", re.compile(r"/files"), self._list_files),
            ("GET", re.compile(r"/files/(?P<fid>[^/]+)"), self._get_file),
            ("DELETE", re.compile(r"/files/(?P<fid>[^/]+)"), self._delete_file),
            ("GET", re.compile(r"/files/(?P<fid>[^/]+)/content"), self._file_content),
            ("POST", re.compile(r"/fine_tuning/jobs"), self._create_job),
            ("GET", re.compile(r"/fine_tuning/jobs"), self._list_jobs),
            ("GET", re.compile(r"/fine_tuning/jobs/(?P<jid>[^/]+)"), self._get_job),
            ("POST", re.compile(r"/fine_tuning/jobs/(?P<jid>[^/]+)/cancel"), self._cancel_job),
            ("POST", re.compile(r"/fine_tuning/jobs/(?P<jid>[^/]+)/pause"), self._pause_job),
            ("POST", re.compile(r"/fine_tuning/jobs/(?P<jid>[^/]+)/resume"), self._resume_job),
            ("GET", re.compile(r"/fine_tuning/jobs/(?P<jid>[^/]+)/events"), self._list_events),
            ("GET", re.compile(r"/fine_tuning/jobs/(?P<jid>[^/]+)/checkpoints"), self._list_checkpoints),
            ("POST", re.compile(r"/chat/completions"), self._chat_completion),
            ("GET", re.compile(r"/models"), self._list_models),
            ("GET", re.compile(r"/models/(?P<model>.+)"), self._get_model),
            ("DELETE", re.compile(r"/models/(?P<model>.+)"), self._delete_model),
        ]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeOpenAI:
        """Bind 127.0.0.1 on an ephemeral port and serve from a daemon thread."""
        handler = type("FakeOpenAIHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # why a short poll interval: shutdown() waits up to one interval; keeps test teardown fast
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, ready for ``openai.OpenAI(base_url=...)``."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running; use it as a context manager or call start()")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def client(
        self, api_key: str = "sk-test-fake", *, strict: bool = True, max_retries: int = 2, timeout: float = 5.0
    ) -> openai.OpenAI:
        """An SDK client for this fake (strict response validation by default)."""
        return openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key,
            max_retries=max_retries,
            timeout=timeout,
            _strict_response_validation=strict,
        )

    # ------------------------------------------------------------------ control plane
    def outcome_for_next_job(self, outcome: str) -> None:
        """Queue the outcome of the next created job: succeed | fail_validation | fail_training | stall.
        (``metadata["_fake_outcome"]`` on a create request takes precedence.)"""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}")
        with self._lock:
            self._outcomes.append(outcome)

    def inject(
        self,
        method: str,
        path_regex: str,
        times: int = 1,
        status: int = 500,
        headers: dict[str, str] | None = None,
        body: Any = None,
        *,
        drop_connection: bool = False,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` ("*" for any) and ``path_regex``
        (``re.search`` on the path, e.g. ``r"/fine_tuning/jobs/[^/]+$"``) with ``status``,
        ``headers`` and ``body`` (default: a matching error envelope) without applying them;
        or, with ``drop_connection``, close the connection without any response."""
        with self._lock:
            self._faults.append(
                _Rule(method.upper(), re.compile(path_regex), times, status, dict(headers or {}), body, drop_connection)
            )

    def lose_response_after_apply(self, method: str, path_regex: str, times: int = 1) -> None:
        """Apply the next ``times`` matching requests (e.g. create the job), then drop the
        connection without a response: the ambiguous outcome a client sees as a connection error."""
        with self._lock:
            self._lost.append(_Rule(method.upper(), re.compile(path_regex), times))

    def set_responder(self, model: str, fn: Responder | dict[str, str] | None) -> None:
        """Script chat completions for ``model``: a callable ``fn(messages, body) -> str``, a dict
        from last user message to answer (normalised; unknown prompts fall back to the default),
        or None to restore the default (memorising for fine-tuned models, echo for base models)."""
        with self._lock:
            if fn is None:
                self._responders.pop(model, None)
            else:
                self._responders[model] = fn

    def register_model(self, model: str, owned_by: str = "system") -> None:
        """Make an extra model id known (base models are preregistered)."""
        with self._lock:
            self._models[model] = {"id": model, "object": "model", "created": self._clock, "owned_by": owned_by}

    def advance(self, job_id: str, ticks: int = 1) -> dict:
        """Advance a job by hand (useful with ``auto_advance_on_poll=False``); returns the job."""
        with self._lock:
            job = self._job(job_id)
            for _ in range(ticks):
                self._tick(job)
            return copy.deepcopy(job.obj)

    def add_event(
        self, job_id: str, message: str, *, level: str = "info", type_: str = "message", data: Any = None
    ) -> None:
        """Append an arbitrary event to a job (e.g. to test how clients treat odd messages)."""
        with self._lock:
            self._event(self._job(job_id), message, level=level, type_=type_, data={} if data is None else data)

    def fail(self, job_id: str, code: str, message: str, param: str | None = None) -> dict:
        """Fail a non-terminal job now with this API error."""
        with self._lock:
            job = self._job(job_id)
            if job.obj["status"] in TERMINAL_STATUSES:
                raise ValueError(f"job {job_id} is already {job.obj['status']}")
            self._fail(job, code, message, param)
            return copy.deepcopy(job.obj)

    def pause(self, job_id: str) -> dict:
        """Control-plane equivalent of ``POST …/pause`` (needs ``config.allow_paused_status``)."""
        with self._lock:
            return copy.deepcopy(self._do_pause(self._job(job_id)))

    def resume(self, job_id: str) -> dict:
        """Control-plane equivalent of ``POST …/resume``."""
        with self._lock:
            return copy.deepcopy(self._do_resume(self._job(job_id)))

    @property
    def clock(self) -> int:
        """The fake's Unix clock (int seconds); advances by one per event so timestamps increase."""
        with self._lock:
            return self._clock

    @clock.setter
    def clock(self, value: int) -> None:
        with self._lock:
            self._clock = int(value)

    @property
    def jobs(self) -> dict[str, dict]:
        """Snapshot of every job, ``{job_id: job JSON}``, in creation order."""
        with self._lock:
            return {jid: copy.deepcopy(job.obj) for jid, job in self._jobs.items()}

    @property
    def files(self) -> dict[str, dict]:
        """Snapshot of every stored file object, ``{file_id: FileObject JSON}``."""
        with self._lock:
            return {fid: copy.deepcopy(f.obj) for fid, f in self._files.items()}

    def file_bytes(self, file_id: str) -> bytes:
        """The stored bytes of a file."""
        with self._lock:
            return self._files[file_id].data

    def job_events(self, job_id: str) -> list[dict]:
        """All events of a job, oldest first."""
        with self._lock:
            return copy.deepcopy(self._job(job_id).events)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_matching(self, method: str, path_regex: str) -> list[RecordedRequest]:
        """Recorded requests with this method whose path matches ``path_regex`` (``re.search``)."""
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method.upper() and pattern.search(r.path)]

    # ------------------------------------------------------------------ helpers
    def _now(self) -> int:
        self._clock += 1
        return self._clock

    def _new_id(self, prefix: str, n: int) -> str:
        return prefix + "".join(self._rng.choice(_BASE62) for _ in range(n))

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise _ApiError(
                404, f"Could not find fine-tune: {job_id}", param="fine_tune_id", code="fine_tune_not_found"
            )
        return job

    def _file(self, file_id: str) -> _StoredFile:
        stored = self._files.get(file_id)
        if stored is None:
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def _validate(self, model: type, obj: dict, what: str) -> None:
        """Self-validation with the SDK's own pydantic model (raises on a fake bug)."""
        if not self.config.self_validate:
            return
        if model is FineTuningJob and obj.get("status") == "paused" and self.config.allow_paused_status:
            obj = {**obj, "status": "running"}  # the one deviation: the SDK has no "paused" status
        try:
            model.model_validate(obj)
        except Exception as err:  # noqa: BLE001 - any validation failure is a fake bug to report
            raise _SelfValidationError(f"{what}: {err}") from err

    def _list_envelope(self, items: list[dict], model: type, has_more: bool, *, ids: bool = False) -> dict:
        for item in items:
            self._validate(model, item, model.__name__)
        envelope: dict[str, Any] = {"object": "list", "data": items, "has_more": has_more}
        if ids:
            envelope["first_id"] = items[0]["id"] if items else None
            envelope["last_id"] = items[-1]["id"] if items else None
        return envelope

    @staticmethod
    def _limit(query: dict[str, str], default: int) -> int:
        raw = query.get("limit")
        if raw is None:
            return default
        try:
            limit = int(raw)
        except ValueError:
            raise _ApiError(400, f"Invalid 'limit': {raw!r} is not an integer.", param="limit") from None
        if limit < 1:
            raise _ApiError(400, "Invalid 'limit': must be at least 1.", param="limit")
        return limit

    def _event(self, job: _Job, message: str, *, level: str = "info", type_: str = "message", data: Any = ...) -> None:
        event = {
            "object": "fine_tuning.job.event",
            "id": self._new_id("ftevent-", 24),
            "created_at": self._now(),
            "level": level,
            "message": message,
            "type": type_,
            "data": {} if data is ... else data,
        }
        self._validate(FineTuningJobEvent, event, "FineTuningJobEvent")
        job.events.append(event)

    # ------------------------------------------------------------------ HTTP entry point
    def _handle(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        path = unquote(split.path)
        query = parse_qsl(split.query, keep_blank_values=True)
        body = handler.read_body()
        headers = {k.lower(): v for k, v in handler.headers.items()}
        auth = headers.pop("authorization", None)
        if auth is not None:
            headers["authorization"] = "Bearer ***"  # never keep the key, not even in a test log
        record = RecordedRequest(handler.command, path, query, headers, body)
        with self._lock:
            self._requests.append(record)
        response = self._respond(handler.command, path, query, headers, body, auth, record)
        if response is None:  # a dropped connection
            handler.drop()
            return
        record.status = response.status
        handler.send(response)

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
        try:
            self._check_auth(auth)
            with self._lock:
                fault = next((r for r in self._faults if r.matches(method, path)), None)
                if fault is not None:
                    fault.remaining -= 1
            if fault is not None:
                record.note = "dropped" if fault.drop_connection else "injected"
                if fault.drop_connection:
                    return None
                payload = fault.body if fault.body is not None else _error_body(fault.status)
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                return _Response(fault.status, raw, headers=dict(fault.headers))
            if path == "/v1/chat/completions":
                # Chat answers touch no job state; answering them outside the global lock lets
                # concurrent requests overlap (a slow scripted responder must not serialise them).
                with self._lock:
                    self.chat_in_flight += 1
                    self.max_chat_in_flight = max(self.max_chat_in_flight, self.chat_in_flight)
                try:
                    if self.config.chat_latency_s:
                        time.sleep(self.config.chat_latency_s)
                    response = self._dispatch(method, path, dict(query), headers, body)
                finally:
                    with self._lock:
                        self.chat_in_flight -= 1
            with self._lock:
                if path != "/v1/chat/completions":
                    response = self._dispatch(method, path, dict(query), headers, body)
                lost = next((r for r in self._lost if r.matches(method, path)), None)
                if lost is not None:
                    lost.remaining -= 1
                    record.note = "lost_after_apply"
                    return None
            return response
        except _ApiError as err:
            return _Response(err.status, json.dumps(err.body).encode(), headers=err.headers)
        except _SelfValidationError as err:
            self.validation_errors.append(str(err))
            body_ = {
                "error": {
                    "message": f"fake self-validation failed: {err}",
                    "type": "server_error",
                    "param": None,
                    "code": "fake_self_validation",
                }
            }
            return _Response(500, json.dumps(body_).encode(), headers={"x-should-retry": "false"})
        except Exception as err:  # noqa: BLE001 - a crash in the fake (or a scripted responder)
            # why: an unanswered request looks like a network error and would be retried; answer
            # 500 without retry and record it, so the test fixture's validation_errors check fails
            self.validation_errors.append(f"fake internal error on {method} {path}: {err!r}")
            body_ = {
                "error": {
                    "message": f"fake internal error: {type(err).__name__}",
                    "type": "server_error",
                    "param": None,
                    "code": "fake_internal_error",
                }
            }
            return _Response(500, json.dumps(body_).encode(), headers={"x-should-retry": "false"})

    def _check_auth(self, auth: str | None) -> None:
        scheme, _, token = (auth or "").partition(" ")
        expected = self.config.api_key
        if scheme != "Bearer" or not token.strip() or (expected is not None and token != expected):
            # [I] the real message includes a masked key; we include none of it on purpose
            raise _ApiError(
                401,
                "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> _Response:
        if not path.startswith("/v1/"):
            raise _ApiError(404, f"Invalid URL ({method} {path})")
        sub = path[len("/v1") :]
        path_known = False
        for route_method, pattern, fn in self._routes:
            match = pattern.fullmatch(sub)
            if match is None:
                continue
            path_known = True
            if route_method == method:
                return fn(query=query, headers=headers, body=body, **match.groupdict())
        if path_known:
            raise _ApiError(405, f"Method {method} not allowed for {path}")
        raise _ApiError(404, f"Invalid URL ({method} {path})")

    @staticmethod
    def _json_body(body: bytes) -> dict:
        try:
            parsed = json.loads(body or b"{}")
        except ValueError:
            raise _ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(parsed, dict):
            raise _ApiError(400, "The request body must be a JSON object.")
        return parsed

    # ------------------------------------------------------------------ files
    def _store_file(self, filename: str, purpose: str, data: bytes, expires_at: int | None = None) -> dict:
        obj = {
            "id": self._new_id("file-", 22),
            "object": "file",
            "bytes": len(data),
            "created_at": self._now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": expires_at,
        }
        self._validate(FileObject, obj, "FileObject")
        self._files[obj["id"]] = _StoredFile(obj, data)
        return obj

    def _create_file(self, *, headers: dict[str, str], body: bytes, **_: Any) -> _Response:
        fields = _parse_multipart(headers.get("content-type", ""), body)
        if "file" not in fields:
            raise _ApiError(400, "Missing required parameter: 'file'.", param="file")
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose not in FILE_PURPOSES:
            raise _ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        expires_at = None
        if "expires_after[seconds]" in fields or "expires_after[anchor]" in fields:
            anchor = fields.get("expires_after[anchor]", (None, b""))[1].decode()
            try:
                seconds = int(fields.get("expires_after[seconds]", (None, b""))[1])
            except ValueError:
                seconds = -1
            if anchor != "created_at" or not 3600 <= seconds <= 2_592_000:
                raise _ApiError(
                    400,
                    "Invalid 'expires_after': anchor must be 'created_at' and seconds between 3600 and 2592000.",
                    param="expires_after",
                )
            expires_at = self._clock + 1 + seconds
        filename, data = fields["file"]
        return _json_response(self._store_file(filename or "upload", purpose, data, expires_at))

    def _list_files(self, *, query: dict[str, str], **_: Any) -> _Response:
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _ApiError(400, "Invalid 'order': must be 'asc' or 'desc'.", param="order")
        items = [f.obj for f in self._files.values() if query.get("purpose") in (None, f.obj["purpose"])]
        if order == "desc":
            items.reverse()
        page, has_more = _paginate(copy.deepcopy(items), query.get("after"), self._limit(query, 10000))
        return _json_response(self._list_envelope(page, FileObject, has_more, ids=True))

    def _get_file(self, *, fid: str, **_: Any) -> _Response:
        return _json_response(copy.deepcopy(self._file(fid).obj))

    def _delete_file(self, *, fid: str, **_: Any) -> _Response:
        self._file(fid)
        del self._files[fid]
        obj = {"id": fid, "object": "file", "deleted": True}
        self._validate(FileDeleted, obj, "FileDeleted")
        return _json_response(obj)

    def _file_content(self, *, fid: str, **_: Any) -> _Response:
        return _Response(200, self._file(fid).data, content_type="application/octet-stream")

    # ------------------------------------------------------------------ fine-tuning jobs
    def _training_file_param(self, file_id: Any, param: str) -> str:
        if not isinstance(file_id, str) or not file_id:
            raise _ApiError(400, f"Missing required parameter: '{param}'.", param=param)
        stored = self._files.get(file_id)
        if stored is None:
            raise _ApiError(400, f"Invalid file ID: {file_id}. The file does not exist.", param=param)
        if stored.obj["purpose"] != "fine-tune":
            raise _ApiError(
                400, f"File {file_id} has purpose {stored.obj['purpose']!r}; expected 'fine-tune'.", param=param
            )
        return file_id

    def _check_file_method(self, file_id: str, method_type: str, param: str) -> None:
        """400 when the file is in the other method's line format (a chat file for a DPO job,
        a preference file for a supervised one) [I: see the module docstring]."""
        found = _line_method(self._files[file_id].data)
        if found is None or found[1] == method_type:
            return
        line_no, line_method = found
        kind = param.split("_")[0]
        raise _ApiError(
            400,
            f"Invalid {kind} file {file_id} for a {method_type} fine-tuning job: every line must have "
            f"{METHOD_LINE_FORMATS[method_type]}, but line {line_no} has {METHOD_LINE_FORMATS[line_method]}.",
            param=param,
            code=f"invalid_{param}",
        )

    @staticmethod
    def _check_hyperparameters(hp: Any) -> dict:
        if hp is None:
            return {}
        if not isinstance(hp, dict):
            raise _ApiError(400, "Invalid 'hyperparameters': expected an object.", param="hyperparameters")
        limits = {"n_epochs": (1, 50, int), "batch_size": (1, 256, int)}
        for name, (low, high, kind) in limits.items():
            value = hp.get(name, "auto")
            if value != "auto" and (isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high):
                raise _ApiError(400, f"Invalid '{name}': must be 'auto' or an integer in [{low}, {high}].", param=name)
        for name in ("learning_rate_multiplier", "beta"):
            value = hp.get(name, "auto")
            if value != "auto" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise _ApiError(400, f"Invalid '{name}': must be 'auto' or a number > 0.", param=name)
        return hp

    def _create_job(self, *, body: bytes, **_: Any) -> _Response:
        req = self._json_body(body)
        model = req.get("model")
        if not isinstance(model, str) or not model:
            raise _ApiError(400, "Missing required parameter: 'model'.", param="model")
        if model not in self._models:
            raise _ApiError(
                400,
                f"Model {model} is not available for fine-tuning or does not exist.",
                param="model",
                code="model_not_available",
            )
        training_file = self._training_file_param(req.get("training_file"), "training_file")
        validation_file = req.get("validation_file")
        if validation_file is not None:
            validation_file = self._training_file_param(validation_file, "validation_file")
        suffix = req.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not 1 <= len(suffix) <= 64):
            raise _ApiError(400, "Invalid 'suffix': must be a string of 1 to 64 characters.", param="suffix")
        seed = req.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _ApiError(400, "Invalid 'seed': must be an integer.", param="seed")
        metadata = req.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict) or len(metadata) > 16:
                raise _ApiError(400, "Invalid 'metadata': at most 16 key-value pairs.", param="metadata")
            for key, value in metadata.items():
                if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
                    raise _ApiError(
                        400,
                        "Invalid 'metadata': keys are at most 64 characters and values "
                        "strings of at most 512 characters.",
                        param="metadata",
                    )
        method = req.get("method")
        top_hp = self._check_hyperparameters(req.get("hyperparameters"))
        if method is None:
            method = {"type": "supervised", "supervised": {"hyperparameters": top_hp}}
        if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo", "reinforcement"):
            raise _ApiError(
                400, "Invalid 'method.type': must be supervised, dpo or reinforcement.", param="method.type"
            )
        method_type = method["type"]
        section = method.get(method_type) or {}
        if method_type == "reinforcement" and not section.get("grader"):
            raise _ApiError(
                400, "Missing required parameter: 'method.reinforcement.grader'.", param="method.reinforcement.grader"
            )
        hp = self._check_hyperparameters(section.get("hyperparameters")) or top_hp
        if method_type in METHOD_LINE_FORMATS:
            self._check_file_method(training_file, method_type, "training_file")
            if validation_file is not None:
                self._check_file_method(validation_file, method_type, "validation_file")
        resolved = {
            "n_epochs": hp.get("n_epochs", "auto"),
            "batch_size": hp.get("batch_size", "auto"),
            "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto"),
        }
        echoed_hp = {**hp, **resolved}
        if method_type == "dpo":
            echoed_hp["beta"] = hp.get("beta", "auto")  # shown like the other knobs, "auto" until running
        method_echo = {"type": method_type, method_type: {**section, "hyperparameters": echoed_hp}}
        outcome = (metadata or {}).get("_fake_outcome") or (
            self._outcomes.popleft() if self._outcomes else self.config.default_outcome
        )
        if outcome not in OUTCOMES:
            raise _ApiError(400, f"Invalid fake outcome {outcome!r}.", param="metadata")
        job_id = self._new_id("ftjob-", 24)
        obj = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": model,
            "created_at": self._now(),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": self.config.organization_id,
            "result_files": [],
            "status": "validating_files",
            "validation_file": validation_file,
            "training_file": training_file,
            "hyperparameters": resolved,
            "trained_tokens": None,
            "error": None,
            "seed": seed if seed is not None else self._rng.randrange(1, 2**31),
            "estimated_finish": None,
            "integrations": list(req.get("integrations") or []),
            "metadata": metadata,
            "method": method_echo,
            "user_provided_suffix": suffix,
        }
        job = _Job(obj, outcome)
        self._jobs[job_id] = job
        self._event(job, f"Created fine-tuning job: {job_id}")
        files = f"Validating training file: {training_file}"
        if validation_file:
            files += f" and validation file: {validation_file}"
        self._event(job, files)
        self._validate(FineTuningJob, obj, "FineTuningJob")
        return _json_response(copy.deepcopy(obj))

    def _list_jobs(self, *, query: dict[str, str], **_: Any) -> _Response:
        jobs = [job.obj for job in reversed(self._jobs.values())]  # newest first
        if self.config.honor_metadata_filter:
            if query.get("metadata") == "null":
                jobs = [j for j in jobs if not j["metadata"]]
            wanted = {
                k[len("metadata[") : -1]: v for k, v in query.items() if k.startswith("metadata[") and k.endswith("]")
            }
            if wanted:
                jobs = [j for j in jobs if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())]
        page, has_more = _paginate(copy.deepcopy(jobs), query.get("after"), self._limit(query, 20))
        return _json_response(self._list_envelope(page, FineTuningJob, has_more))

    def _get_job(self, *, jid: str, **_: Any) -> _Response:
        job = self._job(jid)
        if self.config.auto_advance_on_poll:
            self._tick(job)
        self._validate(FineTuningJob, job.obj, "FineTuningJob")
        return _json_response(copy.deepcopy(job.obj))

    def _cancel_job(self, *, jid: str, **_: Any) -> _Response:
        job = self._job(jid)
        status = job.obj["status"]
        if status in TERMINAL_STATUSES:
            # [I] real text unverified; 400 (not 409) on purpose: the SDK retries 409
            raise _ApiError(400, f"Cannot cancel a job that is already {status}.", param="fine_tuning_job_id")
        job.obj.update(status="cancelled", finished_at=self._clock + 1, estimated_finish=None)
        self._event(job, "Fine-tuning job cancelled")  # [I] real text unverified
        self._validate(FineTuningJob, job.obj, "FineTuningJob")
        return _json_response(copy.deepcopy(job.obj))

    def _do_pause(self, job: _Job) -> dict:
        if not self.config.allow_paused_status:
            raise _ApiError(
                400,
                "Pausing is disabled in this fake (config.allow_paused_status=False): 'paused' "
                "is not in the SDK's status Literal and breaks strict clients.",
            )
        if job.obj["status"] != "running":
            raise _ApiError(400, f"Cannot pause a job that is {job.obj['status']}.")
        job.obj["status"] = "paused"
        self._event(job, "Fine-tuning job paused")  # [I]
        return job.obj

    def _do_resume(self, job: _Job) -> dict:
        if job.obj["status"] != "paused":
            raise _ApiError(400, f"Cannot resume a job that is {job.obj['status']}.")
        job.obj["status"] = "running"
        self._event(job, "Fine-tuning job resumed")  # [I]
        return job.obj

    def _pause_job(self, *, jid: str, **_: Any) -> _Response:
        obj = self._do_pause(self._job(jid))
        self._validate(FineTuningJob, obj, "FineTuningJob")
        return _json_response(copy.deepcopy(obj))

    def _resume_job(self, *, jid: str, **_: Any) -> _Response:
        obj = self._do_resume(self._job(jid))
        self._validate(FineTuningJob, obj, "FineTuningJob")
        return _json_response(copy.deepcopy(obj))

    def _list_events(self, *, jid: str, query: dict[str, str], **_: Any) -> _Response:
        job = self._job(jid)
        if self.config.auto_advance_on_poll:
            self._tick(job)
        events = list(reversed(job.events))  # newest first; after=<id> pages towards older events
        page, has_more = _paginate(copy.deepcopy(events), query.get("after"), self._limit(query, 20))
        return _json_response(self._list_envelope(page, FineTuningJobEvent, has_more))

    def _list_checkpoints(self, *, jid: str, query: dict[str, str], **_: Any) -> _Response:
        job = self._job(jid)
        checkpoints = list(reversed(job.checkpoints))
        page, has_more = _paginate(copy.deepcopy(checkpoints), query.get("after"), self._limit(query, 10))
        return _json_response(self._list_envelope(page, FineTuningJobCheckpoint, has_more, ids=True))

    # ------------------------------------------------------------------ state machine
    def _tick(self, job: _Job) -> None:
        status = job.obj["status"]
        if status == "validating_files":
            self._tick_validate(job)
        elif status == "queued":
            self._tick_start(job)
        elif status == "running" and job.outcome != "stall":
            self._tick_train(job)
        # paused and terminal jobs do not move

    def _fail(self, job: _Job, code: str, message: str, param: str | None) -> None:
        self._event(job, message, level="error")
        job.obj.update(
            status="failed",
            finished_at=self._clock,
            estimated_finish=None,
            error={"code": code, "message": message, "param": param},
        )

    def _tick_validate(self, job: _Job) -> None:
        method = job.obj["method"]["type"]
        train, error = _validate_training_jsonl(
            self._files[job.obj["training_file"]].data, method=method, min_examples=self.config.min_training_examples
        )
        if error is None and job.outcome == "fail_validation":
            error = "Invalid file format. (forced by the fake's fail_validation outcome)"
        if error is not None:
            self._fail(
                job,
                "invalid_training_file",
                f"The job failed due to an invalid training file. {error}",
                "training_file",
            )
            return
        validation: list[dict] = []
        if job.obj["validation_file"]:
            validation, error = _validate_training_jsonl(
                self._files[job.obj["validation_file"]].data, method=method, min_examples=1
            )
            if error is not None:
                self._fail(
                    job,
                    "invalid_validation_file",
                    f"The job failed due to an invalid validation file. {error}",
                    "validation_file",
                )
                return
        job.train_examples, job.validation_examples = train, validation
        job.obj["status"] = "queued"
        self._event(job, "Files validated, moving job to queued state")

    def _tick_start(self, job: _Job) -> None:
        hp = job.obj["hyperparameters"]
        n_epochs = self.config.default_n_epochs if hp["n_epochs"] == "auto" else hp["n_epochs"]
        batch_size = self.config.default_batch_size if hp["batch_size"] == "auto" else hp["batch_size"]
        lrm = (
            self.config.default_learning_rate_multiplier
            if hp["learning_rate_multiplier"] == "auto"
            else hp["learning_rate_multiplier"]
        )
        resolved = {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": lrm}
        job.obj["hyperparameters"] = resolved
        method = job.obj["method"]
        section_hp = {**method[method["type"]]["hyperparameters"], **resolved}
        if method["type"] == "dpo" and section_hp.get("beta", "auto") == "auto":
            section_hp["beta"] = self.config.default_dpo_beta
        method[method["type"]]["hyperparameters"] = section_hp
        steps_per_epoch = math.ceil(len(job.train_examples) / batch_size)
        suffix = job.obj.get("user_provided_suffix") or ""
        final_model = f"ft:{job.obj['model']}:{self.config.org_slug}:{suffix}:{self._new_id('', 8)}"
        job.plan = _Plan(
            n_epochs,
            batch_size,
            steps_per_epoch,
            steps_per_epoch * n_epochs,
            max(1, min(self.config.ticks_per_epoch, steps_per_epoch)),
            final_model,
        )
        job.obj["status"] = "running"
        job.obj["estimated_finish"] = self._clock + 1 + job.plan.total_ticks * 60
        self._event(job, "Fine-tuning job started", data=None)

    def _tick_train(self, job: _Job) -> None:
        plan = job.plan
        assert plan is not None
        job.tick += 1
        step = plan.step_at(job.tick)
        final = job.tick >= plan.total_ticks
        progress = step / plan.total_steps
        # a deterministic, decreasing loss curve with a little seeded noise
        train_loss = round(0.15 + 1.85 * math.exp(-4 * progress) + self._rng.uniform(-0.02, 0.02), 4)
        train_acc = round(min(1.0, 0.45 + 0.5 * progress), 4)
        data: dict[str, Any] = {
            "step": step,
            "total_steps": plan.total_steps,
            "train_loss": train_loss,
            "train_mean_token_accuracy": train_acc,
        }
        message = f"Step {step}/{plan.total_steps}: training loss={train_loss:.2f}"
        row: dict[str, Any] = {
            "step": step,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "valid_loss": "",
            "valid_mean_token_accuracy": "",
        }
        if job.validation_examples:
            valid_loss, valid_acc = round(train_loss + 0.05, 4), round(max(0.0, train_acc - 0.03), 4)
            data.update(valid_loss=valid_loss, valid_mean_token_accuracy=valid_acc)
            message += f", validation loss={valid_loss:.2f}"
            row.update(valid_loss=valid_loss, valid_mean_token_accuracy=valid_acc)
            if final:
                data.update(full_valid_loss=round(valid_loss + 0.01, 4), full_valid_mean_token_accuracy=valid_acc)
                message += f", full validation loss={valid_loss + 0.01:.2f}"
        self._event(job, message, type_="metrics", data=data)
        job.metric_rows.append(row)
        if job.outcome == "fail_training" and job.tick >= min(plan.ticks_per_epoch + 1, plan.total_ticks):
            self._fail(
                job,
                "training_failed",  # [I] code vocabulary unverified
                f"Fine-tuning failed at step {step}: the training loss diverged (fake).",
                None,
            )
            return
        if job.tick % plan.ticks_per_epoch == 0:
            name = plan.final_model if final else f"{plan.final_model}:ckpt-step-{step}"
            checkpoint = {
                "object": "fine_tuning.job.checkpoint",
                "id": self._new_id("ftckpt_", 24),
                "created_at": self._now(),
                "fine_tuned_model_checkpoint": name,
                "fine_tuning_job_id": job.obj["id"],
                "step_number": step,
                "metrics": {k: float(v) for k, v in data.items() if k != "total_steps"},
            }
            self._validate(FineTuningJobCheckpoint, checkpoint, "FineTuningJobCheckpoint")
            job.checkpoints.append(checkpoint)
            del job.checkpoints[: -self.config.max_checkpoints]  # the API keeps only the last few
            self._event(job, f"Checkpoint created at step {step} with Snapshot ID: {name}")
        if final:
            self._succeed(job)

    def _succeed(self, job: _Job) -> None:
        plan = job.plan
        assert plan is not None
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULT_CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(job.metric_rows)
        csv_bytes = buffer.getvalue().encode()
        content = base64.b64encode(csv_bytes) if self.config.result_file_base64 else csv_bytes
        result = self._store_file("step_metrics.csv", "fine-tune-results", content)
        memory = {}
        for example in job.train_examples + job.validation_examples:
            messages = _learned_conversation(example)
            answers = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
            prompt = _last_user_text(messages[: answers[-1]])
            if prompt:
                memory[_normalise(prompt)] = _content_text(messages[answers[-1]].get("content"))
        for name in [plan.final_model] + [c["fine_tuned_model_checkpoint"] for c in job.checkpoints]:
            self._memory[name] = memory
            self._models[name] = {
                "id": name,
                "object": "model",
                "created": self._clock,
                "owned_by": self.config.organization_id,
            }
        self._event(job, f"New fine-tuned model created: {plan.final_model}")
        self._event(job, "The job has successfully completed")
        job.obj.update(
            status="succeeded",
            fine_tuned_model=plan.final_model,
            finished_at=self._clock,
            estimated_finish=None,
            result_files=[result["id"]],
            trained_tokens=sum(_example_tokens(e) for e in job.train_examples) * plan.n_epochs,
        )

    # ------------------------------------------------------------------ models and chat
    def _model(self, model: str) -> dict:
        found = self._models.get(model)
        if found is None:
            raise _ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return found

    def _list_models(self, **_: Any) -> _Response:
        items = copy.deepcopy(list(self._models.values()))
        for item in items:
            self._validate(Model, item, "Model")
        return _json_response({"object": "list", "data": items})

    def _get_model(self, *, model: str, **_: Any) -> _Response:
        obj = copy.deepcopy(self._model(model))
        self._validate(Model, obj, "Model")
        return _json_response(obj)

    def _delete_model(self, *, model: str, **_: Any) -> _Response:
        self._model(model)
        if model not in self._memory:
            raise _ApiError(
                403,
                f"You are not allowed to delete the model {model}.",
                type_="invalid_request_error",
                param="model",
                code="model_not_deletable",
            )  # [I]
        del self._models[model]
        del self._memory[model]
        obj = {"id": model, "object": "model", "deleted": True}
        self._validate(ModelDeleted, obj, "ModelDeleted")
        return _json_response(obj)

    def _answer(self, model: str, messages: list[dict], req: dict) -> str:
        responder = self._responders.get(model)
        prompt = _last_user_text(messages)
        if callable(responder):
            return str(responder(messages, req))
        if isinstance(responder, dict):
            scripted = {_normalise(k): v for k, v in responder.items()}
            if _normalise(prompt) in scripted:
                return scripted[_normalise(prompt)]
        memory = self._memory.get(model)
        if memory is not None and _normalise(prompt) in memory:
            return memory[_normalise(prompt)]
        return prompt  # the base policy: a deterministic echo of the last user message

    @staticmethod
    def _shape_for_format(content: str, response_format: Any) -> str:
        """json_object / json_schema: keep JSON answers, wrap plain text in an object."""
        if not isinstance(response_format, dict) or response_format.get("type") not in ("json_object", "json_schema"):
            return content
        try:
            json.loads(content)
            return content
        except ValueError:
            pass
        key = "answer"
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        props = schema.get("properties") or {}
        if len(props) == 1:
            key = next(iter(props))
        return json.dumps({key: content})

    def _chat_completion(self, *, body: bytes, **_: Any) -> _Response:
        req = self._json_body(body)
        model, messages = req.get("model"), req.get("messages")
        if not isinstance(model, str) or not model:
            raise _ApiError(400, "Missing required parameter: 'model'.", param="model")
        if not isinstance(messages, list) or not messages:
            raise _ApiError(400, "Missing required parameter: 'messages'.", param="messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
                raise _ApiError(400, f"Invalid value for 'messages[{i}].role'.", param=f"messages[{i}].role")
        self._model(model)
        n = req.get("n") or 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
            raise _ApiError(400, "Invalid 'n': must be an integer in [1, 128].", param="n")
        content = self._shape_for_format(self._answer(model, messages, req), req.get("response_format"))
        max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
        finish_reason = "stop"
        words = content.split()
        if isinstance(max_tokens, int) and len(words) > max_tokens:
            content, finish_reason = " ".join(words[:max_tokens]), "length"
        prompt_tokens = sum(_count_tokens(_content_text(m.get("content"))) for m in messages)
        completion_tokens = _count_tokens(content) * n
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        cid, created = self._new_id("chatcmpl-", 29), self._now()
        if req.get("stream"):
            return self._stream(cid, created, model, content, finish_reason, n, usage, req)
        completion = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
                for i in range(n)
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        self._validate(ChatCompletion, completion, "ChatCompletion")
        return _json_response(completion)

    def _stream(
        self, cid: str, created: int, model: str, content: str, finish_reason: str, n: int, usage: dict, req: dict
    ) -> _Response:
        def chunk(choices: list[dict], **extra: Any) -> dict:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
                **extra,
            }
            self._validate(ChatCompletionChunk, obj, "ChatCompletionChunk")
            return obj

        pieces = re.findall(r"\S+\s*|\s+", content)
        chunks = []
        for i in range(n):
            chunks.append(
                chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
            chunks += [
                chunk([{"index": i, "delta": {"content": p}, "logprobs": None, "finish_reason": None}]) for p in pieces
            ]
            chunks.append(chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish_reason}]))
        if (req.get("stream_options") or {}).get("include_usage"):
            chunks.append(chunk([], usage=usage))
        payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return _Response(200, payload.encode(), content_type="text/event-stream")


class _SelfValidationError(Exception):
    """A response the SDK's own models reject: a bug in the fake."""


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP adapter; all logic lives in :class:`FakeOpenAI`."""

    fake: FakeOpenAI  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API; every response has a Content-Length
    timeout = 30  # idle keep-alive connections are closed eventually

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.fake._handle(self)

    do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    def setup(self) -> None:
        super().setup()
        # why: headers and body go out in two writes; without NODELAY, Nagle + delayed ACK
        # stall every keep-alive response by ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("x-request-id", "req_" + "".join(random.choices("0123456789abcdef", k=32)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(response.body)

    def drop(self) -> None:
        """Close the connection without writing a single byte of response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean


def examples_jsonl(examples: Iterable[tuple[str, str]], *, system: str | None = None) -> bytes:
    """Helper for tests: build chat fine-tuning JSONL from (user, assistant) pairs."""
    lines = []
    for user, assistant in examples:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


def preference_jsonl(examples: Iterable[tuple[str, str, str]], *, system: str | None = None) -> bytes:
    """Helper for tests: build DPO preference JSONL from (user, preferred, non-preferred) triples."""
    lines = []
    for user, preferred, non_preferred in examples:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        line = {
            "input": {"messages": messages},
            "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
        }
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()
