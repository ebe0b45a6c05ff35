"""Conversation records and the readers that turn landed log files into them.

Three line formats are accepted: our raw log schema, bare OpenAI fine-tuning
lines (``{"messages": [...]}``) and ShareGPT (``{"conversations": [{"from", "value"}]}``).
Files may be JSONL, gzip-compressed JSONL or Parquet.

Nothing is dropped silently: every physical record of a file ends up either as a parsed
conversation or as a quarantine row that names the reason, the file and the line. A file that
cannot be read to the end (a truncated gzip, a corrupt Parquet footer) quarantines what it
could not read and keeps what it could; it never raises.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import io
import json
import math
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from ft_pipeline.lib.manifests import ParsedManifest, write_manifest
from ft_pipeline.lib.pii import scrub_pii
from ft_pipeline.lib.storage import content_version, file_sha256, write_parquet
from ft_pipeline.lib.timing import StepTimes

ROLES = ("system", "user", "assistant")

# ShareGPT speaker names mapped to chat roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}

# Quarantine reason codes, each with the sentence shown to people.
QUARANTINE_REASONS: dict[str, str] = {
    "invalid_utf8": "the line is not valid UTF-8",
    "invalid_json": "the line is not valid JSON",
    "too_deeply_nested": "the record nests lists/objects deeper than the JSON parser can follow",
    "not_an_object": "the record is not a JSON object",
    "messages_missing": "the record has no 'messages' (or ShareGPT 'conversations') field",
    "messages_not_a_list": "'messages' is not a list",
    "message_not_an_object": "a message is not a JSON object",
    "unknown_role": "a message has a role other than system/user/assistant",
    "content_missing": "a message has no 'content'",
    "content_not_a_string": "a message's 'content' is not a string",
    "wrong_field_type": "a known field has the wrong type or an out-of-range value",
    "empty_conversation": "the conversation has no messages",
    "oversize_record": "the record is larger than the configured maximum",
    "unreadable_file": "the rest of the file could not be read (corrupt or truncated)",
}

# Source formats a record can be read as (the ``source_format`` column), each with its sentence.
SOURCE_FORMATS: dict[str, str] = {
    "raw": "our raw log schema (messages plus known fields such as rating and tags)",
    "openai": "a bare OpenAI fine-tuning line: only 'messages'",
    "sharegpt": "ShareGPT: 'conversations' of {from, value}",
}

KNOWN_FIELDS = (
    "conversation_id",
    "user_id",
    "created_at",
    "messages",
    "rating",
    "response_time_ms",
    "edited",
    "tags",
)

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".parquet")

# How much of a rejected record is kept in the quarantine table, so a person can see it
# without one huge record blowing up the table.
RAW_TEXT_KEEP_CHARS = 2000


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    """One parsed conversation, as the pipeline's lib functions see it."""

    conversation_id: str
    messages: tuple[Message, ...]
    user_id: str | None = None
    created_at: str | None = None
    rating: float | None = None
    response_time_ms: int | None = None
    edited: bool | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadConfig:
    """How landed files are parsed."""

    max_record_bytes: int = 262_144
    """Records larger than this (bytes of the JSON line, or of the row re-encoded as JSON) are
    quarantined as ``oversize_record``. 256 KiB is far above any training context we use (4,096
    tokens is about 16 KB of text), and one pathological record must not exhaust memory."""


DEFAULT_READ_CONFIG = ReadConfig()


@dataclass(frozen=True)
class IngestCheckConfig:
    """The ceilings of ``raw_conversation_logs``' checks."""

    max_quarantine_rate: float = 0.05
    """Quarantined records / records in above this is worth a look (a warning, not an error: the
    file's good records are still used). A healthy export quarantines next to nothing; 5% means a
    systematic problem (a changed export format, a truncated upload, an encoding bug) rather than
    the odd bad line, and still lets a small file lose one line in twenty without a warning. The
    shipped sample plants bad records on purpose, so two of its files are over it."""


DEFAULT_INGEST_CHECK_CONFIG = IngestCheckConfig()


