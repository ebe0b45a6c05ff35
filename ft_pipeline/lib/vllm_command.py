"""vLLM for scale: the ``vllm serve`` command and a Kubernetes Deployment + Service that serve the
registry's production and staging LoRA adapters on one base model.

``ft-pipeline serve`` (one process, transformers) is the reference server. A GPU cluster that
must serve many requests (or many adapters on one base) runs vLLM instead; this module writes
what it runs, from the registry, so what vLLM loads is what the gate promoted::

    plan = plan_vllm(ModelRegistry.for_data_dir(data_dir), "ft-pipeline-assistant", data_dir)
    print(plan.shell())                         # vllm serve <base> --enable-lora --lora-modules ...
    print(render_manifests(plan.in_pod(data_dir)))   # Deployment + Service YAML

* The served names follow ``ft-pipeline serve``: ``<name>`` is the production adapter and
  ``<name>@staging`` the staging one (when the alias is set); the base answers as ``<name>@base``.
* An adapter loads from the registry's published copy when the version was published
  (``tags["published_uri"]``, written by ``promoted_model``), else from its run folder. vLLM
  loads LoRA adapters from local folders (or hub ids) only, so a published copy in object storage
  (``s3://``, ``gs://``, ...) is fetched into a local folder first (the manifest's init container
  runs ``python -m ft_pipeline.lib.vllm_command fetch <uri> <folder>``, which checks every file
  against the publication's ``MANIFEST.json``); a ``file://`` copy is read in place.
* The base must be a Hugging Face model folder (``config.json`` + weights) or a hub id: vLLM does
  not read PEFT or Dagster records. The bases the pipeline trains on are local HF folders
  (``data/base_models/...``, recorded relative to the data directory), which is what is passed.
* ``--max-lora-rank`` is the largest ``r`` of the adapters' ``adapter_config.json``, rounded up
  to a rank vLLM accepts; ``--max-loras`` lets every served adapter share a batch.
* ``--tokenizer`` is the production run's tokenizer (the chat template it was trained and
  evaluated with) and ``--generation-config vllm`` keeps the base's sampling defaults out, so
  greedy requests decode as the evaluation did.
* vLLM reads its adapters at start: after a promotion or rollback, render and apply again (the
  Deployment rolls over without dropping traffic) -- unlike ``ft-pipeline serve``, it does not
  follow the alias by itself.

Pure Python: no vLLM, torch or Kubernetes import here.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the CLI builds its parser from this module, and stays fast
    from ft_pipeline.lib.registry import ModelRegistry, ModelVersion

__all__ = [
    "DEFAULT_VLLM_IMAGE",
    "VLLM_LORA_RANKS",
    "VllmAdapter",
    "VllmPlan",
    "VllmSettings",
    "adapter_rank",
    "add_vllm_arguments",
    "fetch_published",
    "plan_vllm",
    "render_manifests",
    "run_vllm_engine",
    "vllm_available",
    "vllm_manifests",
]

#: Ranks vLLM's ``--max-lora-rank`` accepts (its LoRA config validates against this list).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
#: The official vLLM OpenAI-server image. Pin a tag you tested in production.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:latest"
#: Where the pod mounts the data volume (the same path as the run workers and trainer pods).
POD_DATA_DIR = "/data"
#: Where the init container puts adapters fetched from object storage.
POD_FETCH_DIR = "/adapters"
_LOCAL_SCHEMES = ("file://",)


@dataclass(frozen=True)
class VllmSettings:
    """How vLLM is started and deployed. Every default is the documented one."""

    host: str = "127.0.0.1"
    """Address vLLM listens on (the manifest uses 0.0.0.0 inside the pod)."""
    port: int = 8000
    """Port of vLLM's OpenAI-compatible server (the Service's port too)."""
    aliases: tuple[str, ...] = ("production", "staging")
    """Registry aliases served as adapters; an unset alias other than production is skipped."""
    max_model_len: int = 0
    """``--max-model-len``; 0 = the base's own context length."""
    gpu_memory_utilization: float = 0.9
    """Share of the GPU's memory vLLM may take (``--gpu-memory-utilization``, vLLM's default)."""
    fetch_dir: str = ""
    """Local folder for adapters published to object storage (fetched with ``fetch``); empty =
    ``<data dir>/vllm_adapters``."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if "production" not in self.aliases:
            raise ValueError("aliases must include 'production' (what <name> answers with)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len < 0:
            raise ValueError(f"max_model_len must be >= 0, got {self.max_model_len}")


@dataclass(frozen=True)
class VllmAdapter:
    """One LoRA adapter vLLM serves."""

    served_name: str
    """The ``model`` clients send: ``<name>`` (production) or ``<name>@<alias>``."""
    alias: str
    version: int
    path: str
    """The local folder vLLM reads."""
    source: str
    """Where it comes from: the published URI's adapter folder, or the run's adapter folder."""
    rank: int
    fetch_uri: str | None = None
    """A published folder in object storage that must be fetched into ``path``'s parent first."""


