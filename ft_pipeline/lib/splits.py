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

import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from ft_pipeline.lib.cleaning import turn_columns
from ft_pipeline.lib.dedup import (
    DEFAULT_DEDUP_CONFIG,
    DedupConfig,
    conversation_text,
    cross_set_near_duplicates,
    jaccard,
    shingles,
    signatures_from_bytes,
)
from ft_pipeline.lib.manifests import CuratedManifest, SplitsManifest, write_manifest
from ft_pipeline.lib.openai_format import (
    DEFAULT_OPENAI_FINE_TUNING_MODEL,
    MIN_TRAINING_EXAMPLES,
    FormatReport,
    to_openai_record,
    validate_jsonl_file,
)
from ft_pipeline.lib.storage import content_version
from ft_pipeline.lib.timing import StepTimes

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
    min_train_examples: int = MIN_TRAINING_EXAMPLES
    """The train split's ``minimum_size`` check fails below this many examples (OpenAI requires 10)."""
    min_validation_examples: int = 1
    min_test_examples: int = 1

    def min_sizes(self) -> dict[str, int]:
        """Split name -> the minimum number of examples it must have."""
        return {
            "train": self.min_train_examples,
            "validation": self.min_validation_examples,
            "test": self.min_test_examples,
        }

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


# The group key of a component is its member key of the highest-priority kind, the smallest of
# that kind: a user's group keeps its key however many conversations the user adds.
_KEY_PRIORITY = {"user": 0, "first": 1, "ctx": 2, "conv": 3}


