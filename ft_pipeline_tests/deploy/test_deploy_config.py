"""deploy/ is consistent with the code and with the Dagster packages it names, without a cluster.

What is checked here is configuration: YAML parses, Dagster's and dagster-k8s' own schemas accept
the instance and run-launcher config, the run Job and the GPU trainer pod are built by the real
dagster-k8s code, and the trainer's Pipes round trip works against a fake Kubernetes API. Nothing
here proves that a live cluster accepts it (see deploy/README.md).
"""

import os
import re
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import kubernetes
import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import class_from_code_pointer
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from dagster_k8s.pipes import build_pod_body

from ft_pipeline.defs.k8s_trainer import GpuPodTrainer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ENTRYPOINT = [sys.executable, "-m", "ft_pipeline.lib.training.pipes_entrypoint"]
PG_ENV = {
    "DAGSTER_PG_HOST": "db",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "pw",
    "DAGSTER_PG_DB": "dagster",
}


def _yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _module_class_pairs(node):
    if isinstance(node, dict):
        if "module" in node and "class" in node:
            yield node["module"], node["class"], node.get("config", {})
        for value in node.values():
            yield from _module_class_pairs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _module_class_pairs(value)


def _validated(config_type, value):
    result = process_config(config_type, value)
    assert result.success, [e.message for e in result.errors]
    return result.value


def _instance_config(tmp_path, config: dict):
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return dagster_instance_config(str(home))[0]


# -- every file ----------------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {f.relative_to(DEPLOY).as_posix() for f in files} >= {
        "dagster.yaml",
        "helm/values.yaml",
        "k8s/pvc-data.yaml",
        "k8s/secrets.example.yaml",
        "k8s/configmap-env.yaml",
        "k8s/rbac.yaml",
        "k8s/gpu-check-pod.yaml",
    }
    for path in files:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert documents and all(isinstance(d, dict) and d for d in documents), path


def test_kubernetes_manifests_are_valid_api_objects():
    """Each manifest deserializes into its kubernetes-client model (unknown keys are an error)."""
    seen = set()
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for manifest in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            model = getattr(kubernetes.client, f"V1{manifest['kind']}")
            k8s_model_from_dict(model, k8s_snake_case_dict(model, manifest))
            assert manifest["metadata"]["namespace"] == "ft-pipeline", path
            seen.add((manifest["kind"], manifest["metadata"]["name"]))
    assert {
        ("PersistentVolumeClaim", "ft-pipeline-data"),
        ("Secret", "dagster-postgresql-secret"),
        ("Secret", "ft-pipeline-secrets"),
    } <= seen
    pvc = _yaml(DEPLOY / "k8s" / "pvc-data.yaml")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    with pytest.raises(Exception, match="Unexpected keys"):
        k8s_model_from_dict(
            kubernetes.client.V1PersistentVolumeClaim,
            k8s_snake_case_dict(kubernetes.client.V1PersistentVolumeClaim, {**pvc, "sepc": {}}),
        )


# -- deploy/dagster.yaml --------------------------------------------------------------------------


def test_instance_yaml_is_accepted_by_dagster(tmp_path, monkeypatch):
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    raw = _yaml(DEPLOY / "dagster.yaml")
    config = _instance_config(tmp_path, raw)
    assert set(config["storage"]) == {"postgres"}
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] == 300
    assert config["run_retries"]["retry_on_asset_or_op_failure"] is False
    # The repo's local instance shares the pool and retry policy.
    local = _yaml(REPO / "dagster.yaml")
    assert raw["concurrency"]["pools"] == local["concurrency"]["pools"]
    assert raw["run_retries"] == local["run_retries"]

    # Each configurable class imports, and Dagster's own schema of that class accepts its config.
    pairs = list(_module_class_pairs(raw))
    assert {(m, c) for m, c, _ in pairs} == {
        ("dagster_k8s", "K8sRunLauncher"),
        ("dagster._core.run_coordinator", "QueuedRunCoordinator"),
    }
    for module, klass, klass_config in pairs:
        cls = class_from_code_pointer(module, klass)
        _validated(cls.config_type(), klass_config)
    from dagster_postgres import DagsterPostgresStorage

    _validated(DagsterPostgresStorage.config_type(), raw["storage"]["postgres"])


