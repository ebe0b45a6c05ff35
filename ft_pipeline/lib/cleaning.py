"""Normalization, role rules, the quality filter and the per-file cleaning pass.

``clean_conversations`` turns the parsed rows of one landed file into two frames: the kept
conversations (normalized, PII-scrubbed, with dedup signatures) and the filtered ones (each with
one reason code). Every input row lands in exactly one of the two.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import xxhash

try:  # what DataFrame.to_dict("records") applies to object / extension columns
    from pandas.core.dtypes.cast import maybe_box_native
except ImportError:  # pragma: no cover - private pandas API moved

    def maybe_box_native(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        return None if value is pd.NA else value


from ft_pipeline.lib.dedup import (
    DEFAULT_DEDUP_CONFIG,
    DedupConfig,
    best_copy_per_group,
    compute_signatures,
    conversation_text,
    preference_signal,
    record_hashes,
    signatures_to_bytes,
)
from ft_pipeline.lib.manifests import CleanedManifest, ParsedManifest, read_manifest, write_manifest
from ft_pipeline.lib.pii import DEFAULT_PII_CONFIG, PiiConfig, find_pii, may_contain_pii, scrub_pii
from ft_pipeline.lib.records import gc_paused
from ft_pipeline.lib.storage import content_version, write_parquet
from ft_pipeline.lib.timing import StepTimes

# Filter reason codes (records that parse but should not be trained on), with the sentence
# shown to people. Checked in this order; a record gets the first that applies.
FILTER_REASONS: dict[str, str] = {
    "system_not_first": "a system message appears after the first message",
    "roles_not_alternating": "two consecutive messages share a role (merging is switched off)",
    "last_message_not_assistant": "the conversation does not end with an assistant reply (trimming is switched off)",
    "missing_user_or_assistant": "no user turn or no assistant turn is left after normalization",
    "edited_reply": "an agent edited the reply afterwards (edited=true)",
    "negative_feedback": "the user marked the reply as bad (thumbs down, regenerated, rejected)",
    "low_rating": "the rating is below the minimum",
    "slow_response": "the response time is at or above the maximum",
    "short_assistant_reply": "the assistant's content is shorter than the minimum",
    "repetitive": "the assistant's content repeats itself (low unique-word ratio)",
    "duplicate_in_file": "an exact duplicate of a better copy in the same file",
}

# Repairs that keep a record but change it, with the sentence shown to people; counted (per
# message touched) so the UI shows what was changed.
REPAIRS: dict[str, str] = {
    "merged_consecutive_turns": "a message joined to the one before it (same role, sent twice in a row)",
    "dropped_leading_assistant": "an assistant message before the first user turn dropped (it answers nothing)",
    "trimmed_trailing_user": "a user message after the last assistant reply dropped (never answered)",
    "dropped_empty_message": "an empty message dropped",
}


@dataclass(frozen=True)
class ScrubConfig:
    """What is scrubbed and how: one policy for every stage that writes record text."""

    enabled: bool = True
    """Replace personal data with typed placeholders such as ``<EMAIL>``: in the messages, in every
    string under ``metadata`` (the record's unknown keys), in ``tags``, and in ``user_id`` /
    ``conversation_id`` (see ``id_hash_key``)."""
    pii: PiiConfig = field(default_factory=lambda: DEFAULT_PII_CONFIG)
    """The detectors: built-in types, custom patterns, person names."""
    id_hash_key: str = ""
    """Key of the HMAC-SHA256 that replaces a ``user_id`` or ``conversation_id`` holding personal
    data (an email, a phone number): ``user-<hash>`` / ``conv-<hash>``, the same for the same id, so
    grouping by user still works. Empty (the default) uses a fixed public key, which keeps the id
    out of the data but lets someone who guesses an email check it; set a secret to prevent that."""

    def version_parts(self) -> list[str]:
        """What of the policy changes the scrubbed data, for the stages' version hashes: empty for
        the default policy, so data scrubbed with it keeps its versions. The pseudonym key is a
        secret and stays out of the hash."""
        if replace(self, id_hash_key="") == DEFAULT_SCRUB_CONFIG:
            return []
        return [repr(self.pii), str(self.enabled)]


DEFAULT_SCRUB_CONFIG = ScrubConfig()


@dataclass(frozen=True)
class CleaningConfig:
    """Thresholds and switches of the per-file cleaning pass. Every default is the documented one."""

    min_rating: float = 4.0
    """Conversations rated below this are filtered (``low_rating``). Unrated ones pass."""
    max_response_time_ms: int = 5000
    """Conversations whose response_time_ms is at or above this are filtered (``slow_response``)."""
    min_assistant_chars: int = 50
    """All assistant turns together must have at least this many characters."""
    drop_edited: bool = True
    """Filter replies an agent edited afterwards (``edited_reply``): the logged text is not what the model said."""
    drop_negative_feedback: bool = True
    """Filter replies the record marks as bad (``negative_feedback``): ``thumbs: "down"``,
    ``regenerated: true`` (the user asked for another answer), ``rejected: true`` and the other
    markers :func:`ft_pipeline.lib.dedup.preference_signal` reads. SFT must not imitate them;
    preference_dataset still uses them (as the rejected side or a bad KTO example)."""
    min_unique_word_ratio: float = 0.3
    """Assistant text whose distinct/total word ratio is below this is ``repetitive``."""
    repetition_min_words: int = 20
    """The repetition rule only applies to assistant text of at least this many words."""
    merge_consecutive_turns: bool = True
    """Join consecutive same-role messages (people send two messages in a row); when off, such
    conversations are filtered as ``roles_not_alternating``."""
    drop_leading_assistant: bool = True
    """Drop assistant greetings before the first user turn (they answer nothing)."""
    trim_trailing_user: bool = True
    """Drop user turns after the last assistant reply (they were never answered); when off, such
    conversations are filtered as ``last_message_not_assistant``."""
    scrub: ScrubConfig = field(default_factory=lambda: DEFAULT_SCRUB_CONFIG)
    """The PII policy; the same one scrubs the parsed records before they are stored
    (:func:`scrub_parsed_records`), and this pass scrubs again after normalization."""
    dedup: DedupConfig = field(default_factory=lambda: DEFAULT_DEDUP_CONFIG)


DEFAULT_CLEANING_CONFIG = CleaningConfig()

_HORIZONTAL_SPACE = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Zero-width and control characters (except \n and \t) carry no meaning for training and
# break exact-match dedup.
_INVISIBLE = dict.fromkeys([c for c in range(32) if c not in (9, 10)] + [0x7F, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF])


# The same characters as _ASCII_CONTROL, for bytes.translate: deleting them changes the length
# exactly when the regex would find one, at a fraction of a regex scan's cost.
_ASCII_CONTROL_BYTES = bytes([c for c in range(32) if c not in (9, 10)] + [0x7F])


def normalize_text(text: str) -> str:
    """Unicode NFC, invisible characters removed, whitespace runs collapsed, ends stripped.

    Leading indentation inside a line is collapsed too (to one space): chat logs rarely carry
    code whose indentation matters, and consistent whitespace is what makes exact dedup work.
    """
    # Fast path: most logged text is already clean ASCII, and these substring tests run in C.
    if not text.isascii():
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        text = text.translate(_INVISIBLE)  # removes the ASCII control characters too
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _HORIZONTAL_SPACE.sub(" ", text)
    else:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        encoded = text.encode("ascii")
        if len(encoded.translate(None, _ASCII_CONTROL_BYTES)) != len(encoded):
            text = text.translate(_INVISIBLE)
        if "\t" in text or "  " in text:
            text = _HORIZONTAL_SPACE.sub(" ", text)
    if "\n" in text:
        if " \n" in text or "\t\n" in text:
            text = _TRAILING_SPACE.sub("\n", text)
        if "\n\n\n" in text:
            text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


class FilteredOut(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def apply_role_rules(messages: list[dict[str, str]], config: CleaningConfig, repairs: Counter) -> list[dict[str, str]]:
    """Normalize contents and enforce the role rules; raises FilteredOut with the reason."""
    return _role_rules([m["role"] for m in messages], [normalize_text(m["content"]) for m in messages], config, repairs)


def _role_rules(
    roles: list[str], contents: list[str], config: CleaningConfig, repairs: Counter
) -> list[dict[str, str]]:
    """The role rules of :func:`apply_role_rules` over already normalized contents."""
    out: list[dict[str, str]] = []
    for i, role in enumerate(roles):
        content = contents[i]
        if role == "system" and i > 0:
            raise FilteredOut("system_not_first", f"message {i} is a system message")
        if not content:
            repairs["dropped_empty_message"] += 1
            continue
        if out and out[-1]["role"] == role:
            if not config.merge_consecutive_turns:
                raise FilteredOut("roles_not_alternating", f"messages {i - 1} and {i} are both {role}")
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + content}
            repairs["merged_consecutive_turns"] += 1
            continue
        out.append({"role": role, "content": content})
    start = 1 if out and out[0]["role"] == "system" else 0
    if config.drop_leading_assistant:
        while len(out) > start and out[start]["role"] == "assistant":
            del out[start]
            repairs["dropped_leading_assistant"] += 1
    if out and out[-1]["role"] == "user":
        if not config.trim_trailing_user:
            raise FilteredOut("last_message_not_assistant", "the last message is from the user")
        while out and out[-1]["role"] == "user":
            out.pop()
            repairs["trimmed_trailing_user"] += 1
    roles_left = {m["role"] for m in out}
    if "user" not in roles_left or "assistant" not in roles_left:
        raise FilteredOut("missing_user_or_assistant", f"roles left: {sorted(roles_left) or 'none'}")
    return out


def quality_reason(
    row: dict[str, Any], messages: list[dict[str, str]], config: CleaningConfig
) -> tuple[str, str] | None:
    """The first quality rule the conversation breaks, as (reason, detail), or None."""
    return _quality_reason(
        row.get("edited"), row.get("rating"), row.get("response_time_ms"), row.get("metadata"), messages, config
    )


def _quality_reason(
    edited: Any,
    rating: Any,
    response_time: Any,
    metadata: Any,
    messages: list[dict[str, str]],
    config: CleaningConfig,
) -> tuple[str, str] | None:
    checked = _quality_before_repetition(edited, rating, response_time, metadata, messages, config)
    return checked if isinstance(checked, tuple) else _repetition_reason(checked, config)


def _quality_before_repetition(
    edited: Any,
    rating: Any,
    response_time: Any,
    metadata: Any,
    messages: list[dict[str, str]],
    config: CleaningConfig,
) -> tuple[str, str] | str:
    """The first rule broken before the repetition rule, as (reason, detail); else the
    assistant text the repetition rule looks at."""
    if config.drop_edited and edited is True:
        return "edited_reply", "edited=true"
    # Most records carry no unknown keys (metadata None): the JSON is parsed only when present.
    if config.drop_negative_feedback and metadata is not None and preference_signal(metadata) < 0:
        return "negative_feedback", "the record marks its reply as rejected"
    if rating is not None and rating == rating and rating < config.min_rating:
        return "low_rating", f"rating {rating:g} < {config.min_rating:g}"
    if response_time is not None and response_time == response_time and response_time >= config.max_response_time_ms:
        return "slow_response", f"response_time_ms {int(response_time)} >= {config.max_response_time_ms}"
    assistant_text = " ".join([m["content"] for m in messages if m["role"] == "assistant"])
    if len(assistant_text) < config.min_assistant_chars:
        return "short_assistant_reply", f"{len(assistant_text)} chars < {config.min_assistant_chars}"
    return assistant_text


def _repetition_reason(assistant_text: str, config: CleaningConfig) -> tuple[str, str] | None:
    words = assistant_text.lower().split()
    if len(words) >= config.repetition_min_words:
        ratio = len(set(words)) / len(words)
        if ratio < config.min_unique_word_ratio:
            return "repetitive", f"unique-word ratio {ratio:.2f} < {config.min_unique_word_ratio:g}"
    return None


# str.split() separators among ASCII characters, and a byte map for the vectorized word count:
# separators -> 0, A-Z -> a-z (str.lower), NUL -> 1 (it is a word character; merging it with
# \x01 can only lower the distinct count, see below), everything else unchanged.
_SPLIT_WHITESPACE = frozenset(b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f ")
_WORD_BYTES = bytes(
    0 if c in _SPLIT_WHITESPACE else c + 32 if 65 <= c <= 90 else 1 if c == 0 else c for c in range(256)
)
_WORD_BUCKETS_BITS = 10
_WORD_BATCH_BYTES = 1 << 16  # small batches keep the temporaries in cache (measured fastest)
# Indexed by min(word length, 8): the bytes of a short word in an 8-byte little-endian read
# starting at the word (low bytes) or ending at it (high bytes).
_TAIL_SHIFT = np.array([64 if k == 0 else (8 - k) * 8 for k in range(9)], dtype=np.uint64)
_HEAD_MASK = np.array([(1 << (8 * k)) - 1 if k < 8 else (1 << 64) - 1 for k in range(9)], dtype=np.uint64)


def repetition_bounds(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """For ASCII texts: ``(n_words, distinct_lower_bound)``, vectorized.

    ``n_words[i] == len(texts[i].lower().split())`` exactly, and
    ``distinct_lower_bound[i] <= len(set(texts[i].lower().split()))``: words are hashed (equal
    words always get equal hashes) into 1024 buckets per text and the occupied buckets counted,
    so a collision can only make the bound lower. When ``bound / n_words`` already reaches the
    repetition threshold the text is certainly not repetitive; only the others need the exact
    (slow) count."""
    n = len(texts)
    n_words = np.zeros(n, dtype=np.int64)
    bound = np.zeros(n, dtype=np.int64)
    lo = 0
    while lo < n:
        hi, size = lo, 0
        while hi < n and (hi == lo or size + len(texts[hi]) < _WORD_BATCH_BYTES):
            size += len(texts[hi]) + 1
            hi += 1
        n_words[lo:hi], bound[lo:hi] = _repetition_bounds_batch(texts[lo:hi])
        lo = hi
    return n_words, bound


def _repetition_bounds_batch(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    n_docs = len(texts)
    pad = b"\0" * 8
    # Eight zero bytes (separators) on both sides, so the 8-byte reads below stay in bounds.
    buf = pad + " ".join(texts).encode("ascii").translate(_WORD_BYTES) + pad
    is_word = np.frombuffer(buf, dtype=np.uint8) != 0
    bounds = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    start, end = bounds[0::2], bounds[1::2]
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n_docs)
    doc_starts = np.empty(n_docs, dtype=np.int64)
    doc_starts[0] = 8
    np.cumsum(lengths[:-1] + 1, out=doc_starts[1:])
    doc_starts[1:] += 8
    first_word = np.searchsorted(start, doc_starts)
    counts = np.diff(first_word, append=len(start))
    if len(start) == 0:
        return counts, np.zeros(n_docs, dtype=np.int64)
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), counts)
    # A word's hash depends only on its bytes: its length and its first and last 8 bytes
    # (read unaligned, bytes outside a short word masked off).
    view = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
    size = end - start
    short = np.minimum(size, 8)
    head = view[start] & _HEAD_MASK[short]
    tail = view[end - 8] >> _TAIL_SHIFT[short]
    # Multiplying by odd constants carries every input bit into the top bits, which pick the bucket.
    h = (
        head * np.uint64(0x9E3779B97F4A7C15)
        + tail * np.uint64(0xC2B2AE3D27D4EB4F)
        + size.astype(np.uint64) * np.uint64(0x165667B19E3779F9)
    )
    buckets = 1 << _WORD_BUCKETS_BITS
    seen = np.zeros(n_docs * buckets, dtype=bool)
    seen[doc * buckets + (h >> np.uint64(64 - _WORD_BUCKETS_BITS)).astype(np.int64)] = True
    # Occupied buckets per text: each True is a 0x01 byte, so a popcount of 8 bytes at a time.
    occupied = np.bitwise_count(seen.view(np.uint64)).reshape(n_docs, buckets // 8).sum(axis=1, dtype=np.int64)
    return counts, occupied


@dataclass
class CleanResult:
    kept: pd.DataFrame
    """Conversation columns (messages normalized and scrubbed) + signature columns."""
    filtered: pd.DataFrame
    """Conversation columns (scrubbed) + ``filter_reason``, ``filter_detail``."""
    filter_counts: dict[str, int]
    pii_counts: dict[str, int]
    repairs: dict[str, int]

    @property
    def n_in(self) -> int:
        return len(self.kept) + len(self.filtered)


SIGNATURE_COLUMNS = [
    "exact_hash",
    "context_hash",
    "prefix_hashes",
    "minhash",
    "n_messages",
    "n_chars",
    "first_turn_hash",
    "first_turn_words",
    "final_reply_hash",
]


def text_hash(text: str) -> int:
    """Signed 64-bit hash of a text (fits a Parquet int64 column)."""
    return xxhash.xxh3_64_intdigest(text.encode("utf-8")) - (1 << 63)


def first_user_turn(messages: Iterable[dict[str, Any]]) -> str | None:
    for m in messages:
        if m["role"] == "user":
            return m["content"]
    return None


def turn_columns(messages: list[dict[str, Any]]) -> tuple[int | None, int, int]:
    """(hash of the lower-cased first user turn, its word count, hash of the final reply).

    Stored per row so the split step can group and check leakage without reading messages."""
    first = first_user_turn(messages)
    first_hash = text_hash(first.lower()) if first else None
    return first_hash, len(first.split()) if first else 0, text_hash(messages[-1]["content"])


_ID_PREFIX = {"user_id": "user", "conversation_id": "conv"}


def _pseudonym(field_name: str, value: str, scrub: ScrubConfig) -> str:
    key = (scrub.id_hash_key or "ft-pipeline public id key").encode("utf-8")
    digest = hmac.new(key, value.encode("utf-8", errors="surrogatepass"), hashlib.sha256).hexdigest()[:16]
    return f"{_ID_PREFIX[field_name]}-{digest}"


def _scrub_value(value: Any, scrub: ScrubConfig, pii_counts: Counter) -> Any:
    """Every string inside a JSON-like value, scrubbed (keys too: records put data in keys)."""
    if isinstance(value, str):
        if not may_contain_pii(value, scrub.pii):
            return value
        text, found = scrub_pii(value, scrub.pii)
        pii_counts.update(found)
        return text
    if isinstance(value, dict):
        return {_scrub_value(str(k), scrub, pii_counts): _scrub_value(v, scrub, pii_counts) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_scrub_value(v, scrub, pii_counts) for v in value]
    return value


def _other_fields_text(row: list[Any], positions: dict[str, int]) -> str:
    parts = [
        row[k]
        for k in (positions.get(n) for n in ("user_id", "conversation_id", "metadata"))
        if k is not None and isinstance(row[k], str)
    ]
    k = positions.get("tags")
    if k is not None and row[k] is not None and len(row[k]):
        parts.extend(map(str, row[k]))
    return "\n".join(parts)


def _scrub_other_fields(row: list[Any], positions: dict[str, int], scrub: ScrubConfig, pii_counts: Counter) -> None:
    """Personal data outside the messages: the ids (pseudonymised, so they still group), the
    record's unknown keys kept as JSON in ``metadata`` (scrubbed string by string) and the tags."""
    # One pre-screen over all of these fields together clears most rows (no detector can fire on
    # any part of the joined text); only the others are checked field by field.
    if not scrub.enabled or not may_contain_pii(_other_fields_text(row, positions), scrub.pii):
        return
    for name in ("user_id", "conversation_id"):
        k = positions.get(name)
        if k is not None and isinstance(row[k], str) and may_contain_pii(row[k], scrub.pii):
            found = find_pii(row[k], scrub.pii)
            if found:
                pii_counts.update(m.type for m in found)
                row[k] = _pseudonym(name, row[k], scrub)
    k = positions.get("metadata")
    if k is not None and isinstance(row[k], str) and may_contain_pii(row[k], scrub.pii):
        try:
            parsed = json.loads(row[k])
        except ValueError:
            row[k] = _scrub_value(row[k], scrub, pii_counts)
        else:
            row[k] = json.dumps(_scrub_value(parsed, scrub, pii_counts), ensure_ascii=False, sort_keys=True)
    k = positions.get("tags")
    if k is not None and row[k] is not None and len(row[k]) and may_contain_pii("\n".join(map(str, row[k])), scrub.pii):
        row[k] = _scrub_value(row[k], scrub, pii_counts)


def _scrub_messages(messages: list[dict[str, str]], scrub: ScrubConfig, pii_counts: Counter) -> list[dict[str, str]]:
    if not scrub.enabled:
        return messages
    # One pre-screen over the whole conversation clears it when no detector can fire on any
    # message (most conversations); only the others are scanned message by message.
    if not may_contain_pii("\n".join([m["content"] for m in messages]), scrub.pii):
        return messages
    out = []
    for m in messages:
        text, found = scrub_pii(m["content"], scrub.pii)
        if found:
            pii_counts.update(found)
        out.append({"role": m["role"], "content": text})
    return out


#: Column of the parsed records: the PII types scrubbed from each record before it was stored
#: (one entry per match), so ``cleaned_conversations`` can count them with its own finds.
PII_SCRUBBED_COLUMN = "pii_scrubbed"


@dataclass
class ScrubResult:
    """Parsed records with their personal data replaced, and what was replaced, per type."""

    records: pd.DataFrame
    pii_counts: Counter


def scrub_parsed_records(frame: pd.DataFrame, scrub: ScrubConfig = DEFAULT_SCRUB_CONFIG) -> ScrubResult:
    """Scrub freshly parsed records before anything stores them: message contents as logged,
    ids, the record's unknown keys and tags. Nothing downstream of the landing folder then holds
    raw personal data; the cleaning pass scrubs again after normalization (text that only looks
    like PII once invisible characters are gone). Adds :data:`PII_SCRUBBED_COLUMN`."""
    records = frame.copy()
    total: Counter = Counter()
    # Only the text columns change, and only in rows that held PII: every other column keeps its
    # values and dtype exactly as parsed.
    columns = [c for c in ("messages", "user_id", "conversation_id", "metadata", "tags") if c in records.columns]
    positions = {name: k for k, name in enumerate(columns)}
    values = [records[c].tolist() for c in columns]
    per_row: list[list[str]] = []
    for i, row_tuple in enumerate(zip(*values)):
        row = list(row_tuple)
        found: Counter = Counter()
        if "messages" in positions:
            row[positions["messages"]] = _scrub_messages(list(row[positions["messages"]]), scrub, found)
        _scrub_other_fields(row, positions, scrub, found)
        if found:
            for k in range(len(columns)):
                values[k][i] = row[k]
        per_row.append(sorted(found.elements()))
        total.update(found)
    if total:
        for name, column in zip(columns, values):
            dtype = records[name].dtype
            # A numpy dtype compared with `object` (the object dtype), not a type comparison.
            records[name] = pd.Series(column, index=records.index, dtype=None if dtype == object else dtype)  # noqa: E721
    records[PII_SCRUBBED_COLUMN] = pd.Series(per_row, index=records.index, dtype=object)
    return ScrubResult(records, total)


# Row fields where a NaN / NA (from Parquet round trips) means "missing" and becomes None.
_NULLABLE_FIELDS = ("rating", "response_time_ms", "edited", "user_id", "created_at", "metadata")
# Values DataFrame.to_dict("records") would hand over unchanged (it boxes numpy scalars).
_NATIVE_TYPES = frozenset({str, float, int, bool, type(None), list, dict, tuple, bytes, np.ndarray})


def _column_values(frame: pd.DataFrame) -> list[list[Any]]:
    """Per column, the values ``frame.to_dict("records")`` gives each row, with the NaN of the
    nullable fields turned into None (what the per-row loop used to do)."""
    columns = list(frame.columns)
    values = []
    for k, (name, dtype) in enumerate(zip(columns, frame.dtypes.values)):
        series = frame.iloc[:, k]
        # Iterating a string column goes through pandas' per-element iterator; to_numpy gives
        # the same values (str, and the dtype's NA value for missing ones) in one call.
        column = series.to_numpy(dtype=object).tolist() if isinstance(dtype, pd.StringDtype) else list(series)
        if dtype == np.dtype(object) or isinstance(dtype, pd.api.extensions.ExtensionDtype):
            column = [v if type(v) in _NATIVE_TYPES else maybe_box_native(v) for v in column]
        if name in _NULLABLE_FIELDS:
            column = [None if v is not None and v != v else v for v in column]
        values.append(column)
    return values


def clean_conversations(frame: pd.DataFrame, config: CleaningConfig = DEFAULT_CLEANING_CONFIG) -> CleanResult:
    """Normalize, apply role rules and the quality filter, scrub PII, drop in-file exact
    duplicates, and compute dedup signatures for the kept rows."""
    with gc_paused():
        return _clean_conversations(frame, config)


def _clean_conversations(frame: pd.DataFrame, config: CleaningConfig) -> CleanResult:
    # What scrub_parsed_records already replaced counts with this pass's finds (kept rows), and
    # the column goes no further.
    scrubbed_before = None
    if PII_SCRUBBED_COLUMN in frame.columns:
        scrubbed_before = frame[PII_SCRUBBED_COLUMN].tolist()
        frame = frame.drop(columns=[PII_SCRUBBED_COLUMN])
    columns = list(frame.columns)
    position = {name: k for k, name in enumerate(columns)}
    n_columns = len(columns)
    messages_at = position.get("messages", -1)  # -1: no messages column, an error once a row is read

    def field(name: str) -> Callable[[list[Any]], Any]:
        k = position.get(name)
        return (lambda row: None) if k is None else (lambda row: row[k])

    edited_of, rating_of, response_of = field("edited"), field("rating"), field("response_time_ms")
    metadata_of = field("metadata")
    pii_counts: Counter = Counter()
    repairs: Counter = Counter()
    values = _column_values(frame)
    # Pass 1: normalization, role rules and the quality rules. The repetition rule needs a
    # distinct-word count, done for all rows at once (repetition_bounds) instead of row by row.
    rows: list[list[Any]] = []
    contents_of: list[tuple[list[str], list[str]]] = []
    outcome: list[Any] = []  # per row: the kept messages, or (reason, detail)
    deferred: list[int] = []
    deferred_texts: list[str] = []
    for row_tuple in zip(*values) if n_columns else ():
        row = list(row_tuple)
        if messages_at < 0:
            raise KeyError("messages")
        raw = row[messages_at]
        roles = [m["role"] for m in raw]
        contents = [normalize_text(m["content"]) for m in raw]
        rows.append(row)
        contents_of.append((roles, contents))
        try:
            messages = _role_rules(roles, contents, config, repairs)
        except FilteredOut as out:
            outcome.append((out.reason, out.detail))
            continue
        checked = _quality_before_repetition(
            edited_of(row), rating_of(row), response_of(row), metadata_of(row), messages, config
        )
        if isinstance(checked, tuple):
            outcome.append(checked)
            continue
        outcome.append(messages)
        if checked.isascii():
            deferred.append(len(rows) - 1)
            deferred_texts.append(checked)
        else:
            failed = _repetition_reason(checked, config)
            if failed:
                outcome[-1] = failed
    if deferred:
        n_words, distinct_bound = repetition_bounds(deferred_texts)
        min_words, min_ratio = config.repetition_min_words, config.min_unique_word_ratio
        # bound / n_words <= the true ratio (same float division as the exact rule), so rows at
        # or above the threshold pass; only the others need the exact count.
        ratio_bound = np.divide(distinct_bound, n_words, out=np.zeros(len(n_words)), where=n_words > 0)
        for k in np.flatnonzero((n_words >= min_words) & ((n_words == 0) | ~(ratio_bound >= min_ratio))):
            failed = _repetition_reason(deferred_texts[k], config)
            if failed:
                outcome[deferred[k]] = failed
    del deferred_texts

    # Pass 2, in row order: PII scrubbing (kept rows count what they contained) and hashes.
    kept_rows: list[list[Any]] = []
    kept_hashes: list[tuple[int, int | None, list[int]]] = []
    filtered_rows: list[list[Any]] = []
    for i, (row, (roles, contents), result) in enumerate(zip(rows, contents_of, outcome)):
        if type(result) is tuple:
            # Filtered rows are stored too (nothing is lost), so they are scrubbed as well.
            row[messages_at] = _scrub_messages(
                [{"role": role, "content": content} for role, content in zip(roles, contents)], config.scrub, Counter()
            )
            _scrub_other_fields(row, position, config.scrub, Counter())
            row.append(result[0])
            row.append(result[1])
            filtered_rows.append(row)
            continue
        if scrubbed_before is not None and scrubbed_before[i] is not None:
            pii_counts.update(map(str, scrubbed_before[i]))
        messages = _scrub_messages(result, config.scrub, pii_counts)
        row[messages_at] = messages
        _scrub_other_fields(row, position, config.scrub, pii_counts)
        kept_rows.append(row)
        kept_hashes.append(record_hashes(messages))
    del rows, contents_of, outcome

    # In-file exact duplicates: keep the best copy of each hash group (the same order as the
    # global dedup in curated_dataset).
    exact = [h[0] for h in kept_hashes]
    if len(set(exact)) == len(exact):
        unique_rows, unique_hashes = kept_rows, kept_hashes
    else:
        ranking_columns = [c for c in ("conversation_id", "rating", "edited", "response_time_ms") if c in position]
        ranking = pd.DataFrame([[r[position[c]] for c in ranking_columns] for r in kept_rows], columns=ranking_columns)
        meta_at = position.get("metadata")
        ranking["preference"] = [preference_signal(r[meta_at]) if meta_at is not None else 0 for r in kept_rows]
        best = best_copy_per_group(ranking, exact)
        unique_rows, unique_hashes = [], []
        id_at = position["conversation_id"]
        for i, (hashes, r) in enumerate(zip(kept_hashes, kept_rows)):
            if best[i] == i:
                unique_rows.append(r)
                unique_hashes.append(hashes)
            else:
                filtered_rows.append(r + ["duplicate_in_file", f"duplicate of {kept_rows[best[i]][id_at]}"])

    kept = pd.DataFrame(unique_rows, columns=columns)
    if unique_rows:
        conversations = [r[messages_at] for r in unique_rows]
        texts = [conversation_text(m) for m in conversations]
        signatures = compute_signatures(texts, config.dedup)
        kept["exact_hash"] = np.asarray([h[0] for h in unique_hashes], dtype=np.int64)
        kept["context_hash"] = pd.array([h[1] for h in unique_hashes], dtype="Int64")
        kept["prefix_hashes"] = [h[2] for h in unique_hashes]
        kept["minhash"] = signatures_to_bytes(signatures)
        kept["n_messages"] = np.asarray([len(m) for m in conversations], dtype=np.int64)
        # The record's own preference marker (chosen/rejected, thumbs), for the global dedup's best copy.
        meta_at = position.get("metadata")
        kept["preference"] = np.asarray(
            [preference_signal(r[meta_at]) if meta_at is not None else 0 for r in unique_rows], dtype=np.int8
        )
        kept["n_chars"] = np.asarray([len(t) for t in texts], dtype=np.int64)
        turns = [turn_columns(m) for m in conversations]
        kept["first_turn_hash"] = pd.array([t[0] for t in turns], dtype="Int64")
        kept["first_turn_words"] = np.asarray([t[1] for t in turns], dtype=np.int64)
        kept["final_reply_hash"] = np.asarray([t[2] for t in turns], dtype=np.int64)
    else:
        for column in SIGNATURE_COLUMNS:
            kept[column] = pd.Series([], dtype="object")
    filtered = pd.DataFrame(filtered_rows, columns=columns + ["filter_reason", "filter_detail"])
    return CleanResult(
        kept=kept.reset_index(drop=True),
        filtered=filtered,
        filter_counts=dict(Counter(filtered["filter_reason"])) if len(filtered) else {},
        pii_counts=dict(pii_counts),
        repairs=dict(repairs),
    )


class PartitionNotParsed(LookupError):
    """``clean_partition`` found no parsed records for the partition."""


@dataclass
class CleanPartitionResult:
    """What :func:`clean_partition` wrote for one partition, and the cleaning pass's counts."""

    manifest: CleanedManifest
    cleaned: CleanResult
    n_in: int
    """Parsed records read (= kept + filtered)."""
    steps: StepTimes
    n_parsed: int
    """Rows the partition's parsed file holds (its Parquet footer): what raw_conversation_logs stored."""
    stored_kept: int
    """Rows the written kept file holds (read back from its Parquet footer)."""
    stored_filtered: int
    """Rows the written filtered file holds (read back from its Parquet footer)."""

    @property
    def version(self) -> str:
        """The partition's one version: the name of its files (``<version>.parquet``), the
        manifest's and the asset's DataVersion. It is a hash of the parsed version, code version
        and settings, and cleaning is deterministic, so it names the content too."""
        return self.manifest.version

    @property
    def counts_add_up(self) -> bool:
        """Every parsed record is in exactly one written file: records read = rows of the parsed
        file = rows of the kept file + rows of the filtered file (the ``counts_add_up`` check)."""
        return self.n_in == self.n_parsed == self.stored_kept + self.stored_filtered


def clean_partition(
    parsed_folder: str | Path,
    cleaned_folder: str | Path,
    config: CleaningConfig = DEFAULT_CLEANING_CONFIG,
    *,
    code_version: str = "",
    settings: Sequence[Any] = (),
) -> CleanPartitionResult:
    """The ``cleaned_conversations`` stage for one partition: read the parsed records named by the
    :class:`ParsedManifest` in ``parsed_folder``, run :func:`clean_conversations`, write the kept
    rows to ``cleaned_folder/<version>.parquet``, the filtered ones to
    ``<version>.filtered.parquet``, and a :class:`CleanedManifest` that records the MinHash
    parameters of the signatures (``config.dedup``).

    ``code_version`` and ``settings`` (the parts that identify the configuration: the run
    config, the PII policy's version) go into the version with the parsed version.

    Raises:
        PartitionNotParsed: ``parsed_folder`` has no manifest.
        ManifestError: it has one of an older schema.
    """
    steps = StepTimes()
    parsed_manifest = read_manifest(parsed_folder, ParsedManifest)
    if parsed_manifest is None:
        raise PartitionNotParsed(f"no parsed records in {parsed_folder}")
    with steps.step("read_parsed"):
        parsed = pd.read_parquet(parsed_manifest.path)
    with steps.step("clean_conversations"):
        cleaned = clean_conversations(parsed, config)
    if cleaned.n_in != len(parsed):  # the cleaning pass guarantees it; a bug must not pass silently
        raise AssertionError(f"cleaning lost records: {len(parsed)} in, {cleaned.n_in} out")
    version = content_version(code_version, parsed_manifest.version, *settings)
    folder = Path(cleaned_folder)
    with steps.step("write_cleaned"):
        kept_path = write_parquet(cleaned.kept, folder / f"{version}.parquet")
    with steps.step("write_filtered"):
        filtered_path = write_parquet(cleaned.filtered, folder / f"{version}.filtered.parquet")
    manifest = CleanedManifest(
        version=version,
        path=str(kept_path),
        filtered_path=str(filtered_path),
        parsed_version=parsed_manifest.version,
        minhash_num_perm=config.dedup.num_perm,
        minhash_ngram=config.dedup.ngram,
    )
    write_manifest(folder, manifest)
    with steps.step("count_stored"):
        n_parsed = pq.ParquetFile(parsed_manifest.path).metadata.num_rows
        stored_kept = pq.ParquetFile(kept_path).metadata.num_rows
        stored_filtered = pq.ParquetFile(filtered_path).metadata.num_rows
    return CleanPartitionResult(
        manifest,
        cleaned,
        len(parsed),
        steps,
        n_parsed=n_parsed,
        stored_kept=stored_kept,
        stored_filtered=stored_filtered,
    )
