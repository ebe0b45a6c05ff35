"""Export and validation of preference (DPO) and unpaired preference (KTO) JSONL.

Works from the ``pairs`` and ``kto`` frames of the preference dataset builder (columns fixed by
the shared design: ``pairs`` has ``prompt`` (list of ``{role, content}``: every message before
the final assistant turn), ``chosen`` and ``rejected`` (str); ``kto`` has ``prompt``,
``completion`` (str) and ``label`` (bool)).  Three line formats:

* ``"openai"`` -- the OpenAI / Azure OpenAI DPO fine-tuning line::

      {"input": {"messages": [...]},
       "preferred_output": [{"role": "assistant", "content": ...}],
       "non_preferred_output": [{"role": "assistant", "content": ...}]}

  Sources: the OpenAI "Direct preference optimization" guide
  (https://developers.openai.com/api/docs/guides/direct-preference-optimization: each line holds
  ``input.messages`` (optionally ``input.tools`` / ``input.parallel_tool_calls``), a
  ``preferred_output`` and a ``non_preferred_output``, the example's input ending in a user
  message) and Azure's "Direct preference optimization" how-to
  (https://learn.microsoft.com/azure/foundry-classic/openai/how-to/fine-tuning-direct-preference-optimization:
  "an input and exactly two outputs", output messages with the assistant role, both answering
  the same prompt).  /work/shared/reference/openai_eval_registry.md (section 1.6) records the
  same keys; the job is created with ``method={"type": "dpo", ...}``.
* ``"trl_dpo"`` -- TRL's *conversational preference* type, what ``DPOTrainer`` consumes
  (TRL 1.16 ``dpo_trainer.py``: keys ``prompt``, ``chosen``, ``rejected``; for conversational
  data it tokenizes ``prompt + chosen`` and ``prompt + rejected`` with the chat template)::

      {"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}

* KTO -- TRL's *conversational unpaired preference* type, what ``KTOTrainer`` consumes
  (``prompt``, ``completion``, ``label``; see the TRL "Dataset formats" and "KTO Trainer" docs)::

      {"prompt": [...], "completion": [{"role": "assistant", ...}], "label": true}

Only the training fields are exported: pipeline columns (ids, tags, hashes) stay in the parquet.
Messages are exported as ``{"role", "content"}`` only.  Export refuses rows that would produce a
line the trainers reject (empty prompt, empty or non-string completion, chosen == rejected) with
``ValueError``: the builder must never emit them.

:func:`validate_preference_jsonl` checks an ``"openai"`` file before upload.  Error codes (all
present, 0 when clean, so downstream metadata has a stable schema; see
:data:`PREFERENCE_FORMAT_ERROR_KEYS`):

* ``invalid_json`` -- the line is not UTF-8 JSON; ``data_type`` -- it is not a JSON object;
* ``missing_key`` / ``unrecognized_key`` -- the line's keys are not exactly ``input``,
  ``preferred_output``, ``non_preferred_output`` (``input`` may only hold ``messages``,
  ``tools``, ``parallel_tool_calls``);
* ``missing_messages_list`` -- ``input`` is not an object or ``input.messages`` is not a
  non-empty list;
* ``message_missing_key`` / ``message_unrecognized_key`` / ``unrecognized_role`` /
  ``missing_content`` -- per offending input message, as in the SFT validator
  (:mod:`ft_pipeline.lib.openai_format`; roles from its ``ALLOWED_ROLES``, keys from its
  ``ALLOWED_MESSAGE_KEYS`` less ``weight``, which is an SFT-only control);
* ``input_not_ending_with_user`` -- the last input message is not a user turn;
* ``invalid_output`` -- per output field: not a list of exactly one ``{"role": "assistant",
  "content": str}`` message (no other keys);
* ``empty_output`` -- per output field: the assistant content is empty or whitespace;
* ``identical_outputs`` -- preferred and non-preferred content are the same (after stripping);
* ``example_too_long`` -- ``input`` + either output is over the model's per-example token limit
  (:func:`~ft_pipeline.lib.openai_format.token_limit_for_model`, counted with a
  :class:`~ft_pipeline.lib.tokens.TokenCounter`).  Unlike SFT, where truncation merely shortens
  an example, truncating a preference pair can cut away exactly the part where the two outputs
  differ, so an over-long pair is an error here, not a warning.

As in the SFT validator, at least ``MIN_TRAINING_EXAMPLES`` examples are required (unless
``require_min_examples=False``, for validation files) and a file over ``MAX_FILE_BYTES`` fails.

Pure Python: never import dagster here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ft_pipeline.lib.openai_format import (
    ALLOWED_MESSAGE_KEYS,
    ALLOWED_ROLES,
    DEFAULT_OPENAI_FINE_TUNING_MODEL,
    DEFAULT_TOKEN_LIMIT,
    INVALID_JSON_KEY,
    MAX_ERROR_EXAMPLES,
    MAX_FILE_BYTES,
    MIN_TRAINING_EXAMPLES,
    token_limit_for_model,
)
from ft_pipeline.lib.storage import _atomic_target
from ft_pipeline.lib.tokens import TokenCounter, TokenCounterConfig, make_token_counter

__all__ = [
    "OPENAI_PREFERENCE_KEYS",
    "PREFERENCE_FORMATS",
    "PREFERENCE_FORMAT_ERROR_KEYS",
    "PreferenceFormat",
    "PreferenceFormatReport",
    "to_openai_preference_record",
    "to_trl_dpo_record",
    "to_trl_kto_record",
    "validate_preference_jsonl",
    "write_kto_jsonl",
    "write_preference_jsonl",
]

PreferenceFormat = Literal["openai", "trl_dpo"]
#: Line formats :func:`write_preference_jsonl` writes.
PREFERENCE_FORMATS: tuple[str, ...] = ("openai", "trl_dpo")

#: Top-level keys of an OpenAI DPO line, exactly.
OPENAI_PREFERENCE_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
#: Keys allowed inside ``input`` (OpenAI DPO guide).
_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
#: Input message keys: the SFT set less ``weight`` (an SFT training control).
_INPUT_MESSAGE_KEYS = ALLOWED_MESSAGE_KEYS - {"weight"}
_OUTPUT_FIELDS = ("preferred_output", "non_preferred_output")

#: Every error code :func:`validate_preference_jsonl` reports (module docstring), in report order.
PREFERENCE_FORMAT_ERROR_KEYS: tuple[str, ...] = (
    INVALID_JSON_KEY,
    "data_type",
    "missing_key",
    "unrecognized_key",
    "missing_messages_list",
    "message_missing_key",
    "message_unrecognized_key",
    "unrecognized_role",
    "missing_content",
    "input_not_ending_with_user",
    "invalid_output",
    "empty_output",
    "identical_outputs",
    "example_too_long",
)

# Examples per token-counting batch while validating (bounds memory on big files).
_BATCH = 10_000

_PAIR_COLUMNS = ("prompt", "chosen", "rejected")
_KTO_COLUMNS = ("prompt", "completion", "label")


# --------------------------------------------------------------------------- records


def _prompt_messages(prompt: object) -> list[dict[str, str]]:
    """``prompt`` as plain ``[{"role", "content"}]`` (parquet hands lists over as numpy arrays)."""
    if isinstance(prompt, (np.ndarray, tuple)):
        prompt = list(prompt)
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("prompt must be a non-empty list of messages")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(prompt):
        if not isinstance(msg, Mapping):
            raise ValueError(f"prompt message {i} is {type(msg).__name__}, expected a mapping")
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError(f"prompt message {i} needs string role and content")
        out.append({"role": role, "content": content})
    return out


def _assistant(text: object, name: str) -> list[dict[str, str]]:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return [{"role": "assistant", "content": text}]


def _check_pair(chosen: object, rejected: object) -> None:
    if isinstance(chosen, str) and isinstance(rejected, str) and chosen.strip() == rejected.strip():
        raise ValueError("chosen and rejected are the same text: not a preference")


def to_openai_preference_record(prompt: object, chosen: str, rejected: str) -> dict[str, Any]:
    """One OpenAI / Azure OpenAI DPO line (see the module docstring for the sources).

    ``{"input": {"messages": prompt}, "preferred_output": [{"role": "assistant", "content":
    chosen}], "non_preferred_output": [{"role": "assistant", "content": rejected}]}``.

    Raises:
        ValueError: empty prompt, a prompt message without string role/content, an empty
            chosen/rejected text, or chosen equal to rejected.
    """
    _check_pair(chosen, rejected)
    return {
        "input": {"messages": _prompt_messages(prompt)},
        "preferred_output": _assistant(chosen, "chosen"),
        "non_preferred_output": _assistant(rejected, "rejected"),
    }


def to_trl_dpo_record(prompt: object, chosen: str, rejected: str) -> dict[str, Any]:
    """One TRL conversational preference row: ``{"prompt", "chosen", "rejected"}``.

    ``prompt`` is the message list; ``chosen`` / ``rejected`` are one-message assistant lists, so
    ``DPOTrainer`` applies the chat template to ``prompt + chosen`` and ``prompt + rejected``.

    Raises:
        ValueError: as :func:`to_openai_preference_record`.
    """
    _check_pair(chosen, rejected)
    return {
        "prompt": _prompt_messages(prompt),
        "chosen": _assistant(chosen, "chosen"),
        "rejected": _assistant(rejected, "rejected"),
    }


def to_trl_kto_record(prompt: object, completion: str, label: bool) -> dict[str, Any]:
    """One TRL conversational unpaired preference row: ``{"prompt", "completion", "label"}``.

    Raises:
        ValueError: empty prompt or completion, or a label that is not a boolean.
    """
    if not isinstance(label, (bool, np.bool_)):
        raise ValueError(f"label must be a boolean, got {type(label).__name__}")
    return {
        "prompt": _prompt_messages(prompt),
        "completion": _assistant(completion, "completion"),
        "label": bool(label),
    }


# --------------------------------------------------------------------------- writers


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} frame lacks columns {missing}")


def _write_jsonl(records: Iterator[dict[str, Any]], path: str | os.PathLike) -> int:
    """Write ``records`` as compact UTF-8 JSONL atomically (temp sibling + rename); return the count."""
    tmp, target = _atomic_target(Path(path))
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
                f.write("\n")
                n += 1
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def write_preference_jsonl(pairs: pd.DataFrame, path: str | os.PathLike, fmt: PreferenceFormat) -> int:
    """Write the ``pairs`` frame as preference JSONL in ``fmt``; return the number of lines.

    ``fmt`` is ``"openai"`` (:func:`to_openai_preference_record`) or ``"trl_dpo"``
    (:func:`to_trl_dpo_record`).  One line per row, in the frame's order; UTF-8 with
    ``ensure_ascii=False``; written to a temporary sibling and renamed, so a crash never leaves a
    truncated file under the final name.

    Raises:
        ValueError: unknown ``fmt``, missing columns, or a row the format cannot hold (see the
            record builders); nothing is written then.
    """
    if fmt not in PREFERENCE_FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {PREFERENCE_FORMATS}")
    _require_columns(pairs, _PAIR_COLUMNS, "pairs")
    build = to_openai_preference_record if fmt == "openai" else to_trl_dpo_record
    rows = zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])
    return _write_jsonl((build(p, c, r) for p, c, r in rows), path)


def write_kto_jsonl(kto: pd.DataFrame, path: str | os.PathLike) -> int:
    """Write the ``kto`` frame as TRL unpaired preference JSONL (:func:`to_trl_kto_record`).

    Same file conventions as :func:`write_preference_jsonl`; returns the number of lines.
    """
    _require_columns(kto, _KTO_COLUMNS, "kto")
    rows = zip(kto["prompt"], kto["completion"], kto["label"])
    return _write_jsonl((to_trl_kto_record(p, c, lab) for p, c, lab in rows), path)


# --------------------------------------------------------------------------- validation


@dataclass
class PreferenceFormatReport:
    """Result of :func:`validate_preference_jsonl` (rules in the module docstring).

    ``format_errors`` always holds every key of :data:`PREFERENCE_FORMAT_ERROR_KEYS`;
    ``error_examples`` the first few 1-based line numbers per key.
    """

    n_examples: int
    format_errors: dict[str, int]
    error_examples: dict[str, list[int]]
    token_limit: int
    model: str
    token_counter: str
    token_counter_is_estimate: bool
    warnings: list[str]
    #: longest of input + preferred / input + non-preferred, per example
    max_tokens_per_example: int = 0
    require_min_examples: bool = True
    file_bytes: int | None = None
    #: whitespace-only lines skipped
    n_blank_lines: int = 0
    #: examples with a system message in the input
    n_with_system: int = 0
    too_long_examples: list[int] = field(default_factory=list)

    @property
    def n_format_errors(self) -> int:
        """Total count over all error keys."""
        return int(sum(self.format_errors.values()))

    @property
    def ok(self) -> bool:
        """True when the file can be uploaded as-is: no format errors, enough examples (when
        ``require_min_examples``), within ``MAX_FILE_BYTES``.  Warnings alone do not fail it."""
        if self.n_format_errors:
            return False
        if self.require_min_examples and self.n_examples < MIN_TRAINING_EXAMPLES:
            return False
        return self.file_bytes is None or self.file_bytes <= MAX_FILE_BYTES

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of all fields plus ``ok`` and ``n_format_errors``."""
        d = asdict(self)
        d["ok"] = self.ok
        d["n_format_errors"] = self.n_format_errors
        return d

    def to_markdown(self) -> str:
        """Human-readable report (Markdown)."""
        est = " (estimate)" if self.token_counter_is_estimate else ""
        lines = [
            f"## OpenAI preference (DPO) format check: {'PASS' if self.ok else 'FAIL'}",
            "",
            "| | |",
            "|---|---|",
            f"| examples | {self.n_examples:,} |",
            f"| model | `{self.model}` |",
            f"| token limit per example | {self.token_limit:,} |",
            f"| token counter | `{self.token_counter}`{est} |",
            f"| longest example, tokens{est} | {self.max_tokens_per_example:,} |",
            f"| format errors | {self.n_format_errors:,} |",
        ]
        if self.file_bytes is not None:
            lines.append(f"| file size | {self.file_bytes / 1024**2:,.1f} MiB |")
        lines.append("")
        errors = {k: v for k, v in self.format_errors.items() if v}
        if errors:
            lines += ["### Format errors", "", "| error | count | first lines |", "|---|---:|---|"]
            for key, count in errors.items():
                first = ", ".join(map(str, self.error_examples.get(key, [])))
                lines.append(f"| `{key}` | {count:,} | {first} |")
            lines.append("")
        else:
            lines += ["No format errors found.", ""]
        if self.warnings:
            lines += ["### Warnings", ""] + [f"- {w}" for w in self.warnings] + [""]
        return "\n".join(lines)


