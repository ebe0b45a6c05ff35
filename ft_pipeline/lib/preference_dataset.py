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
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import xxhash

from ft_pipeline.lib.curation import PiiScan
from ft_pipeline.lib.manifests import CleanedManifest, PreferenceManifest, SplitsManifest, read_manifest, write_manifest
from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL
from ft_pipeline.lib.pii import DEFAULT_PII_CONFIG, PiiConfig, find_pii, may_contain_pii
from ft_pipeline.lib.preference_format import validate_preference_jsonl, write_kto_jsonl, write_preference_jsonl
from ft_pipeline.lib.preferences import (
    PreferenceBuild,
    PreferenceConfig,
    build_preferences,
    read_cleaned_for_preferences,
)
from ft_pipeline.lib.splits import SPLIT_NAMES, SplitConfig
from ft_pipeline.lib.storage import content_version, write_parquet
from ft_pipeline.lib.timing import StepTimes

__all__ = [
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
    """Which SFT split holds each user, context and long first turn (a key may be in several)."""

    users: dict[str, set[str]]
    contexts: dict[int, set[str]]
    first_turns: dict[int, set[str]]

    @classmethod
    def from_splits(cls, splits: SplitsManifest, first_turn_min_words: int) -> SftSplitIndex:
        users: dict[str, set[str]] = {}
        contexts: dict[int, set[str]] = {}
        first_turns: dict[int, set[str]] = {}
        for name in SPLIT_NAMES:
            columns = ["user_id", "context_hash", "first_turn_hash", "first_turn_words"]
            frame = pq.read_table(splits.parquet(name), columns=columns).to_pandas()
            for user in frame["user_id"].dropna():
                if str(user):
                    users.setdefault(str(user), set()).add(name)
            for context in frame["context_hash"].dropna():
                contexts.setdefault(int(context), set()).add(name)
            long_enough = frame[frame["first_turn_words"].fillna(0) >= max(1, first_turn_min_words)]
            for first in long_enough["first_turn_hash"].dropna():
                first_turns.setdefault(int(first), set()).add(name)
        return cls(users, contexts, first_turns)

    def splits_of(self, user_id: Any, context_hash: Any, first_turn_hash: Any) -> set[str]:
        hits: set[str] = set()
        if _present(user_id) and str(user_id):
            hits |= self.users.get(str(user_id), set())
        if _present(context_hash):
            hits |= self.contexts.get(int(context_hash), set())
        if _present(first_turn_hash):
            hits |= self.first_turns.get(int(first_turn_hash), set())
        return hits


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and value is not pd.NA


def assign_preference_splits(
    frame: pd.DataFrame, index: SftSplitIndex, config: PreferenceDatasetConfig = PreferenceDatasetConfig()
) -> list[str]:
    """The split of each row of ``frame`` (``user_id``, ``context_hash``, ``first_turn_hash``): see
    the module docstring."""
    cut_test = config.test_fraction
    cut_validation = config.test_fraction + config.validation_fraction
    splits = []
    for user, context, first in zip(frame["user_id"], frame["context_hash"], frame["first_turn_hash"]):
        hits = index.splits_of(user, context, first)
        if "test" in hits:
            splits.append("test" if hits == {"test"} else EXCLUDED)
        elif hits:
            splits.append("train" if "train" in hits else "validation")
        else:
            key = str(user) if _present(user) and str(user) else f"context:{context}"
            position = xxhash.xxh3_64_intdigest(f"{config.seed}:preference:{key}".encode()) / 2.0**64
            splits.append("test" if position < cut_test else "validation" if position < cut_validation else "train")
    return splits


def preference_leakage(frames: Mapping[str, pd.DataFrame], index: SftSplitIndex) -> dict[str, int]:
    """Examples (of every frame, by their ``split``) that share a key with the SFT split they must
    stay away from: preference train/validation vs SFT test, preference test vs SFT train."""
    leaked: Counter[str] = Counter()
    for name, frame in frames.items():
        for split, user, context, first in zip(
            frame["split"], frame["user_id"], frame["context_hash"], frame["first_turn_hash"]
        ):
            hits = index.splits_of(user, context, first)
            if split in ("train", "validation") and "test" in hits:
                leaked[f"{name}_{split}_vs_sft_test"] += 1
            elif split == "test" and "train" in hits:
                leaked[f"{name}_test_vs_sft_train"] += 1
    return dict(leaked)


def scan_preferences_for_pii(
    pairs: pd.DataFrame, kto: pd.DataFrame, pii: PiiConfig = DEFAULT_PII_CONFIG, max_examples: int = 5
) -> PiiScan:
    """Every text of the pairs and KTO examples (prompt turns, replies, ids, tags) through ``pii``;
    the places found are named by conversation id (a pair's: the chosen reply's)."""
    found: Counter[str] = Counter()
    examples: list[dict[str, str]] = []
    for frame, id_column, reply_columns in (
        (pairs, "chosen_conversation_id", ("chosen", "rejected", "chosen_conversation_id", "rejected_conversation_id")),
        (kto, "conversation_id", ("completion", "conversation_id")),
    ):
        for row in frame.to_dict("records"):
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
    return PiiScan(dict(found), examples)


@dataclass
class PreferenceDatasetResult:
    """What :func:`build_preference_dataset` wrote, its counts, and the outcomes of its checks."""

    manifest: PreferenceManifest
    build: PreferenceBuild
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
) -> PreferenceDatasetResult:
    """Build, split, write (``preferences_root/<version>/``: ``pairs.parquet``, ``kto.parquet``,
    ``dropped.parquet``, and per split ``<split>.dpo.jsonl`` (TRL), ``<split>.openai.jsonl``
    (OpenAI/Azure DPO) and ``<split>.kto.jsonl``), write a :class:`PreferenceManifest` in
    ``preferences_root``, and run the checks.

    Raises:
        ValueError: no cleaned partition to build from.
    """
    steps = StepTimes()
    with steps.step("read_cleaned"):
        frame, missing = read_cleaned_for_preferences({n: Path(f) for n, f in cleaned_folders.items()})
    partitions = [name for name in cleaned_folders if name not in missing]
    if not partitions:
        raise ValueError("no cleaned partitions to build preferences from: materialize cleaned_conversations first")
    with steps.step("build_preferences"):
        build = build_preferences(frame, config.preferences)
    cleaned_versions = []
    for name in partitions:
        cleaned = read_manifest(Path(cleaned_folders[name]), CleanedManifest)
        cleaned_versions.append((name, cleaned.version if cleaned else ""))
    version = content_version(code_version, cleaned_versions, splits.version, *settings)
    folder = Path(preferences_root) / version
    with steps.step("assign_splits"):
        index = SftSplitIndex.from_splits(splits, config.first_turn_min_words)
        pairs = build.pairs.assign(split=assign_preference_splits(build.pairs, index, config))
        kto = build.kto.assign(split=assign_preference_splits(build.kto, index, config))
    with steps.step("write"):
        paths: dict[str, dict[str, str]] = {
            "all": {
                "pairs": str(write_parquet(pairs, folder / "pairs.parquet")),
                "kto": str(write_parquet(kto, folder / "kto.parquet")),
                "dropped": str(write_parquet(build.dropped, folder / "dropped.parquet")),
            }
        }
        for name in SPLIT_NAMES:
            split_pairs, split_kto = pairs[pairs["split"] == name], kto[kto["split"] == name]
            paths[name] = {
                "dpo": str(folder / f"{name}.dpo.jsonl"),
                "openai": str(folder / f"{name}.openai.jsonl"),
                "kto": str(folder / f"{name}.kto.jsonl"),
            }
            write_preference_jsonl(split_pairs, paths[name]["dpo"], "trl_dpo")
            write_preference_jsonl(split_pairs, paths[name]["openai"], "openai")
            write_kto_jsonl(split_kto, paths[name]["kto"])
    manifest = PreferenceManifest(version=version, splits_version=splits.version, paths=paths)
    write_manifest(preferences_root, manifest)
    split_counts = {
        name: {"pairs": int((pairs["split"] == name).sum()), "kto": int((kto["split"] == name).sum())}
        for name in (*SPLIT_NAMES, EXCLUDED)
    }
    # The checks read back what was written (one read of each file serves both).
    written = {"pairs": pd.read_parquet(paths["all"]["pairs"]), "kto": pd.read_parquet(paths["all"]["kto"])}
    with steps.step("check_no_leakage"):
        leakage = preference_leakage(written, index)
    with steps.step("check_no_pii_left"):
        scan = scan_preferences_for_pii(written["pairs"], written["kto"], pii)
    formats = {}
    for name in ("train", "validation"):
        with steps.step("validate_jsonl"):
            formats[name] = validate_preference_jsonl(
                paths[name]["openai"], model=openai_model, require_min_examples=(name == "train")
            )
    return PreferenceDatasetResult(
        manifest, build, partitions, list(missing), split_counts, leakage, scan, formats, steps
    )
