"""The fan-in step: global dedup over every cleaned partition, token counts, length filter.

It works on signature columns first (small: ids, hashes, a MinHash blob) and streams the
conversations themselves partition by partition, so memory stays bounded by the largest
partition plus the signatures, not by the whole dataset.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ft_pipeline.lib.dedup import DEFAULT_DEDUP_CONFIG, DedupConfig, conversation_text, deduplicate
from ft_pipeline.lib.manifests import CleanedManifest, CuratedManifest, read_manifest, write_manifest
from ft_pipeline.lib.pii import DEFAULT_PII_CONFIG, PiiConfig, find_pii, may_contain_pii
from ft_pipeline.lib.records import gc_paused
from ft_pipeline.lib.storage import content_version, write_parquet
from ft_pipeline.lib.timing import StepTimes
from ft_pipeline.lib.tokens import TokenCounterConfig, make_token_counter, token_stats

# Columns read for dedup; everything else is read only for rows that are kept.
SIGNATURE_READ_COLUMNS = [
    "conversation_id",
    "exact_hash",
    "context_hash",
    "prefix_hashes",
    "minhash",
    "rating",
    "preference",
    "edited",
    "response_time_ms",
    "source_file",
    "source_line",
]

REMOVED_COLUMNS = ["conversation_id", "source_file", "source_line", "reason", "detail", "duplicate_of"]


@dataclass(frozen=True)
class CurationConfig:
    """Global dedup and length limits of the curated dataset."""

    dedup: DedupConfig = field(default_factory=lambda: DEFAULT_DEDUP_CONFIG)
    tokens: TokenCounterConfig = field(default_factory=TokenCounterConfig)
    max_tokens: int = 4096
    """Conversations with more tokens than this (as counted by ``tokens``) are removed as
    ``too_many_tokens``: they would be truncated in training."""


DEFAULT_CURATION_CONFIG = CurationConfig()


def signature_params(params_by_partition: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The one ``(num_perm, ngram)`` every cleaned partition's MinHash signatures were computed
    with: the global dedup can only compare signatures of the same length and shingle size.

    Raises:
        ValueError: partitions were cleaned with different values (named, with their values);
            with no partitions, the lib defaults are returned.
    """
    distinct = sorted(set(params_by_partition.values()))
    if len(distinct) > 1:
        by_value = {
            f"num_perm={p[0]}, ngram={p[1]}": sorted(n for n, v in params_by_partition.items() if v == p)[:5]
            for p in distinct
        }
        raise ValueError(
            f"cleaned partitions have MinHash signatures of different parameters: {by_value}; "
            "materialize cleaned_conversations again for them with one minhash_num_perm / minhash_ngram"
        )
    return distinct[0] if distinct else (DEFAULT_DEDUP_CONFIG.num_perm, DEFAULT_DEDUP_CONFIG.ngram)


@dataclass
class CurationResult:
    n_in: int
    n_kept: int
    removed: pd.DataFrame
    removed_counts: dict[str, int]
    token_counter: str
    token_stats: dict[str, Any]
    candidate_pairs: int
    verified_pairs: int
    output_path: Path
    sample: pd.DataFrame


def _read_signatures(paths: Sequence[Path]) -> pd.DataFrame:
    frames = []
    for part, path in enumerate(paths):
        # Partitions cleaned before a column existed (``preference``) are read without it: missing
        # means "no signal" to the ranking.
        available = set(pq.ParquetFile(path).schema_arrow.names)
        table = pq.read_table(path, columns=[c for c in SIGNATURE_READ_COLUMNS if c in available])
        frame = table.to_pandas()
        frame["_part"] = part
        frame["_row"] = np.arange(len(frame), dtype=np.int64)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=SIGNATURE_READ_COLUMNS + ["_part", "_row"])
    return pd.concat(frames, ignore_index=True)


def _read_messages(path: Path) -> pa.ChunkedArray:
    return pq.read_table(path, columns=["messages"]).column("messages")


def curate_files(
    paths: Sequence[str | Path], output_path: str | Path, config: CurationConfig = DEFAULT_CURATION_CONFIG
) -> CurationResult:
    """Dedup the cleaned partitions at ``paths`` globally and write the curated Parquet file."""
    with gc_paused():
        return _curate(paths, output_path, config)


