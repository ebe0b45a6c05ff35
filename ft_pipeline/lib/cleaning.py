"""Normalization, role rules, the quality filter and the per-file cleaning pass.

``clean_conversations`` turns the parsed rows of one landed file into two frames: the kept
conversations (normalized, PII-scrubbed, with dedup signatures) and the filtered ones (each with
one reason code). Every input row lands in exactly one of the two.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xxhash

from ft_pipeline.lib.dedup import (
    DEFAULT_DEDUP_CONFIG,
    DedupConfig,
    compute_signatures,
    context_hash,
    conversation_text,
    exact_hash,
    prefix_hashes,
    signatures_to_bytes,
)
from ft_pipeline.lib.pii import DEFAULT_PII_CONFIG, PiiConfig, scrub_pii

# Filter reason codes (records that parse but should not be trained on), with the sentence
# shown to people. Checked in this order; a record gets the first that applies.
FILTER_REASONS: dict[str, str] = {
    "system_not_first": "a system message appears after the first message",
    "roles_not_alternating": "two consecutive messages share a role (merging is switched off)",
    "last_message_not_assistant": "the conversation does not end with an assistant reply (trimming is switched off)",
    "missing_user_or_assistant": "no user turn or no assistant turn is left after normalization",
    "edited_reply": "an agent edited the reply afterwards (edited=true)",
    "low_rating": "the rating is below the minimum",
    "slow_response": "the response time is at or above the maximum",
    "short_assistant_reply": "the assistant's content is shorter than the minimum",
    "repetitive": "the assistant's content repeats itself (low unique-word ratio)",
    "duplicate_in_file": "an exact duplicate of a better copy in the same file",
}

# Repairs that keep a record but change it; counted so the UI shows what was touched.
REPAIRS = (
    "merged_consecutive_turns",
    "dropped_leading_assistant",
    "trimmed_trailing_user",
    "dropped_empty_message",
)


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
    scrub_pii: bool = True
    """Replace personal data with typed placeholders such as ``<EMAIL>``."""
    pii: PiiConfig = field(default_factory=lambda: DEFAULT_PII_CONFIG)
    dedup: DedupConfig = field(default_factory=lambda: DEFAULT_DEDUP_CONFIG)


DEFAULT_CLEANING_CONFIG = CleaningConfig()

_HORIZONTAL_SPACE = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Zero-width and control characters (except \n and \t) carry no meaning for training and
# break exact-match dedup.
_INVISIBLE = dict.fromkeys(
    [c for c in range(32) if c not in (9, 10)] + [0x7F, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF]
)


def normalize_text(text: str) -> str:
    """Unicode NFC, invisible characters removed, whitespace runs collapsed, ends stripped.

    Leading indentation inside a line is collapsed too (to one space): chat logs rarely carry
    code whose indentation matters, and consistent whitespace is what makes exact dedup work.
    """
    if not text.isascii():
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        text = text.translate(_INVISIBLE)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii() and _ASCII_CONTROL.search(text):
        text = text.translate(_INVISIBLE)
    # Fast path: most logged text is already clean, and these substring tests run in C.
    if "  " in text or "\t" in text or not text.isascii():
        text = _HORIZONTAL_SPACE.sub(" ", text)
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
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        content = normalize_text(message["content"])
        role = message["role"]
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
    roles = {m["role"] for m in out}
    if "user" not in roles or "assistant" not in roles:
        raise FilteredOut("missing_user_or_assistant", f"roles left: {sorted(roles) or 'none'}")
    return out


def quality_reason(row: dict[str, Any], messages: list[dict[str, str]], config: CleaningConfig) -> tuple[str, str] | None:
    """The first quality rule the conversation breaks, as (reason, detail), or None."""
    if config.drop_edited and row.get("edited") is True:
        return "edited_reply", "edited=true"
    rating = row.get("rating")
    if rating is not None and rating == rating and rating < config.min_rating:
        return "low_rating", f"rating {rating:g} < {config.min_rating:g}"
    response_time = row.get("response_time_ms")
    if response_time is not None and response_time == response_time and response_time >= config.max_response_time_ms:
        return "slow_response", f"response_time_ms {int(response_time)} >= {config.max_response_time_ms}"
    assistant_text = " ".join(m["content"] for m in messages if m["role"] == "assistant")
    if len(assistant_text) < config.min_assistant_chars:
        return "short_assistant_reply", f"{len(assistant_text)} chars < {config.min_assistant_chars}"
    words = assistant_text.lower().split()
    if len(words) >= config.repetition_min_words:
        ratio = len(set(words)) / len(words)
        if ratio < config.min_unique_word_ratio:
            return "repetitive", f"unique-word ratio {ratio:.2f} < {config.min_unique_word_ratio:g}"
    return None


def priority_key(rating: Any, edited: Any, response_time_ms: Any, conversation_id: str) -> tuple:
    """Sort key of 'the best copy' (smaller is better): higher rating, not edited, faster, smallest id.

    A missing rating ranks as a neutral 3.5, between good and bad ratings.
    """
    r = 3.5 if rating is None or rating != rating else float(rating)
    e = 1 if edited is True else 0
    t = float("inf") if response_time_ms is None or response_time_ms != response_time_ms else float(response_time_ms)
    return (-r, e, t, conversation_id)


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


def first_user_turn(messages) -> str | None:
    for m in messages:
        if m["role"] == "user":
            return m["content"]
    return None


def turn_columns(messages) -> tuple[int | None, int, int]:
    """(hash of the lower-cased first user turn, its word count, hash of the final reply).

    Stored per row so the split step can group and check leakage without reading messages."""
    first = first_user_turn(messages)
    first_hash = text_hash(first.lower()) if first else None
    return first_hash, len(first.split()) if first else 0, text_hash(messages[-1]["content"])


def _scrub_messages(messages: list[dict[str, str]], config: CleaningConfig, pii_counts: Counter) -> list[dict[str, str]]:
    if not config.scrub_pii:
        return messages
    out = []
    for m in messages:
        text, found = scrub_pii(m["content"], config.pii)
        if found:
            pii_counts.update(found)
        out.append({"role": m["role"], "content": text})
    return out


def clean_conversations(frame: pd.DataFrame, config: CleaningConfig = DEFAULT_CLEANING_CONFIG) -> CleanResult:
    """Normalize, apply role rules and the quality filter, scrub PII, drop in-file exact
    duplicates, and compute dedup signatures for the kept rows."""
    kept_rows: list[dict[str, Any]] = []
    filtered_rows: list[dict[str, Any]] = []
    pii_counts: Counter = Counter()
    repairs: Counter = Counter()
    for row in frame.to_dict("records"):
        for key in ("rating", "response_time_ms", "edited", "user_id", "created_at", "metadata"):
            value = row.get(key)
            if value is not None and value != value:  # NaN / NA from Parquet round trips
                row[key] = None
        raw_messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        try:
            messages = apply_role_rules(raw_messages, config, repairs)
            failed = quality_reason(row, messages, config)
            if failed:
                raise FilteredOut(*failed)
        except FilteredOut as out:
            # Filtered rows are stored too (nothing is lost), so they are scrubbed as well.
            row["messages"] = _scrub_messages(
                [{"role": m["role"], "content": normalize_text(m["content"])} for m in raw_messages], config, Counter()
            )
            row["filter_reason"] = out.reason
            row["filter_detail"] = out.detail
            filtered_rows.append(row)
            continue
        row["messages"] = _scrub_messages(messages, config, pii_counts)
        kept_rows.append(row)

    # In-file exact duplicates: keep the best copy of each hash group.
    hashes = [exact_hash(r["messages"]) for r in kept_rows]
    best: dict[int, int] = {}
    for i, (h, r) in enumerate(zip(hashes, kept_rows)):
        j = best.get(h)
        if j is None:
            best[h] = i
            continue
        other = kept_rows[j]
        if priority_key(r["rating"], r["edited"], r["response_time_ms"], r["conversation_id"]) < priority_key(
            other["rating"], other["edited"], other["response_time_ms"], other["conversation_id"]
        ):
            best[h] = i
    winners = set(best.values())
    unique_rows, unique_hashes = [], []
    for i, (h, r) in enumerate(zip(hashes, kept_rows)):
        if i in winners:
            unique_rows.append(r)
            unique_hashes.append(h)
        else:
            r = dict(r)
            r["filter_reason"] = "duplicate_in_file"
            r["filter_detail"] = f"duplicate of {kept_rows[best[h]]['conversation_id']}"
            filtered_rows.append(r)

    kept = pd.DataFrame(unique_rows, columns=list(frame.columns))
    if unique_rows:
        texts = [conversation_text(r["messages"]) for r in unique_rows]
        signatures = compute_signatures(texts, config.dedup)
        kept["exact_hash"] = np.asarray(unique_hashes, dtype=np.int64)
        kept["context_hash"] = pd.array([context_hash(r["messages"]) for r in unique_rows], dtype="Int64")
        kept["prefix_hashes"] = [prefix_hashes(r["messages"]) for r in unique_rows]
        kept["minhash"] = signatures_to_bytes(signatures)
        kept["n_messages"] = np.asarray([len(r["messages"]) for r in unique_rows], dtype=np.int64)
        kept["n_chars"] = np.asarray([len(t) for t in texts], dtype=np.int64)
        turns = [turn_columns(r["messages"]) for r in unique_rows]
        kept["first_turn_hash"] = pd.array([t[0] for t in turns], dtype="Int64")
        kept["first_turn_words"] = np.asarray([t[1] for t in turns], dtype=np.int64)
        kept["final_reply_hash"] = np.asarray([t[2] for t in turns], dtype=np.int64)
    else:
        for column in SIGNATURE_COLUMNS:
            kept[column] = pd.Series([], dtype="object")
    filtered = pd.DataFrame(filtered_rows, columns=list(frame.columns) + ["filter_reason", "filter_detail"])
    return CleanResult(
        kept=kept.reset_index(drop=True),
        filtered=filtered,
        filter_counts=dict(Counter(filtered["filter_reason"])) if len(filtered) else {},
        pii_counts=dict(pii_counts),
        repairs=dict(repairs),
    )