def _engine_for(storage_config: dict):
    """What dagster-postgres does with the storage config, short of connecting: build the URL and
    the SQLAlchemy engine (which imports the DB driver the URL's scheme names)."""
    import sqlalchemy
    from dagster_postgres.utils import pg_url_from_config

    return sqlalchemy.create_engine(pg_url_from_config(storage_config))


def test_postgres_urls_name_the_installed_driver(monkeypatch):
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    from dagster_postgres import DagsterPostgresStorage

    plain = _validated(DagsterPostgresStorage.config_type(), _yaml(DEPLOY / "dagster.yaml")["storage"]["postgres"])
    assert _engine_for(plain).dialect.driver == "psycopg2"
    helm = _helm_instance(_values())["run_storage"]["config"]
    helm = _validated(DagsterPostgresStorage.config_type(), helm)
    assert _engine_for(helm).dialect.driver == "psycopg2"
    # A bare postgresql:// means psycopg 3 to SQLAlchemy 2.1, which the deploy extra does not install.
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        bare = {"postgres_db": {**plain["postgres_db"], "scheme": "postgresql"}}
        with pytest.raises(ModuleNotFoundError, match="psycopg"):
            _engine_for(bare)
    # The registry URL the README and the Secret example give.
    import sqlalchemy

    secrets = list(yaml.safe_load_all((DEPLOY / "k8s" / "secrets.example.yaml").read_text()))
    registry_url = next(d for d in secrets if d["metadata"]["name"] == "ft-pipeline-secrets")["stringData"][
        "FT_PIPELINE_REGISTRY_URL"
    ]
    assert sqlalchemy.create_engine(registry_url).dialect.driver == "psycopg2"
    assert "postgresql+psycopg2://ft_registry:" in (DEPLOY / "README.md").read_text()


def test_instance_validation_would_reject_a_conflicting_queue_limit(tmp_path, monkeypatch):
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    broken = _yaml(DEPLOY / "dagster.yaml")
    broken["run_coordinator"]["config"]["max_concurrent_runs"] = 4
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent_runs"):
        _instance_config(tmp_path, broken)


def _run_job(launcher_config: dict, code_location_context: dict | None = None) -> kubernetes.client.V1Job:
    """The Job the K8sRunLauncher would create (K8sContainerContext.create_for_run, minus the API)."""
    cfg = _validated(K8sRunLauncher.config_type(), launcher_config)
    context = K8sContainerContext(
        image_pull_policy=cfg.get("image_pull_policy"),
        service_account_name=cfg["service_account_name"],
        env_config_maps=cfg.get("env_config_maps"),
        env_secrets=cfg.get("env_secrets"),
        env_vars=cfg.get("env_vars"),
        volume_mounts=cfg.get("volume_mounts"),
        volumes=cfg.get("volumes"),
        namespace=cfg["job_namespace"],
        resources=cfg.get("resources"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg.get("run_k8s_config") or {}),
    )
    if code_location_context:
        context = context.merge(K8sContainerContext.create_from_config(code_location_context))
    job_config = DagsterK8sJobConfig(
        job_image="registry.example.com/ft-pipeline:test",
        dagster_home=cfg["dagster_home"],
        instance_config_map=cfg["instance_config_map"],
        postgres_password_secret=cfg.get("postgres_password_secret"),
    )
    return construct_dagster_k8s_job(
        job_config,
        ["dagster", "api", "execute_run", "{}"],
        "dagster-run-test",
        user_defined_k8s_config=context.run_k8s_config,
        pod_name="dagster-run-test",
        component="run_worker",
    )