def _column_types(paths: Sequence[Path]) -> dict[str, pa.DataType]:
    """Each column's type across all partitions: a column that is all null in one file (e.g.
    ``metadata`` where no record had extra keys) takes the type it has in the others."""
    if not paths:
        return {}
    unified = pa.unify_schemas([pq.read_schema(p) for p in paths], promote_options="permissive")
    return {field.name: field.type for field in unified}


def _with_types(table: pa.Table, column_types: Mapping[str, pa.DataType]) -> pa.Table:
    target = pa.schema(
        [field.with_type(column_types.get(field.name, field.type)) for field in table.schema],
        metadata=table.schema.metadata,
    )
    return table if target.equals(table.schema) else table.cast(target)


def _curate(cleaned_paths: Sequence[str | Path], output_path: str | Path, config: CurationConfig) -> CurationResult:
    paths = [Path(p) for p in cleaned_paths]
    column_types = _column_types(paths)
    output_path = Path(output_path)
    signatures = _read_signatures(paths)
    n_in = len(signatures)

    def load_texts(indices: np.ndarray) -> list[str]:
        # Verify LSH candidates by true Jaccard: read only the messages of candidate rows.
        texts: dict[int, str] = {}
        index_frame = signatures.iloc[indices][["_part", "_row"]]
        groups = [(int(part), group) for part, group in index_frame.groupby("_part")]
        # The next partition's messages are read in the background (pyarrow releases the GIL).
        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = reader.submit(_read_messages, paths[groups[0][0]]) if groups else None
            for k, (_part, group) in enumerate(groups):
                assert pending is not None  # submitted for every group
                messages = pending.result()
                if k + 1 < len(groups):
                    pending = reader.submit(_read_messages, paths[groups[k + 1][0]])
                rows = messages.take(pa.array(group["_row"].to_numpy()))
                del messages
                for idx, value in zip(group.index, rows.to_pylist()):
                    texts[int(idx)] = conversation_text(value)
        return [texts[int(i)] for i in indices]

    result = deduplicate(signatures, config.dedup, load_texts=load_texts if n_in else None)
    removed_rows: list[dict[str, Any]] = []
    for i in np.flatnonzero(~result.keep):
        removed_rows.append(
            {
                "conversation_id": signatures["conversation_id"].iat[i],
                "source_file": signatures["source_file"].iat[i],
                "source_line": int(signatures["source_line"].iat[i]),
                "reason": result.kind[i],
                "detail": f"{result.kind[i]} of {result.duplicate_of[i]}",
                "duplicate_of": result.duplicate_of[i],
            }
        )
    cluster_ids = np.asarray(result.cluster_id)
    counter = make_token_counter(config.tokens)
    all_tokens: list[np.ndarray] = []
    writer: pq.ParquetWriter | None = None
    n_kept = 0
    sample = None
    tmp_path = output_path.with_name(f".{output_path.name}.tmp")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    keep_part = signatures["_part"].to_numpy()
    keep_row = signatures["_row"].to_numpy()
    work = []
    for part, path in enumerate(paths):
        rows = np.flatnonzero((keep_part == part) & result.keep)
        if len(rows):
            work.append((path, rows))
    # Reading the next partition and writing the previous one run in background threads
    # (pyarrow releases the GIL for Parquet I/O and compression) while this thread converts
    # the current one; partitions are still read, converted and written in order.
    io = ThreadPoolExecutor(max_workers=2)
    pending_read = io.submit(pq.read_table, work[0][0]) if work else None
    pending_write = None
    try:
        for k, (_path, rows) in enumerate(work):
            assert pending_read is not None  # submitted for every item of work
            table = pending_read.result()
            pending_read = io.submit(pq.read_table, work[k + 1][0]) if k + 1 < len(work) else None
            local = keep_row[rows]
            # Tokens are counted on the Arrow column (no per-message Python dicts for the
            # estimate counter), then picked for the same rows as the frame below.
            totals, assistant = counter.count_conversations_arrow(table.column("messages"))
            totals, assistant = totals[local], assistant[local]
            frame = table.to_pandas()
            del table
            frame = frame.iloc[local].reset_index(drop=True)
            frame["dedup_cluster"] = cluster_ids[rows]
            frame["n_tokens"] = totals.astype(np.int64)
            frame["n_assistant_tokens"] = assistant.astype(np.int64)
            too_long = frame["n_tokens"].to_numpy() > config.max_tokens
            for i in np.flatnonzero(too_long):
                removed_rows.append(
                    {
                        "conversation_id": frame["conversation_id"].iat[i],
                        "source_file": frame["source_file"].iat[i],
                        "source_line": int(frame["source_line"].iat[i]),
                        "reason": "too_many_tokens",
                        "detail": f"{int(frame['n_tokens'].iat[i])} tokens > {config.max_tokens} ({counter.name})",
                        "duplicate_of": None,
                    }
                )
            frame = frame[~too_long].reset_index(drop=True)
            if not len(frame):
                continue
            all_tokens.append(frame["n_tokens"].to_numpy())
            if sample is None:
                sample = frame.head(5)
            table = _with_types(pa.Table.from_pandas(frame, preserve_index=False), column_types)
            n_kept += len(frame)
            del frame
            if writer is None:
                writer = pq.ParquetWriter(tmp_path, table.schema)
            else:
                table = table.cast(writer.schema)
            if pending_write is not None:
                pending_write.result()  # one write at a time, in partition order
            pending_write = io.submit(writer.write_table, table)
            del table
        if pending_write is not None:
            pending_write.result()
            pending_write = None
        if writer is None:
            # No rows survived: still write a valid, empty file with the cleaned schema.
            schema_source = pq.read_schema(paths[0]) if paths else None
            empty = (
                schema_source.empty_table()
                if schema_source is not None
                else pa.table({"conversation_id": pa.array([], pa.string())})
            )
            pq.write_table(empty, tmp_path)
        else:
            writer.close()
            writer = None
        tmp_path.replace(output_path)
    finally:
        io.shutdown(wait=True)  # no background read or write may outlive the writer
        if writer is not None:
            writer.close()
        tmp_path.unlink(missing_ok=True)

    removed = pd.DataFrame(removed_rows, columns=REMOVED_COLUMNS)
    tokens = np.concatenate(all_tokens) if all_tokens else np.zeros(0, dtype=np.int64)
    return CurationResult(
        n_in=n_in,
        n_kept=n_kept,
        removed=removed,
        removed_counts=dict(Counter(removed["reason"])) if len(removed) else {},
        token_counter=counter.name,
        token_stats=token_stats(tokens),
        candidate_pairs=result.candidate_pairs,
        verified_pairs=result.verified_pairs,
        output_path=output_path,
        sample=sample if sample is not None else pd.DataFrame(),
    )