@dataclass(frozen=True)
class VllmPlan:
    """What vLLM runs: one base, the adapters, the tokenizer, and the server settings."""

    model_name: str
    base_model: str
    """The base's name in the registry (a hub id, or the built-in tiny base's name)."""
    base_path: str
    """The HF model folder (or hub id) vLLM loads."""
    tokenizer_path: str | None
    adapters: tuple[VllmAdapter, ...]
    settings: VllmSettings

    @property
    def max_lora_rank(self) -> int:
        """The smallest rank vLLM accepts that holds every adapter's rank."""
        largest = max(a.rank for a in self.adapters)
        for rank in VLLM_LORA_RANKS:
            if rank >= largest:
                return rank
        raise ValueError(f"LoRA rank {largest} is above the largest rank vLLM serves ({VLLM_LORA_RANKS[-1]})")

    def command(self, *, host: str | None = None) -> list[str]:
        """``vllm serve ...`` as an argument list."""
        s = self.settings
        args = [
            "vllm",
            "serve",
            self.base_path,
            "--served-model-name",
            f"{self.model_name}@base",
            "--host",
            host or s.host,
            "--port",
            str(s.port),
            "--enable-lora",
            "--lora-modules",
            *(f"{a.served_name}={a.path}" for a in self.adapters),
            "--max-loras",
            str(len(self.adapters)),
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--generation-config",
            "vllm",
            "--gpu-memory-utilization",
            str(s.gpu_memory_utilization),
        ]
        if self.tokenizer_path:
            args += ["--tokenizer", self.tokenizer_path]
        if s.max_model_len:
            args += ["--max-model-len", str(s.max_model_len)]
        return args

    def shell(self) -> str:
        """The command as one paste-able shell line, preceded by the fetch commands it needs."""
        fetches = [
            shlex.join([sys.executable, "-m", "ft_pipeline.lib.vllm_command", "fetch", a.fetch_uri, _fetch_root(a)])
            for a in self.adapters
            if a.fetch_uri
        ]
        return " && ".join([*dict.fromkeys(fetches), shlex.join(self.command())])

    def in_pod(self, data_dir: Path, *, pod_data_dir: str = POD_DATA_DIR) -> VllmPlan:
        """The same plan with paths as the vLLM pod sees them: folders below ``data_dir`` under
        ``pod_data_dir`` (the shared volume), fetched adapters under ``/adapters``.

        Raises:
            ValueError: a local folder the plan needs is outside ``data_dir``, so no pod sees it.
        """

        def moved(path: str, what: str) -> str:
            if not Path(path).is_absolute():
                return path  # a hub id
            try:
                rel = Path(path).resolve().relative_to(Path(data_dir).resolve())
            except ValueError:
                raise ValueError(
                    f"the {what} {path} is outside the data directory {data_dir}: the vLLM pod mounts only the data "
                    "volume; publish the model (FT_PIPELINE_PUBLISH_URL) or keep it under the data directory"
                ) from None
            return f"{pod_data_dir.rstrip('/')}/{rel.as_posix()}"

        # Fetched folders: the local fetch root of each version -> the pod's emptyDir.
        fetched = {
            _fetch_root(a): f"{POD_FETCH_DIR}/{self.model_name}/v{a.version}" for a in self.adapters if a.fetch_uri
        }

        def placed(path: str, what: str) -> str:
            for local, pod in fetched.items():
                if Path(path).parent == Path(local):
                    return f"{pod}/{Path(path).name}"
            return moved(path, what)

        return replace(
            self,
            base_path=moved(self.base_path, "base model"),
            tokenizer_path=placed(self.tokenizer_path, "tokenizer") if self.tokenizer_path else None,
            adapters=tuple(replace(a, path=placed(a.path, f"adapter of v{a.version}")) for a in self.adapters),
        )


