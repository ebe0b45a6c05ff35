"""Seeded augmentation of the train split: perturbed copies of user turns (off by default).

A share of the train split's conversations (chosen by a hash of the seed and the conversation id,
so an example keeps its choice when data is added) get ``copies_per_example`` copies each. A copy
applies one perturbation of :mod:`ft_pipeline.lib.perturbations` (keyboard typos, case and
whitespace, punctuation) to every USER turn and leaves system and assistant turns as they are:
the model learns to give the same clean reply to a noisy prompt.

Only the train split is ever read for copies, so no validation or test prompt gets one. A copy
keeps the group columns of its source (``split_group``, ``user_id``, ``exact_hash``,
``context_hash``, the first-turn and final-reply hashes, the token counts): every grouping of the
pipeline puts it with its source, so a leakage check finds it wherever its source is. Only its
``minhash`` and ``n_chars`` are recomputed from its own text, so the near-duplicate check compares
what the copy actually says with validation and test. It carries ``augmented_from`` (its source's
``conversation_id``) and ``augmentation`` (the kind); on the original rows both are null.

A copy that no user turn differs in (a short prompt a 5% typo rate left intact, a lower-case prompt
without spaces) would only duplicate its source: it is not written and is counted as
``unchanged``, so ``selected examples x copies_per_example = copies written + unchanged``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from ft_pipeline.lib.dedup import DedupConfig, compute_signatures, conversation_text, signatures_to_bytes
from ft_pipeline.lib.manifests import AugmentedTrainManifest, SplitsManifest, read_manifest, write_manifest
from ft_pipeline.lib.openai_format import (
    DEFAULT_OPENAI_FINE_TUNING_MODEL,
    FormatReport,
    to_openai_record,
    validate_jsonl_file,
)
from ft_pipeline.lib.perturbations import PERTURBATIONS, perturb
from ft_pipeline.lib.splits import LeakageReport, SplitConfig, leakage_report, parquet_text_loader
from ft_pipeline.lib.storage import content_version

__all__ = [
    "AUGMENTATION_KINDS",
    "AugmentationConfig",
    "AugmentationCounts",
    "AugmentationResult",
    "augment_messages",
    "augmented_folder",
    "augmented_leakage",
    "copy_plan",
    "make_augmented_train",
    "read_augmented_train",
    "write_augmented_train",
]

#: The perturbations a copy can apply (``lib/perturbations.py``'s names).
AUGMENTATION_KINDS = tuple(PERTURBATIONS)


@dataclass(frozen=True)
class AugmentationConfig:
    """Which train examples get perturbed copies, and how. Every default is the documented one."""

    enabled: bool = False
    """Off by default: the train split is used as it is and nothing is written."""
    kinds: tuple[str, ...] = ("typos", "case_whitespace")
    """Perturbations the copies use (typos, case_whitespace, punctuation). An example's copies take
    them in turn from a seeded starting point, so two copies of one example differ in kind when
    there are two kinds or more."""
    copies_per_example: int = 1
    """Copies of each selected example (each with one kind)."""
    fraction: float = 0.5
    """Share of the train examples that get copies (chosen by a hash of seed and conversation id)."""
    seed: int = 42
    """Salt of the choice of examples, of the kinds' order and of the perturbations."""
    typo_rate: float = 0.05
    """Rate of the perturbations: per letter for typos, per space for case_whitespace's spacing
    (punctuation removes all punctuation and ignores it)."""

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in PERTURBATIONS]
        if unknown or not self.kinds:
            raise ValueError(
                f"augmentation kinds must be some of {', '.join(AUGMENTATION_KINDS)}, got {list(self.kinds)}"
            )
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"augmentation kinds are listed twice: {list(self.kinds)}")
        if self.copies_per_example < 1:
            raise ValueError(f"copies_per_example must be >= 1, got {self.copies_per_example}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"augmentation fraction must be between 0 and 1, got {self.fraction}")
        if not 0.0 <= self.typo_rate <= 1.0:
            raise ValueError(f"typo_rate must be between 0 and 1, got {self.typo_rate}")

    def settings(self) -> dict[str, Any]:
        """What decides the copies (part of the augmented split's version): every field but ``enabled``."""
        return {
            "kinds": list(self.kinds),
            "copies_per_example": self.copies_per_example,
            "fraction": self.fraction,
            "seed": self.seed,
            "typo_rate": self.typo_rate,
        }


DEFAULT_AUGMENTATION_CONFIG = AugmentationConfig()


def _hash64(*parts: object) -> int:
    return xxhash.xxh3_64_intdigest("\x00".join(str(p) for p in parts).encode())


def copy_plan(conversation_id: str, config: AugmentationConfig) -> list[tuple[str, int]]:
    """``(kind, perturbation seed)`` of each copy of one example: none when the example is not in
    the augmented share. A pure function of the seed and the conversation id."""
    if _hash64(config.seed, "select", conversation_id) / 2.0**64 >= config.fraction:
        return []
    start = _hash64(config.seed, "kind", conversation_id) % len(config.kinds)
    return [
        (config.kinds[(start + j) % len(config.kinds)], _hash64(config.seed, "copy", conversation_id, j) >> 1)
        for j in range(config.copies_per_example)
    ]


def augment_messages(messages: Sequence[dict[str, Any]], kind: str, seed: int, rate: float) -> list[dict[str, Any]]:
    """``messages`` with every user turn's text perturbed (``kind`` at ``rate``, seeded); system,
    assistant and tool turns are copied unchanged, and so is every other key of a message."""
    out = []
    for message in messages:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str):
            message = {**message, "content": perturb(content, kind, seed, rate)}
        else:
            message = dict(message)
        out.append(message)
    return out