class RecordError(Exception):
    """A record that cannot be used; ``reason`` is a key of QUARANTINE_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


CONVERSATION_COLUMNS = [
    "conversation_id",
    "user_id",
    "created_at",
    "messages",
    "rating",
    "response_time_ms",
    "edited",
    "tags",
    "metadata",
    "source_format",
    "source_file",
    "source_line",
]
QUARANTINE_COLUMNS = ["source_file", "source_line", "reason", "detail", "raw_text"]


@dataclass
class ParseResult:
    """What one file parsed into. ``n_records`` = len(conversations) + len(quarantine)."""

    conversations: pd.DataFrame
    quarantine: pd.DataFrame
    n_records: int
    blank_lines: int

    @property
    def quarantine_counts(self) -> dict[str, int]:
        return dict(Counter(self.quarantine["reason"])) if len(self.quarantine) else {}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _optional_str(record: dict, key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    # Integer ids are common in exported logs; accept them as their decimal string.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError("wrong_field_type", f"'{key}' must be a string, got {_type_name(value)}")
    return str(value)


def _parse_created_at(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError("wrong_field_type", f"'created_at' must be an ISO-8601 string, got {_type_name(value)}")
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise RecordError("wrong_field_type", f"'created_at' is not ISO-8601: {value[:40]!r}") from None
    return value


def _parse_rating(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError("wrong_field_type", f"'rating' must be a number 1..5, got {_type_name(value)}")
    if not 1 <= value <= 5:
        raise RecordError("wrong_field_type", f"'rating' must be within 1..5, got {value}")
    return float(value)


def _parse_response_time(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError("wrong_field_type", f"'response_time_ms' must be an integer, got {_type_name(value)}")
    if value < 0 or value != int(value):
        raise RecordError("wrong_field_type", f"'response_time_ms' must be a non-negative integer, got {value}")
    return int(value)


def _parse_edited(value: Any) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise RecordError("wrong_field_type", f"'edited' must be true/false, got {_type_name(value)}")
    return value


def _parse_tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError("wrong_field_type", "'tags' must be a list of strings")
    for tag in value:
        if not isinstance(tag, str):
            raise RecordError("wrong_field_type", "'tags' must be a list of strings")
    return list(value)


def _parse_messages(raw_messages: Any, *, sharegpt: bool) -> list[dict[str, str]]:
    if raw_messages is None:
        raise RecordError("messages_missing", "no 'messages' field")
    if not isinstance(raw_messages, list):
        raise RecordError("messages_not_a_list", f"'messages' is {_type_name(raw_messages)}")
    if not raw_messages:
        raise RecordError("empty_conversation", "'messages' is an empty list")
    messages = []
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    for i, message in enumerate(raw_messages):
        if type(message) is dict and not sharegpt:
            # Fast path: a canonical role and a string content (nearly every message).
            role = message.get("role")
            content = message.get("content")
            if type(content) is str and type(role) is str and role in _CANONICAL_ROLES:
                messages.append({"role": role, "content": content})
                continue
        if not isinstance(message, dict):
            raise RecordError("message_not_an_object", f"message {i} is {_type_name(message)}")
        raw_role = message.get(role_key)
        role = None
        if isinstance(raw_role, str):
            role = SHAREGPT_ROLES.get(raw_role.strip().lower()) if sharegpt else raw_role.strip().lower()
        if role not in ROLES:
            raise RecordError("unknown_role", f"message {i} has role {str(raw_role)[:40]!r}")
        if content_key not in message or message[content_key] is None:
            raise RecordError("content_missing", f"message {i} has no '{content_key}'")
        content = message[content_key]
        if not isinstance(content, str):
            raise RecordError("content_not_a_string", f"message {i} content is {_type_name(content)}")
        messages.append({"role": role, "content": content})
    return messages


# Roles that are already what ``raw_role.strip().lower()`` would make of them.
_CANONICAL_ROLES = frozenset(ROLES)
_KNOWN_NOT_MESSAGES = frozenset(k for k in KNOWN_FIELDS if k != "messages")
_KNOWN_KEYS = frozenset(KNOWN_FIELDS) | {"conversations"}
_KNOWN_KEYS_SHAREGPT = _KNOWN_KEYS | {"id"}


def parse_record(record: Any, *, default_id: str) -> dict[str, Any]:
    """Validate one decoded record (any accepted format) into a conversation row.

    Raises RecordError with a reason code when the record cannot be used. Unknown top-level keys
    are kept, as JSON, in ``metadata``.
    """
    if not isinstance(record, dict):
        raise RecordError("not_an_object", f"the record is a JSON {_type_name(record)}")
    if "messages" in record:
        source_format = "openai" if _KNOWN_NOT_MESSAGES.isdisjoint(record) else "raw"
        messages = _parse_messages(record["messages"], sharegpt=False)
    elif "conversations" in record:
        source_format = "sharegpt"
        messages = _parse_messages(record["conversations"], sharegpt=True)
    else:
        raise RecordError("messages_missing", "neither 'messages' nor 'conversations' is present")
    # ShareGPT dumps commonly name the id "id".
    known = _KNOWN_KEYS_SHAREGPT if source_format == "sharegpt" else _KNOWN_KEYS
    extra = {} if known.issuperset(record) else {k: v for k, v in record.items() if k not in known}
    conversation_id = _optional_str(record, "conversation_id")
    if conversation_id is None and source_format == "sharegpt":
        conversation_id = _optional_str(record, "id")
    return {
        "conversation_id": conversation_id or default_id,
        "user_id": _optional_str(record, "user_id"),
        "created_at": _parse_created_at(record.get("created_at")),
        "messages": messages,
        "rating": _parse_rating(record.get("rating")),
        "response_time_ms": _parse_response_time(record.get("response_time_ms")),
        "edited": _parse_edited(record.get("edited")),
        "tags": _parse_tags(record.get("tags")),
        "metadata": json.dumps(extra, ensure_ascii=False, sort_keys=True, default=str) if extra else None,
        "source_format": source_format,
    }


def file_format(path: str | Path) -> str:
    """'jsonl', 'jsonl.gz' or 'parquet'; ValueError for anything else."""
    name = str(path).lower()
    if name.endswith((".jsonl.gz", ".json.gz", ".ndjson.gz")):
        return "jsonl.gz"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"unsupported log file type: {Path(path).name} (expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def is_log_file(path: str | Path) -> bool:
    try:
        file_format(path)
    except ValueError:
        return False
    return True


def _iter_jsonl_lines(stream: io.BufferedIOBase) -> Iterator[tuple[int, bytes]]:
    yield from enumerate(stream, start=1)


def _iter_parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    parquet = pq.ParquetFile(path)
    line_no = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            line_no += 1
            yield line_no, row


def _raw_text(line: bytes | str) -> str:
    text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    return text[:RAW_TEXT_KEEP_CHARS]


def _jsonable(value: Any) -> Any:
    """Parquet rows may hold numpy/Arrow scalars or NaN; map them to what JSON would give."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a block that allocates millions of small,
    long-lived containers (rows, message dicts) and frees none of them as cycles: the collector
    would rescan them again and again (about a fifth of the parse and cleaning time) for nothing.
    Reference counting still frees everything as usual; the previous state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_UTF8_BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 1 << 20