def _fetch_root(adapter: VllmAdapter) -> str:
    return str(Path(adapter.path).parent)


def adapter_rank(adapter_dir: str | Path) -> int:
    """The LoRA rank of a PEFT adapter folder: ``r`` of its ``adapter_config.json``, or the largest
    rank in its ``rank_pattern`` when that is larger."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a PEFT adapter folder")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA" or "r" not in config:
        raise ValueError(f"{path} is not a LoRA adapter config (peft_type {config.get('peft_type')!r})")
    ranks = [int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def _is_local_uri(uri: str) -> bool:
    return "://" not in uri or uri.startswith(_LOCAL_SCHEMES)


def _local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _adapter_for(version: ModelVersion, alias: str, model_name: str, fetch_dir: Path) -> VllmAdapter:
    if version.backend != "local_lora" or not version.artifact_path:
        raise ValueError(
            f"{model_name} v{version.version} ({alias}) is a {version.backend} model without a LoRA adapter: vLLM "
            "serves local LoRA adapters only (hosted models are served by their provider; use ft-pipeline serve)"
        )
    served = model_name if alias == "production" else f"{model_name}@{alias}"
    adapter_name = Path(version.artifact_path).name  # "adapter": the run folder's layout, kept when published
    published = (version.tags or {}).get("published_uri")
    if published and _is_local_uri(published):
        path = str(Path(_local_path(published)) / adapter_name)
        source, fetch_uri = path, None
    elif published:
        path = str(fetch_dir / model_name / f"v{version.version}" / adapter_name)
        source, fetch_uri = f"{published.rstrip('/')}/{adapter_name}", published
    else:
        path = source = version.artifact_path
        fetch_uri = None
    # The rank is read where the files are on this machine: the published folder when local, else
    # the run folder (the published copy is a byte-for-byte copy of it, checked by its manifest).
    readable = path if fetch_uri is None and Path(path).is_dir() else version.artifact_path
    return VllmAdapter(served, alias, version.version, path, source, adapter_rank(readable), fetch_uri)


def plan_vllm(
    registry: ModelRegistry, model_name: str, data_dir: Path, settings: VllmSettings = VllmSettings()
) -> VllmPlan:
    """The vLLM plan for ``model_name``'s production adapter (and the other ``settings.aliases``
    that are set) on their common base.

    Raises:
        LookupError: the model has no production version.
        ValueError: a served version is not a local LoRA adapter, the versions were trained on
            different bases (one vLLM serves adapters of one base), or the base is a local folder
            that is not a Hugging Face model folder.
    """
    from ft_pipeline.lib.storage import resolve_portable_path

    data_dir = Path(data_dir)
    fetch_dir = Path(settings.fetch_dir) if settings.fetch_dir else data_dir / "vllm_adapters"
    versions: list[tuple[str, ModelVersion]] = []
    for alias in settings.aliases:
        version = registry.resolve(model_name, alias)
        if version is None and alias == "production":
            raise LookupError(f"{model_name} has no production version: promote one before serving it with vLLM")
        if version is not None:
            versions.append((alias, version))
    adapters = tuple(_adapter_for(v, alias, model_name, fetch_dir) for alias, v in versions)

    bases = {
        resolve_portable_path(str((v.tags or {}).get("base_model_path") or v.base_model), data_dir) for _, v in versions
    }
    if len(bases) != 1:
        raise ValueError(
            f"the served versions of {model_name} were trained on different bases ({sorted(bases)}); one vLLM "
            "server serves adapters of one base: serve the aliases separately (--alias)"
        )
    base_path = bases.pop()
    if Path(base_path).is_absolute() and not (Path(base_path) / "config.json").is_file():
        raise ValueError(
            f"the base {base_path} is not a Hugging Face model folder (no config.json); vLLM cannot load it"
        )

    production = versions[0][1]
    tokenizer = _tokenizer_of(production, adapters[0], data_dir)
    return VllmPlan(model_name, production.base_model, base_path, tokenizer, adapters, settings)


def _tokenizer_of(version: ModelVersion, adapter: VllmAdapter, data_dir: Path) -> str | None:
    """The production run's tokenizer folder (its chat template), beside the adapter in the layout
    the model is loaded from; None when the run recorded none (the base's is then used)."""
    from ft_pipeline.lib.storage import resolve_portable_path

    recorded = (version.tags or {}).get("tokenizer_dir")
    if not recorded:
        return None
    name = Path(recorded).name
    if adapter.fetch_uri or adapter.path != version.artifact_path:  # published: the same layout
        return str(Path(adapter.path).parent / name)
    return resolve_portable_path(str(recorded), data_dir)


# ------------------------------------------------------------------------------------ Kubernetes


def vllm_manifests(
    plan: VllmPlan,
    *,
    image: str = DEFAULT_VLLM_IMAGE,
    fetch_image: str = "IMAGE",
    namespace: str = "ft-pipeline",
    name: str = "ft-pipeline-vllm",
    data_claim: str = "ft-pipeline-data",
    gpus: int = 1,
) -> list[dict[str, Any]]:
    """A Deployment (one vLLM pod on a GPU node, the data volume read-only at ``/data``) and a
    ClusterIP Service for ``plan`` (paths as the pod sees them: pass ``plan.in_pod(data_dir)``).

    Adapters published to object storage are fetched by an init container running the project
    image (``fetch_image``; its credentials come from the ``ft-pipeline-secrets`` Secret, as in the
    run workers) into an ``emptyDir`` at ``/adapters``.
    """
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "ft-pipeline"}
    mounts: list[dict[str, Any]] = [
        {"name": "data", "mountPath": POD_DATA_DIR, "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": data_claim, "readOnly": True}},
        # vLLM's workers share tensors through /dev/shm; the container default (64 MiB) is too small.
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
    ]
    init_containers = []
    fetched = {a.fetch_uri: str(Path(a.path).parent) for a in plan.adapters if a.fetch_uri}
    if fetched:
        mounts.append({"name": "adapters", "mountPath": POD_FETCH_DIR, "readOnly": True})
        volumes.append({"name": "adapters", "emptyDir": {}})
        for k, (uri, folder) in enumerate(fetched.items()):
            init_containers.append(
                {
                    "name": f"fetch-adapter-{k}",
                    "image": fetch_image,
                    "command": ["python", "-m", "ft_pipeline.lib.vllm_command", "fetch", uri, folder],
                    "envFrom": [{"secretRef": {"name": "ft-pipeline-secrets", "optional": True}}],
                    "volumeMounts": [{"name": "adapters", "mountPath": POD_FETCH_DIR}],
                }
            )
    env = [{"name": "HF_HOME", "value": f"{POD_DATA_DIR}/hf_cache"}]
    if Path(plan.base_path).is_absolute():
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})  # everything is on the volume: never download
    container = {
        "name": "vllm",
        "image": image,
        "command": plan.command(host="0.0.0.0"),
        "ports": [{"name": "http", "containerPort": plan.settings.port}],
        "env": env,
        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
        "volumeMounts": mounts,
        # Loading the base and compiling CUDA graphs takes minutes: no traffic and no restarts before that.
        "startupProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 60,
        },
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 30},
    }
    pod_spec: dict[str, Any] = {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    versions = ",".join(f"{a.alias}=v{a.version}" for a in plan.adapters)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": {"ft-pipeline/model": plan.model_name, "ft-pipeline/versions": versions},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            # A new pod must be ready before the old one goes: the GPU node needs room for both, or
            # set maxSurge 0 / maxUnavailable 1 and accept a gap.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "http", "port": plan.settings.port, "targetPort": "http"}],
        },
    }
    return [deployment, service]


