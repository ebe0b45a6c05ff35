"""The local LoRA trainer in its own Kubernetes pod on a GPU node, through Dagster Pipes.

``fine_tuned_model`` calls ``local_trainer.run(command=..., context=..., extras=...)``. Locally that
is a ``PipesSubprocessClient``; in production (``FT_PIPELINE_TRAINER=k8s``) it is
``GpuPodTrainer``: the same entry point (``python -m ft_pipeline.lib.training.pipes_entrypoint``)
runs in a pod that asks for a GPU, with the shared data volume mounted at the same path as in the
run worker, so the absolute paths in the extras (splits in, ``models/<run_key>`` out) mean the same
file on both sides. Logs and the result come back over Pipes (the pod's log stream), and
cancelling the Dagster run deletes the pod: the trainer gets SIGTERM and saves a checkpoint
within ``termination_grace_period_s``.

``dagster_k8s`` is imported only when a pod is launched, so the project loads without it.
"""

from __future__ import annotations

import json
import os
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import dagster as dg
from pydantic import Field

ENV_PREFIX = "FT_PIPELINE_K8S_"
GPU_TAINT_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
_PATH_EXTRAS = ("train_parquet", "validation_parquet", "output_dir")
_DATA_VOLUME = "data"
_SHM_VOLUME = "dshm"