@dataclass
class AugmentationCounts:
    """What the augmentation made of the train split (the asset's headline numbers)."""

    source_examples: int = 0
    """Conversations in the train split (all are kept, unchanged)."""
    selected_examples: int = 0
    """Of them, the ones in the augmented share (``fraction``)."""
    copies: dict[str, int] = field(default_factory=dict)
    """Kind -> copies written."""
    unchanged: dict[str, int] = field(default_factory=dict)
    """Kind -> copies not written because no user turn changed (they would only duplicate the source)."""

    @property
    def augmented_copies(self) -> int:
        return sum(self.copies.values())

    @property
    def total_examples(self) -> int:
        """Rows of the augmented train split: the originals and the copies."""
        return self.source_examples + self.augmented_copies


@dataclass
class AugmentationResult:
    """What :func:`make_augmented_train` did: nothing but counting when disabled."""

    enabled: bool
    version: str
    """The augmented split's content version (the splits' version and the settings), or, disabled,
    the version of "the plain train split of these splits"."""
    splits_version: str
    counts: AugmentationCounts
    manifest: AugmentedTrainManifest | None = None
    leakage: LeakageReport | None = None
    """The augmented train split against validation and test (see :func:`augmented_leakage`)."""
    format: FormatReport | None = None
    """The augmented train JSONL against the OpenAI chat fine-tuning format."""
    sample: pd.DataFrame | None = None
    """The first copies written (conversation_id, augmented_from, augmentation, messages)."""


# One encoder for every line (json.dumps with options builds a new one per call).
_JSONL_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_AUGMENTATION_FIELDS = [pa.field("augmented_from", pa.string()), pa.field("augmentation", pa.string())]