def render_manifests(manifests: Sequence[dict[str, Any]], header: str = "") -> str:
    """The manifests as one multi-document YAML (``kubectl apply -f -``)."""
    import yaml

    body = "---\n".join(yaml.safe_dump(m, sort_keys=False, width=120) for m in manifests)
    lines = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return lines + body


# -------------------------------------------------------------------------------------------- CLI


def add_vllm_arguments(parser: Any) -> None:
    """``--engine`` (unless the parser has it already), ``--print-command``, ``--print-manifest``
    and the images, for ``ft-pipeline serve`` (an ``argparse`` parser)."""
    if "--engine" not in parser._option_string_actions:
        parser.add_argument(
            "--engine",
            choices=("transformers", "vllm"),
            default="transformers",
            help="transformers: this process answers (default); vllm: vLLM on a GPU serves the production and "
            "staging adapters (needs the vllm package; see --print-command / --print-manifest)",
        )
    parser.add_argument(
        "--print-command",
        action="store_true",
        help="with --engine vllm: print the vllm serve command for the registry's adapters and exit",
    )
    parser.add_argument(
        "--print-manifest",
        action="store_true",
        help="with --engine vllm: print a Kubernetes Deployment + Service (YAML) for it and exit",
    )
    parser.add_argument("--vllm-image", default=DEFAULT_VLLM_IMAGE, help="the vLLM image of the manifest")
    parser.add_argument(
        "--fetch-image",
        default="IMAGE",
        help="the project image the manifest's init container fetches published adapters with",
    )


