"""Trainer checkpoints of a run folder: which are complete, the newest resume point, and the
leftovers of a crash after it."""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import zipfile
from pathlib import Path

__all__ = ["checkpoint_step", "drop_incomplete_checkpoints_after", "newest_complete_checkpoint"]

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int:
    """The optimizer step of a ``checkpoint-<step>`` folder."""
    match = _CHECKPOINT_RE.match(path.name)
    if match is None:
        raise ValueError(f"{path.name!r} is not a checkpoint-<step> folder")
    return int(match.group(1))


def _safetensors_complete(path: Path) -> bool:
    """True when the file's header parses and the file is as long as the header says."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return False
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return size >= 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _torch_zip_complete(path: Path) -> bool:
    """True for a readable torch.save zip archive (a truncated one has no central directory)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return len(zf.namelist()) > 0
    except (OSError, zipfile.BadZipFile):
        return False


def _checkpoint_is_complete(path: Path, step: int) -> bool:
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict) or state.get("global_step") != step:
        return False
    adapter_ok = _safetensors_complete(path / "adapter_model.safetensors") or (path / "adapter_model.bin").is_file()
    if not adapter_ok or not (path / "adapter_config.json").is_file():
        return False
    # Trainer only restores the optimizer when the scheduler file is present too; without both a
    # "resume" silently restarts the optimizer from scratch.
    return _torch_zip_complete(path / "optimizer.pt") and _torch_zip_complete(path / "scheduler.pt")


def newest_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step that is complete, or None.

    Complete means: ``trainer_state.json`` parses and names the folder's step, the adapter weights
    are whole (safetensors header and length check) with their ``adapter_config.json``, and
    ``optimizer.pt`` and ``scheduler.pt`` are readable archives. A process killed while saving
    leaves a newer, truncated folder (trainer_state.json is written last); it is skipped.
    """
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return None
    candidates = []
    for child in checkpoints_dir.iterdir():
        m = _CHECKPOINT_RE.match(child.name)
        if m and child.is_dir():
            candidates.append((int(m.group(1)), child))
    for step, path in sorted(candidates, reverse=True):
        if _checkpoint_is_complete(path, step):
            return path
        logger.warning("skipping incomplete checkpoint %s", path)
    return None


def drop_incomplete_checkpoints_after(checkpoints_dir: Path, keep: Path | None) -> None:
    """Remove checkpoint folders newer than the resume point: they are unusable leftovers of a
    crash, and the resumed run would save into the same folder names anyway."""
    if not checkpoints_dir.is_dir():
        return
    keep_step = checkpoint_step(keep) if keep is not None else -1
    for child in checkpoints_dir.iterdir():
        m = _CHECKPOINT_RE.match(child.name)
        if m and child.is_dir() and int(m.group(1)) > keep_step:
            logger.warning("removing incomplete checkpoint %s", child)
            shutil.rmtree(child, ignore_errors=True)
