"""Preference data from the logs' own signals: DPO pairs, KTO examples, and what was dropped.

The builder reads the CLEANED partitions, kept rows and filtered rows together: the quality
filter removes exactly the signal preference training needs (``low_rating``, ``edited_reply``,
``negative_feedback``).
All text there is already normalized and PII scrubbed by the cleaning stage.

Raw-format contract (the signals, read from the record's own columns and from its ``metadata``
JSON, which holds the source record's unknown keys):

- ``rating`` (column, 1-5): higher is better.
- ``thumbs`` (metadata key): ``"up"`` / ``"down"`` (any case); ``true`` / ``false`` and
  ``1`` / ``-1`` are accepted too. Anything else counts as no thumbs.
- ``edited`` (column) with ``original_content`` (metadata key): the final assistant message is
  what the agent sent after editing; ``original_content`` is the model's reply before the edit.
- ``regenerated`` (metadata key, bool; ``"true"`` / ``1`` accepted): the user asked for another
  answer to this reply, i.e. regenerated AWAY from it; another conversation with the same
  context (every message before the final assistant turn) holds the reply they accepted.

Rules, applied in this order; each conversation ends in exactly ONE place (a DPO pair, a KTO
example, or dropped with a reason code from :data:`DROP_REASONS`), and :func:`build_preferences`
raises ``AssertionError`` when the counts do not add up:

1. Rows the cleaning stage filtered for a structural reason (anything but
   :data:`USABLE_FILTER_REASONS`) are dropped ``not_usable`` (detail: the filter reason);
   ``duplicate_in_file`` rows are dropped ``duplicate_reply``.
2. Conversations with the same context and the same final reply (and the same
   ``original_content`` for an edit) are one conversation: the copy with the most signals is
   kept, the others are dropped ``duplicate_reply``.
3. Edit pair (rule ``edit``): edited, with a non-empty ``original_content`` that differs from the
   sent reply (after normalization) -> chosen = the sent reply, rejected = the original. One
   conversation makes the pair.
4. Context groups: the other conversations that share a context (the cleaning stage's context
   hash: :func:`ft_pipeline.lib.dedup.record_hashes` of every message before the final assistant
   turn) are ordered by, first that applies: regeneration (chosen = not regenerated), rating
   (a gap of at least ``min_rating_gap``), thumbs (up over down). The best is paired with the
   worst; a pair whose other signals order the two replies the other way is dropped
   ``contradictory``; a group that nothing orders is dropped ``tie``. In groups of more than two,
   the members left out of the pair go on to rule 5 as singletons.
5. KTO (unpaired): rating >= ``kto_good_rating`` -> desirable, <= ``kto_bad_rating`` ->
   undesirable, else thumbs up/down; a rating and thumbs that disagree -> ``contradictory``; a
   rating in between without thumbs -> ``neutral_rating``; nothing -> ``no_signal``.

Kept rows are used as the cleaning stage stored them. Filtered rows are stored normalized but not
repaired (no merged turns, no greeting dropped), so the builder applies the cleaning stage's role
rules (default settings) to them first: a filtered reply and a kept one with the same context then
get the same context hash.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ft_pipeline.lib.cleaning import (
    DEFAULT_CLEANING_CONFIG,
    FilteredOut,
    apply_role_rules,
    normalize_text,
    text_hash,
    turn_columns,
)
from ft_pipeline.lib.dedup import record_hashes
from ft_pipeline.lib.manifests import CleanedManifest, read_manifest


@dataclass(frozen=True)
class PreferenceConfig:
    """Which signals the preference builder uses, and its thresholds. Every default is the documented one."""

    kto_good_rating: float = 4
    """An unpaired conversation rated at or above this is a desirable KTO example."""
    kto_bad_rating: float = 2
    """An unpaired conversation rated at or below this is an undesirable KTO example."""
    min_rating_gap: float = 1
    """Two replies to the same context make a ``rating`` pair when their ratings differ by at least this."""
    use_edits: bool = True
    """Make ``edit`` pairs (the agent's edited reply over the model's ``original_content``)."""
    use_regenerations: bool = True
    """Use the ``regenerated`` marker (the reply the user regenerated away from is the rejected one)."""
    use_ratings: bool = True
    """Use the ``rating`` column (pairs by rating gap, KTO labels by threshold)."""
    use_thumbs: bool = True
    """Use the ``thumbs`` marker (pairs of up over down, KTO labels)."""


DEFAULT_PREFERENCE_CONFIG = PreferenceConfig()

#: Why a conversation is in neither a pair nor a KTO example, with the sentence shown to people.
DROP_REASONS: dict[str, str] = {
    "not_usable": "the cleaning stage filtered it for a structural reason (detail: the filter reason)",
    "duplicate_reply": "the same prompt and final reply as another conversation, which is used instead",
    "tie": "shares its prompt with other replies, but no signal orders them (equal or missing ratings)",
    "contradictory": "its signals disagree (rating against thumbs, or a pair ordered both ways)",
    "neutral_rating": "rated between the KTO thresholds, without thumbs",
    "no_signal": "no rating, thumbs, edit or regeneration to learn from",
}

#: How a DPO pair was made, with the sentence shown to people.
PAIR_RULES: dict[str, str] = {
    "edit": "an agent edited the model's reply: the sent reply is chosen over the model's original",
    "regeneration": "the user regenerated away from a reply: the reply they kept is chosen over it",
    "rating": "two replies to the same prompt rated at least min_rating_gap apart: the higher is chosen",
    "thumbs": "two replies to the same prompt, one thumbs up and one thumbs down: the up is chosen",
}

#: How a KTO example got its label, with the sentence shown to people.
KTO_RULES: dict[str, str] = {
    "rating": "rated at or above kto_good_rating (desirable) or at or below kto_bad_rating (undesirable)",
    "thumbs": "thumbs up (desirable) or down (undesirable), without a rating that decides",
}

#: Filter reasons of the cleaning stage whose rows still hold a usable reply (the quality filter).
USABLE_FILTER_REASONS = frozenset(
    {"low_rating", "edited_reply", "negative_feedback", "slow_response", "short_assistant_reply", "repetitive"}
)
#: The cleaning stage's in-file exact duplicates.
DUPLICATE_FILTER_REASON = "duplicate_in_file"

PAIR_COLUMNS = [
    "pair_id",
    "rule",
    "prompt",
    "chosen",
    "rejected",
    "chosen_conversation_id",
    "rejected_conversation_id",
    "user_id",
    "tags",
    "context_hash",
    "first_turn_hash",
]
KTO_COLUMNS = [
    "example_id",
    "rule",
    "prompt",
    "completion",
    "label",
    "conversation_id",
    "user_id",
    "tags",
    "context_hash",
    "first_turn_hash",
]
DROPPED_COLUMNS = ["conversation_id", "source_file", "source_line", "reason", "detail"]

#: Columns of the cleaned files the builder reads (``filter_reason`` / ``filter_detail`` are
#: empty for kept rows).
INPUT_COLUMNS = [
    "conversation_id",
    "user_id",
    "messages",
    "rating",
    "edited",
    "tags",
    "metadata",
    "source_file",
    "source_line",
    "filter_reason",
    "filter_detail",
]


@dataclass(frozen=True)
class PreferenceCounts:
    """Where ``n_in`` conversations ended: pairs by rule, KTO examples by label, drops by reason."""

    n_in: int
    """Conversations read (kept + filtered rows of the cleaned partitions)."""
    pair_counts: dict[str, int]
    """Rule -> pairs made by it (every rule of :data:`PAIR_RULES`, zeros included)."""
    kto_counts: dict[str, int]
    """``{"desirable": n, "undesirable": n}``."""
    dropped_counts: dict[str, int]
    """Reason -> conversations dropped for it (every reason of :data:`DROP_REASONS`, zeros included)."""

    @property
    def n_pairs(self) -> int:
        return sum(self.pair_counts.values())

    @property
    def n_kto(self) -> int:
        return sum(self.kto_counts.values())

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped_counts.values())

    @property
    def conversations_accounted(self) -> int:
        """Conversations that ended somewhere: two per pair (one per ``edit`` pair), one per KTO
        example, one per dropped row. Equals ``n_in``."""
        return 2 * self.n_pairs - self.pair_counts.get("edit", 0) + self.n_kto + self.n_dropped

    @property
    def counts_add_up(self) -> bool:
        """Every conversation read ended in exactly one place."""
        return self.conversations_accounted == self.n_in


@dataclass
class PreferenceBuild:
    """What :func:`build_preferences` made of ``n_in`` conversations."""

    pairs: pd.DataFrame
    """DPO pairs, columns :data:`PAIR_COLUMNS`."""
    kto: pd.DataFrame
    """Unpaired KTO examples, columns :data:`KTO_COLUMNS`."""
    dropped: pd.DataFrame
    """Conversations used for neither, columns :data:`DROPPED_COLUMNS`."""
    n_in: int
    """Conversations read (kept + filtered rows of the cleaned partitions)."""

    @property
    def pair_counts(self) -> dict[str, int]:
        """Rule -> pairs made by it (every rule of :data:`PAIR_RULES`, zeros included)."""
        found = Counter(self.pairs["rule"])
        return {rule: int(found[rule]) for rule in PAIR_RULES}

    @property
    def kto_counts(self) -> dict[str, int]:
        """``{"desirable": n, "undesirable": n}``."""
        desirable = int(self.kto["label"].astype(bool).sum()) if len(self.kto) else 0
        return {"desirable": desirable, "undesirable": len(self.kto) - desirable}

    @property
    def dropped_counts(self) -> dict[str, int]:
        """Reason -> conversations dropped for it (every reason of :data:`DROP_REASONS`, zeros included)."""
        found = Counter(self.dropped["reason"])
        return {reason: int(found[reason]) for reason in DROP_REASONS}

    @property
    def conversations_accounted(self) -> int:
        """Conversations that ended somewhere: two per pair (one per ``edit`` pair), one per KTO
        example, one per dropped row. Equals ``n_in``."""
        n_edit = int((self.pairs["rule"] == "edit").sum()) if len(self.pairs) else 0
        return 2 * len(self.pairs) - n_edit + len(self.kto) + len(self.dropped)

    @property
    def counts_add_up(self) -> bool:
        """Every conversation read ended in exactly one place."""
        return self.conversations_accounted == self.n_in

    def counts(self) -> PreferenceCounts:
        """The counts alone (what the stage reports)."""
        return PreferenceCounts(self.n_in, self.pair_counts, self.kto_counts, self.dropped_counts)


# --- signals -----------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def _is_true(value: Any) -> bool:
    return not _missing(value) and isinstance(value, (bool, np.bool_)) and bool(value)


def parse_thumbs(value: Any) -> int:
    """+1 for thumbs up, -1 for down, 0 for none (the contract in the module docstring)."""
    if isinstance(value, (bool, np.bool_)):
        return 1 if value else -1
    if isinstance(value, (int, np.integer)):
        return {1: 1, -1: -1}.get(int(value), 0)
    if isinstance(value, str):
        return {"up": 1, "down": -1, "true": 1, "false": -1, "1": 1, "-1": -1}.get(value.strip().lower(), 0)
    return 0


def parse_regenerated(value: Any) -> bool:
    """True when the record says the user regenerated away from this reply."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value) == 1
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return False