def vllm_available() -> bool:
    """The vllm package and its ``vllm`` command are installed here."""
    import importlib.util
    import shutil

    return importlib.util.find_spec("vllm") is not None and shutil.which("vllm") is not None


def run_vllm_engine(
    registry: ModelRegistry,
    model_name: str,
    data_dir: Path,
    settings: VllmSettings = VllmSettings(),
    *,
    print_command: bool = False,
    print_manifest: bool = False,
    image: str = DEFAULT_VLLM_IMAGE,
    fetch_image: str = "IMAGE",
    out: Any = None,
    err: Any = None,
) -> int:
    """``ft-pipeline serve --engine vllm``: print the command or the manifest, or (where vLLM is
    installed) fetch what must be fetched and replace this process with vLLM. Returns the exit
    status; never starts anything on a machine without vLLM."""
    import os

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        plan = plan_vllm(registry, model_name, data_dir, settings)
        if print_manifest:
            versions = ", ".join(f"{a.alias} v{a.version}" for a in plan.adapters)
            header = f"vLLM serving {model_name} ({versions}); render again after a promotion or rollback."
            print(
                render_manifests(vllm_manifests(plan.in_pod(data_dir), image=image, fetch_image=fetch_image), header),
                end="",
                file=out,
            )
            return 0
    except (LookupError, ValueError, OSError) as error:
        print(f"error: {error}", file=err)
        return 1
    if print_command:
        print(plan.shell(), file=out)
        return 0
    if not vllm_available():
        print(
            "error: --engine vllm needs the vllm package and a CUDA GPU, and vllm is not installed here; "
            "print the command to run on a GPU machine (--print-command) or a Kubernetes manifest "
            "(--print-manifest), or serve here with --engine transformers",
            file=err,
        )
        return 2
    for adapter in plan.adapters:
        if adapter.fetch_uri:
            fetch_published(adapter.fetch_uri, _fetch_root(adapter))
    os.execvp("vllm", plan.command())  # pragma: no cover - replaces the process


