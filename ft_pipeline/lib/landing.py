"""Which landed log files are ready to ingest: new or changed, and no longer being written.

The new-log-files sensor keeps a small state between ticks (its cursor). A file is ready when its
size and modification time are the same on two consecutive looks (a file still being copied
changes between looks) and its content hash differs from the one last ingested (a file touched
without a change gives no second run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Mapping


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
    def from_json(cls, text: str | None) -> "LandingState":
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
    stats: Mapping[str, tuple[int, int]], state: LandingState, content_hash: Callable[[str], str]
) -> tuple[list[ReadyFile], LandingState]:
    """Decide which files to ingest now. ``stats``: name -> (size, mtime_ns) of the files present."""
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