def test_instance_run_launcher_builds_the_run_job():
    job = _run_job(_yaml(DEPLOY / "dagster.yaml")["run_launcher"]["config"])
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert pod.service_account_name == "dagster"
    assert [v.persistent_volume_claim.claim_name for v in pod.volumes if v.name == "data"] == ["ft-pipeline-data"]
    assert {(m.name, m.mount_path) for m in container.volume_mounts} >= {("data", "/data")}
    env_from = {
        (e.config_map_ref.name if e.config_map_ref else None, e.secret_ref.name if e.secret_ref else None)
        for e in container.env_from
    }
    assert {("ft-pipeline-env", None), (None, "ft-pipeline-secrets")} <= env_from
    password = next(e for e in container.env if e.name == "DAGSTER_PG_PASSWORD")
    assert (password.value_from.secret_key_ref.name, password.value_from.secret_key_ref.key) == (
        "dagster-postgresql-secret",
        "postgresql-password",
    )
    assert container.resources.limits["memory"] == "16Gi"
    assert job.spec.ttl_seconds_after_finished == 86400
    # The ConfigMap the launcher reads DAGSTER_PG_HOST & co. from is the one in deploy/k8s.
    env_map = _yaml(DEPLOY / "k8s" / "configmap-env.yaml")
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_DB"} <= set(env_map["data"])
    assert env_map["data"]["FT_PIPELINE_DATA_DIR"] == "/data"


# -- deploy/helm/values.yaml ----------------------------------------------------------------------
# The chart is not rendered here (no helm, no network); these helpers write what its templates
# (helm/dagster/templates/helpers/instance/_run-launcher.tpl, _run-coordinator.tpl, _concurrency.tpl,
# configmap-instance.yaml and dagster-user-deployments' k8sContainerContext) make of the keys we use,
# and refuse keys they do not know, so a new key in values.yaml needs a look at the chart first.

NAMESPACE = "ft-pipeline"
RELEASE_FULLNAME = "dagster"  # release `dagster` of chart `dagster`
# <subchart fullname>-<deployment>-user-env: the ConfigMap the chart makes of the deployment's `env`.
CODE_SERVER_ENV_CONFIGMAP = "dagster-dagster-user-deployments-ft-pipeline-user-env"


def _values() -> dict:
    return _yaml(DEPLOY / "helm" / "values.yaml")


