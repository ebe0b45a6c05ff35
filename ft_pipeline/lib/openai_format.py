"""Export and validation of OpenAI chat fine-tuning JSONL.

The format is one JSON object per line, ``{"messages": [{"role", "content"[, "weight"]}, ...]}``.
It is the de-facto interchange format for chat SFT: besides the OpenAI API,
Hugging Face TRL's ``SFTTrainer`` accepts the same "conversational" records.

Validation re-implements the OpenAI cookbook's ``Chat_finetuning_data_prep``
checks (the seven ``format_errors`` keys, verbatim, plus its warnings and
distributions), with these fixes where the cookbook lags behind the current API:

* message keys ``tool_calls`` / ``tool_call_id`` and roles ``tool`` /
  ``function`` are allowed (current API schema);
* ``weight`` must be 0 or 1 and may only appear on assistant messages; an
  invalid weight is counted as ``message_unrecognized_key`` (the key is not
  recognised *in that form*), so a bad weight makes the file fail validation;
* malformed input never crashes the validator: a non-dict message counts as
  ``message_missing_key``, a ``messages`` value that is not a non-empty list
  counts as ``missing_messages_list``, non-string content as ``missing_content``;
* errors do not cascade: a message missing ``role`` gets ``message_missing_key``
  only (not also ``unrecognized_role``), a missing ``content`` likewise (not
  also ``missing_content``); an assistant message carrying ``tool_calls`` /
  ``function_call`` may omit content or set it to ``null`` (API schema);
* tokens are counted with a :class:`~ft_pipeline.lib.tokens.TokenCounter`
  (default: the chars/4 estimate, labelled as such) instead of a hard-wired
  ``cl100k_base``;
* the per-example limit depends on the model (``MODEL_TOKEN_LIMITS``), at least
  ``MIN_TRAINING_EXAMPLES`` examples are required, files over ``MAX_FILE_BYTES``
  fail, and examples not ending in an assistant message are reported;
* the 10th/90th percentiles are labelled ``p10``/``p90`` (the cookbook computes
  the 0.1/0.9 quantiles but prints them as "p5/p95").

As in the cookbook, message-level error counts are per offending *message*, so
a count can exceed the number of examples; ``error_examples`` lists the first
few offending example line numbers (1-based) per key.

Pure Python: never import dagster here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ft_pipeline.lib.tokens import TokenCounter, TokenCounterConfig, make_token_counter

__all__ = [
    "ALLOWED_MESSAGE_KEYS",
    "ALLOWED_ROLES",
    "DEFAULT_TOKEN_LIMIT",
    "FORMAT_ERROR_KEYS",
    "FormatReport",
    "INVALID_JSON_KEY",
    "MAX_FILE_BYTES",
    "MIN_TRAINING_EXAMPLES",
    "MODEL_TOKEN_LIMITS",
    "estimate_training_cost_tokens",
    "to_openai_record",
    "token_limit_for_model",
    "validate_examples",
    "validate_jsonl_file",
    "write_openai_jsonl",
]

#: The cookbook's seven ``format_errors`` keys, verbatim.
FORMAT_ERROR_KEYS: tuple[str, ...] = (
    "data_type",
    "missing_messages_list",
    "message_missing_key",
    "message_unrecognized_key",
    "unrecognized_role",
    "missing_content",
    "example_missing_assistant_message",
)
#: Extra key used by :func:`validate_jsonl_file` for lines that are not valid JSON (or not UTF-8).
INVALID_JSON_KEY = "invalid_json"

#: Message keys accepted by the fine-tuning API (cookbook's five + tool calling).
ALLOWED_MESSAGE_KEYS = frozenset({"role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id"})
#: Roles accepted in training examples (cookbook code's four + ``tool``).
ALLOWED_ROLES: tuple[str, ...] = ("system", "user", "assistant", "function", "tool")

#: The OpenAI model fine-tuned by default; the one place this id is written. The splits' JSONL is
#: validated against the limits of the model the job will use (the same setting).
DEFAULT_OPENAI_FINE_TUNING_MODEL = "gpt-4o-mini-2024-07-18"

#: Training-example context length per model (longer examples are truncated).
#: Sources: the OpenAI fine-tuning guide and the Azure OpenAI fine-tuning model table.
MODEL_TOKEN_LIMITS: dict[str, int] = {
    "gpt-3.5-turbo-0613": 4096,
    "gpt-3.5-turbo-1106": 16385,
    "gpt-3.5-turbo-0125": 16385,
    "gpt-3.5-turbo": 16385,
    "gpt-4o-mini-2024-07-18": 65536,
    "gpt-4o-mini": 65536,
    "gpt-4o-2024-08-06": 65536,
    "gpt-4o": 65536,
    "gpt-4.1-2025-04-14": 65536,
    "gpt-4.1": 65536,
    "gpt-4.1-mini-2025-04-14": 65536,
    "gpt-4.1-mini": 65536,
}
#: Limit assumed for models not in :data:`MODEL_TOKEN_LIMITS` (the cookbook's current value).
DEFAULT_TOKEN_LIMIT = 16385

MIN_TRAINING_EXAMPLES = 10
MAX_FILE_BYTES = 512 * 1024**2

# Cookbook epoch heuristic constants.
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

#: How many example line numbers to keep per error key / for too-long examples.
MAX_ERROR_EXAMPLES = 5

# Examples per token-counting batch while validating (bounds memory on big files).
_BATCH = 10_000

# Optional top-level keys of a training record that we pass through on export.
_RECORD_EXTRA_KEYS = ("tools", "functions", "parallel_tool_calls")
_EXPORTED_MESSAGE_KEYS = ("name", "tool_calls", "tool_call_id", "function_call")


def token_limit_for_model(model: str) -> int | None:
    """Training-example token limit of ``model``, or None if unknown.

    Fine-tuned model ids (``ft:<base>:<org>:<suffix>:<id>``) resolve to their base model.
    """
    name = model.strip()
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return MODEL_TOKEN_LIMITS.get(name)


def _json_default(value: Any) -> Any:
    # Rows read back from parquet carry numpy arrays/scalars (e.g. tool_calls lists).
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _is_valid_weight(value: object) -> bool:
    # bool is an int subclass, but JSON true/false is not in the schema's {0, 1}.
    return type(value) is int and value in (0, 1)


# --------------------------------------------------------------------------- export


def to_openai_record(messages: list[dict], weights: list[int | None] | None = None) -> dict:
    """Build one training record ``{"messages": [{"role", "content"[, "weight"]}, ...]}``.

    Only keys the API understands are exported (``role``, ``content`` and, when
    present and not None, ``name``, ``tool_calls``, ``tool_call_id``,
    ``function_call``); pipeline metadata such as timestamps or ratings is dropped.

    Args:
        messages: chat messages, each a dict with at least ``role``/``content``.
        weights: optional per-message weights aligned with ``messages``; ``None``
            entries mean "no weight key" (trained normally).  Without ``weights``
            an existing ``weight`` key on a message is kept.  Use weight 0 to
            keep a context turn (e.g. a low-rated agent reply) without training on it.

    Raises:
        ValueError: ``weights`` has the wrong length, or a weight is not 0/1 or
            sits on a non-assistant message -- exporting that would produce a
            file the API rejects.
        TypeError: a message is not a dict.
    """
    if weights is not None and len(weights) != len(messages):
        raise ValueError(f"weights has {len(weights)} entries for {len(messages)} messages")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise TypeError(f"message {i} is {type(msg).__name__}, expected dict")
        rec: dict[str, Any] = {"role": msg.get("role"), "content": msg.get("content")}
        for key in _EXPORTED_MESSAGE_KEYS:
            if msg.get(key) is not None:
                rec[key] = msg[key]
        weight = weights[i] if weights is not None else msg.get("weight")
        if isinstance(weight, np.integer):
            weight = int(weight)  # parquet round-trips give numpy ints
        if weight is not None:
            if not _is_valid_weight(weight):
                raise ValueError(f"message {i}: weight must be 0 or 1, got {weight!r}")
            if rec["role"] != "assistant":
                raise ValueError(f"message {i}: weight is only allowed on assistant messages, role is {rec['role']!r}")
            rec["weight"] = weight
        out.append(rec)
    return {"messages": out}


def write_openai_jsonl(conversations: Iterable[list[dict] | dict], path: str | os.PathLike) -> int:
    """Write conversations as OpenAI chat JSONL; return the number of rows written.

    Each item is either a list of messages or a record ``{"messages": [...]}``
    (whose ``tools`` / ``functions`` / ``parallel_tool_calls`` keys are kept).
    UTF-8, ``ensure_ascii=False`` (readable, and smaller for non-English logs),
    one compact object per line, ``\\n`` line endings.  The file is written to a
    temporary sibling and renamed, so a crash never leaves a truncated dataset
    behind under the final name.  Strings with lone surrogates cannot be encoded
    as UTF-8 and raise ``UnicodeEncodeError``: clean text upstream.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for conv in conversations:
                if isinstance(conv, dict):
                    record = to_openai_record(conv.get("messages") or [])
                    for key in _RECORD_EXTRA_KEYS:
                        if key in conv:
                            record[key] = conv[key]
                else:
                    record = to_openai_record(conv)
                f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=_json_default))
                f.write("\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


# --------------------------------------------------------------------------- report


@dataclass
class FormatReport:
    """Result of validating a training set (see module docstring for the rules).

    ``format_errors`` always holds all seven cookbook keys (0 when clean; plus
    ``invalid_json`` for file validation) so downstream metadata has a stable schema.
    """

    n_examples: int
    format_errors: dict[str, int]
    error_examples: dict[str, list[int]]
    n_missing_system: int
    n_missing_user: int
    n_too_long: int
    token_limit: int
    model: str
    distributions: dict[str, dict]
    token_counter: str
    warnings: list[str]
    #: first few line numbers of examples over ``token_limit``
    too_long_examples: list[int] = field(default_factory=list)
    #: examples whose last message is not from the assistant
    n_last_not_assistant: int = 0
    #: examples whose assistant messages all carry weight 0 (nothing is trained)
    n_no_trainable_assistant: int = 0
    #: cookbook billing basis: sum(min(token_limit, total tokens)) over examples
    n_billing_tokens_per_epoch: int = 0
    token_counter_is_estimate: bool = True
    require_min_examples: bool = True
    #: size of the validated file (None for in-memory validation)
    file_bytes: int | None = None
    #: whitespace-only lines skipped in a file
    n_blank_lines: int = 0

    @property
    def n_format_errors(self) -> int:
        """Total count over all error keys."""
        return int(sum(self.format_errors.values()))

    @property
    def ok(self) -> bool:
        """True when the data can be uploaded as-is: no format errors, at least
        ``MIN_TRAINING_EXAMPLES`` examples (when ``require_min_examples``) and the
        file (if any) within ``MAX_FILE_BYTES``.  Warnings alone do not fail it."""
        if self.n_format_errors:
            return False
        if self.require_min_examples and self.n_examples < MIN_TRAINING_EXAMPLES:
            return False
        return self.file_bytes is None or self.file_bytes <= MAX_FILE_BYTES

    def to_dict(self) -> dict:
        """Plain-JSON dict of all fields plus ``ok`` and ``n_format_errors``."""
        d = asdict(self)
        d["ok"] = self.ok
        d["n_format_errors"] = self.n_format_errors
        return d

    def to_markdown(self) -> str:
        """Human-readable report (Markdown)."""
        est = " (estimate)" if self.token_counter_is_estimate else ""
        lines = [
            f"## OpenAI fine-tuning format check: {'PASS' if self.ok else 'FAIL'}",
            "",
            "| | |",
            "|---|---|",
            f"| examples | {self.n_examples:,} |",
            f"| model | `{self.model}` |",
            f"| token limit per example | {self.token_limit:,} |",
            f"| token counter | `{self.token_counter}`{est} |",
            f"| format errors | {self.n_format_errors:,} |",
            f"| examples without system message | {self.n_missing_system:,} |",
            f"| examples without user message | {self.n_missing_user:,} |",
            f"| examples over token limit | {self.n_too_long:,} |",
            f"| examples not ending with assistant | {self.n_last_not_assistant:,} |",
            f"| examples with nothing to train (all weight 0) | {self.n_no_trainable_assistant:,} |",
            f"| billing tokens per epoch{est} | {self.n_billing_tokens_per_epoch:,} |",
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
        lines += [
            "### Distributions",
            "",
            "| metric | min | p10 | median | mean | p90 | max |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, d in self.distributions.items():
            lines.append(
                f"| {name} | {d['min']:,} | {d['p10']:,.1f} | {d['median']:,.1f} | {d['mean']:,.1f} "
                f"| {d['p90']:,.1f} | {d['max']:,} |"
            )
        return "\n".join(lines) + "\n"


def _distribution(values: np.ndarray) -> dict[str, int | float]:
    """min/max/mean/median/p10/p90 as plain numbers (zeros when empty)."""
    if values.size == 0:
        return {"min": 0, "max": 0, "mean": 0.0, "median": 0.0, "p10": 0.0, "p90": 0.0}
    p10, median, p90 = np.quantile(values, [0.1, 0.5, 0.9])
    return {
        "min": int(values.min()),
        "max": int(values.max()),
        "mean": float(values.mean()),
        "median": float(median),
        "p10": float(p10),
        "p90": float(p90),
    }


class _Validator:
    """Streaming accumulator so files are validated in bounded-memory batches."""

    def __init__(self, model: str, token_counter: TokenCounter | None, require_min_examples: bool) -> None:
        self.model = model
        limit = token_limit_for_model(model)
        self.model_known = limit is not None
        self.token_limit = limit if limit is not None else DEFAULT_TOKEN_LIMIT
        self.counter = token_counter or make_token_counter(TokenCounterConfig())
        self.require_min_examples = require_min_examples
        self.errors: dict[str, int] = dict.fromkeys(FORMAT_ERROR_KEYS, 0)
        self.error_examples: dict[str, list[int]] = {}
        self.n_examples = 0
        self.n_missing_system = 0
        self.n_missing_user = 0
        self.n_last_not_assistant = 0
        self.n_no_trainable = 0
        self.too_long_examples: list[int] = []
        self.n_messages: list[np.ndarray] = []
        self.total_tokens: list[np.ndarray] = []
        self.assistant_tokens: list[np.ndarray] = []
        # Pending examples (message lists + line numbers) awaiting batched token counting.
        self._pending: list[list] = []
        self._pending_lines: list[int] = []

    def error(self, key: str, line: int, count: int = 1) -> None:
        self.errors[key] = self.errors.get(key, 0) + count
        seen = self.error_examples.setdefault(key, [])
        if len(seen) < MAX_ERROR_EXAMPLES and line not in seen:
            seen.append(line)

    def add(self, example: object, line: int) -> None:
        """Check one example (``line``: its 1-based line/position)."""
        self.n_examples += 1
        if not isinstance(example, dict):
            self.error("data_type", line)
            return
        messages = example.get("messages")
        if isinstance(messages, (tuple, np.ndarray)):
            messages = list(messages)  # in-memory records from pandas/pyarrow
        if not messages or not isinstance(messages, list):
            self.error("missing_messages_list", line)
            return

        roles: list[object] = []
        weights_of_assistant: list[object] = []
        for msg in messages:
            if not isinstance(msg, dict):
                # Cookbook would crash here; such a "message" has neither role nor content.
                self.error("message_missing_key", line)
                roles.append(None)
                continue
            role = msg.get("role")
            roles.append(role)
            has_role = "role" in msg
            has_content = "content" in msg
            calls = msg.get("tool_calls") or msg.get("function_call")
            if not has_role or (not has_content and not (role == "assistant" and calls)):
                self.error("message_missing_key", line)
            bad_key = any(k not in ALLOWED_MESSAGE_KEYS for k in msg)
            if "weight" in msg:
                if role == "assistant":
                    weights_of_assistant.append(msg["weight"])
                if not (_is_valid_weight(msg["weight"]) and role == "assistant"):
                    bad_key = True  # documented: invalid weight counts as an unrecognized key
            if bad_key:
                self.error("message_unrecognized_key", line)
            if has_role and (not isinstance(role, str) or role not in ALLOWED_ROLES):
                self.error("unrecognized_role", line)
            if has_content:
                content = msg["content"]
                if isinstance(content, str):
                    if not content and not calls:
                        self.error("missing_content", line)
                elif not (content is None and calls):
                    self.error("missing_content", line)

        n_assistant = roles.count("assistant")
        if not n_assistant:
            self.error("example_missing_assistant_message", line)
        if "system" not in roles:
            self.n_missing_system += 1
        if "user" not in roles:
            self.n_missing_user += 1
        if n_assistant and roles[-1] != "assistant":
            self.n_last_not_assistant += 1
        if n_assistant and len(weights_of_assistant) == n_assistant and all(w == 0 for w in weights_of_assistant):
            self.n_no_trainable += 1
        self._pending.append(messages)
        self._pending_lines.append(line)
        if len(self._pending) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        total, assistant = self.counter.count_conversations(self._pending)
        self.n_messages.append(np.fromiter(map(len, self._pending), dtype=np.int64, count=len(self._pending)))
        self.total_tokens.append(total)
        self.assistant_tokens.append(assistant)
        room = MAX_ERROR_EXAMPLES - len(self.too_long_examples)
        if room > 0:
            over = np.flatnonzero(total > self.token_limit)[:room]
            self.too_long_examples.extend(self._pending_lines[i] for i in over)
        self._pending, self._pending_lines = [], []

    def finish(
        self, file_bytes: int | None = None, n_blank_lines: int = 0, extra_warnings: Sequence[str] = ()
    ) -> FormatReport:
        self._flush()

        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

        n_messages, total, assistant = cat(self.n_messages), cat(self.total_tokens), cat(self.assistant_tokens)
        n_too_long = int((total > self.token_limit).sum())
        billing = int(np.minimum(total, self.token_limit).sum())
        est = " (estimated token counts)" if self.counter.is_estimate else ""

        warnings: list[str] = list(extra_warnings)
        if not self.model_known:
            warnings.append(
                f"Unknown model {self.model!r}: assuming the default {DEFAULT_TOKEN_LIMIT:,}-token limit per example."
            )
        if self.require_min_examples and self.n_examples < MIN_TRAINING_EXAMPLES:
            warnings.append(
                f"Only {self.n_examples} examples: OpenAI requires at least {MIN_TRAINING_EXAMPLES} "
                f"(improvements are typically seen from 50-100)."
            )
        if self.n_missing_system:
            warnings.append(f"{self.n_missing_system} examples are missing a system message.")
        if self.n_missing_user:
            warnings.append(f"{self.n_missing_user} examples are missing a user message.")
        if n_too_long:
            warnings.append(
                f"{n_too_long} examples may be over the {self.token_limit:,} token limit for {self.model}, "
                f"they will be truncated during fine-tuning{est} (first lines: "
                f"{', '.join(map(str, self.too_long_examples))})."
            )
        if self.n_last_not_assistant:
            warnings.append(
                f"{self.n_last_not_assistant} examples do not end with an assistant message; turns after "
                f"the last assistant reply are not trained on."
            )
        if self.n_no_trainable:
            warnings.append(
                f"{self.n_no_trainable} examples have weight 0 on every assistant message (nothing to train on)."
            )
        if file_bytes is not None and file_bytes > MAX_FILE_BYTES:
            warnings.append(
                f"File is {file_bytes / 1024**2:,.1f} MiB, over the {MAX_FILE_BYTES // 1024**2} MB upload limit; "
                f"split it."
            )
        if n_blank_lines:
            warnings.append(f"{n_blank_lines} blank lines were skipped.")

        return FormatReport(
            n_examples=self.n_examples,
            format_errors=dict(self.errors),
            error_examples={k: list(v) for k, v in self.error_examples.items()},
            n_missing_system=self.n_missing_system,
            n_missing_user=self.n_missing_user,
            n_too_long=n_too_long,
            token_limit=self.token_limit,
            model=self.model,
            distributions={
                "num_messages_per_example": _distribution(n_messages),
                "num_total_tokens_per_example": _distribution(total),
                "num_assistant_tokens_per_example": _distribution(assistant),
            },
            token_counter=self.counter.name,
            warnings=warnings,
            too_long_examples=list(self.too_long_examples),
            n_last_not_assistant=self.n_last_not_assistant,
            n_no_trainable_assistant=self.n_no_trainable,
            n_billing_tokens_per_epoch=billing,
            token_counter_is_estimate=self.counter.is_estimate,
            require_min_examples=self.require_min_examples,
            file_bytes=file_bytes,
            n_blank_lines=n_blank_lines,
        )


def validate_examples(
    examples: Sequence[object],
    model: str = DEFAULT_OPENAI_FINE_TUNING_MODEL,
    token_counter: TokenCounter | None = None,
    require_min_examples: bool = True,
) -> FormatReport:
    """Validate in-memory training records (parsed JSON objects).

    ``error_examples`` refer to 1-based positions in ``examples``.  Pass
    ``require_min_examples=False`` for validation splits, which have no minimum.
    """
    v = _Validator(model, token_counter, require_min_examples)
    for i, ex in enumerate(examples, start=1):
        v.add(ex, i)
    return v.finish()


def validate_jsonl_file(
    path: str | os.PathLike,
    model: str = DEFAULT_OPENAI_FINE_TUNING_MODEL,
    token_counter: TokenCounter | None = None,
    require_min_examples: bool = True,
) -> FormatReport:
    """Validate a JSONL file, streaming it in batches.

    Every non-blank line is one example.  A line that is not valid UTF-8 JSON
    counts as an example with an ``invalid_json`` error (reported with its
    1-based line number); whitespace-only lines are skipped with a warning.
    Lines are split on ``\\n`` only, so U+2028 etc. inside strings are fine.
    """
    path = Path(path)
    file_bytes = path.stat().st_size
    v = _Validator(model, token_counter, require_min_examples)
    v.errors[INVALID_JSON_KEY] = 0
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
    return v.finish(file_bytes=file_bytes, n_blank_lines=n_blank)


def estimate_training_cost_tokens(report: FormatReport, n_epochs: int | None = None) -> dict:
    """Billed training tokens, using the cookbook's heuristic.

    Default epochs (when ``n_epochs`` is None) follow OpenAI's defaults as the
    cookbook models them: 3 epochs, raised so that ``epochs * n`` reaches 100
    examples (at most 25 epochs) for small sets, lowered so it stays near 25,000
    (at least 1) for large ones.  Billed tokens = ``sum(min(limit, tokens))``
    per epoch x epochs; with the estimate counter these are estimates too.
    """
    n = report.n_examples
    source = "given"
    if n_epochs is None:
        source = "heuristic"
        n_epochs = TARGET_EPOCHS
        if n > 0 and n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
            n_epochs = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n)
        elif n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
            n_epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n)
    elif n_epochs < 1:
        raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
    per_epoch = report.n_billing_tokens_per_epoch
    return {
        "n_examples": n,
        "n_epochs": int(n_epochs),
        "epochs_source": source,
        "n_billing_tokens_per_epoch": per_epoch,
        "n_billing_tokens": per_epoch * int(n_epochs),
        "token_limit": report.token_limit,
        "token_counter": report.token_counter,
        "is_estimate": report.token_counter_is_estimate,
    }