class _PreferenceValidator:
    """Streaming accumulator: structure per line, tokens in bounded batches."""

    def __init__(self, model: str, token_counter: TokenCounter | None) -> None:
        limit = token_limit_for_model(model)
        self.model = model
        self.model_known = limit is not None
        self.token_limit = limit if limit is not None else DEFAULT_TOKEN_LIMIT
        self.counter = token_counter or make_token_counter(TokenCounterConfig())
        self.errors: dict[str, int] = dict.fromkeys(PREFERENCE_FORMAT_ERROR_KEYS, 0)
        self.error_examples: dict[str, list[int]] = {}
        self.n_examples = 0
        self.n_with_system = 0
        self.max_tokens = 0
        self._pending: list[list[dict]] = []  # two conversations per pending example
        self._pending_lines: list[int] = []

    def error(self, key: str, line: int) -> None:
        self.errors[key] += 1
        seen = self.error_examples.setdefault(key, [])
        if len(seen) < MAX_ERROR_EXAMPLES and line not in seen:
            seen.append(line)

    def _check_messages(self, messages: list[object], line: int) -> None:
        for msg in messages:
            if not isinstance(msg, dict):
                self.error("message_missing_key", line)
                continue
            if "role" not in msg or "content" not in msg:
                self.error("message_missing_key", line)
            if any(k not in _INPUT_MESSAGE_KEYS for k in msg):
                self.error("message_unrecognized_key", line)
            if "role" in msg and (not isinstance(msg["role"], str) or msg["role"] not in ALLOWED_ROLES):
                self.error("unrecognized_role", line)
            if "content" in msg and not (isinstance(msg["content"], str) and msg["content"].strip()):
                self.error("missing_content", line)
        last = messages[-1]
        if not (isinstance(last, dict) and last.get("role") == "user"):
            self.error("input_not_ending_with_user", line)
        if any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
            self.n_with_system += 1

    def _output(self, value: object, line: int) -> str | None:
        """The assistant content of one output field, or None (error counted) when invalid."""
        if not (
            isinstance(value, list)
            and len(value) == 1
            and isinstance(value[0], dict)
            and set(value[0]) == {"role", "content"}
            and value[0]["role"] == "assistant"
            and isinstance(value[0]["content"], str)
        ):
            self.error("invalid_output", line)
            return None
        content: str = value[0]["content"]
        if not content.strip():
            self.error("empty_output", line)
            return None
        return content

    def add(self, example: object, line: int) -> None:
        self.n_examples += 1
        if not isinstance(example, dict):
            self.error("data_type", line)
            return
        if OPENAI_PREFERENCE_KEYS - example.keys():
            self.error("missing_key", line)
        inp = example.get("input")
        if example.keys() - OPENAI_PREFERENCE_KEYS or (isinstance(inp, dict) and inp.keys() - _INPUT_KEYS):
            self.error("unrecognized_key", line)

        messages = inp.get("messages") if isinstance(inp, dict) else None
        if "input" in example:
            if isinstance(messages, list) and messages:
                self._check_messages(messages, line)
            else:
                self.error("missing_messages_list", line)
                messages = None
        outputs = [self._output(example[f], line) if f in example else None for f in _OUTPUT_FIELDS]
        preferred, rejected = outputs
        if preferred is not None and rejected is not None and preferred.strip() == rejected.strip():
            self.error("identical_outputs", line)
        if messages is not None:
            # Token length of what the model trains on: the input plus each output in turn.
            for out_field in _OUTPUT_FIELDS:
                value = example.get(out_field)
                self._pending.append(messages + (value if isinstance(value, list) else []))
            self._pending_lines.append(line)
            if len(self._pending_lines) >= _BATCH:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_lines:
            return
        total, _ = self.counter.count_conversations(self._pending)
        per_example = total.reshape(-1, 2).max(axis=1)
        for tokens, line in zip(per_example.tolist(), self._pending_lines):
            self.max_tokens = max(self.max_tokens, int(tokens))
            if tokens > self.token_limit:
                self.error("example_too_long", line)
        self._pending, self._pending_lines = [], []

    def finish(self, file_bytes: int, n_blank: int, require_min_examples: bool) -> PreferenceFormatReport:
        self._flush()
        warnings: list[str] = []
        if not self.model_known:
            warnings.append(
                f"Unknown model {self.model!r}: assuming the default {DEFAULT_TOKEN_LIMIT:,}-token limit per example."
            )
        if require_min_examples and self.n_examples < MIN_TRAINING_EXAMPLES:
            warnings.append(f"Only {self.n_examples} examples: at least {MIN_TRAINING_EXAMPLES} are required.")
        if file_bytes > MAX_FILE_BYTES:
            warnings.append(
                f"File is {file_bytes / 1024**2:,.1f} MiB, over the {MAX_FILE_BYTES // 1024**2} MB upload limit."
            )
        if n_blank:
            warnings.append(f"{n_blank} blank lines were skipped.")
        return PreferenceFormatReport(
            n_examples=self.n_examples,
            format_errors=dict(self.errors),
            error_examples={k: list(v) for k, v in self.error_examples.items()},
            token_limit=self.token_limit,
            model=self.model,
            token_counter=self.counter.name,
            token_counter_is_estimate=self.counter.is_estimate,
            warnings=warnings,
            max_tokens_per_example=self.max_tokens,
            require_min_examples=require_min_examples,
            file_bytes=file_bytes,
            n_blank_lines=n_blank,
            n_with_system=self.n_with_system,
            too_long_examples=list(self.error_examples.get("example_too_long", [])),
        )


def validate_preference_jsonl(
    path: str | os.PathLike,
    model: str = DEFAULT_OPENAI_FINE_TUNING_MODEL,
    token_counter: TokenCounter | None = None,
    require_min_examples: bool = True,
) -> PreferenceFormatReport:
    """Validate an OpenAI DPO JSONL file (``fmt="openai"``) line by line, streaming.

    Every non-blank line is one example; whitespace-only lines are skipped with a warning.  The
    per-example token limit is the ``model``'s (the SFT table, ``token_limit_for_model``); tokens
    are counted with ``token_counter`` (default: the chars/4 estimate, labelled as such).  Pass
    ``require_min_examples=False`` for a validation file.
    """
    path = Path(path)
    file_bytes = path.stat().st_size
    v = _PreferenceValidator(model, token_counter)
    n_blank = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                n_blank += 1
                continue
            try:
                example = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                v.n_examples += 1
                v.error(INVALID_JSON_KEY, line_no)
                continue
            v.add(example, line_no)
    return v.finish(file_bytes, n_blank, require_min_examples)