def _helm_run_launcher_config(values: dict) -> dict:
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    source = values["runLauncher"]["config"]["k8sRunLauncher"]
    known = {
        "imagePullPolicy",
        "loadInclusterConfig",
        "jobNamespace",
        "envConfigMaps",
        "envSecrets",
        "envVars",
        "volumes",
        "volumeMounts",
        "labels",
        "resources",
        "failPodOnRunFailure",
        "runK8sConfig",
    }
    assert set(source) <= known, set(source) - known
    config = {
        "load_incluster_config": source["loadInclusterConfig"],
        "job_namespace": source.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": source["imagePullPolicy"],
        "service_account_name": f"{RELEASE_FULLNAME}",
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": f"{RELEASE_FULLNAME}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    if source.get("envConfigMaps"):
        config["env_config_maps"] = [m["name"] for m in source["envConfigMaps"]]
    if source.get("envSecrets"):
        config["env_secrets"] = [s["name"] for s in source["envSecrets"]]
    for key, target in (
        ("envVars", "env_vars"),
        ("volumes", "volumes"),
        ("volumeMounts", "volume_mounts"),
        ("labels", "labels"),
        ("resources", "resources"),
    ):
        if source.get(key):
            config[target] = source[key]
    if source.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    if source.get("runK8sConfig"):
        names = {
            "containerConfig": "container_config",
            "podSpecConfig": "pod_spec_config",
            "podTemplateSpecMetadata": "pod_template_spec_metadata",
            "jobSpecConfig": "job_spec_config",
            "jobMetadata": "job_metadata",
        }
        config["run_k8s_config"] = {names[k]: v for k, v in source["runK8sConfig"].items() if v}
    return config


def _user_deployment(values: dict) -> dict:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == 1
    return deployments[0]


def _helm_code_location_context(values: dict) -> dict:
    deployment = _user_deployment(values)
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    k8s = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [CODE_SERVER_ENV_CONFIGMAP],
        "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
        "volume_mounts": deployment.get("volumeMounts", []),
        "volumes": deployment.get("volumes", []),
        "namespace": NAMESPACE,
        "service_account_name": f"{RELEASE_FULLNAME}-user-deployments",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    if deployment.get("resources"):
        k8s["resources"] = deployment["resources"]
    return {"k8s": k8s}


def _compact(mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if v not in (None, "", [], {}, False, 0)}


def _helm_instance(values: dict) -> dict:
    pg = values["postgresql"]
    pg_config = {
        "postgres_db": {
            "hostname": pg["postgresqlHost"],
            "username": pg["postgresqlUsername"],
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "db_name": pg["postgresqlDatabase"],
            "port": pg["service"]["port"],
        }
    }
    if pg.get("postgresqlParams"):
        pg_config["postgres_db"]["params"] = pg["postgresqlParams"]
    if pg.get("postgresqlScheme"):
        pg_config["postgres_db"]["scheme"] = pg["postgresqlScheme"]
    instance = {
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": _helm_run_launcher_config(values),
        },
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": pg_config},
        "event_log_storage": {
            "module": "dagster_postgres.event_log",
            "class": "PostgresEventLogStorage",
            "config": pg_config,
        },
        "schedule_storage": {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            "config": pg_config,
        },
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    if daemon["enabled"] and coordinator["enabled"]:
        assert coordinator["type"] == "QueuedRunCoordinator"
        entry = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
        queue = coordinator["config"]["queuedRunCoordinator"]
        if _compact(queue):
            # The template always writes max_concurrent_runs (-1 when unset) once any key is set.
            entry["config"] = {
                "max_concurrent_runs": -1 if queue.get("maxConcurrentRuns") is None else queue["maxConcurrentRuns"]
            }
            names = {
                "tagConcurrencyLimits": "tag_concurrency_limits",
                "dequeueIntervalSeconds": "dequeue_interval_seconds",
                "dequeueUseThreads": "dequeue_use_threads",
                "dequeueNumWorkers": "dequeue_num_workers",
            }
            entry["config"].update({names[k]: v for k, v in _compact(queue).items() if k in names})
        instance["run_coordinator"] = entry
    concurrency = values.get("concurrency", {})
    if concurrency.get("enabled"):
        block = {}
        pools = {
            "default_limit": concurrency.get("pools", {}).get("defaultLimit"),
            "granularity": concurrency.get("pools", {}).get("granularity"),
        }
        if any(v is not None for v in pools.values()):
            block["pools"] = {k: v for k, v in pools.items() if v is not None}
        runs = concurrency.get("runs", {})
        if runs.get("maxConcurrentRuns") is not None or runs.get("tagConcurrencyLimits"):
            block["runs"] = {
                k: v
                for k, v in (
                    ("max_concurrent_runs", runs.get("maxConcurrentRuns")),
                    ("tag_concurrency_limits", runs.get("tagConcurrencyLimits")),
                )
                if v
            }
        instance["concurrency"] = block
    monitoring = daemon["runMonitoring"]
    if monitoring["enabled"]:
        instance["run_monitoring"] = {
            "enabled": True,
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        }
    retries = daemon["runRetries"]
    if retries["enabled"]:
        instance["run_retries"] = {
            "enabled": True,
            "max_retries": retries["maxRetries"],
            "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"],
        }
    return instance


def test_helm_values_name_importable_modules():
    values = _values()
    deployment = _user_deployment(values)
    args = deployment["dagsterApiGrpcArgs"]
    assert args[0] == "-m"
    # Imported for real (with the Helm env) by test_definitions_load_with_the_k8s_trainer_...
    assert args[1] == "ft_pipeline.definitions"
    assert deployment["port"] == 3030
    for module, klass, _ in _module_class_pairs(_helm_instance(values)):
        class_from_code_pointer(module, klass)


def test_helm_values_make_an_instance_dagster_accepts(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "pw")
    values = _values()
    instance = _helm_instance(values)
    config = _instance_config(tmp_path, instance)
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert "config" not in config["run_coordinator"]
    _validated(K8sRunLauncher.config_type(), instance["run_launcher"]["config"])
    # Same pool, run and retry policy as the instance file for non-Helm deployments.
    plain = _yaml(DEPLOY / "dagster.yaml")
    assert instance["concurrency"] == plain["concurrency"]
    assert instance["run_retries"] == plain["run_retries"]
    assert instance["run_monitoring"] == plain["run_monitoring"]


@pytest.mark.parametrize("queue_key, value", [("maxConcurrentRuns", 8), ("dequeueUseThreads", True)])
def test_helm_queue_settings_next_to_concurrency_are_refused(tmp_path, monkeypatch, queue_key, value):
    """Why values.yaml empties every queuedRunCoordinator key: any one of them makes the chart write
    max_concurrent_runs into run_coordinator, which Dagster refuses next to `concurrency`."""
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "pw")
    values = _values()
    values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"][queue_key] = value
    with pytest.raises(DagsterInvalidConfigError, match="run_coordinator"):
        _instance_config(tmp_path, _helm_instance(values))