def _bounded_lines(stream: Any, limit: int) -> Iterator[tuple[bytes, int]]:
    """``(line, size)`` per line of a binary stream, holding at most ``limit + 1`` bytes of a line.

    A line over ``limit`` bytes yields its first ``limit + 1`` bytes and its full size; the rest
    is read past in 1 MiB chunks and dropped, so one huge line (a 150 MB record in a small gzip)
    costs bounded memory instead of the whole line.
    """
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line, len(line)
            continue
        size = len(line)
        while True:
            chunk = stream.readline(_SKIP_CHUNK)
            size += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                break
        yield line, size


def read_log_file(
    path: str | Path, config: ReadConfig = DEFAULT_READ_CONFIG, *, source_name: str | None = None
) -> ParseResult:
    """Parse one landed file into conversation rows and quarantine rows. Never raises for bad data.

    ``source_name`` is what rows record as their source file (default: the file name); it is
    also the prefix of generated ids for records that carry none (``<source>#<line>``).
    """
    with gc_paused():
        return _read_log_file(path, config, source_name)


def _read_log_file(path: str | Path, config: ReadConfig, source_name: str | None) -> ParseResult:
    path = Path(path)
    source = source_name or path.name
    rows: list[dict[str, Any]] = []
    quarantine: list[tuple[str, int, str, str, str]] = []
    blank_lines = 0
    fmt = file_format(path)
    last_line = 0

    def reject(line_no: int, reason: str, detail: str, raw: bytes | str) -> None:
        quarantine.append((source, line_no, reason, detail, _raw_text(raw)))

    def accept(line_no: int, record: Any, raw: bytes | str) -> None:
        try:
            row = parse_record(record, default_id=f"{source}#{line_no}")
        except RecordError as err:
            reject(line_no, err.reason, err.detail, raw)
            return
        except RecursionError:
            reject(line_no, "too_deeply_nested", "nesting deeper than the record parser can follow", raw)
            return
        row["source_file"] = source
        row["source_line"] = line_no
        rows.append(row)

    try:
        if fmt == "parquet":
            for line_no, record in _iter_parquet_rows(path):
                last_line = line_no
                record = _jsonable(record)
                encoded = json.dumps(record, ensure_ascii=False, default=str)
                if len(encoded.encode("utf-8")) > config.max_record_bytes:
                    reject(line_no, "oversize_record", f"row is over {config.max_record_bytes} bytes", encoded)
                    continue
                accept(line_no, record, encoded)
        else:
            opener = gzip.open if fmt == "jsonl.gz" else open
            with opener(path, "rb") as stream:
                for line_no, (line, size) in enumerate(_bounded_lines(stream, config.max_record_bytes), start=1):
                    last_line = line_no
                    if line_no == 1 and line.startswith(_UTF8_BOM):
                        line = line[len(_UTF8_BOM) :]  # a BOM written by an editor or a spreadsheet export
                    if size > config.max_record_bytes:
                        reject(
                            line_no, "oversize_record", f"line is {size} bytes, over {config.max_record_bytes}", line
                        )
                        continue
                    if not line or line.isspace():  # what `not line.strip()` tests, without a copy
                        blank_lines += 1
                        continue
                    try:
                        text = line.decode("utf-8")
                    except UnicodeDecodeError as err:
                        reject(line_no, "invalid_utf8", f"byte {err.start}: {err.reason}", line)
                        continue
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as err:
                        reject(line_no, "invalid_json", f"{err.msg} at column {err.colno}", line)
                        continue
                    except RecursionError:
                        # One hostile line is one quarantine row; the next line is read normally.
                        reject(
                            line_no, "too_deeply_nested", "nesting deeper than the JSON parser's recursion limit", line
                        )
                        continue
                    accept(line_no, record, line)
    except (OSError, EOFError, zlib.error, ValueError) as err:
        # Truncated gzip, corrupt Parquet, I/O error: keep what was read, quarantine the rest
        # as one row pointing at where reading stopped.
        reject(last_line + 1, "unreadable_file", f"{type(err).__name__}: {err}", "")
    except Exception as err:  # pyarrow raises its own exception types for corrupt files
        reject(last_line + 1, "unreadable_file", f"{type(err).__name__}: {err}", "")

    conversations = pd.DataFrame(rows, columns=CONVERSATION_COLUMNS)
    quarantine_frame = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)
    return ParseResult(
        conversations=conversations,
        quarantine=quarantine_frame,
        n_records=len(rows) + len(quarantine),
        blank_lines=blank_lines,
    )