def write_augmented_train(
    train_parquet: str | Path,
    out_dir: str | Path,
    config: AugmentationConfig,
    dedup: DedupConfig,
    *,
    batch_rows: int = 5_000,
    sample_size: int = 3,
) -> tuple[dict[str, str], AugmentationCounts, pd.DataFrame]:
    """Stream ``train_parquet`` into ``out_dir/train.parquet`` and ``train.jsonl`` (OpenAI chat
    format): every original row, then the copies of each batch's selected rows. Returns the paths,
    the counts and the first ``sample_size`` copies. Memory stays at one batch."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = pq.ParquetFile(train_parquet)
    schema = source.schema_arrow
    for augmentation_field in _AUGMENTATION_FIELDS:
        schema = schema.append(augmentation_field)
    counts = AugmentationCounts()
    copies_by_kind: Counter[str] = Counter()
    unchanged_by_kind: Counter[str] = Counter()
    sample: list[dict[str, Any]] = []
    parquet_tmp, jsonl_tmp = out_dir / ".train.parquet.tmp", out_dir / ".train.jsonl.tmp"
    try:
        with (
            pq.ParquetWriter(parquet_tmp, schema) as writer,
            open(jsonl_tmp, "w", encoding="utf-8", newline="\n") as jsonl,
        ):
            for batch in source.iter_batches(batch_size=batch_rows):
                table = pa.Table.from_batches([batch])
                n = len(table)
                counts.source_examples += n
                originals = table
                for augmentation_field in _AUGMENTATION_FIELDS:
                    originals = originals.append_column(augmentation_field, pa.nulls(n, augmentation_field.type))
                parts = [originals]
                ids = [str(i) for i in table.column("conversation_id").to_pylist()]
                plans = {i: plan for i, cid in enumerate(ids) if (plan := copy_plan(cid, config))}
                counts.selected_examples += len(plans)
                copies: list[dict[str, Any]] = []
                if plans:
                    rows = table.take(pa.array(list(plans), pa.int64())).to_pylist()
                    for row, plan in zip(rows, plans.values()):
                        for j, (kind, seed) in enumerate(plan):
                            messages = augment_messages(row["messages"], kind, seed, config.typo_rate)
                            if messages == row["messages"]:
                                unchanged_by_kind[kind] += 1
                                continue
                            copies_by_kind[kind] += 1
                            source_id = str(row["conversation_id"])
                            copies.append(
                                {
                                    **row,
                                    "conversation_id": f"{source_id}#aug{j}",
                                    "messages": messages,
                                    "augmented_from": source_id,
                                    "augmentation": kind,
                                }
                            )
                if copies:
                    texts = [conversation_text(c["messages"]) for c in copies]
                    if "minhash" in schema.names:
                        for c, blob in zip(copies, signatures_to_bytes(compute_signatures(texts, dedup))):
                            c["minhash"] = blob
                    if "n_chars" in schema.names:
                        for c, text in zip(copies, texts):
                            c["n_chars"] = len(text)
                    parts.append(pa.Table.from_pylist(copies, schema=schema))
                    sample.extend(copies[: max(0, sample_size - len(sample))])
                for part in parts:
                    writer.write_table(part.cast(schema))
                    lines = [_JSONL_ENCODER.encode(to_openai_record(m)) for m in part.column("messages").to_pylist()]
                    if lines:
                        jsonl.write("\n".join(lines) + "\n")
        os.replace(parquet_tmp, out_dir / "train.parquet")
        os.replace(jsonl_tmp, out_dir / "train.jsonl")
    finally:
        parquet_tmp.unlink(missing_ok=True)
        jsonl_tmp.unlink(missing_ok=True)
    counts.copies = {kind: copies_by_kind[kind] for kind in config.kinds}
    counts.unchanged = {kind: unchanged_by_kind[kind] for kind in config.kinds}
    columns = ["conversation_id", "augmented_from", "augmentation", "messages"]
    paths = {"parquet": str(out_dir / "train.parquet"), "jsonl": str(out_dir / "train.jsonl")}
    return paths, counts, pd.DataFrame([{c: s[c] for c in columns} for s in sample], columns=columns)


# Groups as the split step formed them: its ``split_group`` (read into ``user_id``, the highest
# priority key) and the shared context it always links; nothing else is recomputed.
_GROUPS_AS_SPLIT = SplitConfig(group_by_user=True, first_turn_min_words=0)
_LEAKAGE_COLUMNS = ["conversation_id", "split_group", "exact_hash", "context_hash", "minhash", "final_reply_hash"]


def augmented_leakage(augmented_parquet: str | Path, splits: SplitsManifest, dedup: DedupConfig) -> LeakageReport:
    """The splits' leakage report with the augmented train split in place of train: a group (the
    split step's ``split_group``, or a shared context) in train and in validation or test, an
    exact hash in both, or a copy whose own text is a near duplicate (true Jaccard >=
    ``dedup.threshold``) of a validation or test conversation. Copies carry their source's group
    and hashes, so a copy can only leak where its source already does; the near-duplicate test
    reads the copies' own text."""
    paths: dict[str, str | Path] = {"train": augmented_parquet}
    paths.update({name: splits.parquet(name) for name in ("validation", "test")})
    frames = {}
    for name, path in paths.items():
        available = set(pq.ParquetFile(path).schema_arrow.names)
        frame = pq.read_table(path, columns=[c for c in _LEAKAGE_COLUMNS if c in available]).to_pandas()
        frame["user_id"] = frame["split_group"]
        frames[name] = frame
    return leakage_report(frames, _GROUPS_AS_SPLIT, dedup, load_texts=parquet_text_loader(paths))


def augmented_folder(splits: SplitsManifest) -> Path:
    """``splits/<version>/augmented``: beside the split files it augments."""
    return Path(splits.parquet("train")).parent / "augmented"


def read_augmented_train(splits: SplitsManifest) -> AugmentedTrainManifest | None:
    """The augmented train split of these splits; ``None`` when none was written for them."""
    manifest = read_manifest(augmented_folder(splits), AugmentedTrainManifest)
    return manifest if manifest is not None and manifest.splits_version == splits.version else None


def make_augmented_train(
    splits: SplitsManifest,
    config: AugmentationConfig,
    dedup: DedupConfig,
    *,
    code_version: str = "",
    openai_model: str = DEFAULT_OPENAI_FINE_TUNING_MODEL,
) -> AugmentationResult:
    """The ``augmented_train_split`` stage. Disabled: count the train split and write nothing.
    Enabled: write ``splits/<version>/augmented/<augmented version>/train.{parquet,jsonl}`` and
    the manifest ``splits/<version>/augmented/latest.json``, then check the result for leakage
    against validation and test (``dedup``: the curated dataset's near-duplicate parameters) and
    the JSONL against the OpenAI format (``openai_model``'s token limit)."""
    if not config.enabled:
        rows = pq.ParquetFile(splits.parquet("train")).metadata.num_rows
        counts = AugmentationCounts(source_examples=rows)
        return AugmentationResult(False, content_version(code_version, splits.version, "off"), splits.version, counts)
    version = content_version(code_version, splits.version, config.settings())
    folder = augmented_folder(splits)
    paths, counts, sample = write_augmented_train(splits.parquet("train"), folder / version, config, dedup)
    manifest = AugmentedTrainManifest(
        version=version,
        splits_version=splits.version,
        settings=config.settings(),
        paths=paths,
        rows=counts.total_examples,
    )
    write_manifest(folder, manifest)
    return AugmentationResult(
        True,
        version,
        splits.version,
        counts,
        manifest=manifest,
        leakage=augmented_leakage(paths["parquet"], splits, dedup),
        format=validate_jsonl_file(paths["jsonl"], model=openai_model),
        sample=sample,
    )