def test_helm_run_job_gets_the_data_volume_and_secrets_once():
    values = _values()
    job = _run_job(_helm_run_launcher_config(values), _helm_code_location_context(values))
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert [v.name for v in pod.volumes].count("data") == 1
    assert [(m.name, m.mount_path) for m in container.volume_mounts].count(("data", "/data")) == 1
    secrets = [e.secret_ref.name for e in container.env_from if e.secret_ref]
    assert secrets.count("ft-pipeline-secrets") == 1
    assert CODE_SERVER_ENV_CONFIGMAP in [e.config_map_ref.name for e in container.env_from if e.config_map_ref]
    assert container.resources.limits["memory"] == "16Gi"
    env = _user_deployment(values)["env"]
    assert env["FT_PIPELINE_TRAINER"] == "k8s"
    assert (
        env["FT_PIPELINE_DATA_DIR"]
        == container.volume_mounts[[m.name for m in container.volume_mounts].index("data")].mount_path
    )
    assert env["FT_PIPELINE_K8S_DATA_PVC"] == next(
        v.persistent_volume_claim.claim_name for v in pod.volumes if v.name == "data"
    )
    # The trainer settings in values.yaml are ones GpuPodTrainer understands.
    trainer = GpuPodTrainer.from_env(env)
    assert trainer.node_selector == {"nvidia.com/gpu.present": "true"} and trainer.gpu_count == 1


# -- deploy/Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_copies_existing_files_and_installs_the_deploy_extra():
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    sources = [s for sources in copies for s in sources if not s.startswith("--")]
    assert sources == ["pyproject.toml", "README.md", "ft_pipeline"]
    for source in sources:
        assert (REPO / source).exists(), source
    assert 'pip install ".[deploy]"' in text
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["deploy"]
    assert {re.split(r"[<>=\[ ;]", e)[0] for e in extras} >= {"dagster-k8s", "dagster-postgres", "s3fs"}
    assert re.search(r"^ARG TORCH_SPEC=", text, re.M) and '"$TORCH_SPEC"' in text
    assert '"-m", "ft_pipeline.definitions"' in text
    # The BuildKit ignore file next to the Dockerfile must let every COPY source through.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source


# -- the GPU trainer ------------------------------------------------------------------------------


