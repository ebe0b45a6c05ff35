"""OpenAI fine-tuning backend: upload, create idempotently, poll, tail events, collect results.

Two methods: supervised fine-tuning (``method="sft"``, chat JSONL) and direct preference
optimization (``method="dpo"``, the OpenAI preference JSONL of
:func:`ft_pipeline.lib.preference_format.write_preference_jsonl`, ``<split>.openai.jsonl``).

Pure library code (never import dagster here); the Dagster asset wraps :func:`run_fine_tune`.
Works against anything that speaks the OpenAI fine-tuning API through the ``openai`` SDK
(OpenAI, Azure OpenAI via ``base_url``, the local fake in ``ft_pipeline_tests/fakes``).

Behaviour, and why:

* **Idempotency by run key.** The SDK never sends an idempotency header, so a ``jobs.create``
  whose response is lost and which the SDK then retries can start a *second billable job*.
  Every job therefore carries ``metadata={"run_key": run_key}``; before uploading anything we
  look for a live job with that key *and the same method* and re-attach to it (a job's method
  is read from the ``method.type`` the API echoes, else from ``metadata["method"]``, which DPO
  jobs also carry, else it is supervised), so an SFT and a DPO job on the same data never
  collide even under one run key. Create is sent with
  ``max_retries=0``; after an ambiguous failure (connection error, timeout, 408/409/429/5xx)
  we look the job up by run key again *before* trying create again, at most
  ``config.create_attempts`` times.
* **Polling** ``jobs.retrieve`` with exponential backoff (x1.5 up to ``max_poll_interval_s``)
  and an overall deadline. Status is treated as an open string: only succeeded / failed /
  cancelled are terminal (the API can report ``"paused"``, which is not in the SDK's Literal).
  Transient errors while polling (connection, 429, 5xx after the SDK's own retries) are
  tolerated up to ``config.max_consecutive_poll_errors`` in a row: the remote job keeps
  running whether or not we can see it.
* **Events** are listed newest first by the API; each poll pages back (``after=``) until it
  reaches an event already seen, and emits the new ones oldest first.
* The SDK's own retries (429 with ``retry-after``, 5xx, connection errors) are left on for
  every call except create.

Secrets: the client's API key never appears in anything this module produces (log lines,
metrics, exception messages, returned values); every string that comes from the API is
scrubbed of it as defence in depth. Errors raised by the SDK itself propagate unchanged
except where noted (the SDK does not put the key in its messages).
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import openai

from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL

if TYPE_CHECKING:
    from openai.types.fine_tuning import FineTuningJob

__all__ = [
    "FineTuneCancelled",
    "FineTuneError",
    "FineTuneFailed",
    "FineTuneTimeout",
    "OpenAIFineTuneConfig",
    "OpenAIFineTuneResult",
    "Scrubber",
    "cancel_job",
    "find_job_by_run_key",
    "job_method",
    "retry_after_s",
    "StartedJob",
    "run_fine_tune",
    "start_fine_tune",
    "wait_fine_tune",
]

logger = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
#: Statuses that make a job unusable for re-attachment (a new job is created instead).
DEAD_STATUSES = frozenset({"failed", "cancelled"})
RUN_KEY_METADATA = "run_key"
#: Metadata key naming a non-supervised job's method (for servers that do not echo ``method``).
METHOD_METADATA = "method"
#: ``OpenAIFineTuneConfig.method`` -> the API's ``method.type``.
API_METHODS = {"sft": "supervised", "dpo": "dpo"}
#: Methods a hosted run can have: one job of an API method, or ``sft_then_dpo``: an SFT job, then
#: a DPO job that fine-tunes the SFT job's model (``ft_pipeline.lib.training.fine_tune``).
HOSTED_METHODS = frozenset({*API_METHODS, "sft_then_dpo"})
MAX_SUFFIX_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
#: Page size for ``list_events`` while tailing (the API default is 20).
EVENTS_PAGE_SIZE = 50
#: Page size for ``jobs.list`` / ``checkpoints.list``.
LIST_PAGE_SIZE = 100
# HTTP statuses after which a create may or may not have been applied (or was throttled):
# the same set the SDK itself would retry.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_FILE_DONE_STATUSES = frozenset({"processed", "error", "deleted"})
_TRANSIENT_POLL_ERRORS = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


def _check_auto_or_number(name: str, value: object, *, integer: bool, low: float, high: float | None) -> None:
    if value == "auto":
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name} must be 'auto' or a{'n integer' if integer else ' number'}, got {value!r}")
    if value < low or (high is not None and value > high) or (not integer and value <= 0):
        bounds = f"in [{low}, {high}]" if high is not None else "> 0"
        raise ValueError(f"{name} must be 'auto' or {bounds}, got {value!r}")


@dataclass(frozen=True)
class OpenAIFineTuneConfig:
    """Settings of one OpenAI fine-tuning run (validated on construction).

    Attributes:
        model: base model to fine-tune. Default ``DEFAULT_OPENAI_FINE_TUNING_MODEL``
            (``gpt-4o-mini-2024-07-18``).
        method: ``"sft"`` (supervised, sent as ``method.type="supervised"``; the files are chat
            JSONL) or ``"dpo"`` (direct preference optimization, ``method.type="dpo"``; the
            files are OpenAI preference JSONL, ``<split>.openai.jsonl``). Part of the job's
            identity: a job of the other method is never re-attached. ``"sft_then_dpo"``: an SFT
            job, then a DPO job on the SFT job's model (``fine_tune_openai`` runs both; one
            :func:`run_fine_tune` call runs one job of an API method). Default ``"sft"``.
        dpo_beta: DPO's beta, ``"auto"`` or > 0: how strongly the policy is held to the
            reference model (higher = closer to it). Sent only for ``method="dpo"``, ignored
            for sft. Default ``"auto"`` (the API picks it).
        n_epochs: ``"auto"`` or 1–50. Default ``"auto"``.
        batch_size: ``"auto"`` or 1–256. Default ``"auto"``.
        learning_rate_multiplier: ``"auto"`` or > 0. Default ``"auto"``.
        suffix: goes into the model name ``ft:<model>:<org>:<suffix>:<id>``; at most 64
            characters; ``""`` sends none. Default ``"ft-pipeline"``.
        seed: training seed, for reproducibility. Default 42.
        poll_interval_s: delay before the second poll; each later delay is x1.5, capped at
            ``max_poll_interval_s``. Default 5.0.
        max_poll_interval_s: cap of the poll delay. Default 60.0.
        timeout_s: overall budget of :func:`run_fine_tune`, upload included; on expiry the
            remote job is cancelled and :class:`FineTuneTimeout` raised. Default 6 h (21600).
        create_attempts: at most this many ``jobs.create`` requests per run (each sent with
            ``max_retries=0`` and reconciled by run key). Default 3.
        max_consecutive_poll_errors: transient poll failures (after the SDK's own retries)
            tolerated in a row before giving up with :class:`FineTuneError`; the remote job is
            *not* cancelled then, and a rerun with the same run key re-attaches. Default 5.
    """

    model: str = DEFAULT_OPENAI_FINE_TUNING_MODEL
    method: str = "sft"
    dpo_beta: float | str = "auto"
    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    suffix: str = "ft-pipeline"
    seed: int = 42
    poll_interval_s: float = 5.0
    max_poll_interval_s: float = 60.0
    timeout_s: float = 6 * 3600
    create_attempts: int = 3
    max_consecutive_poll_errors: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model must be a non-empty string")
        if self.method not in HOSTED_METHODS:
            raise ValueError(f"method must be one of {sorted(HOSTED_METHODS)}, got {self.method!r}")
        _check_auto_or_number("dpo_beta", self.dpo_beta, integer=False, low=0, high=None)
        _check_auto_or_number("n_epochs", self.n_epochs, integer=True, low=1, high=50)
        _check_auto_or_number("batch_size", self.batch_size, integer=True, low=1, high=256)
        _check_auto_or_number(
            "learning_rate_multiplier", self.learning_rate_multiplier, integer=False, low=0, high=None
        )
        if not isinstance(self.suffix, str) or len(self.suffix) > MAX_SUFFIX_CHARS:
            raise ValueError(f"suffix must be a string of at most {MAX_SUFFIX_CHARS} characters")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError("seed must be an integer")
        if not self.poll_interval_s > 0 or not self.max_poll_interval_s >= self.poll_interval_s:
            raise ValueError("need 0 < poll_interval_s <= max_poll_interval_s")
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        if self.create_attempts < 1 or self.max_consecutive_poll_errors < 0:
            raise ValueError("create_attempts must be >= 1 and max_consecutive_poll_errors >= 0")

    @property
    def api_method(self) -> str:
        """The API's ``method.type``: ``"supervised"`` or ``"dpo"`` (``sft_then_dpo`` is two jobs,
        one of each, and has none)."""
        if self.method not in API_METHODS:
            raise ValueError(f"method {self.method!r} is two jobs (sft, then dpo), not one API method")
        return API_METHODS[self.method]

    def hyperparameters(self) -> dict[str, int | float | str]:
        """The method's hyperparameters as sent to the API (DPO adds ``beta``)."""
        hp: dict[str, int | float | str] = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        if self.method == "dpo":
            hp["beta"] = self.dpo_beta
        return hp

    def method_payload(self) -> dict[str, Any]:
        """The ``method`` object of ``jobs.create``:
        ``{"type": t, t: {"hyperparameters": {...}}}`` with ``t`` the :attr:`api_method`."""
        return {"type": self.api_method, self.api_method: {"hyperparameters": self.hyperparameters()}}


