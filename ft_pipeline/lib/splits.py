"""Grouped, hash-stable train/validation/test splits and the leakage report.

Groups are the connected components of "same user", "same first user turn" (when it is long
enough to be a fingerprint rather than a greeting) and "same context" (all messages but the
last reply). A whole group goes to one split, so one user's conversations, and regenerations of
one prompt, never straddle two splits.

The split of a group is a pure function of (seed, the group's key): when new data arrives an
example keeps its split. The one exception is inherent to grouping: if a new conversation links
two existing groups (say it shares a user with one and a first turn with the other) the merged
group takes one key and the other group's members may move.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import xxhash

from ft_pipeline.lib.dedup import (
    DEFAULT_DEDUP_CONFIG,
    DedupConfig,
    conversation_text,
    cross_set_near_duplicates,
    jaccard,
    shingles,
    signatures_from_bytes,
)

SPLIT_NAMES = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitConfig:
    """How curated conversations are divided. Every default is the documented one."""

    train_fraction: float = 0.8
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 42
    """Salt of the split hash: a different seed gives a different (still stable) assignment."""
    group_by_user: bool = True
    """Keep all conversations of one user_id in one split."""
    first_turn_min_words: int = 8
    """Conversations whose first user turn is identical and at least this long share a group
    (shorter turns such as "hi" are too common to mean anything). 0 switches the rule off."""
    first_turn_max_shared: int = 20
    """A first user turn shared by more conversations than this is boilerplate ("I want to cancel
    my subscription, please help me"), not a fingerprint: it does not link groups, so one common
    opening cannot chain unrelated users into one giant group."""
    stratify_by_tag: bool = False
    """When on, groups are ranked by their hash within each stratum (the group's first tag, or
    "untagged") and cut at the configured fractions, so each tag gets exact proportions. This
    trades some stability: a group near a stratum's cut-off can move when data is added."""

    def __post_init__(self) -> None:
        fractions = (self.train_fraction, self.validation_fraction, self.test_fraction)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")


DEFAULT_SPLIT_CONFIG = SplitConfig()


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _first_user_turn(messages: Sequence[dict[str, str]]) -> str | None:
    for m in messages:
        if m["role"] == "user":
            return m["content"]
    return None


# The group key of a component is its member key of the highest-priority kind, the smallest of
# that kind: a user's group keeps its key however many conversations the user adds.
_KEY_PRIORITY = {"user": 0, "first": 1, "ctx": 2, "conv": 3}


def group_keys(frame: pd.DataFrame, config: SplitConfig = DEFAULT_SPLIT_CONFIG) -> list[str]:
    """The group key of every row (rows with equal keys must share a split)."""
    n = len(frame)
    uf = _UnionFind(n)
    node_keys: list[list[str]] = [[] for _ in range(n)]
    owner: dict[str, int] = {}
    ids = frame["conversation_id"].tolist()
    users = frame["user_id"].tolist() if "user_id" in frame else [None] * n
    contexts = frame["context_hash"].tolist() if "context_hash" in frame else [None] * n
    first_keys: list[str | None] = [None] * n
    if config.first_turn_min_words:
        for i in range(n):
            first = _first_user_turn(frame["messages"].iat[i])
            if first and len(first.split()) >= config.first_turn_min_words:
                first_keys[i] = f"first:{xxhash.xxh3_64_hexdigest(first.lower().encode('utf-8'))}"
    first_counts = Counter(k for k in first_keys if k is not None)
    for i in range(n):
        keys = [f"conv:{ids[i]}"]
        user = users[i]
        if config.group_by_user and isinstance(user, str) and user:
            keys.append(f"user:{user}")
        ctx = contexts[i]
        if ctx is not None and ctx == ctx and ctx is not pd.NA:
            keys.append(f"ctx:{int(ctx)}")
        first_key = first_keys[i]
        if first_key is not None and 1 < first_counts[first_key] <= config.first_turn_max_shared:
            keys.append(first_key)
        node_keys[i] = keys
        for key in keys:
            j = owner.setdefault(key, i)
            if j != i:
                uf.union(i, j)
    best: dict[int, tuple[int, str]] = {}
    for i in range(n):
        root = uf.find(i)
        for key in node_keys[i]:
            rank = (_KEY_PRIORITY[key.split(":", 1)[0]], key)
            if root not in best or rank < best[root]:
                best[root] = rank
    return [best[uf.find(i)][1] for i in range(n)]


def _unit_hash(seed: int, key: str) -> float:
    return xxhash.xxh3_64_intdigest(f"{seed}:{key}".encode()) / 2.0**64


def assign_splits(frame: pd.DataFrame, config: SplitConfig = DEFAULT_SPLIT_CONFIG) -> pd.DataFrame:
    """Return ``frame`` with ``split`` and ``split_group`` columns added."""
    keys = group_keys(frame, config)
    cut_train = config.train_fraction
    cut_val = config.train_fraction + config.validation_fraction
    positions = {key: _unit_hash(config.seed, key) for key in set(keys)}
    if config.stratify_by_tag and len(frame):
        tags = frame["tags"].tolist() if "tags" in frame else [[] for _ in range(len(frame))]
        stratum_of_group: dict[str, str] = {}
        for key, row_tags in zip(keys, tags):
            tag = sorted(row_tags)[0] if row_tags is not None and len(row_tags) else "untagged"
            stratum_of_group[key] = min(stratum_of_group.get(key, tag), tag)
        by_stratum: dict[str, list[str]] = defaultdict(list)
        for key, stratum in stratum_of_group.items():
            by_stratum[stratum].append(key)
        # Rank groups by hash within each stratum and replace the hash by the rank quantile,
        # so the fraction cuts fall at exact per-stratum proportions.
        for group_list in by_stratum.values():
            group_list.sort(key=lambda k: (positions[k], k))
            for rank, key in enumerate(group_list):
                positions[key] = (rank + 0.5) / len(group_list)
    splits = []
    for key in keys:
        u = positions[key]
        splits.append("train" if u < cut_train else "validation" if u < cut_val else "test")
    out = frame.copy()
    out["split"] = splits
    out["split_group"] = keys
    return out


@dataclass
class LeakageReport:
    shared_groups: int
    """Groups (recomputed over all splits together) whose members sit in more than one split."""
    exact_duplicates: int
    """Conversations whose exact hash appears in another split."""
    near_duplicates: int
    """Cross-split pairs with true shingle Jaccard >= the dedup threshold (MinHash-LSH candidates, verified)."""
    near_duplicate_examples: list[dict[str, Any]]
    final_reply_overlap: dict[str, float]
    """Informational: share of validation/test final replies that occur verbatim in train
    (boilerplate such as "Have a great day." inflates it; it is not a failure)."""

    @property
    def leaked(self) -> bool:
        return bool(self.shared_groups or self.exact_duplicates or self.near_duplicates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shared_groups": self.shared_groups,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "near_duplicate_examples": self.near_duplicate_examples,
            "final_reply_overlap": self.final_reply_overlap,
        }


def leakage_report(
    splits: dict[str, pd.DataFrame],
    config: SplitConfig = DEFAULT_SPLIT_CONFIG,
    dedup: DedupConfig = DEFAULT_DEDUP_CONFIG,
) -> LeakageReport:
    """Recompute groups, exact hashes and MinHash neighbours across the written splits."""
    names = [n for n in SPLIT_NAMES if n in splits]
    combined = pd.concat([splits[n].assign(_split=n) for n in names], ignore_index=True)
    shared_groups = 0
    if len(combined):
        keys = group_keys(combined, config)
        per_group = defaultdict(set)
        for key, split in zip(keys, combined["_split"]):
            per_group[key].add(split)
        shared_groups = sum(1 for s in per_group.values() if len(s) > 1)

    hash_splits: dict[int, set[str]] = defaultdict(set)
    for name in names:
        for h in splits[name]["exact_hash"].tolist():
            hash_splits[int(h)].add(name)
    exact = sum(
        1 for name in names for h in splits[name]["exact_hash"].tolist() if len(hash_splits[int(h)]) > 1
    )

    signatures = {
        name: signatures_from_bytes(splits[name]["minhash"].tolist(), dedup.num_perm) for name in names
    }
    near, examples = 0, []
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            if not len(splits[a]) or not len(splits[b]):
                continue
            candidates = cross_set_near_duplicates(signatures[a], signatures[b], dedup)
            # Confirm each candidate by the true Jaccard of its shingle sets, as dedup does, so
            # the check and the dedup agree on what a near duplicate is.
            for i, j, _estimate in candidates:
                score = jaccard(
                    shingles(conversation_text(splits[a]["messages"].iat[i]), dedup.ngram),
                    shingles(conversation_text(splits[b]["messages"].iat[j]), dedup.ngram),
                )
                if score < dedup.threshold:
                    continue
                near += 1
                if len(examples) < 10:
                    examples.append(
                        {
                            a: str(splits[a]["conversation_id"].iat[i]),
                            b: str(splits[b]["conversation_id"].iat[j]),
                            "jaccard": round(float(score), 3),
                        }
                    )

    overlap = {}
    if "train" in splits:
        train_replies = Counter(m[-1]["content"] for m in splits["train"]["messages"])
        for name in names:
            if name == "train" or not len(splits[name]):
                continue
            finals = [m[-1]["content"] for m in splits[name]["messages"]]
            overlap[name] = round(sum(1 for f in finals if f in train_replies) / len(finals), 4)
    return LeakageReport(shared_groups, exact, near, examples, overlap)


def split_sizes(splits: dict[str, pd.DataFrame]) -> dict[str, int]:
    return {name: int(len(frame)) for name, frame in splits.items()}


def check_min_sizes(sizes: dict[str, int], minimums: dict[str, int]) -> list[str]:
    """Human-readable failures for splits below their minimum size (empty list when all hold)."""
    return [
        f"{name} has {sizes.get(name, 0)} examples, fewer than the minimum {minimum}"
        for name, minimum in minimums.items()
        if sizes.get(name, 0) < minimum
    ]