def _metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, str) or not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _stable_id(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class _Row:
    """One usable conversation: its prompt, final reply and signals."""

    index: int
    conversation_id: str
    source_file: str
    source_line: Any
    user_id: Any
    tags: list[str]
    prompt: list[dict[str, str]]
    reply: str
    context_hash: int
    first_turn_hash: int | None
    rating: float | None
    thumbs: int
    regenerated: bool
    original: str | None
    """The model's reply before an agent's edit, when the edit makes an ``edit`` pair."""

    @property
    def n_signals(self) -> int:
        return (self.rating is not None) + (self.thumbs != 0) + self.regenerated + (self.original is not None)

    def location(self) -> tuple[Any, ...]:
        return (self.conversation_id, self.source_file, self.source_line)


#: Where an output record goes in the order :func:`build_preferences` writes it: records built from
#: a part of the conversations (one shard of context groups) sort into the order the whole input
#: would give them by this key (see :func:`_place`).
SortKey = tuple[Any, ...]


@dataclass
class _Outcome:
    pairs: list[dict[str, Any]] = field(default_factory=list)
    kto: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    pair_keys: list[SortKey] = field(default_factory=list)
    kto_keys: list[SortKey] = field(default_factory=list)
    dropped_keys: list[SortKey] = field(default_factory=list)
    placed: Counter = field(default_factory=Counter)

    def drop(
        self,
        index: int,
        conversation_id: Any,
        source_file: Any,
        source_line: Any,
        reason: str,
        detail: str,
        key: SortKey,
    ) -> None:
        self.placed[index] += 1
        self.dropped_keys.append(key)
        self.dropped.append(
            {
                "conversation_id": conversation_id,
                "source_file": source_file,
                "source_line": source_line,
                "reason": reason,
                "detail": detail,
            }
        )

    def drop_row(self, row: _Row, reason: str, detail: str, key: SortKey) -> None:
        self.drop(row.index, row.conversation_id, row.source_file, row.source_line, reason, detail, key)

    def pair(self, rule: str, chosen: _Row, rejected: _Row, key: SortKey) -> None:
        self.placed[chosen.index] += 1
        self.pair_keys.append(key)
        if rejected is not chosen:
            self.placed[rejected.index] += 1
        rejected_text = rejected.original if rule == "edit" else rejected.reply
        tags = sorted(set(chosen.tags) | set(rejected.tags))
        self.pairs.append(
            {
                "pair_id": _stable_id(rule, *chosen.location(), *rejected.location()),
                "rule": rule,
                "prompt": chosen.prompt,
                "chosen": chosen.reply,
                "rejected": rejected_text,
                "chosen_conversation_id": chosen.conversation_id,
                "rejected_conversation_id": rejected.conversation_id,
                "user_id": chosen.user_id,
                "tags": tags,
                "context_hash": chosen.context_hash,
                "first_turn_hash": chosen.first_turn_hash,
            }
        )

    def example(self, row: _Row, rule: str, label: bool) -> None:
        self.placed[row.index] += 1
        self.kto_keys.append(_position(row))
        self.kto.append(
            {
                "example_id": _stable_id("kto", *row.location()),
                "rule": rule,
                "prompt": row.prompt,
                "completion": row.reply,
                "label": label,
                "conversation_id": row.conversation_id,
                "user_id": row.user_id,
                "tags": row.tags,
                "context_hash": row.context_hash,
                "first_turn_hash": row.first_turn_hash,
            }
        )


# --- the builder -------------------------------------------------------------------------------


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return list(frame[name]) if name in frame.columns else [None] * len(frame)


def _tags(value: Any) -> list[str]:
    if value is None or isinstance(value, (str, float)) or _missing_scalar(value):
        return []
    return [str(t) for t in value]


def _missing_scalar(value: Any) -> bool:
    return np.ndim(value) == 0 and _missing(value)


def _usable_rows(conversations: pd.DataFrame, config: PreferenceConfig, out: _Outcome, offset: int = 0) -> list[_Row]:
    """Rule 1 (structural drops) and the signals of every other row. The rows of ``conversations``
    are numbered from ``offset`` (their place in the whole input when it is read in batches)."""
    columns = {name: _column(conversations, name) for name in INPUT_COLUMNS}
    rows: list[_Row] = []
    for j in range(len(conversations)):
        i = offset + j
        conversation_id, source_file, source_line = (
            columns["conversation_id"][j],
            columns["source_file"][j],
            columns["source_line"][j],
        )
        reason = columns["filter_reason"][j]
        reason = "" if _missing_scalar(reason) else str(reason)
        if reason == DUPLICATE_FILTER_REASON:
            detail = columns["filter_detail"][j]
            detail = "" if _missing(detail) else detail
            out.drop(i, conversation_id, source_file, source_line, "duplicate_reply", detail, (0, i))
            continue
        if reason and reason not in USABLE_FILTER_REASONS:
            out.drop(i, conversation_id, source_file, source_line, "not_usable", reason, (0, i))
            continue
        raw = [{"role": m["role"], "content": m["content"]} for m in columns["messages"][j]]
        if reason:  # stored normalized but not repaired: the role rules, as the cleaning pass ran them
            try:
                messages = apply_role_rules(raw, DEFAULT_CLEANING_CONFIG, Counter())
            except FilteredOut as failed:
                out.drop(i, conversation_id, source_file, source_line, "not_usable", failed.reason, (0, i))
                continue
        else:  # kept rows are stored as the cleaning pass left them
            messages = raw
        _, context, _ = record_hashes(messages)
        if context is None:  # role rules leave an assistant reply last; kept for type safety
            out.drop(i, conversation_id, source_file, source_line, "not_usable", "no final assistant reply", (0, i))
            continue
        reply = messages[-1]["content"]
        metadata = _metadata(columns["metadata"][j])
        rating = columns["rating"][j]
        original = None
        if config.use_edits and _is_true(columns["edited"][j]):
            text = metadata.get("original_content")
            text = normalize_text(text) if isinstance(text, str) else ""
            original = text if text and text != reply else None
        rows.append(
            _Row(
                index=i,
                conversation_id=conversation_id,
                source_file=source_file,
                source_line=None if _missing(source_line) else source_line,
                user_id=None if _missing(columns["user_id"][j]) else columns["user_id"][j],
                tags=_tags(columns["tags"][j]),
                prompt=messages[:-1],
                reply=reply,
                context_hash=context,
                first_turn_hash=turn_columns(messages)[0],
                rating=float(rating) if config.use_ratings and not _missing(rating) else None,
                thumbs=parse_thumbs(metadata.get("thumbs")) if config.use_thumbs else 0,
                regenerated=config.use_regenerations and parse_regenerated(metadata.get("regenerated")),
                original=original,
            )
        )
    return rows


def _order_key(row: _Row) -> tuple[str, str, str]:
    return (str(row.conversation_id), str(row.source_file), str(row.source_line))


def _position(row: _Row) -> tuple[str, str, str, int]:
    """The order the rules visit rows in: :func:`_order_key`, ties in input order."""
    return (*_order_key(row), row.index)


def _rank(row: _Row, neutral: float) -> tuple[float, int]:
    """Higher is better: rating (missing = neutral), then thumbs."""
    return (neutral if row.rating is None else row.rating, row.thumbs)


def _pick_pair(group: list[_Row], config: PreferenceConfig) -> tuple[str, _Row, _Row] | None:
    """(rule, chosen, rejected) for a context group of distinct replies, or None when nothing orders them."""
    neutral = (config.kto_good_rating + config.kto_bad_rating) / 2

    def best(rows: list[_Row]) -> _Row:
        return min(rows, key=lambda r: (tuple(-v for v in _rank(r, neutral)), _order_key(r)))

    def worst(rows: list[_Row]) -> _Row:
        return min(rows, key=lambda r: (_rank(r, neutral), _order_key(r)))

    accepted = [r for r in group if not r.regenerated]
    away = [r for r in group if r.regenerated]
    if accepted and away:
        return "regeneration", best(accepted), worst(away)
    rated = [r for r in group if r.rating is not None]
    if len(rated) >= 2:
        high, low = best(rated), worst(rated)
        assert high.rating is not None and low.rating is not None
        if high.rating - low.rating >= config.min_rating_gap:
            return "rating", high, low
    ups = [r for r in group if r.thumbs > 0]
    downs = [r for r in group if r.thumbs < 0]
    if ups and downs:
        return "thumbs", best(ups), worst(downs)
    return None


def _disagreement(chosen: _Row, rejected: _Row, config: PreferenceConfig) -> str:
    """Which signal orders the pair the other way ('' when none)."""
    if chosen.regenerated and not rejected.regenerated:
        return "regenerated: the chosen reply was regenerated away from"
    if (
        chosen.rating is not None
        and rejected.rating is not None
        and rejected.rating - chosen.rating >= config.min_rating_gap
    ):
        return f"rating {rejected.rating:g} of the rejected reply > {chosen.rating:g} of the chosen"
    if chosen.thumbs < 0 and rejected.thumbs > 0:
        return "thumbs: the chosen reply is down, the rejected one up"
    return ""


def _kto(row: _Row, config: PreferenceConfig, out: _Outcome) -> None:
    """Rule 5: one unpaired conversation."""
    by_rating: bool | None = None
    if row.rating is not None:
        if row.rating >= config.kto_good_rating:
            by_rating = True
        elif row.rating <= config.kto_bad_rating:
            by_rating = False
    by_thumbs = None if row.thumbs == 0 else row.thumbs > 0
    key = (3, _position(row))
    if by_rating is not None:
        if by_thumbs is not None and by_thumbs != by_rating:
            detail = f"rating {row.rating:g} but thumbs {'up' if by_thumbs else 'down'}"
            out.drop_row(row, "contradictory", detail, key)
        else:
            out.example(row, "rating", by_rating)
    elif by_thumbs is not None:
        out.example(row, "thumbs", by_thumbs)
    elif row.rating is not None:
        out.drop_row(row, "neutral_rating", f"rating {row.rating:g}", key)
    else:
        out.drop_row(row, "no_signal", "", key)


def _place(rows: list[_Row], config: PreferenceConfig, out: _Outcome) -> None:
    """Rules 2-5 for usable rows (rule 1 has run). ``rows`` may be a part of the input as long as
    it holds every row of each context it touches (a shard of context groups): rules 2-5 only
    relate rows with the same context. Every record gets a sort key (``out.*_keys``) that orders
    the records of all parts as the whole input gives them: the outcome lists of one call are in
    that order already, so the parts' outputs merge by key.

    Keys, by output: a pair is ``(0, position)`` for an edit pair (rule 3, in row order), ``(1,
    position of the group's first row)`` for a context-group pair (rule 4, in group order); a KTO
    example is its row's position (rule 5, in row order); a dropped row is ``(0, input index)``
    (rule 1, by :func:`_usable_rows`), ``(1, position of the copies' first row, position)`` (rule
    2), ``(2, position of the group's first row, place in the group)`` (rule 4) or ``(3,
    position)`` (rule 5). A position is :func:`_position`.
    """
    rows = sorted(rows, key=_position)

    # Rule 2: exact copies (same context, reply and edit original) are one conversation.
    copies: dict[tuple[int, int, int | None], list[_Row]] = {}
    for row in rows:
        key = (row.context_hash, text_hash(row.reply), None if row.original is None else text_hash(row.original))
        copies.setdefault(key, []).append(row)
    unique: list[_Row] = []
    for same in copies.values():
        keep = min(same, key=lambda r: (-r.n_signals, _order_key(r)))
        unique.append(keep)
        first = _position(same[0])
        for row in same:
            if row is not keep:
                detail = f"same prompt and reply as {keep.conversation_id}"
                out.drop_row(row, "duplicate_reply", detail, (1, first, _position(row)))
    unique.sort(key=_position)

    # Rule 3: edit pairs.
    grouped: dict[int, list[_Row]] = {}
    for row in unique:
        if row.original is not None:
            out.pair("edit", row, row, (0, _position(row)))
        else:
            grouped.setdefault(row.context_hash, []).append(row)

    # Rule 4: context groups; rule 5 for singletons and the members a pair leaves out.
    singles: list[_Row] = []
    for group in grouped.values():
        if len(group) == 1:
            singles.extend(group)
            continue
        first = _position(group[0])
        picked = _pick_pair(group, config)
        if picked is None:
            for place, row in enumerate(group):
                out.drop_row(row, "tie", f"{len(group)} replies to one prompt, none ordered", (2, first, place))
            continue
        rule, chosen, rejected = picked
        disagreement = _disagreement(chosen, rejected, config)
        if disagreement:
            out.drop_row(chosen, "contradictory", f"{rule} pair: {disagreement}", (2, first, 0))
            out.drop_row(rejected, "contradictory", f"{rule} pair: {disagreement}", (2, first, 1))
        else:
            out.pair(rule, chosen, rejected, (1, first))
        singles.extend(r for r in group if r is not chosen and r is not rejected)
    for row in sorted(singles, key=_position):
        _kto(row, config, out)


def _misplaced(out: _Outcome) -> int:
    """Conversations ``out`` placed more than once (the rules guarantee none)."""
    return sum(1 for n in out.placed.values() if n != 1)


def build_preferences(
    conversations: pd.DataFrame, config: PreferenceConfig = DEFAULT_PREFERENCE_CONFIG
) -> PreferenceBuild:
    """DPO pairs, KTO examples and dropped rows from cleaned conversations (kept and filtered rows
    concatenated, see :func:`read_cleaned_for_preferences`), by the rules of the module docstring.

    Raises:
        AssertionError: a conversation ended in no place or in two (a bug must not pass silently).
    """
    conversations = conversations.reset_index(drop=True)
    out = _Outcome()
    _place(_usable_rows(conversations, config, out), config, out)
    build = PreferenceBuild(
        pairs=_frame(out.pairs, PAIR_COLUMNS),
        kto=_frame(out.kto, KTO_COLUMNS),
        dropped=_frame(out.dropped, DROPPED_COLUMNS),
        n_in=len(conversations),
    )
    misplaced = _misplaced(out)
    unplaced = len(conversations) - len(out.placed)
    if misplaced or unplaced or not build.counts_add_up:  # the rules guarantee it; a bug must not pass silently
        raise AssertionError(
            f"preference accounting: {build.n_in} in, {build.conversations_accounted} accounted, "
            f"{unplaced} placed nowhere, {misplaced} placed more than once"
        )
    ids = [*build.pairs["pair_id"], *build.kto["example_id"]]
    if len(set(ids)) != len(ids):
        raise AssertionError("preference ids are not unique")
    return build


def _frame(records: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=columns)
    if "context_hash" in columns:
        frame["context_hash"] = frame["context_hash"].astype(np.int64)
        frame["first_turn_hash"] = pd.array(list(frame["first_turn_hash"]), dtype="Int64")
    if "label" in columns:
        frame["label"] = frame["label"].astype(bool)
    return frame


# --- reading the cleaned partitions --------------------------------------------------------------


#: Rows per batch when the cleaned files are read batch by batch.
READ_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class CleanedSource:
    """One Parquet file of a cleaned partition: its kept rows or its filtered rows."""

    partition: str
    path: Path
    kept: bool
    rows: int


def cleaned_sources(cleaned_folders: Mapping[str, Path]) -> tuple[list[CleanedSource], list[str]]:
    """The kept and filtered files of every cleaned partition (partition -> folder holding its
    :class:`CleanedManifest`), partitions in sorted order, kept before filtered, and the
    partitions that have no manifest yet (skipped). Reads only the manifests and Parquet footers.

    Raises:
        ManifestError: a partition's manifest is of another kind or an older schema.
    """
    sources: list[CleanedSource] = []
    missing: list[str] = []
    for partition in sorted(cleaned_folders):
        manifest = read_manifest(cleaned_folders[partition], CleanedManifest)
        if manifest is None:
            missing.append(partition)
            continue
        for path, kept in ((manifest.path, True), (manifest.filtered_path, False)):
            rows = pq.ParquetFile(path).metadata.num_rows
            sources.append(CleanedSource(partition, Path(path), kept, rows))
    return sources, missing


def parquet_batches(
    path: str | Path, columns: Sequence[str] | None = None, batch_rows: int = READ_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The rows of the Parquet file at ``path`` (``columns`` only, when given) in batches of at most
    ``batch_rows``, at most one row group in memory at a time: one ``iter_batches`` reader per row
    group, because a reader over the whole file holds what it has read (measured: 1.9 GB after the
    0.8M KTO rows of the 1M benchmark, against 0.4 GB row group by row group)."""
    parquet = pq.ParquetFile(path)
    for i in range(parquet.metadata.num_row_groups):
        names = None if columns is None else list(columns)
        yield from parquet.iter_batches(batch_size=batch_rows, row_groups=[i], columns=names)


def iter_cleaned_for_preferences(
    sources: Sequence[CleanedSource], batch_rows: int = READ_BATCH_ROWS
) -> Iterator[pd.DataFrame]:
    """The rows of ``sources`` in batches of at most ``batch_rows``, in order, with the columns
    :data:`INPUT_COLUMNS` (``filter_reason`` and ``filter_detail`` empty for kept rows); only
    those columns are read, one batch at a time."""
    for source in sources:
        if not source.rows:
            continue
        present = set(pq.read_schema(source.path).names)
        columns = [c for c in INPUT_COLUMNS if c in present]
        for batch in parquet_batches(source.path, columns, batch_rows):
            frame = batch.to_pandas()
            if source.kept:
                frame["filter_reason"] = ""
                frame["filter_detail"] = ""
            for name in INPUT_COLUMNS:
                if name not in frame.columns:
                    frame[name] = None
            if len(frame):
                yield frame[INPUT_COLUMNS]


def read_cleaned_for_preferences(cleaned_folders: Mapping[str, Path]) -> tuple[pd.DataFrame, list[str]]:
    """The kept and filtered rows of every cleaned partition (partition -> folder holding its
    :class:`CleanedManifest`) in one frame, with the columns :data:`INPUT_COLUMNS` (``filter_reason``
    and ``filter_detail`` empty for kept rows), and the partitions that have no manifest yet
    (skipped). The whole input in memory: the stage itself reads it batch by batch
    (:func:`iter_cleaned_for_preferences`).

    Raises:
        ManifestError: a partition's manifest is of another kind or an older schema.
    """
    sources, missing = cleaned_sources(cleaned_folders)
    frames = list(iter_cleaned_for_preferences(sources))
    if not frames:
        return pd.DataFrame(columns=INPUT_COLUMNS), missing
    return pd.concat(frames, ignore_index=True), missing