@dataclass
class OpenAIFineTuneResult:
    """Outcome of a successful run.

    Attributes:
        job_id: the fine-tuning job id (``ftjob-…``).
        status: always ``"succeeded"`` here (failures raise).
        fine_tuned_model: the model name to call (``ft:…``).
        trained_tokens: billable tokens reported by the API.
        training_file_id / validation_file_id: the job's file ids.
        checkpoints: ``{"id", "step_number", "fine_tuned_model_checkpoint", "metrics"}`` per
            checkpoint, by ascending step (the API keeps only the last few).
        metrics: every metrics event's ``data`` (step, train_loss, valid_loss, …) seen by this
            call, oldest first (all of the job's, on re-attach).
        result_metrics: the last row of the result-file CSV, numbers parsed, empty cells None;
            ``{}`` if the job has no result file or it cannot be read.
        reattached: True when a job with the same run key existed before this call and was
            reused (no upload, no create). False when this call created the job, including
            when a create whose response was lost was reconciled by run key.
        hyperparameters: the job's method hyperparameters (resolved numbers once training
            started; DPO's include ``beta``).
        method: the job's ``method.type``, ``"supervised"`` or ``"dpo"``.
    """

    job_id: str
    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None
    training_file_id: str
    validation_file_id: str | None
    checkpoints: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    result_metrics: dict = field(default_factory=dict)
    reattached: bool = False
    hyperparameters: dict = field(default_factory=dict)
    method: str = "supervised"