def test_gpu_trainer_pod_spec_as_dagster_k8s_builds_it():
    trainer = GpuPodTrainer(data_dir="/data", node_selector={"nvidia.com/gpu.present": "true"})
    spec = trainer.pod_spec("registry.example.com/ft-pipeline:1", ENTRYPOINT)
    pod = build_pod_body(
        pod_name="dagster-run-trainer",
        image=None,
        command=None,
        env_vars={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msg"},
        base_pod_meta=trainer.pod_metadata(),
        base_pod_spec=spec,
    )
    assert isinstance(pod, kubernetes.client.V1Pod)
    (container,) = pod.spec.containers
    assert container.command == ["python", "-m", "ft_pipeline.lib.training.pipes_entrypoint"]
    assert container.image == "registry.example.com/ft-pipeline:1"
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.resources.requests == {"cpu": "4", "memory": "32Gi"}
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert pod.spec.restart_policy == "Never"
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts == {"data": "/data", "dshm": "/dev/shm"}
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["data"].persistent_volume_claim.claim_name == "ft-pipeline-data"
    assert volumes["dshm"].empty_dir.medium == "Memory"
    env = {e.name: e.value for e in container.env}
    assert env["FT_PIPELINE_DATA_DIR"] == "/data"
    assert env["HF_HOME"] == "/data/hf-cache"
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"
    assert env["DAGSTER_PIPES_CONTEXT"] == "ctx"  # Pipes bootstrap added by dagster-k8s
    assert pod.metadata.labels["app.kubernetes.io/name"] == "ft-pipeline-trainer"


def test_gpu_trainer_knobs():
    trainer = GpuPodTrainer(
        data_dir="/mnt/shared/",
        gpu_count=0,
        memory_limit="",
        tolerations=[],
        env_secrets=["hf"],
        service_account_name="trainer",
        hf_home="/cache/hf",
        hf_offline=False,
        env={"EXTRA": "1"},
    )
    spec = trainer.pod_spec("img", ["python", "-m", "x"])
    container = spec["containers"][0]
    assert container["resources"]["limits"] == {}
    assert spec["tolerations"] == [] and "nodeSelector" not in spec
    assert container["envFrom"] == [{"secretRef": {"name": "hf"}}]
    assert spec["serviceAccountName"] == "trainer"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FT_PIPELINE_DATA_DIR"] == "/mnt/shared" and env["HF_HOME"] == "/cache/hf" and env["EXTRA"] == "1"
    assert "HF_HUB_OFFLINE" not in env
    assert container["command"] == ["python", "-m", "x"]


def test_gpu_trainer_refuses_paths_off_the_shared_volume(monkeypatch):
    trainer = GpuPodTrainer(data_dir="/data")
    trainer.check_paths({"output_dir": "/data/models/k", "train_parquet": "/data/splits/v/train.parquet", "config": {}})
    with pytest.raises(dg.Failure, match="not below the shared data volume"):
        trainer.check_paths({"output_dir": "/tmp/models/k"})
    monkeypatch.setenv("FT_PIPELINE_DATA_DIR", "data")
    with pytest.raises(dg.Failure, match="absolute path"):
        GpuPodTrainer().mount_path()


def test_gpu_trainer_from_env():
    trainer = GpuPodTrainer.from_env(
        {
            "FT_PIPELINE_K8S_IMAGE": "img:2",
            "FT_PIPELINE_K8S_GPU_COUNT": "2",
            "FT_PIPELINE_K8S_NODE_SELECTOR": '{"pool": "a100"}',
            "FT_PIPELINE_K8S_TOLERATIONS": "[]",
            "FT_PIPELINE_K8S_HF_OFFLINE": "false",
            "FT_PIPELINE_K8S_POD_WAIT_TIMEOUT_S": "3600",
            "FT_PIPELINE_K8S_NAMESPACE": "",
        }
    )
    assert (trainer.image, trainer.gpu_count, trainer.node_selector, trainer.tolerations) == (
        "img:2",
        2,
        {"pool": "a100"},
        [],
    )
    assert trainer.hf_offline is False and trainer.pod_wait_timeout_s == 3600.0 and trainer.namespace == ""
    assert GpuPodTrainer.from_env({}) == GpuPodTrainer()
    with pytest.raises(ValueError, match="FT_PIPELINE_K8S_NODE_SELECTOR must be a JSON dict"):
        GpuPodTrainer.from_env({"FT_PIPELINE_K8S_NODE_SELECTOR": '["a"]'})


POD_SCRIPT = """
import os
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    pipes.log.info("hello from the trainer pod")
    pipes.report_custom_message({"extras": pipes.extras, "data_dir": os.environ["FT_PIPELINE_DATA_DIR"]})
"""


class _FakeCoreApi:
    """The calls PipesK8sClient makes, answered by running the pod's command as a local process."""

    def __init__(self):
        self.created, self.deleted, self.logs = [], [], {}

    def create_namespaced_pod(self, namespace, body):
        self.created.append((namespace, body))
        container = body.spec.containers[0]
        command = list(container.command)
        assert command[0] == "python"
        env = {"PATH": os.environ["PATH"], **{e.name: e.value for e in container.env}}
        done = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=60)
        self.logs[body.metadata.name] = done.stdout + done.stderr

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        start = datetime(2024, 1, 1, tzinfo=UTC)
        lines = self.logs[name].splitlines()
        return [
            f"{(start + timedelta(milliseconds=i)).strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {line}\n".encode()
            for i, line in enumerate(lines)
        ]

    def delete_namespaced_pod(self, name, namespace):
        self.deleted.append((namespace, name))


