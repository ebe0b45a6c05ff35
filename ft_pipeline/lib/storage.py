"""Where artifacts live on disk: the data directory, versioned paths and ``latest`` pointers.

Everything the pipeline writes sits below one data directory (``$FT_PIPELINE_DATA_DIR``, default
``data/``) at paths that contain the version, so an old version is never overwritten. Beside each
versioned folder a ``latest.json`` names the newest version for people and scripts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

DATA_DIR_ENV = "FT_PIPELINE_DATA_DIR"
DEFAULT_DATA_DIR = "data"
LATEST = "latest.json"


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: the explicit one, else ``$FT_PIPELINE_DATA_DIR``, else ``data/``."""
    return Path(explicit or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def legacy_safe_name(key: str) -> str:
    """The folder name of a partition before names were made injective: a readable slug only, so
    ``team a.jsonl`` and ``team_a.jsonl`` shared a folder. Used only to recognise old data."""
    name = _UNSAFE.sub("_", key.replace("/", "__"))
    return name.strip(".") or "_"


def safe_name(key: str) -> str:
    """A partition key as a single folder name: a readable slug (nested paths use '__') plus a
    short hash of the exact key, so two keys never share a folder (``team a.jsonl`` and
    ``team_a.jsonl``, ``A.jsonl`` and ``a.jsonl``, NFC and NFD spellings of one name)."""
    digest = hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()[:12]
    return f"{legacy_safe_name(key)[:120]}-{digest}"


def legacy_partition_folders(data_dir: Path, key: str) -> list[Path]:
    """Folders written for ``key`` under the old, non-injective naming that are still there: their
    data is not read (it may belong to another key); the partition must be materialized again."""
    folders = layout(Path(data_dir))
    name = legacy_safe_name(key)
    return [p for p in (folders["parsed"] / name, folders["cleaned"] / name) if (p / LATEST).exists()]


def portable_path(path: str | os.PathLike, data_dir: Path) -> str:
    """``path`` relative to ``data_dir`` when it lies below it (records that must survive the data
    directory moving), else unchanged (a hub id, or a folder elsewhere). ``resolve_portable_path``
    turns it back."""
    try:
        return Path(path).resolve().relative_to(Path(data_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_portable_path(value: str, data_dir: Path) -> str:
    """The inverse of ``portable_path``: a relative path that exists below ``data_dir`` becomes
    absolute; anything else (absolute paths, hub ids) is returned unchanged."""
    if value and not Path(value).is_absolute() and (Path(data_dir) / value).exists():
        return str(Path(data_dir) / value)
    return value


def partition_artifacts(data_dir: Path, key: str) -> list[Path]:
    """Everything the per-file assets wrote for one log_files partition (parsed and cleaned
    versions, the quarantine, a downloaded landing copy) that exists now."""
    folders = layout(Path(data_dir))
    name = safe_name(key)
    candidates = [
        folders["parsed"] / name,
        folders["cleaned"] / name,
        folders["quarantine"] / f"{name}.parquet",
        folders["landing_cache"] / key,
    ]
    return [path for path in candidates if path.exists()]


def content_version(*parts: Any) -> str:
    """A short, stable content hash of the given parts (strings, bytes, or JSON-able values)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            data = part
        elif isinstance(part, str):
            data = part.encode("utf-8")
        else:
            data = json.dumps(part, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:16]


def stream_sha256(stream: BinaryIO, chunk: int = 1 << 20) -> str:
    """sha256 of everything left in a binary file object (local or fsspec), read in chunks."""
    digest = hashlib.sha256()
    while block := stream.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f, chunk)


def hash_values(values: Iterable[Any]) -> str:
    """Order-sensitive hash of a column of scalars (ids, int hashes)."""
    digest = hashlib.sha256()
    for value in values:
        digest.update(str(value).encode("utf-8"))
        digest.update(b"\x1f")
    return digest.hexdigest()[:16]


def _atomic_target(path: Path) -> tuple[Path, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    return Path(tmp), path


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename), so readers never see half a file."""
    tmp, target = _atomic_target(Path(path))
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_text(text: str, path: str | os.PathLike) -> Path:
    tmp, target = _atomic_target(Path(path))
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_latest(folder: str | os.PathLike, version: str, **extra: Any) -> Path:
    """Point ``folder/latest.json`` at ``version`` (with any extra fields, e.g. file paths)."""
    pointer = {"version": version, "written_at": datetime.now(UTC).isoformat(), **extra}
    return write_text(json.dumps(pointer, indent=2, default=str) + "\n", Path(folder) / LATEST)


def read_latest(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / LATEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def layout(data_dir: Path) -> dict[str, Path]:
    """The folders below the data directory (README, "Data contracts")."""
    return {
        "raw": data_dir / "raw",
        # Local copies of log files that landed on object storage, while they are parsed.
        "landing_cache": data_dir / "landing_cache",
        "parsed": data_dir / "parsed",
        "quarantine": data_dir / "quarantine",
        "cleaned": data_dir / "cleaned",
        "curated": data_dir / "curated",
        "splits": data_dir / "splits",
        "preferences": data_dir / "preferences",
        "models": data_dir / "models",
        "reports": data_dir / "reports",
        # Base models converted or built once and reused by every run (keyed by their source hash).
        "base_models": data_dir / "base_models",
    }
