"""The ``preference_dataset`` stage: DPO pairs and KTO examples built from the logs' own signals,
split so that nothing leaks against the SFT splits, written as Parquet and as the JSONL formats TRL
and the OpenAI/Azure preference API expect.

Which conversation becomes a pair, a KTO example or a dropped row (with a reason) is
:mod:`ft_pipeline.lib.preferences`; the JSONL formats are :mod:`ft_pipeline.lib.preference_format`.
This module adds the split and the checks:

- **Split.** A preference example goes where the SFT split put its prompt group: its user, its
  context (every turn before the final reply) or its long first user turn, looked up in the SFT
  split files. An example whose keys point at the SFT test split and at another split is
  ``excluded`` (kept in the Parquet files with that split, counted, never written to a JSONL file):
  either choice would leak. An example the SFT splits have never seen (its conversations were
  filtered out of the SFT data, e.g. for a low rating) is placed by a seeded hash of its user (or
  context) at the SFT fractions, so a user's examples stay together.
- **no_leakage.** Recomputed from the written files: no preference train/validation example shares
  a user, context or long first turn with the SFT test split, and no preference test example shares
  one with the SFT train split.
- **no_pii_left.** A fresh scan of every text (prompts, replies, ids, tags) with the pipeline's policy.

**Bounded memory.** The stage never holds all conversations: it reads the cleaned files batch by
batch, applies rule 1 and reads the signals (:func:`ft_pipeline.lib.preferences._usable_rows`),
and spills each usable row to one of ``ceil(n / shard_rows)`` shards by its context hash, so every
context group (and every set of copies) lies in one shard. Each shard then gets rules 2-5 and its
splits, and its records, sorted by the key that orders them as the whole input would
(:func:`ft_pipeline.lib.preferences._place`), are spilled again. The Parquet and JSONL files are
written from a merge of the shards by that key, so they hold the same rows in the same order as
:func:`ft_pipeline.lib.preferences.build_preferences` over the whole input gives. The checks read
the written Parquet files back batch by batch. Peak memory is one shard plus the SFT split index.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import pickle
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from ft_pipeline.lib.curation import PiiScan
from ft_pipeline.lib.manifests import CleanedManifest, PreferenceManifest, SplitsManifest, read_manifest, write_manifest
from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL
from ft_pipeline.lib.pii import DEFAULT_PII_CONFIG, PiiConfig, find_pii, may_contain_pii
from ft_pipeline.lib.preference_format import (
    to_openai_preference_record,
    to_trl_dpo_record,
    to_trl_kto_record,
    validate_preference_jsonl,
)
from ft_pipeline.lib.preferences import (
    DROP_REASONS,
    DROPPED_COLUMNS,
    KTO_COLUMNS,
    PAIR_COLUMNS,
    PAIR_RULES,
    PreferenceConfig,
    PreferenceCounts,
    SortKey,
    _frame,
    _misplaced,
    _Outcome,
    _place,
    _Row,
    _usable_rows,
    cleaned_sources,
    iter_cleaned_for_preferences,
    parquet_batches,
)
from ft_pipeline.lib.splits import SPLIT_NAMES, SplitConfig
from ft_pipeline.lib.storage import content_version
from ft_pipeline.lib.timing import StepTimes

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "EXCLUDED",
    "PreferenceDatasetConfig",
    "PreferenceDatasetResult",
    "SftSplitIndex",
    "assign_preference_splits",
    "build_preference_dataset",
    "preference_leakage",
    "scan_preferences_for_pii",
]

#: The split of an example whose prompt group touches the SFT test split and another one.
EXCLUDED = "excluded"
_DEFAULT_SPLIT = SplitConfig()
#: Conversations per shard: the stage cuts its input into ``ceil(n / shard_rows)`` shards of context
#: groups and holds one at a time (up to 100,000: about 0.8 GB of the benchmark's conversations);
#: an input of one shard is not spilled to disk at all.
DEFAULT_SHARD_ROWS = 100_000
#: Records per pickled chunk of a spill file, and rows per Parquet row group of the output.
_SPILL_CHUNK = 1_000
_WRITE_ROWS = 10_000
#: Bit of each SFT split in :class:`SftSplitIndex`.
_SPLIT_BITS = {name: 1 << i for i, name in enumerate(SPLIT_NAMES)}


@dataclass(frozen=True)
class PreferenceDatasetConfig:
    """How preference data is built and split. Every default is the documented one."""

    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    seed: int = _DEFAULT_SPLIT.seed
    """Salt of the hash that places examples the SFT splits have not seen (the SFT splits' default)."""
    validation_fraction: float = _DEFAULT_SPLIT.validation_fraction
    test_fraction: float = _DEFAULT_SPLIT.test_fraction
    first_turn_min_words: int = _DEFAULT_SPLIT.first_turn_min_words
    """A first user turn of at least this many words links an example to the SFT split that holds it
    (the SFT splits group by the same rule)."""


@dataclass
class SftSplitIndex:
    """Which SFT splits hold each user, context and long first turn (a key may be in several), as
    a bit mask of :data:`SPLIT_NAMES` per key (an int per key, not a set: the index holds every
    SFT conversation's keys)."""

    users: dict[str, int]
    contexts: dict[int, int]
    first_turns: dict[int, int]

    @classmethod
    def from_splits(cls, splits: SplitsManifest, first_turn_min_words: int) -> SftSplitIndex:
        users: dict[str, int] = {}
        contexts: dict[int, int] = {}
        first_turns: dict[int, int] = {}
        columns = ["user_id", "context_hash", "first_turn_hash", "first_turn_words"]
        for name in SPLIT_NAMES:
            bit = _SPLIT_BITS[name]
            for batch in parquet_batches(splits.parquet(name), columns, 100_000):
                frame = batch.to_pandas()
                for user in frame["user_id"].dropna():
                    if str(user):
                        users[str(user)] = users.get(str(user), 0) | bit
                for context in frame["context_hash"].dropna():
                    contexts[int(context)] = contexts.get(int(context), 0) | bit
                long_enough = frame[frame["first_turn_words"].fillna(0) >= max(1, first_turn_min_words)]
                for first in long_enough["first_turn_hash"].dropna():
                    first_turns[int(first)] = first_turns.get(int(first), 0) | bit
        return cls(users, contexts, first_turns)

    def mask_of(self, user_id: Any, context_hash: Any, first_turn_hash: Any) -> int:
        """The bits (:data:`_SPLIT_BITS`) of the SFT splits that hold any of the three keys."""
        hits = 0
        if _present(user_id) and str(user_id):
            hits |= self.users.get(str(user_id), 0)
        if _present(context_hash):
            hits |= self.contexts.get(int(context_hash), 0)
        if _present(first_turn_hash):
            hits |= self.first_turns.get(int(first_turn_hash), 0)
        return hits

    def splits_of(self, user_id: Any, context_hash: Any, first_turn_hash: Any) -> set[str]:
        """The names of the SFT splits that hold any of the three keys."""
        hits = self.mask_of(user_id, context_hash, first_turn_hash)
        return {name for name, bit in _SPLIT_BITS.items() if hits & bit}


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and value is not pd.NA


def assign_preference_splits(
    frame: pd.DataFrame, index: SftSplitIndex, config: PreferenceDatasetConfig = PreferenceDatasetConfig()
) -> list[str]:
    """The split of each row of ``frame`` (``user_id``, ``context_hash``, ``first_turn_hash``): see
    the module docstring."""
    keys = zip(frame["user_id"], frame["context_hash"], frame["first_turn_hash"])
    return [_split_of(index, config, user, context, first) for user, context, first in keys]


def _split_of(index: SftSplitIndex, config: PreferenceDatasetConfig, user: Any, context: Any, first: Any) -> str:
    hits, test = index.mask_of(user, context, first), _SPLIT_BITS["test"]
    if hits & test:
        return "test" if hits == test else EXCLUDED
    if hits:
        return "train" if hits & _SPLIT_BITS["train"] else "validation"
    key = str(user) if _present(user) and str(user) else f"context:{context}"
    position = xxhash.xxh3_64_intdigest(f"{config.seed}:preference:{key}".encode()) / 2.0**64
    cut_test = config.test_fraction
    cut_validation = config.test_fraction + config.validation_fraction
    return "test" if position < cut_test else "validation" if position < cut_validation else "train"


def preference_leakage(frames: Mapping[str, pd.DataFrame], index: SftSplitIndex) -> dict[str, int]:
    """Examples (of every frame, by their ``split``) that share a key with the SFT split they must
    stay away from: preference train/validation vs SFT test, preference test vs SFT train."""
    leaked: Counter[str] = Counter()
    for name, frame in frames.items():
        _count_leakage(
            name, zip(frame["split"], frame["user_id"], frame["context_hash"], frame["first_turn_hash"]), index, leaked
        )
    return dict(leaked)


def _count_leakage(name: str, rows: Iterable[tuple[Any, Any, Any, Any]], index: SftSplitIndex, leaked: Counter) -> None:
    test, train = _SPLIT_BITS["test"], _SPLIT_BITS["train"]
    for split, user, context, first in rows:
        hits = index.mask_of(user, context, first)
        if split in ("train", "validation") and hits & test:
            leaked[f"{name}_{split}_vs_sft_test"] += 1
        elif split == "test" and hits & train:
            leaked[f"{name}_test_vs_sft_train"] += 1


#: Per output: the column naming an example in the PII scan's examples, and its reply/id columns.
_PII_COLUMNS = {
    "pairs": (
        "chosen_conversation_id",
        ("chosen", "rejected", "chosen_conversation_id", "rejected_conversation_id"),
    ),
    "kto": ("conversation_id", ("completion", "conversation_id")),
}


def scan_preferences_for_pii(
    pairs: pd.DataFrame, kto: pd.DataFrame, pii: PiiConfig = DEFAULT_PII_CONFIG, max_examples: int = 5
) -> PiiScan:
    """Every text of the pairs and KTO examples (prompt turns, replies, ids, tags) through ``pii``;
    the places found are named by conversation id (a pair's: the chosen reply's)."""
    found: Counter[str] = Counter()
    examples: list[dict[str, str]] = []
    for name, frame in (("pairs", pairs), ("kto", kto)):
        _scan_rows(name, frame.to_dict("records"), pii, found, examples, max_examples)
    return PiiScan(dict(found), examples)


def _scan_rows(
    name: str,
    rows: Iterable[Mapping[str, Any]],
    pii: PiiConfig,
    found: Counter,
    examples: list[dict[str, str]],
    max_examples: int,
) -> None:
    """Add the PII found in ``rows`` (records of the ``name`` output) to ``found`` and ``examples``."""
    id_column, reply_columns = _PII_COLUMNS[name]
    for row in rows:
        texts = [m["content"] for m in row["prompt"]] + [str(row.get(c) or "") for c in reply_columns]
        tags = row.get("tags")
        texts += [str(row.get("user_id") or ""), json.dumps([str(t) for t in (tags if tags is not None else [])])]
        for text in texts:
            if not text or not may_contain_pii(text, pii):
                continue
            for match in find_pii(text, pii):
                found[match.type] += 1
                if len(examples) < max_examples:
                    examples.append({"conversation_id": str(row[id_column]), "type": match.type})


@dataclass
class PreferenceDatasetResult:
    """What :func:`build_preference_dataset` wrote, its counts, and the outcomes of its checks."""

    manifest: PreferenceManifest
    build: PreferenceCounts
    """Where the conversations ended (pairs by rule, KTO examples by label, drops by reason)."""
    partitions: list[str]
    missing: list[str]
    """Partitions asked for that have no cleaned output yet (left out)."""
    split_counts: dict[str, dict[str, int]]
    """Split (train, validation, test, excluded) -> {"pairs": n, "kto": n}."""
    leakage: dict[str, int]
    pii_scan: PiiScan
    formats: dict[str, Any]
    """``train`` and ``validation`` OpenAI preference JSONL -> the validator's report."""
    steps: StepTimes

    @property
    def version(self) -> str:
        return self.manifest.version


# --- spilling and writing ---------------------------------------------------------------------


class _Spill:
    """Items appended to a temporary file in pickled chunks and read back in the same order; or,
    ``in_memory`` (a single shard: the whole input is one shard's worth), kept in a list."""

    def __init__(self, path: Path, in_memory: bool = False) -> None:
        self.path = path
        self.in_memory = in_memory
        self._buffer: list[Any] = []

    def append(self, item: Any) -> None:
        self._buffer.append(item)
        if len(self._buffer) >= _SPILL_CHUNK and not self.in_memory:
            self.flush()

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.append(item)

    def release(self) -> None:
        """Forget the items (the file is removed, the list emptied)."""
        self._buffer = []
        self.path.unlink(missing_ok=True)

    def flush(self) -> None:
        if self._buffer and not self.in_memory:
            with open(self.path, "ab") as f:
                pickle.dump(self._buffer, f, protocol=pickle.HIGHEST_PROTOCOL)
            self._buffer = []

    def __iter__(self) -> Iterator[Any]:
        if self.in_memory:
            yield from self._buffer
            return
        self.flush()
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            while True:
                try:
                    chunk = pickle.load(f)
                except EOFError:
                    return
                yield from chunk


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` renamed to it when the block succeeds (removed otherwise),
    so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: Arrow types of the output files (the types pandas gives the frames of
#: :func:`ft_pipeline.lib.preferences.build_preferences`, fixed so every batch writes the same schema).
_PROMPT = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_TYPES: dict[str, pa.DataType] = {
    "prompt": _PROMPT,
    "tags": pa.list_(pa.string()),
    "context_hash": pa.int64(),
    "first_turn_hash": pa.int64(),
    "label": pa.bool_(),
    "source_line": pa.int64(),
}


def _schema(columns: Sequence[str]) -> pa.Schema:
    return pa.schema([(name, _TYPES.get(name, pa.large_string())) for name in columns])


class _ParquetRows:
    """Records written to a Parquet file in row groups of :data:`_WRITE_ROWS`, each batch made a
    frame as :func:`ft_pipeline.lib.preferences.build_preferences` makes it."""

    def __init__(self, path: Path, columns: list[str], with_split: bool) -> None:
        self.path, self.columns, self.with_split = path, columns, with_split
        self.schema = _schema([*columns, "split"] if with_split else columns)
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= _WRITE_ROWS:
            self.flush()

    def flush(self, final: bool = False) -> None:
        if not self._buffer and not (final and self._writer is None):
            return
        frame = _frame(self._buffer, self.columns)
        if self.with_split:
            frame["split"] = [r["split"] for r in self._buffer]
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)
        self._buffer = []

    def close(self) -> None:
        self.flush(final=True)
        if self._writer is not None:
            self._writer.close()


def _jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _merged(spills: Sequence[Iterable[tuple[SortKey, dict[str, Any]]]]) -> Iterator[dict[str, Any]]:
    """The records of ``spills`` (each sorted by key) in key order."""
    for _, record in heapq.merge(*spills, key=itemgetter(0)):
        yield record


def _stable_id_value(text: str) -> int:
    return int(text, 16)


# --- the stage --------------------------------------------------------------------------------


def build_preference_dataset(
    cleaned_folders: Mapping[str, str | Path],
    splits: SplitsManifest,
    preferences_root: str | Path,
    config: PreferenceDatasetConfig = PreferenceDatasetConfig(),
    *,
    pii: PiiConfig = DEFAULT_PII_CONFIG,
    openai_model: str = DEFAULT_OPENAI_FINE_TUNING_MODEL,
    code_version: str = "",
    settings: Sequence[Any] = (),
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> PreferenceDatasetResult:
    """Build, split, write (``preferences_root/<version>/``: ``pairs.parquet``, ``kto.parquet``,
    ``dropped.parquet``, and per split ``<split>.dpo.jsonl`` (TRL), ``<split>.openai.jsonl``
    (OpenAI/Azure DPO) and ``<split>.kto.jsonl``), write a :class:`PreferenceManifest` in
    ``preferences_root``, and run the checks. Memory is bounded by ``shard_rows`` conversations
    (see the module docstring); the files do not depend on it.

    Raises:
        ValueError: no cleaned partition to build from.
        AssertionError: a conversation ended in no place or in two, or two examples share an id.
    """
    steps = StepTimes()
    sources, missing = cleaned_sources({n: Path(f) for n, f in cleaned_folders.items()})
    partitions = [name for name in cleaned_folders if name not in missing]
    if not partitions:
        raise ValueError("no cleaned partitions to build preferences from: materialize cleaned_conversations first")
    cleaned_versions = []
    for name in partitions:
        cleaned = read_manifest(Path(cleaned_folders[name]), CleanedManifest)
        cleaned_versions.append((name, cleaned.version if cleaned else ""))
    version = content_version(code_version, cleaned_versions, splits.version, *settings)
    root = Path(preferences_root)
    folder = root / version
    root.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, math.ceil(sum(s.rows for s in sources) / max(1, shard_rows)))

    with tempfile.TemporaryDirectory(prefix=".preference-spill-", dir=root) as spill_dir:
        spill = Path(spill_dir)
        with steps.step("read_cleaned"):
            n_in, dropped_first, shards = _read_into_shards(sources, config.preferences, spill, n_shards)
        with steps.step("assign_splits"):
            index = SftSplitIndex.from_splits(splits, config.first_turn_min_words)
        outputs = [_ShardOutput(spill, k, in_memory=n_shards == 1) for k in range(n_shards)]
        for shard, output in zip(shards, outputs):
            _build_shard(shard, output, index, config, steps)
        with steps.step("write"):
            counts, split_counts, paths = _write_outputs(folder, dropped_first, outputs, n_in)
    manifest = PreferenceManifest(version=version, splits_version=splits.version, paths=paths)
    write_manifest(preferences_root, manifest)

    # The checks read back what was written (one read of each file serves both).
    leaked: Counter[str] = Counter()
    found: Counter[str] = Counter()
    examples: list[dict[str, str]] = []
    for name in ("pairs", "kto"):
        for batch in parquet_batches(paths["all"][name], batch_rows=_WRITE_ROWS):
            with steps.step("check_no_leakage"):
                keys = [batch.column(c).to_pylist() for c in ("split", "user_id", "context_hash", "first_turn_hash")]
                _count_leakage(name, zip(*keys), index, leaked)
            with steps.step("check_no_pii_left"):
                _scan_rows(name, batch.to_pylist(), pii, found, examples, 5)
    formats = {}
    for name in ("train", "validation"):
        with steps.step("validate_jsonl"):
            formats[name] = validate_preference_jsonl(
                paths[name]["openai"], model=openai_model, require_min_examples=(name == "train")
            )
    return PreferenceDatasetResult(
        manifest,
        counts,
        partitions,
        list(missing),
        split_counts,
        dict(leaked),
        PiiScan(dict(found), examples),
        formats,
        steps,
    )


def _read_into_shards(
    sources: Sequence[Any], config: PreferenceConfig, spill: Path, n_shards: int
) -> tuple[int, _Spill, list[_Spill]]:
    """Pass 1: rule 1 and the signals, batch by batch; the dropped rows (sort key, record) spilled
    in input order, the usable rows spilled to the shard of their context hash. Returns the
    number of rows read."""
    dropped = _Spill(spill / "dropped-rule1.pkl", in_memory=n_shards == 1)
    shards = [_Spill(spill / f"rows-{k}.pkl", in_memory=n_shards == 1) for k in range(n_shards)]
    n_in = 0
    for frame in iter_cleaned_for_preferences(sources):
        out = _Outcome()
        rows = _usable_rows(frame, config, out, n_in)
        if _misplaced(out) or len(out.placed) + len(rows) != len(frame):
            raise AssertionError("preference accounting: rule 1 placed a conversation twice or not at all")
        n_in += len(frame)
        dropped.extend(zip(out.dropped_keys, out.dropped))
        for row in rows:
            shards[row.context_hash % n_shards].append(row)
    dropped.flush()
    for shard in shards:
        shard.flush()
    return n_in, dropped, shards


class _ShardOutput:
    """One shard's pairs, KTO examples and dropped rows, each spilled as (sort key, record) in key order."""

    def __init__(self, spill: Path, k: int, in_memory: bool) -> None:
        self.pairs = _Spill(spill / f"pairs-{k}.pkl", in_memory)
        self.kto = _Spill(spill / f"kto-{k}.pkl", in_memory)
        self.dropped = _Spill(spill / f"dropped-{k}.pkl", in_memory)


def _build_shard(
    shard: _Spill, output: _ShardOutput, index: SftSplitIndex, config: PreferenceDatasetConfig, steps: StepTimes
) -> None:
    """Pass 2 for one shard: rules 2-5 and the splits; the shard's input file is removed after."""
    with steps.step("build_preferences"):
        rows: list[_Row] = list(shard)
        shard.release()
        out = _Outcome()
        _place(rows, config.preferences, out)
        if _misplaced(out) or len(out.placed) != len(rows):
            raise AssertionError(
                f"preference accounting: {len(rows)} rows in a shard, {len(out.placed)} placed, "
                f"{_misplaced(out)} placed more than once"
            )
        del rows
    with steps.step("assign_splits"):
        for record in (*out.pairs, *out.kto):
            record["split"] = _split_of(
                index, config, record["user_id"], record["context_hash"], record["first_turn_hash"]
            )
    with steps.step("build_preferences"):
        for spilled, keys, records in (
            (output.pairs, out.pair_keys, out.pairs),
            (output.kto, out.kto_keys, out.kto),
            (output.dropped, out.dropped_keys, out.dropped),
        ):
            spilled.extend(sorted(zip(keys, records), key=itemgetter(0)))
            spilled.flush()


def _write_outputs(
    folder: Path, dropped_first: _Spill, outputs: Sequence[_ShardOutput], n_in: int
) -> tuple[PreferenceCounts, dict[str, dict[str, int]], dict[str, dict[str, str]]]:
    """Pass 3: the shards merged in key order into the Parquet files and the per-split JSONL files
    (both written as they are merged); the counts of what was written, checked to add up."""
    paths: dict[str, dict[str, str]] = {
        "all": {name: str(folder / f"{name}.parquet") for name in ("pairs", "kto", "dropped")}
    }
    for name in SPLIT_NAMES:
        paths[name] = {fmt: str(folder / f"{name}.{fmt}.jsonl") for fmt in ("dpo", "openai", "kto")}
    pair_counts: Counter[str] = Counter()
    kto_counts: Counter[str] = Counter()
    dropped_counts: Counter[str] = Counter()
    split_counts = {name: {"pairs": 0, "kto": 0} for name in (*SPLIT_NAMES, EXCLUDED)}
    ids = array("Q")  # every pair and KTO id as its 64-bit value (ids are 16 hex digits)
    with ExitStack() as stack:
        tmp = {
            (group, name): stack.enter_context(_atomic_path(Path(path)))
            for group, files in paths.items()
            for name, path in files.items()
        }
        jsonl: dict[tuple[str, str], IO[str]] = {
            key: stack.enter_context(open(path, "w", encoding="utf-8", newline="\n"))
            for key, path in tmp.items()
            if key[0] != "all"
        }

        parquet = _ParquetRows(tmp["all", "pairs"], PAIR_COLUMNS, with_split=True)
        for record in _merged([o.pairs for o in outputs]):
            parquet.add(record)
            split = record["split"]
            pair_counts[record["rule"]] += 1
            split_counts[split]["pairs"] += 1
            ids.append(_stable_id_value(record["pair_id"]))
            if split in SPLIT_NAMES:
                prompt, chosen, rejected = record["prompt"], record["chosen"], record["rejected"]
                jsonl[split, "dpo"].write(_jsonl_line(to_trl_dpo_record(prompt, chosen, rejected)))
                jsonl[split, "openai"].write(_jsonl_line(to_openai_preference_record(prompt, chosen, rejected)))
        parquet.close()

        parquet = _ParquetRows(tmp["all", "kto"], KTO_COLUMNS, with_split=True)
        for record in _merged([o.kto for o in outputs]):
            parquet.add(record)
            split = record["split"]
            kto_counts["desirable" if record["label"] else "undesirable"] += 1
            split_counts[split]["kto"] += 1
            ids.append(_stable_id_value(record["example_id"]))
            if split in SPLIT_NAMES:
                line = to_trl_kto_record(record["prompt"], record["completion"], record["label"])
                jsonl[split, "kto"].write(_jsonl_line(line))
        parquet.close()

        parquet = _ParquetRows(tmp["all", "dropped"], DROPPED_COLUMNS, with_split=False)
        for record in _merged([dropped_first, *(o.dropped for o in outputs)]):
            parquet.add(record)
            dropped_counts[record["reason"]] += 1
        parquet.close()

        counts = PreferenceCounts(
            n_in,
            {rule: int(pair_counts[rule]) for rule in PAIR_RULES},
            {"desirable": int(kto_counts["desirable"]), "undesirable": int(kto_counts["undesirable"])},
            {reason: int(dropped_counts[reason]) for reason in DROP_REASONS},
        )
        if not counts.counts_add_up:  # the rules guarantee it; a bug must not pass silently
            raise AssertionError(f"preference accounting: {n_in} in, {counts.conversations_accounted} accounted")
        if len(np.unique(np.frombuffer(ids, dtype=np.uint64))) != len(ids):
            raise AssertionError("preference ids are not unique")
        for f in jsonl.values():
            f.close()
    return counts, split_counts, paths