def test_gpu_trainer_runs_through_pipes_k8s_client_against_a_fake_api(monkeypatch):
    import dagster_k8s.pipes

    core = _FakeCoreApi()
    fake_client = type("FakeClient", (), {"core_api": core, "wait_for_pod": lambda self, *a, **k: None})()
    monkeypatch.setattr(
        dagster_k8s.pipes.DagsterKubernetesClient, "production_client", staticmethod(lambda *a, **k: fake_client)
    )
    monkeypatch.setattr(dagster_k8s.pipes.PipesK8sClient, "_load_k8s_config", lambda self: None)
    received = []

    @dg.asset
    def trains_in_a_pod(context: dg.AssetExecutionContext, local_trainer: dg.ResourceParam[dg.PipesClient]):
        extras = {"output_dir": "/data/models/k1", "train_parquet": "/data/splits/v1/train.parquet"}
        invocation = local_trainer.run(command=[sys.executable, "-c", POD_SCRIPT], context=context, extras=extras)
        received.extend(invocation.get_custom_messages())
        return dg.MaterializeResult()

    trainer = GpuPodTrainer(image="registry.example.com/ft-pipeline:test", namespace="ml", data_dir="/data")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([trains_in_a_pod], resources={"local_trainer": trainer}, instance=instance)
    assert result.success
    assert received == [
        {
            "extras": {"output_dir": "/data/models/k1", "train_parquet": "/data/splits/v1/train.parquet"},
            "data_dir": "/data",
        }
    ]
    ((namespace, pod),) = core.created
    assert namespace == "ml"
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert core.deleted == [("ml", pod.metadata.name)]
    # The pod's log line came back over Pipes into the run's event log.
    assert any("hello from the trainer pod" in entry.user_message for entry in instance.all_logs(result.run_id))


# -- trainer selection in ft_pipeline.definitions --------------------------------------------------


def test_definitions_load_with_the_k8s_trainer_and_without_dagster_k8s(tmp_path):
    """A fresh interpreter with the code server's env from values.yaml and dagster_k8s made
    unimportable: the module the code server serves must load, resolve every job with GpuPodTrainer
    as fine_tuned_model's local_trainer, and FT_PIPELINE_TRAINER must pick the trainer."""
    module = _user_deployment(_values())["dagsterApiGrpcArgs"][1]
    script = f"""
import os, sys
sys.modules["dagster_k8s"] = None  # import dagster_k8s -> ImportError
import dagster as dg
import {module} as d
from ft_pipeline.defs.k8s_trainer import GpuPodTrainer
trainer = d.defs.resources["local_trainer"]
assert isinstance(trainer, GpuPodTrainer), type(trainer)
for name in ("ingest_log_file", "build_dataset", "train_model"):
    d.defs.resolve_job_def(name)
assert "local_trainer" in d.defs.resolve_assets_def("fine_tuned_model").required_resource_keys
print("OK", trainer.gpu_count, sorted(trainer.node_selector.items()))
os.environ["FT_PIPELINE_TRAINER"] = "subprocess"
assert isinstance(d.local_trainer_from_env(), dg.PipesSubprocessClient)
os.environ.pop("FT_PIPELINE_TRAINER")
assert isinstance(d.local_trainer_from_env(), dg.PipesSubprocessClient)
os.environ["FT_PIPELINE_TRAINER"] = "gpu"
try:
    d.local_trainer_from_env()
except ValueError as err:
    print("REFUSED", err)
"""
    helm_env = {k: str(v) for k, v in _user_deployment(_values())["env"].items()}
    env = {
        **os.environ,
        **helm_env,
        "FT_PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "FT_PIPELINE_LANDING_DIR": str(tmp_path / "landing"),
    }
    env.pop("FT_PIPELINE_REGISTRY_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK 1 [('nvidia.com/gpu.present', 'true')]" in done.stdout
    assert "REFUSED FT_PIPELINE_TRAINER must be 'subprocess' or 'k8s', got 'gpu'" in done.stdout


# -- the README ------------------------------------------------------------------------------------


def test_readme_documents_every_setting_the_code_reads():
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    sources = [REPO / "ft_pipeline" / "definitions.py", REPO / "ft_pipeline" / "defs" / "k8s_trainer.py"]
    names = {
        n
        for path in sources
        for n in re.findall(r"\b(?:FT_PIPELINE|OPENAI|AZURE_OPENAI)_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    names |= {GpuPodTrainer.env_var(field) for field in GpuPodTrainer.model_fields}
    assert "FT_PIPELINE_K8S_GPU_COUNT" in names and "FT_PIPELINE_TRAINER" in names
    missing = sorted(n for n in names if n not in readme)
    assert not missing, missing