def conversation_from_row(row: dict[str, Any]) -> Conversation:
    """A typed Conversation from a conversation row (for people writing code against lib)."""
    metadata = row.get("metadata")
    return Conversation(
        conversation_id=row["conversation_id"],
        messages=tuple(Message(m["role"], m["content"]) for m in row["messages"]),
        user_id=row.get("user_id"),
        created_at=row.get("created_at"),
        rating=row.get("rating"),
        response_time_ms=row.get("response_time_ms"),
        edited=row.get("edited"),
        tags=tuple(row.get("tags") or ()),
        metadata=json.loads(metadata) if isinstance(metadata, str) else {},
    )


@dataclass
class IngestResult:
    """What :func:`ingest_log_file` wrote for one landed file, and its counts."""

    version: str
    parsed_path: Path
    quarantine_path: Path
    source_sha256: str
    n_records: int
    blank_lines: int
    records: pd.DataFrame
    """The parsed records as stored (scrubbed)."""
    quarantine: pd.DataFrame
    """The quarantine rows as stored (raw text and detail scrubbed)."""
    quarantine_counts: dict[str, int]
    source_formats: dict[str, int]
    pii_counts: dict[str, int]
    """PII replaced in the parsed records, per type."""
    steps: StepTimes
    """Seconds per step (read, hash, scrub, write), for the benchmark."""
    stored_parsed: int
    """Rows the written parsed file holds (read back from its Parquet footer)."""
    stored_quarantined: int
    """Rows the written quarantine file holds (read back from its Parquet footer)."""

    @property
    def counts_add_up(self) -> bool:
        """Every record read is in exactly one of the written files: records in = rows of the parsed
        file + rows of the quarantine file (the ``counts_add_up`` check)."""
        return self.n_records == self.stored_parsed + self.stored_quarantined

    @property
    def quarantine_rate(self) -> float:
        """Quarantined records / records in (0.0 for a file with no records)."""
        return len(self.quarantine) / self.n_records if self.n_records else 0.0