@dataclass
class PiiScan:
    """What a fresh PII scan of a written dataset found: matches per type and the first few
    (conversation id and type only, never the matched text)."""

    found: dict[str, int]
    examples: list[dict[str, str]]

    @property
    def total(self) -> int:
        return sum(self.found.values())


#: Text columns, besides the messages and the conversation id, that a dataset may carry.
PII_SCANNED_COLUMNS = ("user_id", "metadata", "tags")


def scan_dataset_for_pii(path: str | Path, pii: PiiConfig = DEFAULT_PII_CONFIG, max_examples: int = 5) -> PiiScan:
    """Scan every text column of a conversations Parquet file (messages, ids, the record's unknown
    keys, tags) with ``pii``, streaming it in batches so the dataset is never held in memory."""
    found: Counter[str] = Counter()
    examples: list[dict[str, str]] = []
    parquet = pq.ParquetFile(path)
    available = set(parquet.schema_arrow.names)
    text_columns = [c for c in PII_SCANNED_COLUMNS if c in available]
    for batch in parquet.iter_batches(batch_size=10_000, columns=["conversation_id", "messages", *text_columns]):
        columns = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        for i, conversation_id in enumerate(columns["conversation_id"]):
            texts = [m["content"] for m in columns["messages"][i]] + [str(conversation_id)]
            for c in text_columns:
                value = columns[c][i]
                if value is not None:
                    texts.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
            for text in texts:
                if not may_contain_pii(text, pii):
                    continue
                for match in find_pii(text, pii):
                    found[match.type] += 1
                    if len(examples) < max_examples:
                        examples.append({"conversation_id": str(conversation_id), "type": match.type})
    return PiiScan(found=dict(found), examples=examples)


