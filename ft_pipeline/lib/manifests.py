"""Typed manifests: what each stage hands to the next.

A stage writes its manifest as ``latest.json`` beside its versioned outputs (the ``latest``
pointer, for people and scripts too); the next stage reads it back as the same frozen dataclass.
Each manifest class carries a ``SCHEMA`` number, written into the file with the class's
``KIND``; reading a file of another kind or schema (one written by an older ft-pipeline) raises
:class:`ManifestError` naming the file and the asset to materialize again, instead of a
``KeyError`` somewhere downstream.

One function writes (:func:`write_manifest`) and one reads (:func:`read_manifest`) every kind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from ft_pipeline.lib.dedup import DedupConfig
from ft_pipeline.lib.storage import LATEST, write_text

__all__ = [
    "AugmentedTrainManifest",
    "CleanedManifest",
    "CuratedManifest",
    "ManifestError",
    "ParsedManifest",
    "PreferenceManifest",
    "SplitsManifest",
    "read_manifest",
    "write_manifest",
]


class ManifestError(ValueError):
    """A manifest that cannot be read as the kind asked for (another kind, or an older schema)."""


class Manifest(Protocol):
    """What write_manifest/read_manifest need of a manifest class: a dataclass with these three."""

    KIND: ClassVar[str]
    SCHEMA: ClassVar[int]
    PRODUCED_BY: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


M = TypeVar("M", bound=Manifest)


def write_manifest(folder: str | os.PathLike, manifest: Any) -> Path:
    """Write ``manifest`` (a manifest dataclass) as ``folder/latest.json``, atomically."""
    cls = type(manifest)
    body = {
        "kind": cls.KIND,
        "schema": cls.SCHEMA,
        "written_at": datetime.now(UTC).isoformat(),
        **dataclasses.asdict(manifest),
    }
    return write_text(json.dumps(body, indent=2, default=str) + "\n", Path(folder) / LATEST)


def read_manifest(folder: str | os.PathLike, cls: type[M]) -> M | None:
    """The manifest of kind ``cls`` in ``folder/latest.json``; ``None`` when there is none yet.

    Raises:
        ManifestError: the file is of another kind, of another schema, or lacks fields.
    """
    path = Path(folder) / LATEST
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); materialize {cls.PRODUCED_BY} again") from exc
    kind, schema = body.get("kind"), body.get("schema")
    if kind != cls.KIND or schema != cls.SCHEMA:
        found = f"kind {kind!r}, schema {schema!r}" if kind else "no schema (written by an older ft-pipeline)"
        raise ManifestError(
            f"{path} is not a {cls.KIND} manifest of schema {cls.SCHEMA} ({found}); materialize {cls.PRODUCED_BY} again"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(n for n in names if n not in body)
    if missing:
        raise ManifestError(f"{path} lacks {missing}; materialize {cls.PRODUCED_BY} again")
    return cls(**{n: body[n] for n in names})


@dataclasses.dataclass(frozen=True)
class SplitsManifest:
    """What ``train_validation_test_split`` wrote: the split files of one version, and what they came from."""

    KIND: ClassVar[str] = "splits"
    SCHEMA: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "the train_validation_test_split step (train_split, validation_split, test_split)"

    version: str
    curated_version: str
    paths: dict[str, dict[str, str]]
    """Split name (``train``, ``validation``, ``test``) -> ``{"parquet": path, "jsonl": path}``."""

    def parquet(self, split: str) -> str:
        return self.paths[split]["parquet"]

    def jsonl(self, split: str) -> str:
        return self.paths[split]["jsonl"]


@dataclasses.dataclass(frozen=True)
class AugmentedTrainManifest:
    """What ``augmented_train_split`` wrote: the train split of ``splits_version`` plus seeded,
    perturbed copies of some of its user turns (``splits/<splits_version>/augmented/latest.json``)."""

    KIND: ClassVar[str] = "augmented_train"
    SCHEMA: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "augmented_train_split (with enabled=true)"

    version: str
    """Content version: the splits' version, the augmentation settings and the code version."""
    splits_version: str
    settings: dict[str, Any]
    """The augmentation settings it was made with (kinds, copies, fraction, seed, rate)."""
    paths: dict[str, str]
    """``{"parquet": path, "jsonl": path}``: the augmented train split (originals + copies)."""
    rows: int

    def parquet(self) -> str:
        return self.paths["parquet"]

    def jsonl(self) -> str:
        return self.paths["jsonl"]


@dataclasses.dataclass(frozen=True)
class PreferenceManifest:
    """What ``preference_dataset`` wrote: DPO pairs, KTO examples and dropped rows of one version,
    split against the SFT splits of ``splits_version``."""

    KIND: ClassVar[str] = "preferences"
    SCHEMA: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "preference_dataset"

    version: str
    splits_version: str
    paths: dict[str, dict[str, str]]
    """``all`` -> ``{"pairs", "kto", "dropped"}`` Parquet paths; each split name -> ``{"dpo", "openai",
    "kto"}`` JSONL paths (TRL DPO, OpenAI/Azure DPO, TRL KTO)."""


@dataclasses.dataclass(frozen=True)
class ParsedManifest:
    """What ``raw_conversation_logs`` wrote for one partition: the parsed (scrubbed) records and
    the quarantine file."""

    KIND: ClassVar[str] = "parsed"
    SCHEMA: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "raw_conversation_logs for this partition"

    version: str
    path: str
    quarantine_path: str
    source: str
    """The partition key: the landed file's name."""


@dataclasses.dataclass(frozen=True)
class CleanedManifest:
    """What ``cleaned_conversations`` wrote for one partition, and the MinHash parameters its
    signatures were computed with (``curated_dataset`` dedups with exactly these)."""

    KIND: ClassVar[str] = "cleaned"
    SCHEMA: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "cleaned_conversations for this partition"

    version: str
    path: str
    filtered_path: str
    parsed_version: str
    minhash_num_perm: int
    minhash_ngram: int


@dataclasses.dataclass(frozen=True)
class CuratedManifest:
    """What ``curated_dataset`` wrote, and the near-duplicate parameters it ran with: the splits'
    leakage check reads them, so the check and the dedup agree on what a near duplicate is."""

    KIND: ClassVar[str] = "curated"
    SCHEMA: ClassVar[int] = 1
    PRODUCED_BY: ClassVar[str] = "curated_dataset"

    version: str
    path: str
    removed_path: str
    near_dup_threshold: float
    num_perm: int
    ngram: int
    lsh_bands: int | None
    """``None``: chosen for the threshold (the leakage check chooses the same)."""
    minhash_seed: int

    @classmethod
    def of(cls, version: str, path: str, removed_path: str, dedup: DedupConfig) -> CuratedManifest:
        """The manifest of a curated version deduplicated with ``dedup``."""
        return cls(
            version=version,
            path=path,
            removed_path=removed_path,
            near_dup_threshold=dedup.threshold,
            num_perm=dedup.num_perm,
            ngram=dedup.ngram,
            lsh_bands=dedup.bands,
            minhash_seed=dedup.seed,
        )

    def dedup_config(self) -> DedupConfig:
        """The near-duplicate parameters ``curated_dataset`` ran with."""
        return DedupConfig(
            num_perm=self.num_perm,
            ngram=self.ngram,
            threshold=self.near_dup_threshold,
            bands=self.lsh_bands,
            seed=self.minhash_seed,
        )