def _turn_columns(frame: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
    """First-user-turn hash and word count: the stored columns, or computed from messages."""
    if "first_turn_hash" in frame and "first_turn_words" in frame:
        return frame["first_turn_hash"].astype("Int64"), frame["first_turn_words"].to_numpy(dtype=np.int64)
    turns = [turn_columns(m) for m in frame["messages"].tolist()]
    return pd.array([t[0] for t in turns], dtype="Int64"), np.asarray([t[1] for t in turns], dtype=np.int64)


def _sharing_pairs(values: pd.Series, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (chained, sorted) of rows whose valid value is equal."""
    idx = np.flatnonzero(valid)
    if len(idx) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes, _ = pd.factorize(values.iloc[idx] if isinstance(values, pd.Series) else pd.Series(values[idx]))
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    same = sorted_codes[1:] == sorted_codes[:-1]
    members = idx[order]
    return members[:-1][same], members[1:][same]


def group_keys(frame: pd.DataFrame, config: SplitConfig = DEFAULT_SPLIT_CONFIG) -> list[str]:
    """The group key of every row (rows with equal keys must share a split).

    Vectorized: only rows that share a user, a context or a first turn go through union-find;
    the rest (most rows) are their own group."""
    n = len(frame)
    if n == 0:
        return []
    ids = frame["conversation_id"].astype(str).tolist()
    if config.group_by_user and "user_id" in frame:
        users = frame["user_id"]
        user_valid = (users.notna() & (users.astype(str) != "")).to_numpy()
    else:
        users, user_valid = pd.Series([None] * n), np.zeros(n, dtype=bool)
    if "context_hash" in frame:
        contexts = frame["context_hash"].astype("Int64")
        ctx_valid = contexts.notna().to_numpy()
    else:
        contexts, ctx_valid = pd.Series([None] * n), np.zeros(n, dtype=bool)
    first_valid = np.zeros(n, dtype=bool)
    first_hashes = pd.Series([None] * n)
    if config.first_turn_min_words:
        first_hashes, words = _turn_columns(frame)
        first_hashes = pd.Series(first_hashes)
        first_valid = first_hashes.notna().to_numpy() & (words >= config.first_turn_min_words)
        counts = first_hashes[first_valid].value_counts()
        shared = first_hashes.map(counts).fillna(0).to_numpy()
        first_valid &= (shared > 1) & (shared <= config.first_turn_max_shared)

    uf = _UnionFind(n)
    for values, valid in ((users, user_valid), (contexts, ctx_valid), (first_hashes, first_valid)):
        for a, b in zip(*_sharing_pairs(values, valid)):
            uf.union(int(a), int(b))

    user_list, ctx_list, first_list = users.tolist(), contexts.tolist(), first_hashes.tolist()
    own: list[tuple[int, str]] = []
    for i in range(n):
        if user_valid[i]:
            own.append((0, f"user:{user_list[i]}"))
        elif first_valid[i]:
            own.append((1, f"first:{int(first_list[i])}"))
        elif ctx_valid[i]:
            own.append((2, f"ctx:{int(ctx_list[i])}"))
        else:
            own.append((3, f"conv:{ids[i]}"))
    best: dict[int, tuple[int, str]] = {}
    for i, parent in enumerate(uf.parent):
        if parent == i and i not in best:
            continue
        root = uf.find(i)
        for j in (i, root):
            if root not in best or own[j] < best[root]:
                best[root] = own[j]
    return [best[uf.find(i)][1] if uf.parent[i] != i or i in best else own[i][1] for i in range(n)]


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


TextLoader = Callable[[str, Sequence[int]], list[str]]


def _messages_loader(splits: dict[str, pd.DataFrame]) -> TextLoader:
    def load(name: str, rows: Sequence[int]) -> list[str]:
        messages = splits[name]["messages"]
        return [conversation_text(messages.iat[int(i)]) for i in rows]

    return load


def leakage_report(
    splits: dict[str, pd.DataFrame],
    config: SplitConfig = DEFAULT_SPLIT_CONFIG,
    dedup: DedupConfig = DEFAULT_DEDUP_CONFIG,
    load_texts: TextLoader | None = None,
) -> LeakageReport:
    """Recompute groups, exact hashes and MinHash neighbours across the splits.

    The frames need only the small columns (ids, user, hashes, MinHash); the texts of MinHash
    candidates are fetched through ``load_texts(split, rows)`` (default: the frames' ``messages``)
    to confirm them by true Jaccard, so the full conversations never have to be in memory."""
    names = [n for n in SPLIT_NAMES if n in splits]
    load_texts = load_texts or _messages_loader(splits)
    combined = pd.concat([splits[n].assign(_split=n) for n in names], ignore_index=True)
    shared_groups = 0
    if len(combined):
        keys = pd.Series(group_keys(combined, config))
        shared_groups = int((combined.groupby(keys)["_split"].nunique() > 1).sum())

    hashes = pd.concat([splits[n]["exact_hash"].astype("int64").rename("h").to_frame().assign(s=n) for n in names])
    splits_per_hash = hashes.groupby("h")["s"].nunique()
    exact = int(hashes["h"].map(splits_per_hash).gt(1).sum()) if len(hashes) else 0

    signatures = {name: signatures_from_bytes(splits[name]["minhash"].tolist(), dedup.num_perm) for name in names}
    near = 0
    examples: list[dict[str, Any]] = []
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            if not len(splits[a]) or not len(splits[b]):
                continue
            candidates = cross_set_near_duplicates(signatures[a], signatures[b], dedup)
            if not candidates:
                continue
            # Confirm each candidate by the true Jaccard of its shingle sets, as dedup does, so
            # the check and the dedup agree on what a near duplicate is.
            texts_a = load_texts(a, [i for i, _, _ in candidates])
            texts_b = load_texts(b, [j for _, j, _ in candidates])
            for (i, j, _estimate), text_a, text_b in zip(candidates, texts_a, texts_b):
                score = jaccard(shingles(text_a, dedup.ngram), shingles(text_b, dedup.ngram))
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
        train_replies = set(_final_reply_hashes(splits["train"]))
        for name in names:
            if name == "train" or not len(splits[name]):
                continue
            finals = _final_reply_hashes(splits[name])
            overlap[name] = round(sum(1 for f in finals if f in train_replies) / len(finals), 4)
    return LeakageReport(shared_groups, exact, near, examples, overlap)


def _final_reply_hashes(frame: pd.DataFrame) -> list[int]:
    if "final_reply_hash" in frame:
        return frame["final_reply_hash"].astype("int64").tolist()
    return [turn_columns(m)[2] for m in frame["messages"].tolist()]


# Columns the split step reads from the curated dataset: everything grouping, assignment and the
# leakage report need, without the conversations themselves.
SPLIT_INPUT_COLUMNS = [
    "conversation_id",
    "user_id",
    "tags",
    "exact_hash",
    "context_hash",
    "minhash",
    "first_turn_hash",
    "first_turn_words",
    "final_reply_hash",
]


# One encoder for every line (json.dumps with options builds a new one per call).
_JSONL_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def write_split_files(
    curated_path: str | Path, assigned: pd.DataFrame, out_dir: str | Path, batch_rows: int = 20_000
) -> dict[str, dict[str, Any]]:
    """Stream the curated Parquet file into per-split Parquet + OpenAI JSONL files.

    ``assigned`` holds ``split`` and ``split_group`` for every row of the file, in file order.
    Memory stays at one batch of conversations, however large the dataset."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = assigned["split"].to_numpy()
    groups = assigned["split_group"].to_numpy()
    parquet = pq.ParquetFile(curated_path)
    if parquet.metadata.num_rows != len(assigned):
        raise ValueError(f"{curated_path} has {parquet.metadata.num_rows} rows, the assignment {len(assigned)}")
    writers: dict[str, pq.ParquetWriter] = {}
    # Three files open at once, closed in the finally below (one `with` cannot hold a dict of them).
    jsonl = {name: open(out_dir / f".{name}.jsonl.tmp", "w", encoding="utf-8", newline="\n") for name in SPLIT_NAMES}  # noqa: SIM115
    rows = dict.fromkeys(SPLIT_NAMES, 0)
    offset = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            batch_labels = labels[offset : offset + len(table)]
            batch_groups = groups[offset : offset + len(table)]
            offset += len(table)
            for name in SPLIT_NAMES:
                mask = batch_labels == name
                if not mask.any():
                    continue
                part = table.filter(pa.array(mask))
                part = part.append_column("split", pa.array([name] * len(part), pa.string()))
                part = part.append_column("split_group", pa.array(batch_groups[mask].tolist(), pa.string()))
                if name not in writers:
                    writers[name] = pq.ParquetWriter(out_dir / f".{name}.parquet.tmp", part.schema)
                writers[name].write_table(part.cast(writers[name].schema))
                lines = [
                    _JSONL_ENCODER.encode(to_openai_record(messages))
                    for messages in part.column("messages").to_pylist()
                ]
                jsonl[name].write("\n".join(lines) + "\n")
                rows[name] += len(part)
        schema = parquet.schema_arrow.append(pa.field("split", pa.string())).append(
            pa.field("split_group", pa.string())
        )
        for name in SPLIT_NAMES:
            if name not in writers:
                writers[name] = pq.ParquetWriter(out_dir / f".{name}.parquet.tmp", schema)
            writers.pop(name).close()
            jsonl[name].close()
            os.replace(out_dir / f".{name}.parquet.tmp", out_dir / f"{name}.parquet")
            os.replace(out_dir / f".{name}.jsonl.tmp", out_dir / f"{name}.jsonl")
    finally:
        for writer in writers.values():
            writer.close()
        for handle in jsonl.values():
            handle.close()
        for tmp in out_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    return {
        name: {"parquet": str(out_dir / f"{name}.parquet"), "jsonl": str(out_dir / f"{name}.jsonl"), "rows": rows[name]}
        for name in SPLIT_NAMES
    }


def parquet_text_loader(paths: dict[str, str | Path]) -> TextLoader:
    """Load conversation texts of given rows from per-split Parquet files (for leakage checks)."""

    columns: dict[str, pa.ChunkedArray] = {}

    def load(name: str, rows: Sequence[int]) -> list[str]:
        # Each split's messages column is read once, however many candidate batches ask for it.
        if name not in columns:
            columns[name] = pq.read_table(paths[name], columns=["messages"]).column("messages")
        taken = columns[name].take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
        return [conversation_text(m) for m in taken]

    return load


def split_sizes(splits: dict[str, pd.DataFrame]) -> dict[str, int]:
    return {name: int(len(frame)) for name, frame in splits.items()}


def check_min_sizes(sizes: dict[str, int], minimums: dict[str, int]) -> list[str]:
    """Human-readable failures for splits below their minimum size (empty list when all hold)."""
    return [
        f"{name} has {sizes.get(name, 0)} examples, fewer than the minimum {minimum}"
        for name, minimum in minimums.items()
        if sizes.get(name, 0) < minimum
    ]


@dataclass
class SplitStats:
    """One split as written: its size and shape, for the asset's metadata."""

    rows: int
    share: float
    groups: int
    largest_group: int
    tags: dict[str, int]
    parquet_path: str
    jsonl_path: str
    sample: pd.DataFrame | None
    """The first two rows of the written Parquet file (``None`` for an empty split)."""


@dataclass
class SplitsResult:
    """What :func:`make_splits` wrote and the outcomes of the splits' checks."""

    manifest: SplitsManifest
    splits: dict[str, SplitStats]
    sizes: dict[str, int]
    leakage: LeakageReport
    leakage_dedup: DedupConfig
    """The near-duplicate parameters the leakage check used: the curated dataset's."""
    minimum_sizes: dict[str, int]
    """Split name -> the minimum number of examples it must have (the config's)."""
    size_failures: list[str]
    """Human-readable failures of the minimum sizes (empty when all hold)."""
    formats: dict[str, FormatReport]
    """``train`` and ``validation`` JSONL against the OpenAI fine-tuning format and token limit."""
    steps: StepTimes


def make_splits(
    curated: CuratedManifest,
    splits_root: str | Path,
    config: SplitConfig = DEFAULT_SPLIT_CONFIG,
    *,
    openai_model: str = DEFAULT_OPENAI_FINE_TUNING_MODEL,
    code_version: str = "",
    settings: Sequence[Any] = (),
) -> SplitsResult:
    """The ``train_validation_test_split`` stage: assign the curated conversations to splits by group, stream
    them into ``splits_root/<version>/{train,validation,test}.{parquet,jsonl}``, write a
    :class:`SplitsManifest` in ``splits_root``, and run the checks: leakage (with the
    near-duplicate parameters ``curated`` was deduplicated with), minimum sizes, and the OpenAI
    format of the train and validation JSONL against ``openai_model``'s token limit."""
    steps = StepTimes()
    # Only the small columns are read: grouping, assignment and the leakage report need no text,
    # and the files are written by streaming the curated dataset batch by batch.
    with steps.step("read_curated"):
        frame = pq.read_table(curated.path, columns=SPLIT_INPUT_COLUMNS).to_pandas()
    with steps.step("assign_splits"):
        assigned = assign_splits(frame, config)
    version = content_version(code_version, curated.version, *settings)
    with steps.step("write_split_files"):
        paths = write_split_files(curated.path, assigned, Path(splits_root) / version)
    manifest = SplitsManifest(version=version, curated_version=curated.version, paths=paths)
    write_manifest(splits_root, manifest)
    with steps.step("select_splits"):
        frames = {name: assigned[assigned["split"] == name].reset_index(drop=True) for name in SPLIT_NAMES}
    sizes = split_sizes(frames)
    dedup = curated.dedup_config()
    with steps.step("leakage_report"):
        texts = parquet_text_loader({n: paths[n]["parquet"] for n in SPLIT_NAMES})
        leakage = leakage_report(frames, config, dedup, load_texts=texts)
    formats = {}
    for name in ("train", "validation"):
        with steps.step("validate_jsonl_file"):
            formats[name] = validate_jsonl_file(
                paths[name]["jsonl"], model=openai_model, require_min_examples=(name == "train")
            )
    with steps.step("split_stats"):
        stats = {name: _split_stats(frames[name], len(assigned), paths[name]) for name in SPLIT_NAMES}
    size_failures = check_min_sizes(sizes, config.min_sizes())
    return SplitsResult(manifest, stats, sizes, leakage, dedup, config.min_sizes(), size_failures, formats, steps)


def _split_stats(frame: pd.DataFrame, total: int, paths: dict[str, Any]) -> SplitStats:
    empty = not len(frame)
    return SplitStats(
        rows=len(frame),
        share=round(len(frame) / max(1, total), 4),
        groups=0 if empty else int(frame["split_group"].nunique()),
        largest_group=0 if empty else int(frame["split_group"].value_counts().max()),
        tags={} if empty else frame["tags"].explode().value_counts().to_dict(),
        parquet_path=paths["parquet"],
        jsonl_path=paths["jsonl"],
        sample=None if empty else pq.ParquetFile(paths["parquet"]).read_row_group(0).slice(0, 2).to_pandas(),
    )