def duplicates_left(path: str | Path, dedup: DedupConfig = DEFAULT_DEDUP_CONFIG) -> dict[str, int]:
    """Duplicates of each kind that dedup would still remove from the curated file at ``path``
    (empty when none): the ``no_duplicates_left`` check re-runs dedup over the output."""
    columns = [
        "conversation_id",
        "exact_hash",
        "context_hash",
        "prefix_hashes",
        "minhash",
        "rating",
        "edited",
        "response_time_ms",
    ]
    if not pq.ParquetFile(path).metadata.num_rows:
        return {}
    curated = pq.read_table(path, columns=columns).to_pandas()

    def load_texts(rows: np.ndarray) -> list[str]:
        messages = pq.read_table(path, columns=["messages"]).column("messages")
        return [conversation_text(m) for m in messages.take(pa.array([int(i) for i in rows])).to_pylist()]

    again = deduplicate(curated, dedup, load_texts=load_texts)
    return {kind: count for kind, count in again.counts.items() if count}


class NothingToCurate(LookupError):
    """No partition has cleaned conversations yet."""


@dataclass
class CuratedDatasetResult:
    """What :func:`curate` wrote, its counts, and the outcomes of the curated dataset's checks."""

    manifest: CuratedManifest
    curation: CurationResult
    partitions: list[str]
    """The partitions curated."""
    missing: list[str]
    """Partitions asked for that have no cleaned output yet (left out)."""
    pii_scan: PiiScan
    """A fresh scan of the written dataset with the pipeline's PII policy (``no_pii_left``)."""
    duplicates_left: dict[str, int]
    """What dedup would still remove from the written dataset (``no_duplicates_left``)."""
    steps: StepTimes

    @property
    def version(self) -> str:
        """The dataset's one version: its folder name, the manifest's and the asset's DataVersion.
        It is a hash of the inputs' versions, code version and settings, and curation is
        deterministic, so it names the content too."""
        return self.manifest.version


def curate(
    cleaned_folders: Mapping[str, str | Path],
    curated_root: str | Path,
    config: CurationConfig = DEFAULT_CURATION_CONFIG,
    *,
    pii: PiiConfig = DEFAULT_PII_CONFIG,
    code_version: str = "",
    settings: Sequence[Any] = (),
) -> CuratedDatasetResult:
    """The ``curated_dataset`` stage: every partition's cleaned conversations (the
    :class:`CleanedManifest` in each of ``cleaned_folders``, partition name -> folder) deduplicated
    globally, token-counted and length-filtered into ``curated_root/<version>/conversations.parquet``
    with ``removed.parquet`` beside it, a :class:`CuratedManifest` (with the dedup parameters used)
    in ``curated_root``, and the two checks run on the written file.

    The MinHash ``num_perm``/``ngram`` are the ones the partitions were cleaned with (one setting,
    on the cleaning stage); ``config.dedup``'s own values for them are not used. ``code_version``
    and ``settings`` go into the version with the partitions' versions.

    Raises:
        NothingToCurate: no partition has a cleaned manifest.
        ValueError: partitions were cleaned with different MinHash parameters (named).
        ManifestError: a cleaned manifest is of an older schema.
    """
    steps = StepTimes()
    inputs: dict[str, CleanedManifest] = {}
    missing = []
    for name, folder in cleaned_folders.items():
        cleaned = read_manifest(folder, CleanedManifest)
        if cleaned is None:
            missing.append(name)
        else:
            inputs[name] = cleaned
    if not inputs:
        raise NothingToCurate("no cleaned partitions to curate: materialize cleaned_conversations first")
    num_perm, ngram = signature_params({n: (m.minhash_num_perm, m.minhash_ngram) for n, m in inputs.items()})
    config = replace(config, dedup=replace(config.dedup, num_perm=num_perm, ngram=ngram))
    version = content_version(code_version, [(n, m.version) for n, m in inputs.items()], *settings)
    folder = Path(curated_root) / version
    with steps.step("curate"):
        result = curate_files([m.path for m in inputs.values()], folder / "conversations.parquet", config)
    if result.n_in != result.n_kept + len(result.removed):  # curation guarantees it; a bug must not pass silently
        raise AssertionError(
            f"curation lost records: {result.n_in} in, {result.n_kept} kept, {len(result.removed)} removed"
        )
    with steps.step("write_removed"):
        removed_path = write_parquet(result.removed, folder / "removed.parquet")
    manifest = CuratedManifest.of(version, str(result.output_path), str(removed_path), config.dedup)
    write_manifest(curated_root, manifest)
    with steps.step("check_no_pii_left"):
        scan = scan_dataset_for_pii(result.output_path, pii)
    with steps.step("check_no_duplicates_left"):
        left = duplicates_left(result.output_path, config.dedup)
    return CuratedDatasetResult(manifest, result, list(inputs), missing, scan, left, steps)