def ingest_log_file(
    path: str | Path,
    source_name: str,
    parsed_folder: str | Path,
    quarantine_path: str | Path,
    *,
    read_config: ReadConfig = DEFAULT_READ_CONFIG,
    scrub: Any = None,
    code_version: str = "",
    policy_version: Sequence[Any] = (),
) -> IngestResult:
    """The ``raw_conversation_logs`` stage for one local file: parse it (bad records quarantined,
    never raising for bad data), store the parsed records scrubbed as
    ``parsed_folder/<version>.parquet``, the quarantine (raw text and detail scrubbed) at
    ``quarantine_path``, and a :class:`~ft_pipeline.lib.manifests.ParsedManifest` in
    ``parsed_folder``. Nothing written holds raw personal data.

    ``scrub`` is a :class:`ft_pipeline.lib.cleaning.ScrubConfig` (default: the default policy);
    ``code_version`` and ``policy_version`` (the PII policy's version parts) go into the version
    with the file's SHA-256 and the read limits.
    """
    # cleaning imports this module (gc_paused, the record columns), so its scrubber is imported here.
    from ft_pipeline.lib.cleaning import DEFAULT_SCRUB_CONFIG, scrub_parsed_records

    scrub = scrub or DEFAULT_SCRUB_CONFIG
    steps = StepTimes()
    with steps.step("read_log_file"):
        result = read_log_file(path, read_config, source_name=source_name)
    with steps.step("file_sha256"):
        source_sha256 = file_sha256(path)
    version = content_version(code_version, source_sha256, read_config.max_record_bytes, *policy_version)
    with steps.step("scrub_parsed"):
        scrubbed = scrub_parsed_records(result.conversations, scrub)
    with steps.step("write_parsed"):
        parsed_path = write_parquet(scrubbed.records, Path(parsed_folder) / f"{version}.parquet")
    with steps.step("write_quarantine"):
        # The quarantine's raw text is kept for people to inspect: scrubbed, as is its detail.
        quarantine = result.quarantine.copy()
        if scrub.enabled:
            for column in ("raw_text", "detail"):
                quarantine[column] = [scrub_pii(str(text), scrub.pii)[0] for text in quarantine[column]]
        stored_quarantine_path = write_parquet(quarantine, quarantine_path)
    with steps.step("count_stored"):
        stored_parsed = pq.ParquetFile(parsed_path).metadata.num_rows
        stored_quarantined = pq.ParquetFile(stored_quarantine_path).metadata.num_rows
    write_manifest(
        parsed_folder,
        ParsedManifest(
            version=version, path=str(parsed_path), quarantine_path=str(stored_quarantine_path), source=source_name
        ),
    )
    return IngestResult(
        version=version,
        parsed_path=parsed_path,
        quarantine_path=stored_quarantine_path,
        source_sha256=source_sha256,
        n_records=result.n_records,
        blank_lines=result.blank_lines,
        records=scrubbed.records,
        quarantine=quarantine,
        quarantine_counts=result.quarantine_counts,
        source_formats=dict(Counter(result.conversations["source_format"])),
        pii_counts=dict(sorted(scrubbed.pii_counts.items())),
        steps=steps,
        stored_parsed=stored_parsed,
        stored_quarantined=stored_quarantined,
    )
