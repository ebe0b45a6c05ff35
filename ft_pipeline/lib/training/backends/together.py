"""The ``together`` backend: Together AI fine-tuning jobs (SFT, DPO, SFT then DPO) through the
``together`` SDK (3.1, Stainless-generated like ``openai``).

What the SDK's source says, and how this module uses it:

* **Files.** ``files.upload(file, purpose="fine-tune", check=True)`` checks the file locally
  first (``together.lib.utils.files.check_file``: UTF-8, one JSON object per line, at least one
  sample; a failed check raises ``FileTypeError`` before anything is sent), then uploads it
  (``POST /v1/files`` answered by a redirect to storage, a ``PUT`` there, ``POST
  /v1/files/{id}/preprocess``). The server validates the lines afterwards: the file's
  ``processing_status`` goes to ``COMPLETED``, or ``FAILED`` / ``INVALID_FORMAT`` with a
  ``validation_report.error``; we wait for it (bounded by the overall deadline) and stop with a
  :class:`FineTuneError` naming the file on a failure. SFT trains on the SFT splits' chat JSONL
  (``{"messages": [...]}``, the SDK's ``conversation`` format); DPO on preference_dataset's
  ``<split>.openai.jsonl`` (``input`` / ``preferred_output`` / ``non_preferred_output``: the
  SDK's ``preference_openai`` format, ``together.lib.constants.JSONL_REQUIRED_COLUMNS_MAP``;
  that its nested shape is OpenAI's is *unverified*), so no conversion is needed.
* **Jobs.** ``fine_tuning.create`` (``POST /v1/fine-tunes``) with ``training_method`` ``"sft"``
  or ``"dpo"``, ``lora`` (LoRA by default), ``lora_r`` / ``lora_alpha``, ``suffix`` ("up to 40
  characters", added to the output model name), ``random_seed``; it first reads the model's
  limits (we fetch them ourselves, with the SDK's retries, and pass them in) and asks for a
  price estimate. ``sft_then_dpo``: the SDK's ``from_checkpoint`` continues "training from a
  previous fine-tuning job" with any method, so the DPO stage is a job ``from_checkpoint=<the
  SFT job id>`` (no ``model``: the SDK refuses both), whose output model is the one recorded.
  Statuses: ``pending``, ``queued``, ``running``, ``compressing``, ``uploading``,
  ``cancel_requested`` (live); ``completed``, ``error``, ``user_error``, ``cancelled`` (terminal,
  ``together.lib.types.fine_tuning.COMPLETED_STATUSES``); treated as an open string.
* **Idempotency by run key.** A Together job has no metadata field (neither the request nor the
  job object in the SDK has one), so the run key travels in the **suffix**: ``<suffix>-<run
  key>`` (16 hex characters; ``suffix`` may therefore have at most 23). Before uploading anything
  we list the jobs (``GET /v1/fine-tunes``, no server-side filter) and re-attach to the newest
  one whose ``suffix`` is that string (or, for a server that does not echo the suffix, whose
  output model name contains it) with the same training method and a status that is not
  error / user_error / cancelled. Create is sent with ``max_retries=0`` (the SDK sends no
  idempotency key, so its own retry of a create whose response was lost could start a second
  billable job); after an ambiguous failure (connection error, timeout, 408/409/429/5xx) we look
  the job up by run key again *before* trying again, at most ``create_attempts`` times.
* **Polling** ``fine_tuning.retrieve`` with backoff (x1.5 up to ``max_poll_interval_s``) and an
  overall deadline (``timeout_s``, uploads included): after it the job is cancelled and
  :class:`FineTuneTimeout` raised. Transient poll errors (after the SDK's own retries) are
  tolerated ``max_consecutive_poll_errors`` times in a row.
* **Events** (``GET /v1/fine-tunes/{id}/events``) come as one list without ids or paging; each
  poll emits the events not seen before (by creation time, type, message and step), once each.
* **Metrics** (``GET /v1/fine-tunes/{id}/metrics``: a list of name -> number mappings) and
  **checkpoints** are read once the job completed, best effort (the model exists and is billed;
  missing figures must not lose it).

Secrets: the API key never appears in anything this module produces (log lines, exception
messages, records); every string from the API is scrubbed of it as defence in depth. Pure
library code: never import dagster here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import together
from together.lib.types.error import FileTypeError

from ft_pipeline.lib.storage import content_version
from ft_pipeline.lib.training.backends.base import (
    JobHandle,
    PreparedRun,
    TrainingHooks,
    TrainingOutcome,
    TrainingRequest,
)
from ft_pipeline.lib.training.backends.openai import hosted_outcome, hosted_record
from ft_pipeline.lib.training.fine_tune import openai_preference_files, sft_only
from ft_pipeline.lib.training.openai_job import (
    FineTuneCancelled,
    FineTuneError,
    FineTuneFailed,
    FineTuneTimeout,
    OpenAIFineTuneResult,
    Scrubber,
    retry_after_s,
)

__all__ = [
    "DEFAULT_TOGETHER_MODEL",
    "TOGETHER_METHODS",
    "TogetherBackend",
    "TogetherFineTuneConfig",
    "cancel_together_job",
    "find_together_job",
    "run_suffix",
]

logger = logging.getLogger(__name__)

#: The base of Together jobs when none is configured: the model of the SDK's own LoRA example
#: (``together/lib/cli/utils/_help_examples.py`` in together 3.1.1:
#: ``tg ft create --model Qwen/Qwen2-1.5B --training-file ./my-dataset.jsonl --lora``).
DEFAULT_TOGETHER_MODEL = "Qwen/Qwen2-1.5B"
#: sft and dpo are the SDK's ``AVAILABLE_TRAINING_METHODS``; sft_then_dpo is two jobs.
TOGETHER_METHODS = frozenset({"sft", "dpo", "sft_then_dpo"})
#: "Up to 40 character suffix that will be added to your fine-tuned model name" (SDK docstring).
MAX_SUFFIX_CHARS = 40
#: Characters of the run key carried in the suffix (the whole key: ``content_version`` is 16 hex).
RUN_KEY_CHARS = 16
#: Longest configurable suffix: the rest of the 40 carries ``-<run key>``.
MAX_USER_SUFFIX_CHARS = MAX_SUFFIX_CHARS - RUN_KEY_CHARS - 1
TERMINAL_STATUSES = frozenset({"completed", "error", "user_error", "cancelled"})
#: A job of these statuses is never re-attached (a new one is created).
DEAD_STATUSES = frozenset({"error", "user_error", "cancelled"})
FILE_DONE_STATUSES = frozenset({"COMPLETED", "FAILED", "INVALID_FORMAT"})
#: Settings that change how we wait, not what is trained: left out of the run key.
OPERATIONAL_SETTINGS = ("poll_interval_s", "max_poll_interval_s", "timeout_s", "create_attempts")
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_TRANSIENT_POLL_ERRORS = (together.APIConnectionError, together.RateLimitError, together.InternalServerError)


@dataclass(frozen=True)
class TogetherFineTuneConfig:
    """Settings of one Together AI fine-tuning run (validated on construction).

    Attributes:
        model: base model to fine-tune. Default :data:`DEFAULT_TOGETHER_MODEL`
            (``Qwen/Qwen2-1.5B``, the SDK's LoRA example).
        method: ``"sft"`` (the SFT splits' chat JSONL), ``"dpo"`` (preference_dataset's OpenAI
            preference JSONL) or ``"sft_then_dpo"`` (an SFT job, then a DPO job continuing it
            with ``from_checkpoint``). Default ``"sft"``.
        lora: LoRA adapters (True) or full fine-tuning (False; only for models whose limits
            allow it). Default True.
        lora_r: LoRA rank; None = the model's default rank (its limits' ``default_rank``).
            Default None.
        lora_alpha: LoRA alpha; None = twice the rank (the SDK's default). Default None.
        lora_dropout: in [0, 1). Default 0.0.
        n_epochs: passes over the training data. Default 3 (the SDK's default is 1).
        learning_rate: peak learning rate. Default 1e-5 (the SDK's default).
        batch_size: an integer within the model's limits, or ``"max"``. Default ``"max"`` (the
            SDK's default).
        n_evals: evaluations on the validation file during training (only sent with one).
            Default 1.
        n_checkpoints: checkpoints kept. Default 1 (the SDK's default).
        dpo_beta: DPO's beta (> 0; higher = closer to the reference); None = the API's default.
            Sent for the DPO job only. Default None.
        suffix: the readable part of the model name's suffix; the run key is appended
            (``<suffix>-<run key>``), so at most 23 characters; ``""`` sends the run key alone.
            Default ``"ft-pipeline"``.
        seed: ``random_seed``. Default 42.
        poll_interval_s: delay before the second poll; each later one x1.5, capped at
            ``max_poll_interval_s``. Default 10.0.
        max_poll_interval_s: cap of the poll delay. Default 60.0.
        timeout_s: overall budget, uploads included; on expiry the job is cancelled and
            :class:`FineTuneTimeout` raised. Default 6 h (21600).
        create_attempts: at most this many create requests per job (each with
            ``max_retries=0`` and reconciled by run key). Default 3.
        max_consecutive_poll_errors: transient poll failures tolerated in a row before giving up
            (the job is *not* cancelled then; a rerun re-attaches). Default 5.
    """

    model: str = DEFAULT_TOGETHER_MODEL
    method: str = "sft"
    lora: bool = True
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    n_epochs: int = 3
    learning_rate: float = 1e-5
    batch_size: int | str = "max"
    n_evals: int = 1
    n_checkpoints: int = 1
    dpo_beta: float | None = None
    suffix: str = "ft-pipeline"
    seed: int = 42
    poll_interval_s: float = 10.0
    max_poll_interval_s: float = 60.0
    timeout_s: float = 6 * 3600
    create_attempts: int = 3
    max_consecutive_poll_errors: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model must be a non-empty string")
        if self.method not in TOGETHER_METHODS:
            raise ValueError(f"method must be one of {sorted(TOGETHER_METHODS)}, got {self.method!r}")
        if self.lora_r is not None and self.lora_r < 1:
            raise ValueError("lora_r must be >= 1 (or None for the model's default)")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError("lora_alpha must be > 0 (or None for twice the rank)")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError("lora_dropout must be in [0, 1)")
        if self.n_epochs < 1 or self.n_evals < 0 or self.n_checkpoints < 1:
            raise ValueError("need n_epochs >= 1, n_evals >= 0 and n_checkpoints >= 1")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be > 0")
        if self.batch_size != "max" and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ValueError(f"batch_size must be 'max' or an integer >= 1, got {self.batch_size!r}")
        if self.dpo_beta is not None and not self.dpo_beta > 0:
            raise ValueError("dpo_beta must be > 0 (or None for the API's default)")
        if not isinstance(self.suffix, str) or len(self.suffix) > MAX_USER_SUFFIX_CHARS:
            raise ValueError(
                f"suffix must be a string of at most {MAX_USER_SUFFIX_CHARS} characters "
                f"(the run key takes the rest of Together's {MAX_SUFFIX_CHARS})"
            )
        if not self.poll_interval_s > 0 or not self.max_poll_interval_s >= self.poll_interval_s:
            raise ValueError("need 0 < poll_interval_s <= max_poll_interval_s")
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        if self.create_attempts < 1 or self.max_consecutive_poll_errors < 0:
            raise ValueError("create_attempts must be >= 1 and max_consecutive_poll_errors >= 0")


def together_run_key(config: TogetherFineTuneConfig, data_version: str, stage: str) -> str:
    """The idempotency key of one job: the data it trains on and the settings that shape it (not
    the waiting knobs). ``stage``: the job's method; an ``sft`` stage of ``sft_then_dpo`` has the
    key of a plain ``sft`` run, so an earlier one is re-attached, not paid for again."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in OPERATIONAL_SETTINGS}
    settings["method"] = stage
    if stage == "sft":
        settings.pop("dpo_beta", None)
    return content_version("together", data_version, settings)


def run_suffix(config: TogetherFineTuneConfig, run_key: str) -> str:
    """The job's suffix: the configured one and the run key (what re-attachment looks for)."""
    key = run_key[:RUN_KEY_CHARS]
    return f"{config.suffix}-{key}" if config.suffix else key


def _status(job: Any) -> str:
    status = getattr(job, "status", None)
    return str(getattr(status, "value", status) or "")


def _method(job: Any) -> str:
    method = getattr(job, "training_method", None)
    return str(getattr(method, "method", None) or "sft")


def _output_name(job: Any) -> str | None:
    # the Stainless model calls it x_model_output_name (alias model_output_name)
    return getattr(job, "x_model_output_name", None) or getattr(job, "output_name", None)


def find_together_job(client: together.Together, suffix: str, *, method: str) -> Any | None:
    """The newest job of ``method`` (``sft`` / ``dpo``) carrying ``suffix`` (see the module
    docstring) whose status is not error / user_error / cancelled, or None."""
    best = None
    for job in client.fine_tuning.list().data:
        carries = job.suffix == suffix or suffix in (_output_name(job) or "")
        if not carries or _status(job) in DEAD_STATUSES or _method(job) != method:
            continue
        if best is None or job.created_at > best.created_at:
            best = job
    return best


def cancel_together_job(client: together.Together, job_id: str) -> str:
    """Cancel a job and return its status afterwards; a job already terminal is left as it is."""
    try:
        return _status(client.fine_tuning.cancel(job_id))
    except (together.BadRequestError, together.ConflictError):
        job = client.fine_tuning.retrieve(job_id)
        if _status(job) in TERMINAL_STATUSES:
            return _status(job)
        raise


def _event_key(event: Any) -> tuple[Any, ...]:
    return (event.created_at, str(event.type), event.message, getattr(event, "step", None))


@dataclass
class _Stage:
    """One job of a run: its method, key, suffix and the API's job object as last seen."""

    method: str
    key: str
    suffix: str
    job: Any
    reattached: bool


class TogetherBackend:
    """Fine-tuning jobs on Together AI (or a server that speaks its API, like the test fake).

    ``client``: a ``together.Together``; its retries are used for every call but create.
    ``sleep`` / ``clock``: injectable for tests (``clock`` is monotonic seconds)."""

    name = "together"

    def __init__(
        self,
        client: together.Together,
        config: TogetherFineTuneConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.config = config
        self.sleep = sleep
        self.clock = clock
        self.scrub = Scrubber(client)

    # -- prepare --------------------------------------------------------------------------------
    def prepare(self, request: TrainingRequest) -> PreparedRun:
        config, splits = self.config, request.splits
        if request.method != config.method:
            raise ValueError(f"the run asks for {request.method!r} but the together config says {config.method!r}")
        files: dict[str, Any] = {"splits_version": splits.version}
        if config.method in ("sft", "sft_then_dpo"):
            files["sft"] = (Path(splits.jsonl("train")), Path(splits.jsonl("validation")))
        if request.augmented is not None:  # train_on_augmented: the augmented train split, sft only
            sft_only(config.method)
            augmented = request.augmented
            files["sft"] = (Path(augmented.jsonl()), files["sft"][1])
            data_version, data_paths = augmented.version, {**splits.paths, "train": dict(augmented.paths)}
        elif config.method == "sft":
            data_version, data_paths = splits.version, splits.paths
        else:
            files["dpo"] = openai_preference_files(request.preferences, config.method)
            assert request.preferences is not None  # openai_preference_files raised otherwise
            data_version, data_paths = request.preferences.version, request.preferences.paths
        # sft_then_dpo's DPO job continues the SFT job of these splits: its key names both
        key_data = f"{splits.version}+{data_version}" if config.method == "sft_then_dpo" else data_version
        return PreparedRun(
            key=together_run_key(config, key_data, config.method),
            data_version=data_version,
            data_paths=data_paths,
            files=files,
            settings=dataclasses.asdict(config),
        )

    # -- start ----------------------------------------------------------------------------------
    def start(self, run: PreparedRun, hooks: TrainingHooks) -> JobHandle:
        with self._api_errors("starting the job"):
            return self._start(run, hooks)

    def _start(self, run: PreparedRun, hooks: TrainingHooks) -> JobHandle:
        deadline = self.clock() + self.config.timeout_s
        first = "dpo" if self.config.method == "dpo" else "sft"
        if self.config.method == "sft_then_dpo":
            hooks.on_log(f"sft_then_dpo: SFT job on the splits {run.files['splits_version']}")
        stage = self._start_stage(run, first, deadline, hooks, from_checkpoint=None)
        return JobHandle(
            job_id=stage.job.id, reattached=stage.reattached, state={"stage": stage, "deadline": deadline, "stages": []}
        )

    def _stage_key(self, run: PreparedRun, method: str) -> str:
        if self.config.method == "sft_then_dpo" and method == "sft":
            return together_run_key(self.config, run.files["splits_version"], "sft")
        return run.key

    def _start_stage(
        self, run: PreparedRun, method: str, deadline: float, hooks: TrainingHooks, *, from_checkpoint: str | None
    ) -> _Stage:
        key = self._stage_key(run, method)
        suffix = run_suffix(self.config, key)
        found = find_together_job(self.client, suffix, method=method)
        if found is not None:
            hooks.on_log(f"re-attaching to {method} job {found.id} (status {_status(found)}) for run key {key}")
            return _Stage(method, key, suffix, found, reattached=True)
        train, validation = run.files[method]
        train_id = self._upload(train, deadline)
        validation_id = self._upload(validation, deadline) if validation is not None else None
        if self.clock() >= deadline:
            raise FineTuneTimeout(f"timed out after {self.config.timeout_s:g} s before a {method} job was created")
        job = self._create(method, key, suffix, train_id, validation_id, from_checkpoint)
        hooks.on_log(f"created {method} job {job.id} (suffix {suffix})")
        return _Stage(method, key, suffix, job, reattached=False)

    def _upload(self, path: Path, deadline: float) -> str:
        """Upload one JSONL file (the SDK checks it first) and wait until the API validated it."""
        try:
            uploaded = self.client.files.upload(file=path, purpose="fine-tune", check=True)
        except FileTypeError as err:
            raise FineTuneError(self.scrub(f"{path.name} failed the together file check: {err}")) from None
        interval = min(self.config.poll_interval_s, 1.0)
        while uploaded.processing_status not in (None, *FILE_DONE_STATUSES) and self.clock() < deadline:
            self.sleep(min(interval, max(0.0, deadline - self.clock())))
            interval = min(interval * 1.5, 30.0)
            uploaded = self.client.files.retrieve(uploaded.id)
        if uploaded.processing_status in ("FAILED", "INVALID_FORMAT"):
            report = uploaded.validation_report
            details = (report.error if report is not None else None) or "no details"
            raise FineTuneError(
                self.scrub(
                    f"uploaded file {uploaded.id} ({path.name}) failed validation "
                    f"({uploaded.processing_status}): {details}"
                )
            )
        return str(uploaded.id)

    def _create_params(
        self, method: str, suffix: str, train_id: str, validation_id: str | None, from_checkpoint: str | None
    ) -> dict[str, Any]:
        config = self.config
        params: dict[str, Any] = {
            "training_file": train_id,
            "validation_file": validation_id,
            "n_evals": config.n_evals if validation_id else 0,
            "n_epochs": config.n_epochs,
            "n_checkpoints": config.n_checkpoints,
            "batch_size": config.batch_size,
            "learning_rate": config.learning_rate,
            "suffix": suffix,
            "random_seed": config.seed,
            "training_method": method,
            # why: the SDK reads them itself otherwise, inside the create that runs without retries
            "model_limits": self.client.fine_tuning.model_limits(model_name=config.model),
        }
        if from_checkpoint is None:
            params.update(model=config.model, lora=config.lora, lora_r=config.lora_r, lora_dropout=config.lora_dropout)
            if config.lora_alpha is not None:
                params["lora_alpha"] = config.lora_alpha
        else:
            # lora=None: the continued job inherits the training type (and rank) of its parent
            params.update(model=None, from_checkpoint=from_checkpoint, lora=None)
        if method == "sft":
            params["train_on_inputs"] = "auto"  # the SDK's own default, set so it does not warn
        elif config.dpo_beta is not None:
            params["dpo_beta"] = config.dpo_beta
        return params

    def _create(
        self,
        method: str,
        key: str,
        suffix: str,
        train_id: str,
        validation_id: str | None,
        from_checkpoint: str | None,
    ) -> Any:
        """Create the job at most ``create_attempts`` times, reconciling by run key after every
        ambiguous failure so a lost response never leads to a second job."""
        params = self._create_params(method, suffix, train_id, validation_id, from_checkpoint)
        creator = self.client.with_options(max_retries=0)
        last_error: Exception | None = None
        for attempt in range(1, self.config.create_attempts + 1):
            try:
                job = creator.fine_tuning.create(**params)
                logger.info("created %s fine-tuning job %s (attempt %d)", method, job.id, attempt)
                return job
            except ValueError as err:  # the SDK's own checks of the request (batch size, rank ...)
                raise FineTuneError(self.scrub(f"the together SDK refused the {method} job: {err}")) from None
            except together.APIStatusError as err:
                status = err.status_code
                retryable = (status in _RETRYABLE_STATUSES or status >= 500) and err.response.headers.get(
                    "x-should-retry"
                ) != "false"
                if not retryable:
                    raise FineTuneError(
                        self.scrub(f"{method} job creation was rejected: HTTP {status}: {_api_message(err)}")
                    ) from None
                last_error = err
            except together.APIConnectionError as err:  # includes APITimeoutError
                last_error = err
            logger.warning("create attempt %d failed (%s); reconciling by run key", attempt, type(last_error).__name__)
            found = find_together_job(self.client, suffix, method=method)
            if found is not None:
                logger.info("found job %s for run key %s after an ambiguous create", found.id, key)
                return found
            if attempt < self.config.create_attempts:
                self.sleep(retry_after_s(last_error) or min(2.0 ** (attempt - 1), 30.0))
        raise FineTuneError(
            f"could not create the {method} job after {self.config.create_attempts} attempt(s); "
            f"last error: {type(last_error).__name__}"
        )

    # -- wait -----------------------------------------------------------------------------------
    def wait(self, run: PreparedRun, job: JobHandle, hooks: TrainingHooks) -> JobHandle:
        with self._api_errors(f"waiting for job {job.job_id}"):
            return self._wait(run, job, hooks)

    @contextlib.contextmanager
    def _api_errors(self, doing: str) -> Iterator[None]:
        """An API error that survived the SDK's retries becomes a :class:`FineTuneError` with the
        API's message, scrubbed of the key (the SDK's exception is not shown with it)."""
        try:
            yield
        except together.APIStatusError as err:
            message = self.scrub(f"together API error while {doing}: HTTP {err.status_code}: {_api_message(err)}")
        except together.APIError as err:
            message = self.scrub(f"together API error while {doing}: {type(err).__name__}: {err}")
        else:
            return
        raise FineTuneError(message) from None

    def _wait(self, run: PreparedRun, job: JobHandle, hooks: TrainingHooks) -> JobHandle:
        stage: _Stage = job.state["stage"]
        deadline: float = job.state["deadline"]
        stage.job = self._watch(stage.job, deadline, hooks)
        if self.config.method == "sft_then_dpo" and stage.method == "sft":
            job.state["stages"].append(stage)
            hooks.on_log(f"sft_then_dpo: DPO job continuing {stage.job.id}")
            dpo = self._start_stage(run, "dpo", deadline, hooks, from_checkpoint=stage.job.id)
            # In place: a cancel while the DPO stage runs must reach the DPO job.
            job.job_id, job.state["stage"] = dpo.job.id, dpo
            job.reattached = job.reattached and dpo.reattached
            hooks.on_job(dpo.job.id)
            dpo.job = self._watch(dpo.job, deadline, hooks)
        return job

    def _watch(self, job: Any, deadline: float, hooks: TrainingHooks) -> Any:
        """Poll until the job is terminal (streaming its new events); raise unless it completed."""
        seen: set[tuple[Any, ...]] = set()
        interval, errors, first = self.config.poll_interval_s, 0, True
        while True:
            try:
                if not first:  # the job we start from is fresh (create / list)
                    job = self.client.fine_tuning.retrieve(job.id)
                self._tail(job.id, seen, hooks)
                errors = 0
            except _TRANSIENT_POLL_ERRORS as err:
                errors += 1
                logger.warning("polling job %s failed (%s), %d in a row", job.id, type(err).__name__, errors)
                if errors > self.config.max_consecutive_poll_errors:
                    raise FineTuneError(
                        f"lost contact with together job {job.id} after {errors} failed polls "
                        f"({type(err).__name__}); it was not cancelled, rerun with the same run key to re-attach",
                        job_id=job.id,
                    ) from None
            else:
                if _status(job) in TERMINAL_STATUSES:
                    return self._ended(job, seen)
            first = False
            now = self.clock()
            if now >= deadline:
                outcome = self._cancel_for_timeout(job.id)
                raise FineTuneTimeout(
                    self.scrub(f"together job {job.id} timed out after {self.config.timeout_s:g} s; {outcome}"),
                    job_id=job.id,
                )
            self.sleep(min(interval, max(0.0, deadline - now)))
            interval = min(interval * 1.5, self.config.max_poll_interval_s)

    def _tail(self, job_id: str, seen: set[tuple[Any, ...]], hooks: TrainingHooks) -> list[Any]:
        """Emit the job's events not emitted before, oldest first; returns them."""
        events = self.client.fine_tuning.list_events(job_id).data
        new = [e for e in events if _event_key(e) not in seen]
        for event in sorted(new, key=lambda e: str(e.created_at)):
            seen.add(_event_key(event))
            level = str(event.level or "info")
            hooks.on_log(self.scrub(f"[{level}] {event.message}"))
        return new

    def _ended(self, job: Any, seen: set[tuple[Any, ...]]) -> Any:
        status = _status(job)
        if status == "completed":
            if not _output_name(job):
                raise FineTuneError(f"together job {job.id} completed without an output model name", job_id=job.id)
            return job
        if status == "cancelled":
            raise FineTuneCancelled(f"together job {job.id} was cancelled", job_id=job.id)
        # error / user_error: the job object carries no error field; its last error event says why
        events = self.client.fine_tuning.list_events(job.id).data
        errors = [e.message for e in events if str(e.level or "") == "error" or str(e.type) == "job_error"]
        message = errors[-1] if errors else "no error event from the API"
        raise FineTuneFailed(
            self.scrub(f"together job {job.id} ended {status}: {message}"),
            job_id=job.id,
            code=status,
            api_message=self.scrub(message),
        )

    def _cancel_for_timeout(self, job_id: str) -> str:
        try:
            return f"remote status after cancel: {cancel_together_job(self.client, job_id)}"
        except together.TogetherError as err:
            logger.error("cancelling together job %s failed: %s", job_id, type(err).__name__)
            return f"the cancel request failed ({type(err).__name__}); cancel job {job_id} by hand"

    # -- result / cancel ------------------------------------------------------------------------
    def result(self, run: PreparedRun, job: JobHandle, request: TrainingRequest) -> TrainingOutcome:
        stage: _Stage = job.state["stage"]
        final = stage.job
        earlier = [s.job for s in job.state["stages"]]
        tokens = [j.token_count for j in [*earlier, final] if getattr(j, "token_count", None) is not None]
        trained_tokens = sum(tokens) if tokens else None
        history = self._metrics(final.id)
        checkpoints = self._checkpoints(final.id)
        hyperparameters = {
            "n_epochs": final.n_epochs,
            "learning_rate": final.learning_rate,
            "batch_size": final.batch_size,
            **_training_type(final),
        }
        final_metrics = {k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, int | float)}
        summary = OpenAIFineTuneResult(
            job_id=final.id,
            status="completed",
            fine_tuned_model=_output_name(final),
            trained_tokens=trained_tokens,
            training_file_id=str(final.training_file or ""),
            validation_file_id=final.validation_file or None,
            checkpoints=checkpoints,
            metrics=history,
            result_metrics=final_metrics,
            reattached=job.reattached,
            hyperparameters=hyperparameters,
            method=stage.method,
        )
        config_hash = content_version(dataclasses.asdict(self.config))
        record = hosted_record(self.name, run, request, summary, self.config.model, config_hash, trained_tokens)
        return hosted_outcome(record, summary, job.reattached, request)

    def _metrics(self, job_id: str) -> list[dict[str, Any]]:
        """The job's metrics rows, oldest first, with ``step`` (from ``global_step``) and the loss
        names the asset's chart reads (``train_loss``; ``valid_loss`` from ``eval_loss``)."""
        try:
            rows = self.client.fine_tuning.list_metrics(job_id).metrics or []
        except together.APIError as err:
            logger.warning("could not read the metrics of job %s: %s", job_id, type(err).__name__)
            return []
        history = []
        for row in rows:
            item: dict[str, Any] = dict(row)
            if "step" not in item and "global_step" in item:
                item["step"] = int(item["global_step"])
            if "train_loss" not in item and "loss" in item:
                item["train_loss"] = item["loss"]
            if "valid_loss" not in item and "eval_loss" in item:
                item["valid_loss"] = item["eval_loss"]
            history.append(item)
        return sorted(history, key=lambda r: r.get("step", 0))

    def _checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's checkpoints by ascending step, shaped like the openai backend's."""
        try:
            data = self.client.fine_tuning.list_checkpoints(job_id).data
        except together.APIError as err:
            logger.warning("could not read the checkpoints of job %s: %s", job_id, type(err).__name__)
            return []
        rows = [
            {
                "id": c.object_name or c.path,
                "step_number": c.step,
                "fine_tuned_model_checkpoint": c.object_name or c.path,
                "checkpoint_type": c.checkpoint_type,
                "metrics": {},
            }
            for c in data
        ]
        return sorted(rows, key=lambda r: r["step_number"])

    def cancel(self, job: JobHandle) -> str:
        return cancel_together_job(self.client, job.job_id)


def _training_type(job: Any) -> dict[str, Any]:
    kind = getattr(job, "training_type", None)
    if kind is None:
        return {}
    values = {"training_type": str(getattr(kind, "type", ""))}
    for name in ("lora_r", "lora_alpha", "lora_dropout"):
        if getattr(kind, name, None) is not None:
            values[name] = getattr(kind, name)
    return values


def _api_message(err: together.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return str(err.message)