class GpuPodTrainer(dg.ConfigurableResource, dg.PipesClient):
    """Runs the trainer command in a Kubernetes pod on a GPU node (``dagster_k8s.PipesK8sClient``)."""

    image: str = Field(
        default="",
        description="Trainer image (the project installed with a CUDA build of torch). Empty = the image of the code "
        "location that launched the run.",
    )
    namespace: str = Field(
        default="", description="Namespace of the trainer pod. Empty = the run worker's own namespace (else 'default')."
    )
    python: str = Field(
        default="python",
        description="Interpreter in the trainer image. Replaces the run worker's sys.executable at the head of the "
        "command, whose path need not exist in another image.",
    )
    gpu_count: int = Field(
        default=1, ge=0, description="GPUs per trainer pod (limit on gpu_resource); 0 = a CPU-only pod."
    )
    gpu_resource: str = Field(
        default="nvidia.com/gpu",
        description="Extended resource name of the GPU (nvidia.com/gpu with the NVIDIA device plugin).",
    )
    cpu_request: str = Field(default="4", description="CPU request of the trainer container.")
    memory_request: str = Field(default="32Gi", description="Memory request of the trainer container.")
    memory_limit: str = Field(default="32Gi", description="Memory limit of the trainer container (empty = none).")
    node_selector: dict[str, str] = Field(
        default={},
        description="Node labels the pod must match, e.g. {'nvidia.com/gpu.present': 'true'} (set by NVIDIA GPU "
        "feature discovery). The GPU limit alone already keeps it off nodes without GPUs.",
    )
    tolerations: list[dict[str, str]] = Field(
        default=[GPU_TAINT_TOLERATION],
        description="Pod tolerations (string values). The default tolerates the usual nvidia.com/gpu NoSchedule "
        "taint of GPU node pools.",
    )
    data_pvc: str = Field(
        default="ft-pipeline-data",
        description="PersistentVolumeClaim (ReadWriteMany) of the data directory, shared with the run workers.",
    )
    data_dir: str = Field(
        default="",
        description="Mount path of the data volume in the pod. Empty = $FT_PIPELINE_DATA_DIR of the run worker; it "
        "must be the same absolute path there and here.",
    )
    hf_home: str = Field(
        default="hf-cache",
        description="HF_HOME in the pod (the Hugging Face cache with the base models); a relative path is below the "
        "data directory.",
    )
    hf_offline: bool = Field(
        default=True,
        description="Set HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and TRANSFORMERS_OFFLINE: never download at training "
        "time.",
    )
    env: dict[str, str] = Field(default={}, description="Extra environment variables of the trainer container.")
    env_secrets: list[str] = Field(
        default=[], description="Secrets whose keys become environment variables of the trainer container (envFrom)."
    )
    service_account_name: str = Field(
        default="", description="Service account of the pod (empty = the namespace default)."
    )
    image_pull_policy: str = Field(default="IfNotPresent", description="imagePullPolicy of the trainer container.")
    shm_size: str = Field(
        default="8Gi",
        description="Size of the in-memory /dev/shm (PyTorch data loaders need more than the container default of "
        "64Mi).",
    )
    termination_grace_period_s: int = Field(
        default=120, ge=0, description="Seconds the trainer has to write a checkpoint after SIGTERM (run cancelled)."
    )
    pod_wait_timeout_s: float = Field(
        default=86400.0, gt=0, description="Fail the step if the pod has not finished after this many seconds."
    )
    delete_pod_on_completion: bool = Field(
        default=True, description="Delete the pod when it ends (keep it for debugging with false)."
    )

    # -- the pod -----------------------------------------------------------------------------

    def mount_path(self) -> str:
        path = self.data_dir or os.environ.get("FT_PIPELINE_DATA_DIR", "")
        if not path or not PurePosixPath(path).is_absolute():
            raise dg.Failure(
                description=(
                    "GpuPodTrainer needs the data directory as an absolute path (data_dir or $FT_PIPELINE_DATA_DIR, "
                    f"for example /data) to mount the shared volume at the same place; got {path!r}"
                )
            )
        return str(PurePosixPath(path))

    def pod_command(self, command: Sequence[str]) -> list[str]:
        command = list(command)
        if command and command[0] == sys.executable:
            command[0] = self.python
        return command

    def container_env(self) -> dict[str, str]:
        mount = self.mount_path()
        env = {"FT_PIPELINE_DATA_DIR": mount, "PYTHONUNBUFFERED": "1"}
        if self.hf_home:
            hf_home = PurePosixPath(self.hf_home)
            env["HF_HOME"] = str(hf_home if hf_home.is_absolute() else PurePosixPath(mount) / hf_home)
        if self.hf_offline:
            env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        env.update(self.env)
        return env

    def pod_spec(self, image: str, command: Sequence[str]) -> dict[str, Any]:
        """The PodSpec (camelCase, as in a manifest) given to ``PipesK8sClient`` as base_pod_spec."""
        mount = self.mount_path()
        requests = {"cpu": self.cpu_request, "memory": self.memory_request}
        limits: dict[str, str] = {}
        if self.memory_limit:
            limits["memory"] = self.memory_limit
        if self.gpu_count:
            # Extended resources are set as a limit; Kubernetes copies it to the request.
            limits[self.gpu_resource] = str(self.gpu_count)
        container: dict[str, Any] = {
            "name": "trainer",
            "image": image,
            "imagePullPolicy": self.image_pull_policy,
            "command": self.pod_command(command),
            "env": [{"name": k, "value": v} for k, v in self.container_env().items()],
            "resources": {"requests": {k: v for k, v in requests.items() if v}, "limits": limits},
            "volumeMounts": [
                {"name": _DATA_VOLUME, "mountPath": mount},
                {"name": _SHM_VOLUME, "mountPath": "/dev/shm"},
            ],
        }
        if self.env_secrets:
            container["envFrom"] = [{"secretRef": {"name": name}} for name in self.env_secrets]
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": self.termination_grace_period_s,
            "containers": [container],
            "volumes": [
                {"name": _DATA_VOLUME, "persistentVolumeClaim": {"claimName": self.data_pvc}},
                {"name": _SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": self.shm_size}},
            ],
            "tolerations": [dict(t) for t in self.tolerations],
        }
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        if self.service_account_name:
            spec["serviceAccountName"] = self.service_account_name
        return spec

    def pod_metadata(self) -> dict[str, Any]:
        return {"labels": {"app.kubernetes.io/name": "ft-pipeline-trainer", "app.kubernetes.io/part-of": "ft-pipeline"}}

    def resolve_image(self, context: dg.AssetExecutionContext) -> str:
        if self.image:
            return self.image
        origin = context.run.job_code_origin
        image = (origin.repository_origin.container_image if origin else None) or os.environ.get(
            "DAGSTER_CURRENT_IMAGE"
        )
        if not image:
            raise dg.Failure(
                description="GpuPodTrainer has no image: set FT_PIPELINE_K8S_IMAGE (or run from a code location that "
                "reports its image)"
            )
        return image

    def check_paths(self, extras: Mapping[str, Any]) -> None:
        """The extras name files by absolute path; they must lie on the shared volume."""
        mount = PurePosixPath(self.mount_path())
        outside = {
            k: extras[k]
            for k in _PATH_EXTRAS
            if extras.get(k) and not PurePosixPath(str(extras[k])).is_relative_to(mount)
        }
        if outside:
            raise dg.Failure(
                description=f"these trainer inputs/outputs are not below the shared data volume {mount}: {outside}"
            )

    # -- PipesClient --------------------------------------------------------------------------

    def run(  # type: ignore[override]
        self,
        *,
        context: dg.AssetExecutionContext,
        extras: Mapping[str, Any] | None = None,
        command: Sequence[str],
    ) -> dg.PipesClientCompletedInvocation:
        from dagster_k8s import PipesK8sClient

        extras = dict(extras or {})
        self.check_paths(extras)
        image = self.resolve_image(context)
        context.log.info(f"launching the trainer pod ({image}, {self.gpu_count} x {self.gpu_resource})")
        return PipesK8sClient().run(
            context=context,
            extras=extras,
            namespace=self.namespace or None,
            base_pod_meta=self.pod_metadata(),
            base_pod_spec=self.pod_spec(image, command),
            pod_wait_timeout=self.pod_wait_timeout_s,
            delete_pod_on_completion=self.delete_pod_on_completion,
        )

    # -- configuration from the environment -----------------------------------------------------

    @classmethod
    def env_var(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GpuPodTrainer:
        """Every field from ``FT_PIPELINE_K8S_<FIELD>`` (e.g. FT_PIPELINE_K8S_GPU_COUNT=2), dicts
        and lists as JSON; an unset variable leaves the default."""
        environ = os.environ if environ is None else environ
        settings: dict[str, Any] = {}
        for field, info in cls.model_fields.items():
            name = cls.env_var(field)
            raw = environ.get(name)
            kind = typing.get_origin(info.annotation) or info.annotation
            if raw is None or (raw == "" and kind is not str):
                continue
            if kind in (dict, list):
                value = json.loads(raw)
                if not isinstance(value, kind):
                    raise ValueError(f"{name} must be a JSON {kind.__name__}, got {raw!r}")
            elif kind is bool:
                value = raw.strip().lower() in ("1", "true", "yes")
            elif kind in (int, float):
                value = kind(raw)
            else:
                value = raw
            settings[field] = value
        return cls(**settings)