# ------------------------------------------------------------------------------------------ fetch


def fetch_published(uri: str, dest: str | Path) -> Path:
    """Copy a published model folder (``publish_model_dir``'s layout) to the local ``dest``, after
    checking every file against its ``MANIFEST.json``.

    Raises:
        RuntimeError: the publication is incomplete or a file differs from the manifest.
    """
    import fsspec

    from ft_pipeline.lib.publish import MANIFEST, verify_published

    problems = verify_published(uri)
    if problems:
        raise RuntimeError(f"{uri} is not a complete publication: " + "; ".join(problems[:5]))
    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    with fs.open(f"{root}/{MANIFEST}", "r") as f:
        files = [entry["path"] for entry in json.load(f)["files"]]
    dest = Path(dest)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{rel}", str(target))
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ft_pipeline.lib.vllm_command``:

    * ``command`` / ``manifest``: what ``ft-pipeline serve --engine vllm --print-command`` /
      ``--print-manifest`` print, from the registry of ``--data-dir`` (default: the pipeline's);
    * ``fetch <uri> <dest>``: copy a published model folder, checked against its manifest (the
      manifest's init container runs this).
    """
    import argparse

    from ft_pipeline.lib.registry import ModelRegistry
    from ft_pipeline.lib.storage import resolve_data_dir

    parser = argparse.ArgumentParser(prog="python -m ft_pipeline.lib.vllm_command")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("command", "the vllm serve command"), ("manifest", "a Kubernetes Deployment + Service")):
        p = sub.add_parser(name, help=f"print {what} for the registry's production and staging adapters")
        p.add_argument("--data-dir", default=None, help="the data directory (default: $FT_PIPELINE_DATA_DIR or data/)")
        p.add_argument(
            "--registry-url",
            default=None,
            help="the registry (default: $FT_PIPELINE_REGISTRY_URL, else the data dir's)",
        )
        p.add_argument("--model-name", default="ft-pipeline-assistant")
        p.add_argument("--port", type=int, default=VllmSettings.port)
        if name == "manifest":
            p.add_argument("--vllm-image", default=DEFAULT_VLLM_IMAGE)
            p.add_argument("--fetch-image", default="IMAGE")
    fetch = sub.add_parser(
        "fetch", help="copy a published model folder to a local folder, checked against its manifest"
    )
    fetch.add_argument("uri")
    fetch.add_argument("dest")
    args = parser.parse_args(argv)
    if args.command in ("command", "manifest"):
        import os

        data_dir = resolve_data_dir(args.data_dir).resolve()
        url = args.registry_url or os.environ.get("FT_PIPELINE_REGISTRY_URL")
        if not url and not (data_dir / "registry.db").is_file():
            print(f"error: no registry at {data_dir / 'registry.db'}", file=sys.stderr)
            return 1
        with ModelRegistry(url) if url else ModelRegistry.for_data_dir(data_dir) as registry:
            return run_vllm_engine(
                registry,
                args.model_name,
                data_dir,
                VllmSettings(port=args.port),
                print_command=args.command == "command",
                print_manifest=args.command == "manifest",
                image=getattr(args, "vllm_image", DEFAULT_VLLM_IMAGE),
                fetch_image=getattr(args, "fetch_image", "IMAGE"),
            )
    try:
        dest = fetch_published(args.uri, args.dest)
    except (RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"fetched {args.uri} to {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
