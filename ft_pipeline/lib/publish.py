"""Publishing a trained model's files to object storage (any fsspec URL: ``s3://bucket/models``,
``gs://…``, ``file:///…``), so serving and other clusters load the promoted model from there
instead of from the training machine's disk.

Layout: ``<url>/<model_name>/v<version>/`` holds the run folder without its checkpoints (adapter,
tokenizer, model card, metrics, model.json and, for the built-in tiny base, the base itself) and a
``MANIFEST.json`` with every file's size and sha256. The manifest is written last: a folder
without one is an interrupted upload, and publishing again completes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ft_pipeline.lib.storage import file_sha256, stream_sha256

MANIFEST = "MANIFEST.json"
# Resumable-training state: large, and of no use to anyone loading the model.
EXCLUDED_DIRS = frozenset({"checkpoints"})


@dataclass(frozen=True)
class PublishedModel:
    uri: str
    files: int
    bytes: int
    manifest_sha256: str


def _files_to_publish(run_dir: Path) -> list[Path]:
    files = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if path.is_file() and rel.parts[0] not in EXCLUDED_DIRS and not rel.name.startswith("."):
            files.append(path)
    return files


def published_uri(base_url: str, model_name: str, version: int) -> str:
    return f"{base_url.rstrip('/')}/{model_name}/v{version}"


def publish_model_dir(run_dir: str | os.PathLike, base_url: str, model_name: str, version: int) -> PublishedModel:
    """Upload ``run_dir`` (one training run's folder) to ``<base_url>/<model_name>/v<version>/``.

    Publishing the same version again overwrites its files; the manifest goes up last."""
    import fsspec

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"model folder {run_dir} does not exist; nothing to publish")
    uri = published_uri(base_url, model_name, version)
    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    entries = []
    total = 0
    for path in _files_to_publish(run_dir):
        rel = path.relative_to(run_dir).as_posix()
        size = path.stat().st_size
        entries.append({"path": rel, "bytes": size, "sha256": file_sha256(path)})
        total += size
        target = f"{root}/{rel}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)
    manifest = json.dumps({"model_name": model_name, "version": version, "files": entries}, indent=2, sort_keys=True)
    with fs.open(f"{root}/{MANIFEST}", "w") as f:
        f.write(manifest)
    return PublishedModel(
        uri=uri, files=len(entries), bytes=total, manifest_sha256=hashlib.sha256(manifest.encode()).hexdigest()
    )


def verify_published(uri: str) -> list[str]:
    """Problems with a published folder (missing manifest, missing or changed files); empty = intact."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/{MANIFEST}"):
        return [f"{uri}: no {MANIFEST} (upload incomplete)"]
    with fs.open(f"{root}/{MANIFEST}", "r") as f:
        manifest = json.load(f)
    problems = []
    for entry in manifest["files"]:
        path = f"{root}/{entry['path']}"
        if not fs.exists(path):
            problems.append(f"{entry['path']}: missing")
            continue
        with fs.open(path, "rb") as f:
            actual = stream_sha256(f)
        if actual != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the manifest")
    return problems
