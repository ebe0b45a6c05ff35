"""Which landed log files are ready to ingest: new or changed, and no longer being written.

The new-log-files sensor keeps a small state between ticks (its cursor). A file is ready when its
size and modification time are the same on two consecutive looks (a file still being copied
changes between looks) and its content hash differs from the one last ingested (a file touched
without a change gives no second run).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ft_pipeline.lib.records import is_log_file
from ft_pipeline.lib.storage import file_sha256, stream_sha256


@dataclass
class LandingState:
    """Cursor of the new-log-files sensor: per file, the last seen stat and the ingested content hash."""

    pending: dict[str, str] = field(default_factory=dict)
    """name -> "size:mtime_ns" seen on the previous look, not yet ingested."""
    ingested: dict[str, str] = field(default_factory=dict)
    """name -> "size:mtime_ns|sha256" of the version that was handed to a run."""

    def to_json(self) -> str:
        return json.dumps({"pending": self.pending, "ingested": self.ingested}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> LandingState:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(pending=dict(data.get("pending", {})), ingested=dict(data.get("ingested", {})))


@dataclass(frozen=True)
class ReadyFile:
    name: str
    sha256: str
    changed: bool
    """True when a file of this name was ingested before with other content."""


def scan_landing(
    stats: Mapping[str, tuple[int, object]], state: LandingState, content_hash: Callable[[str], str]
) -> tuple[list[ReadyFile], LandingState]:
    """Decide which files to ingest now. ``stats``: name -> (size, change stamp) of the files
    present; the stamp is the modification time (or, on object storage, what the store offers:
    last-modified, etag)."""
    ready: list[ReadyFile] = []
    pending: dict[str, str] = {}
    ingested = {name: value for name, value in state.ingested.items() if name in stats}
    for name in sorted(stats):
        size, mtime = stats[name]
        stamp = f"{size}:{mtime}"
        previous = ingested.get(name)
        if previous is not None and previous.split("|")[0] == stamp:
            continue  # unchanged since it was ingested
        if state.pending.get(name) != stamp:
            pending[name] = stamp  # new or still changing: look again next tick
            continue
        sha = content_hash(name)
        if previous is not None and previous.split("|")[1] == sha:
            ingested[name] = f"{stamp}|{sha}"  # touched, same content: remember the new stamp only
            continue
        ready.append(ReadyFile(name, sha, changed=previous is not None))
        ingested[name] = f"{stamp}|{sha}"
    return ready, LandingState(pending=pending, ingested=ingested)


def _visible(name: str) -> bool:
    """A log file by suffix, and no hidden part (editors' and uploaders' temporary files)."""
    return is_log_file(name) and not any(part.startswith(".") for part in name.split("/"))


def is_url(location: str) -> bool:
    return "://" in location


# fsspec info keys that change when an object is rewritten, in order of preference. Local files
# have mtime; S3 LastModified and ETag; GCS updated and md5Hash; the memory store created.
_CHANGE_KEYS = ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag", "md5Hash", "created")


class LandingFolder:
    """Where raw log files land: a local folder, or any fsspec URL (``s3://bucket/prefix``,
    ``gs://…``, ``abfs://…``, ``file:///…``; the protocol's package, e.g. ``s3fs``, must be
    installed). Names are paths relative to the root with ``/`` separators."""

    def __init__(self, location: str | os.PathLike):
        location = str(location)
        self.location = location
        self.remote = is_url(location)
        if self.remote:
            import fsspec

            self._fs, root = fsspec.core.url_to_fs(location)
            self._root = root.rstrip("/")
        else:
            self._fs = None
            self._root = str(Path(location).resolve())

    def __repr__(self) -> str:
        return f"LandingFolder({self.location!r})"

    def describe(self) -> str:
        """The URL, or the absolute path of a local folder: for messages."""
        return self.location if self.remote else self._root

    def _remote_path(self, name: str) -> str:
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
            raise ValueError(f"log file {name!r} is outside the landing folder {self.location}")
        return f"{self._root}/{name}"

    def local_path(self, name: str) -> Path:
        """The file itself (local folders only)."""
        root = Path(self._root)
        path = (root / name).resolve()
        if root not in path.parents:
            raise ValueError(f"log file {name!r} is outside the landing folder {self.location}")
        return path

    def stats(self) -> dict[str, tuple[int, object]]:
        """name -> (size, change stamp) of every log file present now."""
        out: dict[str, tuple[int, object]] = {}
        if not self.remote:
            root = Path(self._root)
            if not root.exists():
                return out
            for path in root.rglob("*"):
                rel = path.relative_to(root).as_posix()
                if path.is_file() and _visible(rel):
                    stat = path.stat()
                    out[rel] = (stat.st_size, stat.st_mtime_ns)
            return out
        if not self._fs.exists(self._root):
            return out
        for path, info in self._fs.find(self._root, detail=True).items():
            if info.get("type") == "directory":
                continue
            rel = path[len(self._root) :].lstrip("/") if path.startswith(self._root) else PurePosixPath(path).name
            if not _visible(rel):
                continue
            stamp = next((str(info[key]) for key in _CHANGE_KEYS if info.get(key) is not None), "")
            out[rel] = (int(info.get("size") or 0), stamp)
        return out

    def list_files(self) -> list[str]:
        """Names of the log files present now, sorted."""
        return sorted(self.stats())

    def exists(self, name: str) -> bool:
        if not self.remote:
            return self.local_path(name).is_file()
        return self._fs.isfile(self._remote_path(name))

    def sha256(self, name: str) -> str:
        if not self.remote:
            return file_sha256(self.local_path(name))
        with self._fs.open(self._remote_path(name), "rb") as f:
            return stream_sha256(f)

    def fetch(self, name: str, cache_dir: str | os.PathLike) -> Path:
        """A local path with the file's content: the file itself for a local folder; for object
        storage a copy downloaded into ``cache_dir`` (whole, then renamed, so a reader never sees a
        partial download)."""
        if not self.remote:
            return self.local_path(name)
        self._remote_path(name)  # validates the name
        target = Path(cache_dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        with self._fs.open(self._remote_path(name), "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        os.replace(partial, target)
        return target
