"""A deterministic, in-process fake of the parts of the Together AI API the ``together`` SDK (3.1)
calls for fine-tuning, plus its OpenAI-compatible chat endpoint.

The real ``together`` SDK talks to it over HTTP on ``127.0.0.1:<ephemeral>`` (and ``openai``
for chat), so the SDK's request building, redirects, retries and response models are all
exercised::

    with FakeTogether(api_key="tg-test-...") as fake:
        client = together.Together(base_url=fake.root_url, api_key="tg-test-...", max_retries=2)
        chat = openai.OpenAI(base_url=fake.base_url, api_key="tg-test-...")   # <root>/v1

It builds on :class:`~ft_pipeline_tests.fakes.openai_server.FakeOpenAI` (lifecycle, request log,
fault injection, auth, self-validation, and ``/v1/chat/completions`` + ``/v1/models`` with the
memorising fine-tuned models and echoing base models) and replaces the fine-tuning routes with
Together's, all from the SDK's source:

* files: ``POST /v1/files`` answers ``302`` with ``Location`` (this server's ``/_storage/<id>``)
  and ``X-Together-File-Id``; the SDK ``PUT``s the bytes there (without the API key), then ``POST
  /v1/files/{id}/preprocess``; ``GET /v1/files/{id}`` validates on its first call
  (``processing_status`` ``QUEUED`` -> ``COMPLETED`` or ``INVALID_FORMAT`` with a
  ``validation_report``): every line a chat example (``CONVERSATION``) or every line an OpenAI
  preference example (``PREFERENCE_OPENAI``), with the OpenAI fake's line rules;
* fine-tunes: ``GET /v1/fine-tunes/models/limits``, ``POST /v1/fine-tunes/estimate-price``,
  ``POST/GET /v1/fine-tunes``, ``GET /v1/fine-tunes/{id}`` (one *tick* per call),
  ``POST …/cancel``, ``GET …/events`` (oldest first, no ids), ``GET …/checkpoints``,
  ``GET …/metrics``.

Job state machine (one tick per ``retrieve``; :meth:`FakeTogether.advance` ticks by hand)::

    pending -> error (a training file of the other method's format, or outcome fail_validation)
    pending -> queued -> running -> (ticks_per_epoch ticks per epoch) -> uploading -> completed
    running -> error (outcome "fail_training", in epoch 2)
    running stays running forever (outcome "stall")
    any live status -> cancelled (on cancel)

The output model name is known from creation on: ``<user>/<base name>-<suffix>-<6 hex>`` [I];
it answers chat once the job completed, recalling the training answers (a job
``from_checkpoint`` also recalls its parent's). Choices where the real API is unverified are
marked ``[I]``: error envelopes (the OpenAI fake's), the output name's shape, the metric names
(``global_step``, ``train_loss``, ``eval_loss``), ``token_count`` = training tokens x epochs,
cancel being immediate, and ``user_error`` never being used.

Extra fault injection besides the base's ``inject`` / ``lose_response_after_apply``:
:meth:`FakeTogether.error_after_apply` applies a request (creates the job), then answers 5xx.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import together
from together.lib.types.fine_tuning import FinetuneResponse as CreatedJob
from together.types import FileResponse, FinetuneModelLimits
from together.types.fine_tuning_cancel_response import FineTuningCancelResponse
from together.types.fine_tuning_list_checkpoints_response import FineTuningListCheckpointsResponse
from together.types.fine_tuning_list_events_response import FineTuningListEventsResponse
from together.types.fine_tuning_list_metrics_response import FineTuningListMetricsResponse
from together.types.fine_tuning_list_response import FineTuningListResponse
from together.types.finetune_response import FinetuneResponse

from ft_pipeline_tests.fakes.openai_server import (
    OUTCOMES,
    FakeConfig,
    FakeOpenAI,
    RecordedRequest,
    _ApiError,
    _content_text,
    _count_tokens,
    _example_messages,
    _json_response,
    _last_user_text,
    _learned_conversation,
    _line_method,
    _normalise,
    _parse_multipart,
    _Response,
    _Rule,
    _validate_training_jsonl,
    examples_jsonl,
    preference_jsonl,
)

__all__ = ["FakeTogether", "TogetherFakeConfig", "examples_jsonl", "preference_jsonl"]

#: Base models the fake fine-tunes and answers (the SDK's examples name these).
TOGETHER_BASE_MODELS = ("Qwen/Qwen2-1.5B", "Qwen/Qwen2.5-7B", "mistralai/Mistral-7B-v0.1")
LIVE_STATUSES = {"pending", "queued", "running", "compressing", "uploading", "cancel_requested"}
TERMINAL_STATUSES = {"completed", "error", "user_error", "cancelled"}
#: A file's dataset format -> the training method that reads it.
FORMAT_METHOD = {"CONVERSATION": "sft", "PREFERENCE_OPENAI": "dpo"}
_EPOCH = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


@dataclass
class TogetherFakeConfig(FakeConfig):
    """:class:`FakeConfig` (``api_key``, ``ticks_per_epoch``, ``default_outcome``,
    ``auto_advance_on_poll``, ``min_training_examples``, ``self_validate``, ``chat_latency_s``)
    plus Together's knobs.

    Attributes:
        user: the account part of output model names and the jobs' ``user_id``. Default
            "fake-user".
        default_lora_rank: the model limits' ``default_rank``. Default 8.
        max_batch_size / min_batch_size: LoRA batch limits (``"max"`` resolves to the max).
            Defaults 32 / 8.
        echo_suffix: return the job's ``suffix`` (False mimics a server that does not, so a
            client must find the run key in the output model name). Default True.
        estimate_price_per_token: the price estimate's dollars per training token. Default 1e-6.
    """

    user: str = "fake-user"
    default_lora_rank: int = 8
    max_batch_size: int = 32
    min_batch_size: int = 8
    echo_suffix: bool = True
    estimate_price_per_token: float = 1e-6


@dataclass
class _TFile:
    obj: dict
    data: bytes
    examples: list[dict] = field(default_factory=list)


@dataclass
class _TJob:
    obj: dict
    outcome: str
    events: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    train: list[dict] = field(default_factory=list)
    inherited: list[dict] = field(default_factory=list)  # a from_checkpoint job's parent's examples
    validation: list[dict] = field(default_factory=list)
    tick: int = 0
    steps_per_epoch: int = 1
    ticks_per_epoch: int = 1


class FakeTogether(FakeOpenAI):
    """The fake Together server plus its control plane (see :class:`FakeOpenAI` for the shared
    part). Inspection: :attr:`jobs`, :attr:`files`, :meth:`job_events`, :attr:`requests`."""

    config: TogetherFakeConfig

    def __init__(self, config: TogetherFakeConfig | None = None, *, seed: int = 0, **config_overrides: Any):
        super().__init__(config or TogetherFakeConfig(), seed=seed, **config_overrides)
        self._tfiles: dict[str, _TFile] = {}
        self._storage: dict[str, bytes] = {}  # file id -> bytes PUT, before preprocess
        self._pending_uploads: dict[str, dict] = {}  # file id -> {"file_name", "purpose"}
        self._tjobs: dict[str, _TJob] = {}
        self._error_after: list[_Rule] = []
        for model in TOGETHER_BASE_MODELS:
            self.register_model(model)
        self._routes = [
            ("POST", re.compile(r"/files"), self._upload_url),
            ("GET", re.compile(r"/files"), self._list_tfiles),
            ("GET", re.compile(r"/files/(?P<fid>[^/]+)"), self._get_tfile),
            ("POST", re.compile(r"/files/(?P<fid>[^/]+)/preprocess"), self._preprocess),
            ("GET", re.compile(r"/fine-tunes/models/limits"), self._model_limits),
            ("POST", re.compile(r"/fine-tunes/estimate-price"), self._estimate_price),
            ("POST", re.compile(r"/fine-tunes"), self._create_tjob),
            ("GET", re.compile(r"/fine-tunes"), self._list_tjobs),
            ("GET", re.compile(r"/fine-tunes/(?P<jid>[^/]+)"), self._get_tjob),
            ("POST", re.compile(r"/fine-tunes/(?P<jid>[^/]+)/cancel"), self._cancel_tjob),
            ("GET", re.compile(r"/fine-tunes/(?P<jid>[^/]+)/events"), self._tjob_events),
            ("GET", re.compile(r"/fine-tunes/(?P<jid>[^/]+)/checkpoints"), self._tjob_checkpoints),
            ("GET", re.compile(r"/fine-tunes/(?P<jid>[^/]+)/metrics"), self._tjob_metrics),
            ("POST", re.compile(r"/chat/completions"), self._chat_completion),
            ("GET", re.compile(r"/models"), self._list_models),
            ("GET", re.compile(r"/models/(?P<model>.+)"), self._get_model),
        ]

    # ------------------------------------------------------------------ clients and control plane
    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>``: the ``together`` SDK's ``base_url`` (its paths start /v1).
        :attr:`base_url` (``<root>/v1``) is the OpenAI-compatible one, for ``openai.OpenAI``."""
        return self.base_url[: -len("/v1")]

    def together_client(
        self, api_key: str = "tg-test-fake", *, max_retries: int = 2, timeout: float = 5.0
    ) -> together.Together:
        """A ``together`` SDK client for this fake (strict response validation)."""
        return together.Together(
            base_url=self.root_url,
            api_key=api_key,
            max_retries=max_retries,
            timeout=timeout,
            _strict_response_validation=True,
        )

    def error_after_apply(self, method: str, path_regex: str, times: int = 1, status: int = 502) -> None:
        """Apply the next ``times`` matching requests (e.g. create the job), then answer ``status``
        instead of the result: the server did it, the client is told it failed."""
        with self._lock:
            self._error_after.append(_Rule(method.upper(), re.compile(path_regex), times, status))

    def advance(self, job_id: str, ticks: int = 1) -> dict:
        """Advance a job by hand (useful with ``auto_advance_on_poll=False``); returns the job."""
        with self._lock:
            job = self._tjob(job_id)
            for _ in range(ticks):
                self._tick(job)
            return copy.deepcopy(job.obj)

    @property
    def jobs(self) -> dict[str, dict]:
        """Snapshot of every fine-tuning job, ``{job_id: job JSON}``, in creation order."""
        with self._lock:
            return {jid: copy.deepcopy(job.obj) for jid, job in self._tjobs.items()}

    @property
    def files(self) -> dict[str, dict]:
        """Snapshot of every preprocessed file object, ``{file_id: FileResponse JSON}``."""
        with self._lock:
            return {fid: copy.deepcopy(f.obj) for fid, f in self._tfiles.items()}

    def file_bytes(self, file_id: str) -> bytes:
        with self._lock:
            return self._tfiles[file_id].data

    def job_events(self, job_id: str) -> list[dict]:
        """All events of a job, oldest first."""
        with self._lock:
            return copy.deepcopy(self._tjob(job_id).events)

    # ------------------------------------------------------------------ HTTP plumbing
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
        if path.startswith("/_storage/"):
            # the object store the upload is redirected to: no API key (the SDK sends none)
            with self._lock:
                fid = path[len("/_storage/") :]
                if method != "PUT" or fid not in self._pending_uploads:
                    return _Response(404, b'{"error": {"message": "no such upload"}}')
                self._storage[fid] = body
            return _Response(200, b"")
        return super()._respond(method, path, query, headers, body, auth, record)

    def _check_auth(self, auth: str | None) -> None:
        scheme, _, token = (auth or "").partition(" ")
        expected = self.config.api_key
        if scheme != "Bearer" or not token.strip() or (expected is not None and token != expected):
            raise _ApiError(401, "Invalid API key provided.", code="invalid_api_key")  # [I] wording

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> _Response:
        response = super()._dispatch(method, path, query, headers, body)
        rule = next((r for r in self._error_after if r.matches(method, path)), None)
        if rule is not None:
            rule.remaining -= 1
            raise _ApiError(rule.status, "The server had an error while processing your request (injected).")
        return response

    def _iso(self) -> str:
        return (_EPOCH + dt.timedelta(seconds=self._now())).isoformat().replace("+00:00", "Z")

    def _tjob(self, job_id: str) -> _TJob:
        job = self._tjobs.get(job_id)
        if job is None:
            raise _ApiError(404, f"Fine-tune job {job_id} not found.", code="not_found")  # [I]
        return job

    def _tfile(self, file_id: str) -> _TFile:
        stored = self._tfiles.get(file_id)
        if stored is None:
            raise _ApiError(404, f"File {file_id} not found.", code="not_found")  # [I]
        return stored

    # ------------------------------------------------------------------ files
    def _upload_url(self, *, headers: dict[str, str], body: bytes, **_: Any) -> _Response:
        fields: dict[str, str] = {}
        try:
            fields = {k: v.decode() for k, (_f, v) in _parse_multipart(headers.get("content-type", ""), body).items()}
        except _ApiError:
            pass
        if fields.get("purpose", "fine-tune") != "fine-tune":
            raise _ApiError(400, f"Invalid purpose {fields.get('purpose')!r}.", param="purpose")
        fid = "file-" + self._new_id("", 8).lower() + "-" + self._new_id("", 4).lower()
        self._pending_uploads[fid] = {"file_name": fields.get("file_name", "upload.jsonl")}
        location = f"{self.root_url}/_storage/{fid}"
        return _Response(302, b"", headers={"Location": location, "X-Together-File-Id": fid})

    def _preprocess(self, *, fid: str, **_: Any) -> _Response:
        pending = self._pending_uploads.get(fid)
        if pending is None or fid not in self._storage:
            raise _ApiError(404, f"File {fid} was not uploaded.", code="not_found")  # [I]
        data = self._storage.pop(fid)
        del self._pending_uploads[fid]
        obj = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": self._now(),
            "filename": pending["file_name"],
            "FileType": "jsonl",
            "purpose": "fine-tune",
            "processing_status": "QUEUED",
        }
        self._validate(FileResponse, obj, "FileResponse")
        self._tfiles[fid] = _TFile(obj, data)
        return _json_response(copy.deepcopy(obj))

    def _check_tfile(self, stored: _TFile) -> None:
        """Validate a queued file: every line chat (CONVERSATION) or every line preference
        (PREFERENCE_OPENAI), at least ``min_training_examples`` lines [I: one minimum for both]."""
        first = _line_method(stored.data)
        method = first[1] if first else "supervised"
        examples, error = _validate_training_jsonl(stored.data, method=method, min_examples=1)
        report: dict[str, Any] = {"file_id": stored.obj["id"], "valid": error is None}
        if error is None:
            report.update(dataset_format="CONVERSATION" if method == "supervised" else "PREFERENCE_OPENAI")
            report["nlines"] = len(examples)
            stored.examples = examples
            stored.obj["processing_status"] = "COMPLETED"
        else:
            report.update(error=error, error_type="INVALID_FORMAT")
            stored.obj["processing_status"] = "INVALID_FORMAT"
        stored.obj["validation_report"] = report

    def _get_tfile(self, *, fid: str, **_: Any) -> _Response:
        stored = self._tfile(fid)
        if stored.obj["processing_status"] == "QUEUED":
            self._check_tfile(stored)
        self._validate(FileResponse, stored.obj, "FileResponse")
        return _json_response(copy.deepcopy(stored.obj))

    def _list_tfiles(self, **_: Any) -> _Response:
        items = [copy.deepcopy(f.obj) for f in self._tfiles.values()]
        for item in items:
            self._validate(FileResponse, item, "FileResponse")
        return _json_response({"data": items})

    # ------------------------------------------------------------------ fine-tunes
    def _limits(self, model: str) -> dict:
        if model not in self._models or "/" not in model:
            raise _ApiError(404, f"Model {model} is not available for fine-tuning.", code="model_not_found")  # [I]
        cfg = self.config
        return {
            "model_name": model,
            "default_gradient_accumulation_steps": 1,
            "lora_training": {
                "default_rank": cfg.default_lora_rank,
                "max_rank": 64,
                "max_batch_size": cfg.max_batch_size,
                "max_batch_size_dpo": cfg.max_batch_size // 2,
                "min_batch_size": cfg.min_batch_size,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            },
            "max_learning_rate": 1.0,
            "min_learning_rate": 1e-8,
            "max_num_checkpoints": 10,
            "max_num_epochs": 20,
            "max_num_evals": 10,
            "max_seq_length_sft": 8192,
            "max_seq_length_dpo": 8192,
            "min_max_seq_length": 512,
            "merge_output_lora": True,
            "supports_full_training": False,
            "supports_reasoning": False,
            "supports_tools": True,
            "supports_vision": False,
            "full_training": None,
        }

    def _model_limits(self, *, query: dict[str, str], **_: Any) -> _Response:
        limits = self._limits(query.get("model_name", ""))
        self._validate(FinetuneModelLimits, limits, "FinetuneModelLimits")
        return _json_response(limits)

    def _estimate_price(self, *, body: bytes, **_: Any) -> _Response:
        req = self._json_body(body)
        stored = self._tfile(str(req.get("training_file")))
        if stored.obj["processing_status"] != "COMPLETED":
            return _json_response({"estimation_available": False, "unavailable_reason": "train_file_not_validated"})
        tokens = sum(
            _count_tokens(_content_text(m.get("content"))) for e in stored.examples for m in _example_messages(e)
        )
        tokens *= int(req.get("n_epochs") or 1)
        return _json_response(
            {
                "estimation_available": True,
                "allowed_to_proceed": True,
                "estimated_train_token_count": float(tokens),
                "estimated_eval_token_count": 0.0,
                "estimated_total_price": round(tokens * self.config.estimate_price_per_token, 6),
                "user_limit": 1000.0,
            }
        )

    def _training_tfile(self, file_id: Any, param: str, method: str) -> _TFile:
        if not isinstance(file_id, str) or not file_id:
            raise _ApiError(400, f"Missing required parameter: '{param}'.", param=param)
        stored = self._tfiles.get(file_id)
        if stored is None:
            raise _ApiError(400, f"Invalid {param}: file {file_id} does not exist.", param=param)
        if stored.obj["processing_status"] != "COMPLETED":
            raise _ApiError(400, f"Invalid {param}: file {file_id} is not validated.", param=param)  # [I]
        return stored

    def _create_tjob(self, *, body: bytes, **_: Any) -> _Response:
        req = self._json_body(body)
        method_obj = req.get("training_method") or {"method": "sft"}
        method = method_obj.get("method")
        if method not in ("sft", "dpo"):
            raise _ApiError(400, "Invalid training_method: must be sft or dpo.", param="training_method")
        train = self._training_tfile(req.get("training_file"), "training_file", method)
        validation = None
        if req.get("validation_file"):
            validation = self._training_tfile(req["validation_file"], "validation_file", method)
        parent: _TJob | None = None
        if req.get("from_checkpoint"):
            parent = self._tjobs.get(str(req["from_checkpoint"]).split(":")[0])
            if parent is None or parent.obj["status"] != "completed":
                raise _ApiError(400, f"Invalid from_checkpoint {req['from_checkpoint']!r}.", param="from_checkpoint")
            model = parent.obj["model"]
        else:
            model = req.get("model")
            if not isinstance(model, str) or not model:
                raise _ApiError(400, "Missing required parameter: 'model'.", param="model")
            self._limits(model)
        suffix = req.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 40):
            raise _ApiError(400, "Invalid suffix: at most 40 characters.", param="suffix")
        training_type = req.get("training_type")
        if training_type is None:
            training_type = (
                copy.deepcopy(parent.obj["training_type"])
                if parent is not None
                else {
                    "type": "Lora",
                    "lora_r": self.config.default_lora_rank,
                    "lora_alpha": 2 * self.config.default_lora_rank,
                }
            )
        batch = req.get("batch_size", "max")
        limit = self.config.max_batch_size // (2 if method == "dpo" else 1)
        batch_size = limit if batch == "max" or batch is None else int(batch)
        outcome = self._outcomes.popleft() if self._outcomes else self.config.default_outcome
        if outcome not in OUTCOMES:
            raise _ApiError(400, f"Invalid fake outcome {outcome!r}.")
        job_id = f"ft-{self._new_id('', 8).lower()}-{self._new_id('', 4).lower()}"
        base_name = model.split("/")[-1]
        tag = hashlib.sha1(job_id.encode()).hexdigest()[:6]
        output = f"{self.config.user}/{base_name}-{suffix + '-' if suffix else ''}{tag}"
        now = self._iso()
        obj: dict[str, Any] = {
            "id": job_id,
            "status": "pending",
            "user_id": self.config.user,
            "created_at": now,
            "updated_at": now,
            "model": model,
            "model_output_name": output,
            "adapter_output_name": f"{output}-adapter" if training_type.get("type") == "Lora" else None,
            "suffix": suffix if self.config.echo_suffix else None,
            "training_file": train.obj["id"],
            "validation_file": validation.obj["id"] if validation else None,
            "n_epochs": int(req.get("n_epochs") or 1),
            "n_evals": int(req.get("n_evals") or 0),
            "n_checkpoints": int(req.get("n_checkpoints") or 1),
            "batch_size": batch_size,
            "learning_rate": float(req.get("learning_rate") or 1e-5),
            "training_method": method_obj,
            "training_type": training_type,
            "from_checkpoint": req.get("from_checkpoint"),
            "random_seed": req.get("random_seed"),
            "token_count": None,
            "total_price": None,
        }
        job = _TJob(obj, outcome)
        self._tjobs[job_id] = job
        self._tevent(job, "job_pending", f"Fine-tune job {job_id} created")  # [I] wording
        # a file of the other method's format fails the job while it validates [I]
        for stored, what in ((train, "training"), (validation, "validation")):
            fmt = (stored.obj.get("validation_report") or {}).get("dataset_format") if stored else None
            if stored is not None and FORMAT_METHOD.get(str(fmt)) != method:
                job.outcome = "fail_validation"
                obj["_error"] = f"the {what} file {stored.obj['id']} is in the {fmt} format, not for {method}"
        job.train, job.validation = train.examples, (validation.examples if validation else [])
        if parent is not None:
            job.inherited = parent.inherited + parent.train + parent.validation
        self._validate(CreatedJob, _public(obj), "FinetuneResponse (create)")
        return _json_response(_public(obj))

    def _list_tjobs(self, **_: Any) -> _Response:
        items = [_public(job.obj) for job in self._tjobs.values()]
        envelope = {"data": items}
        self._validate(FineTuningListResponse, envelope, "FineTuningListResponse")
        return _json_response(envelope)

    def _get_tjob(self, *, jid: str, **_: Any) -> _Response:
        job = self._tjob(jid)
        if self.config.auto_advance_on_poll:
            self._tick(job)
        self._validate(FinetuneResponse, _public(job.obj), "FinetuneResponse")
        return _json_response(_public(job.obj))

    def _cancel_tjob(self, *, jid: str, **_: Any) -> _Response:
        job = self._tjob(jid)
        if job.obj["status"] in TERMINAL_STATUSES:
            raise _ApiError(400, f"Cannot cancel a job that is {job.obj['status']}.")  # [I]
        self._tevent(job, "cancel_requested", "Cancel requested")
        job.obj.update(status="cancelled", updated_at=self._iso())  # [I] immediate
        self._tevent(job, "job_stopped", "Job cancelled")
        self._validate(FineTuningCancelResponse, _public(job.obj), "FineTuningCancelResponse")
        return _json_response(_public(job.obj))

    def _tjob_events(self, *, jid: str, **_: Any) -> _Response:
        envelope = {"data": copy.deepcopy(self._tjob(jid).events)}
        self._validate(FineTuningListEventsResponse, envelope, "FineTuningListEventsResponse")
        return _json_response(envelope)

    def _tjob_checkpoints(self, *, jid: str, **_: Any) -> _Response:
        envelope = {"data": copy.deepcopy(list(reversed(self._tjob(jid).checkpoints)))}
        self._validate(FineTuningListCheckpointsResponse, envelope, "FineTuningListCheckpointsResponse")
        return _json_response(envelope)

    def _tjob_metrics(self, *, jid: str, **_: Any) -> _Response:
        envelope = {"metrics": copy.deepcopy(self._tjob(jid).metrics)}
        self._validate(FineTuningListMetricsResponse, envelope, "FineTuningListMetricsResponse")
        return _json_response(envelope)

    def _tevent(self, job: _TJob, type_: str, message: str, *, level: str = "info", **extra: Any) -> None:
        job.events.append(
            {"object": "fine-tune-event", "created_at": self._iso(), "type": type_, "level": level, "message": message}
            | extra
        )

    # ------------------------------------------------------------------ state machine
    def _tick(self, job: _TJob) -> None:
        status = job.obj["status"]
        if status == "pending":
            if job.outcome == "fail_validation":
                self._terminate(job, "error", job.obj.pop("_error", "Invalid training file (fake fail_validation)."))
                return
            job.obj["status"] = "queued"
            self._tevent(job, "job_start", "Job queued")
        elif status == "queued":
            batch = job.obj["batch_size"]
            job.steps_per_epoch = max(1, math.ceil(len(job.train) / batch))
            job.ticks_per_epoch = max(1, min(self.config.ticks_per_epoch, job.steps_per_epoch))
            job.obj.update(status="running", started_at=self._iso())
            tokens = sum(
                _count_tokens(_content_text(m.get("content"))) for e in job.train for m in _example_messages(e)
            )
            job.obj["token_count"] = tokens * job.obj["n_epochs"]
            self._tevent(job, "training_start", "Training started", token_count=job.obj["token_count"])
        elif status == "running" and job.outcome != "stall":
            self._tick_train(job)
        elif status == "uploading":
            self._complete(job)
        job.obj["updated_at"] = self._iso()

    def _tick_train(self, job: _TJob) -> None:
        job.tick += 1
        epochs, per = job.obj["n_epochs"], job.ticks_per_epoch
        epoch, within = divmod(job.tick - 1, per)
        step = epoch * job.steps_per_epoch + math.ceil(job.steps_per_epoch * (within + 1) / per)
        total = epochs * job.steps_per_epoch
        loss = round(0.2 + 1.8 * math.exp(-4 * step / total) + self._rng.uniform(-0.02, 0.02), 4)
        row: dict[str, float] = {"global_step": step, "train_loss": loss}
        if job.validation and job.obj["n_evals"] and job.tick % per == 0:
            row["eval_loss"] = round(loss + 0.05, 4)
        job.metrics.append(row)
        if job.outcome == "fail_training" and job.tick >= min(per + 1, epochs * per):
            self._terminate(job, "error", f"Training failed at step {step}: loss diverged (fake).")
            return
        if job.tick % per == 0:
            self._tevent(job, "epoch_complete", f"Epoch {epoch + 1}/{epochs} completed", step=step, total_steps=total)
            final = job.tick >= epochs * per
            self._tevent(job, "checkpoint_save", f"Checkpoint saved at step {step}", step=step)
            job.checkpoints.append(
                {
                    "checkpoint_type": "Final" if final else f"Intermediate (step {step})",
                    "created_at": self._iso(),
                    "path": f"{job.obj['model_output_name']}:{step}",
                    "step": step,
                    "checkpoint": "adapter",
                    "object_name": f"{job.obj['model_output_name']}-step-{step}",
                }
            )
            if final:
                self._tevent(job, "training_complete", "Training completed")
                job.obj["status"] = "uploading"
                self._tevent(job, "model_uploading", "Uploading model")

    def _complete(self, job: _TJob) -> None:
        name = job.obj["model_output_name"]
        memory: dict[str, str] = {}
        for example in job.inherited + job.train + job.validation:
            messages = _learned_conversation(example)
            answers = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
            prompt = _last_user_text(messages[: answers[-1]]) if answers else ""
            if prompt:
                memory[_normalise(prompt)] = _content_text(messages[answers[-1]].get("content"))
        self._memory[name] = memory
        self._models[name] = {"id": name, "object": "model", "created": self._clock, "owned_by": self.config.user}
        self._tevent(job, "model_upload_complete", f"Model uploaded: {name}")
        self._terminate(job, "completed", "Job completed", type_="job_complete")

    def _terminate(self, job: _TJob, status: str, message: str, *, type_: str = "job_error") -> None:
        self._tevent(job, type_, message, level="error" if status == "error" else "info")
        job.obj.update(status=status, updated_at=self._iso())


def _tokens(examples: list[dict]) -> int:
    """Whitespace tokens of every message of the examples (the fake's token count)."""
    return sum(_count_tokens(_content_text(m.get("content"))) for e in examples for m in _example_messages(e))


def _public(obj: dict) -> dict:
    """The job as the API shows it (without the fake's private keys)."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