class FineTuneError(Exception):
    """Base class of this module's errors; ``job_id`` is the remote job, if one exists."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class FineTuneFailed(FineTuneError):
    """The job ended ``failed``; the message carries the API's error code and message,
    also available as ``code``, ``api_message`` and ``param``."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        code: str | None = None,
        api_message: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.code = code
        self.api_message = api_message
        self.param = param


class FineTuneCancelled(FineTuneError):
    """The job ended ``cancelled`` (remotely, or because ``should_stop`` asked for it)."""


class FineTuneTimeout(FineTuneError):
    """``config.timeout_s`` ran out; the remote job was cancelled (see the message)."""


_T = TypeVar("_T")


class Scrubber:
    """Removes the client's secrets from anything this module hands out."""

    def __init__(self, client: Any) -> None:
        secrets = []
        for attr in ("api_key", "admin_api_key"):
            value = getattr(client, attr, None)
            # why the length floor: replacing a 1–3 character "secret" would mangle ordinary text
            if isinstance(value, str) and len(value) >= 4:
                secrets.append(value)
        self._secrets = tuple(secrets)

    def __call__(self, value: _T) -> _T:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, "***")  # type: ignore[assignment]
            return value
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}  # type: ignore[return-value]
        if isinstance(value, (list, tuple)):
            return type(value)(self(v) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.replace(
                value, **{f.name: self(getattr(value, f.name)) for f in dataclasses.fields(value)}
            )
        return value


def _status(job: Any) -> str:
    # why str(): the status is an open set ("paused" exists but is not in the SDK Literal)
    return str(job.status)


def job_method(job: Any) -> str:
    """A job's method type: the ``method.type`` the API echoes, else ``metadata["method"]``
    (written on DPO jobs), else ``"supervised"`` (the API's default, and what jobs created
    before methods existed are)."""
    method = getattr(job, "method", None)
    if method is not None and getattr(method, "type", None):
        return str(method.type)
    return str((job.metadata or {}).get(METHOD_METADATA) or "supervised")


def find_job_by_run_key(
    client: openai.OpenAI, run_key: str, *, method: str = "supervised", page_size: int = LIST_PAGE_SIZE
) -> FineTuningJob | None:
    """The newest job whose ``metadata.run_key`` equals ``run_key``, whose method type (see
    :func:`job_method`) is ``method`` (the API's name: ``"supervised"`` or ``"dpo"``) and whose
    status is not failed/cancelled, or None.

    Sends the server-side ``metadata[run_key]=…`` filter and pages through every result, but
    also filters client-side, because a server may ignore the filter.
    """
    best = None
    for job in client.fine_tuning.jobs.list(metadata={RUN_KEY_METADATA: run_key}, limit=page_size):
        metadata = job.metadata or {}
        if metadata.get(RUN_KEY_METADATA) != run_key or _status(job) in DEAD_STATUSES or job_method(job) != method:
            continue
        if best is None or job.created_at > best.created_at:
            best = job
    return best


def cancel_job(client: openai.OpenAI, job_id: str) -> str:
    """Cancel a job and return its new status; a job that is already terminal is left as
    it is and its status returned (no error)."""
    try:
        return _status(client.fine_tuning.jobs.cancel(job_id))
    except (openai.BadRequestError, openai.ConflictError):
        # why: the API refuses to cancel a terminal job; report where it ended instead
        job = client.fine_tuning.jobs.retrieve(job_id)
        if _status(job) in TERMINAL_STATUSES:
            return _status(job)
        raise


def _validate_run_key(run_key: str) -> None:
    if not isinstance(run_key, str) or not run_key:
        raise ValueError("run_key must be a non-empty string")
    if len(run_key) > MAX_METADATA_VALUE_CHARS:
        raise ValueError(f"run_key must be at most {MAX_METADATA_VALUE_CHARS} characters (an API metadata value)")


def _upload(
    client: openai.OpenAI,
    path: Path,
    *,
    deadline: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    scrub: Scrubber,
) -> str:
    """Upload one JSONL file for fine-tuning and wait until the API has processed it."""
    uploaded = client.files.create(file=path, purpose="fine-tune")
    interval = 1.0
    # why: jobs.create rejects a file that is not processed yet ("uploaded" on OpenAI;
    # Azure also reports "pending"/"running"); bounded by the overall deadline
    while str(uploaded.status) not in _FILE_DONE_STATUSES and clock() < deadline:
        sleep(min(interval, max(0.0, deadline - clock())))
        interval = min(interval * 1.5, 30.0)
        uploaded = client.files.retrieve(uploaded.id)
    if str(uploaded.status) in ("error", "deleted"):
        details = scrub(uploaded.status_details or "no details")
        raise FineTuneError(f"uploaded file {uploaded.id} ({path.name}) failed processing: {details}")
    return uploaded.id


def retry_after_s(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    headers: Any = getattr(response, "headers", None) or {}  # httpx.Headers or a test's dict
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            value = float(headers.get(header)) / divisor
        except (TypeError, ValueError):
            continue
        if 0 < value <= 60:
            return value
    return None


def _create_job(
    client: openai.OpenAI,
    config: OpenAIFineTuneConfig,
    run_key: str,
    training_file_id: str,
    validation_file_id: str | None,
    *,
    sleep: Callable[[float], None],
    scrub: Scrubber,
) -> FineTuningJob:
    """Create the job at most ``config.create_attempts`` times, reconciling by run key after
    every ambiguous failure so that a lost response never leads to a second job."""
    metadata = {RUN_KEY_METADATA: run_key}
    if config.api_method != "supervised":
        # why: re-attachment must tell the methods apart even on a server that does not echo
        # `method`; supervised jobs keep the metadata they always had
        metadata[METHOD_METADATA] = config.api_method
    params: dict[str, Any] = {
        "model": config.model,
        "training_file": training_file_id,
        "method": config.method_payload(),
        "seed": config.seed,
        "metadata": metadata,
    }
    if validation_file_id is not None:
        params["validation_file"] = validation_file_id
    if config.suffix:
        params["suffix"] = config.suffix
    # why max_retries=0: the SDK would resend a create whose response was lost (no idempotency
    # header exists), possibly starting a second billable job; we retry only after reconciling
    creator = client.with_options(max_retries=0)
    last_error: Exception | None = None
    for attempt in range(1, config.create_attempts + 1):
        try:
            job = creator.fine_tuning.jobs.create(**params)
            logger.info("created %s fine-tuning job %s (attempt %d)", config.api_method, job.id, attempt)
            return job
        except openai.APIStatusError as err:
            retryable = (err.status_code in _RETRYABLE_STATUSES or err.status_code >= 500) and err.response.headers.get(
                "x-should-retry"
            ) != "false"
            if not retryable:
                raise FineTuneError(
                    scrub(
                        f"fine-tuning job creation was rejected: HTTP {err.status_code} {err.code or ''}: {err.message}"
                    )
                ) from err
            last_error = err
        except openai.APIConnectionError as err:  # includes APITimeoutError
            last_error = err
        logger.warning("job create attempt %d failed (%s); reconciling by run key", attempt, type(last_error).__name__)
        found = find_job_by_run_key(client, run_key, method=config.api_method)
        if found is not None:
            logger.info("found job %s for the run key after an ambiguous create", found.id)
            return found
        if attempt < config.create_attempts:
            sleep(retry_after_s(last_error) or min(2.0 ** (attempt - 1), 30.0))
    raise FineTuneError(
        f"could not create the fine-tuning job after {config.create_attempts} attempt(s); "
        f"last error: {type(last_error).__name__}"
    ) from last_error


class _EventTail:
    """Emits each job event once, oldest first, however the polls interleave."""

    def __init__(
        self, job_id: str, on_log: Callable[[str], None], on_metrics: Callable[[dict], None], scrub: Scrubber
    ) -> None:
        self.job_id = job_id
        self.on_log = on_log
        self.on_metrics = on_metrics
        self.scrub = scrub
        self.seen: set[str] = set()
        self.metrics: list[dict] = []

    def poll(self, client: openai.OpenAI) -> None:
        new = []
        # newest first; iterating the page follows after=<last id> back in time, and we stop
        # at the first event already seen so a long job costs one small request per poll
        for event in client.fine_tuning.jobs.list_events(self.job_id, limit=EVENTS_PAGE_SIZE):
            if event.id in self.seen:
                break
            new.append(event)
        for event in reversed(new):
            self.seen.add(event.id)
            self.on_log(self.scrub(f"[{event.level}] {event.message}"))
            if event.type == "metrics" and isinstance(event.data, dict):
                data = self.scrub(dict(event.data))
                self.metrics.append(data)
                self.on_metrics(dict(data))  # a copy: callers may mutate theirs


def _stop(client: openai.OpenAI, job_id: str, error: type[FineTuneError], reason: str, scrub: Scrubber) -> None:
    """Cancel the remote job, then raise ``error``."""
    try:
        outcome = f"remote status after cancel: {cancel_job(client, job_id)}"
    except openai.OpenAIError as err:
        outcome = f"the cancel request failed ({type(err).__name__}); cancel job {job_id} by hand"
        logger.error("cancelling fine-tuning job %s failed: %s", job_id, type(err).__name__)
    raise error(scrub(f"fine-tuning job {job_id} {reason}; {outcome}"), job_id=job_id)


def _watch(
    client: openai.OpenAI,
    job: FineTuningJob,
    config: OpenAIFineTuneConfig,
    tail: _EventTail,
    *,
    should_stop: Callable[[], bool],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    deadline: float,
    scrub: Scrubber,
) -> FineTuningJob:
    """Poll until the job is terminal; cancel and raise on ``should_stop`` or the deadline."""
    interval = config.poll_interval_s
    errors = 0
    first = True
    while True:
        try:
            if not first:  # the job we start from is fresh (create / list), no need to re-fetch
                job = client.fine_tuning.jobs.retrieve(job.id)
            tail.poll(client)
            errors = 0
        except _TRANSIENT_POLL_ERRORS as err:
            errors += 1
            logger.warning("polling job %s failed (%s), %d in a row", job.id, type(err).__name__, errors)
            if errors > config.max_consecutive_poll_errors:
                raise FineTuneError(
                    f"lost contact with fine-tuning job {job.id} after {errors} failed polls "
                    f"({type(err).__name__}); it was not cancelled, rerun with the same run key "
                    f"to re-attach",
                    job_id=job.id,
                ) from err
        else:
            if _status(job) in TERMINAL_STATUSES:
                return job
        first = False
        if should_stop():
            _stop(client, job.id, FineTuneCancelled, "stopped on request", scrub)
        now = clock()
        if now >= deadline:
            _stop(client, job.id, FineTuneTimeout, f"timed out after {config.timeout_s:g} s", scrub)
        sleep(min(interval, max(0.0, deadline - now)))
        interval = min(interval * 1.5, config.max_poll_interval_s)


def _number(text: str | None) -> int | float | str | None:
    if text is None or not text.strip():
        return None
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_result_csv(raw: bytes) -> dict[str, Any]:
    """The last row of a fine-tuning result file (CSV, or base64 of CSV), numbers parsed,
    empty cells None; ``{}`` for a file without data rows."""
    text = raw.decode("utf-8-sig", errors="replace").strip()
    if not text.startswith("step,"):
        # why: the API appears to serve the result CSV base64-encoded
        try:
            text = base64.b64decode(text, validate=False).decode("utf-8-sig").strip()
        except (binascii.Error, UnicodeDecodeError) as err:
            raise ValueError("result file is neither CSV nor base64-encoded CSV") from err
        if not text.startswith("step,"):
            raise ValueError("result file is neither CSV nor base64-encoded CSV")
    rows = list(csv.DictReader(io.StringIO(text)))
    return {key: _number(value) for key, value in rows[-1].items() if key is not None} if rows else {}


def _result_metrics(client: openai.OpenAI, job: FineTuningJob) -> dict:
    for file_id in (job.result_files or [])[:1]:
        try:
            return parse_result_csv(client.files.content(file_id).content)
        except (openai.NotFoundError, ValueError) as err:
            # why best effort: the model exists and is billed; missing metrics must not lose it
            logger.warning("could not read result file %s of job %s: %s", file_id, job.id, type(err).__name__)
    return {}


def _checkpoints(client: openai.OpenAI, job_id: str) -> list[dict]:
    rows = [
        {
            "id": c.id,
            "step_number": c.step_number,
            "fine_tuned_model_checkpoint": c.fine_tuned_model_checkpoint,
            "metrics": c.metrics.model_dump(exclude_none=True) if c.metrics is not None else {},
        }
        for c in client.fine_tuning.jobs.checkpoints.list(job_id, limit=LIST_PAGE_SIZE)
    ]
    return sorted(rows, key=lambda row: row["step_number"])


def _hyperparameters(job: FineTuningJob) -> dict:
    """The method section's hyperparameters (DPO's carry ``beta``), else the top-level ones."""
    method = job.method
    section = getattr(method, str(method.type), None) if method is not None and method.type else None
    hp = getattr(section, "hyperparameters", None) or job.hyperparameters
    return hp.model_dump(exclude_none=True) if hp is not None else {}


def _noop(*_: Any) -> None:
    return None


def run_fine_tune(
    client: openai.OpenAI,
    train_jsonl: Path,
    validation_jsonl: Path | None,
    run_key: str,
    config: OpenAIFineTuneConfig = OpenAIFineTuneConfig(),
    *,
    on_log: Callable[[str], None] = _noop,
    on_metrics: Callable[[dict], None] = _noop,
    on_job: Callable[[str], None] = _noop,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> OpenAIFineTuneResult:
    """Run (or re-attach to) the fine-tuning job for ``run_key`` and wait for its end.

    Args:
        client: an ``openai.OpenAI`` (or Azure) client; its retry settings are used for every
            call except create.
        train_jsonl / validation_jsonl: the files as they are, uploaded with purpose
            ``fine-tune`` (only when no live job exists for ``run_key``): chat JSONL for
            ``config.method="sft"``, OpenAI preference JSONL (``<split>.openai.jsonl``) for
            ``"dpo"``. A file of the other method's shape is rejected by the API
            (:class:`FineTuneError` at create, or :class:`FineTuneFailed` with code
            ``invalid_training_file`` once the job validates its files).
        run_key: deterministic identity of this run (e.g. ``"<dataset_sha>:<config_sha>"``),
            stored as job metadata; at most 512 characters. Re-attachment also requires the
            same method, so one run key may name both an SFT and a DPO job.
        config: see :class:`OpenAIFineTuneConfig`.
        on_log: called once per new job event, oldest first, as ``"[level] message"``.
        on_metrics: called once per new metrics event with a copy of its ``data``.
        on_job: called with the job id as soon as it is known (so a caller can cancel it).
        should_stop: polled every loop; True cancels the remote job and raises
            :class:`FineTuneCancelled`.
        sleep / clock: injectable for tests (``clock`` is monotonic seconds).

    Returns:
        The result of a succeeded job.

    Raises:
        FineTuneFailed: the job ended ``failed`` (message: the API's error code and message).
        FineTuneCancelled: the job ended ``cancelled``, or ``should_stop`` asked for it.
        FineTuneTimeout: ``config.timeout_s`` ran out (the job was cancelled).
        FineTuneError: creation rejected or impossible, upload processing failed, or polling
            lost contact for too long.
        ValueError / FileNotFoundError: bad arguments.
        openai.OpenAIError: other API errors that survived the SDK's retries.
    """
    started = start_fine_tune(
        client, train_jsonl, validation_jsonl, run_key, config, should_stop=should_stop, sleep=sleep, clock=clock
    )
    on_job(started.job.id)
    return wait_fine_tune(
        client, started, config, on_log=on_log, on_metrics=on_metrics, should_stop=should_stop, sleep=sleep, clock=clock
    )


@dataclass
class StartedJob:
    """A job created or re-attached by :func:`start_fine_tune`, for :func:`wait_fine_tune`."""

    job: Any
    """The API's job object as last seen."""
    reattached: bool
    deadline: float
    """``clock()`` value after which the wait gives up (and cancels the job)."""


def start_fine_tune(
    client: openai.OpenAI,
    train_jsonl: Path,
    validation_jsonl: Path | None,
    run_key: str,
    config: OpenAIFineTuneConfig = OpenAIFineTuneConfig(),
    *,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> StartedJob:
    """The first half of :func:`run_fine_tune`: re-attach to the live job of ``run_key`` and its
    method, or upload the files and create it (idempotently; see the module docstring). The
    overall deadline (``config.timeout_s``) starts here."""
    _validate_run_key(run_key)
    train_jsonl = Path(train_jsonl)
    validation_jsonl = Path(validation_jsonl) if validation_jsonl is not None else None
    for path in (train_jsonl, validation_jsonl):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"fine-tuning data file not found: {path}")
    scrub = Scrubber(client)
    deadline = clock() + config.timeout_s
    if should_stop():
        raise FineTuneCancelled("stop requested before a fine-tuning job was created")

    job = find_job_by_run_key(client, run_key, method=config.api_method)
    reattached = job is not None
    if job is not None:
        logger.info(
            "re-attaching to %s fine-tuning job %s (status %s) for the run key", config.api_method, job.id, _status(job)
        )
    else:
        training_file_id = _upload(client, train_jsonl, deadline=deadline, sleep=sleep, clock=clock, scrub=scrub)
        validation_file_id = (
            _upload(client, validation_jsonl, deadline=deadline, sleep=sleep, clock=clock, scrub=scrub)
            if validation_jsonl is not None
            else None
        )
        # why check again: uploads can take long; never start a billable job only to cancel it
        if should_stop():
            raise FineTuneCancelled("stop requested before a fine-tuning job was created")
        if clock() >= deadline:
            raise FineTuneTimeout(f"timed out after {config.timeout_s:g} s before a fine-tuning job was created")
        job = _create_job(client, config, run_key, training_file_id, validation_file_id, sleep=sleep, scrub=scrub)
    return StartedJob(job=job, reattached=reattached, deadline=deadline)


def wait_fine_tune(
    client: openai.OpenAI,
    started: StartedJob,
    config: OpenAIFineTuneConfig = OpenAIFineTuneConfig(),
    *,
    on_log: Callable[[str], None] = _noop,
    on_metrics: Callable[[dict], None] = _noop,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> OpenAIFineTuneResult:
    """The second half of :func:`run_fine_tune`: poll the started job until it ends, streaming its
    events, and collect the result of a succeeded job (raises like :func:`run_fine_tune`)."""
    scrub = Scrubber(client)
    job = started.job
    tail = _EventTail(job.id, on_log, on_metrics, scrub)
    job = _watch(
        client,
        job,
        config,
        tail,
        should_stop=should_stop,
        sleep=sleep,
        clock=clock,
        deadline=started.deadline,
        scrub=scrub,
    )
    status = _status(job)
    if status == "failed":
        error = job.error
        # why not `job.error is not None`: real responses carry "error": {} on non-failed jobs
        code = error.code if error and error.code else "unknown_error"
        message = error.message if error and error.message else "no error message from the API"
        raise FineTuneFailed(
            scrub(f"fine-tuning job {job.id} failed: {code}: {message}"),
            job_id=job.id,
            code=scrub(code),
            api_message=scrub(message),
            param=scrub(error.param if error else None),
        )
    if status == "cancelled":
        raise FineTuneCancelled(f"fine-tuning job {job.id} was cancelled", job_id=job.id)

    return scrub(
        OpenAIFineTuneResult(
            job_id=job.id,
            status=status,
            fine_tuned_model=job.fine_tuned_model,
            trained_tokens=job.trained_tokens,
            training_file_id=job.training_file,
            validation_file_id=job.validation_file,
            checkpoints=_checkpoints(client, job.id),
            metrics=tail.metrics,
            result_metrics=_result_metrics(client, job),
            reattached=started.reattached,
            hyperparameters=_hyperparameters(job),
            method=job_method(job),
        )
    )
