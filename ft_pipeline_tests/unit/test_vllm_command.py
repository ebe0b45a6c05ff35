"""The vLLM command and Kubernetes manifest built from the registry (lib/vllm_command.py).

Without a GPU the generated command and manifests are checked here; the ``gpu`` test at the end
starts vLLM for real where CUDA and the vllm package exist.
"""

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import kubernetes
import pytest
import yaml
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict

from ft_pipeline.lib.publish import publish_model_dir
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline.lib.vllm_command import (
    VllmAdapter,
    VllmPlan,
    VllmSettings,
    adapter_rank,
    add_vllm_arguments,
    fetch_published,
    main,
    plan_vllm,
    render_manifests,
    run_vllm_engine,
    vllm_manifests,
)

MODEL = "ft-pipeline-assistant"
REPO = Path(__file__).resolve().parents[2]
BASE_REL = "base_models/smollm2-135m-instruct-abc123"


def _run_folder(data_dir: Path, key: str, rank: int) -> Path:
    run = data_dir / "models" / key
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"weights-" + key.encode())
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "tokenizer_config.json").write_text("{}")
    (run / "checkpoints").mkdir()
    return run


def _register(registry: ModelRegistry, data_dir: Path, key: str, rank: int, *, alias: str | None, base=BASE_REL):
    run = _run_folder(data_dir, key, rank)
    dataset = registry.record_dataset_version("manual", "train", key.ljust(64, "0"), 1)
    training = registry.record_training_run(
        key, "local_lora", "HuggingFaceTB/SmolLM2-135M-Instruct", dataset, None, {}, 0
    )
    version = registry.register_model_version(
        MODEL,
        training_run_id=training,
        model_uri=f"lora://{run}/adapter#{key}",
        backend="local_lora",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        run_key=key,
        dataset_version="d1",
        config_hash=key,
        metrics={},
        artifact_path=str(run / "adapter"),
        tags={"base_model_path": base, "tokenizer_dir": str(run / "tokenizer")},
    )
    if alias is not None:
        registry.record_evaluation(
            f"eval-{key}",
            MODEL,
            version.version,
            suite="test",
            eval_dataset_version_id=dataset,
            baseline_model_uri=None,
            base_model_uri="base",
            metrics={},
            per_example_uri="-",
            gate_config={},
            decision="pass",
            leakage_checked=True,
        )
        production = registry.resolve(MODEL, "production")
        registry.promote(
            MODEL,
            version.version,
            alias=alias,
            evaluation_id=f"eval-{key}",
            expected_baseline_uri=production.model_uri if production else None,
            reason="test",
            actor="test",
        )
    return version


@pytest.fixture
def data_dir(tmp_path):
    data = tmp_path / "data"
    (data / BASE_REL).mkdir(parents=True)
    (data / BASE_REL / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return data


@pytest.fixture
def registry(data_dir):
    with ModelRegistry.for_data_dir(data_dir) as reg:
        yield reg


def _option(args: list[str], flag: str) -> list[str]:
    """The values after ``flag`` up to the next option."""
    start = args.index(flag) + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
    return args[start:end]


def test_command_serves_production_and_staging_adapters_on_the_local_base(registry, data_dir):
    _register(registry, data_dir, "run-a", 12, alias="production")
    _register(registry, data_dir, "run-b", 16, alias="staging")

    plan = plan_vllm(registry, MODEL, data_dir)
    args = plan.command()

    assert args[:3] == ["vllm", "serve", str(data_dir / BASE_REL)]  # the HF folder, resolved against the data dir
    assert "--enable-lora" in args
    assert _option(args, "--lora-modules") == [
        f"{MODEL}={data_dir}/models/run-a/adapter",
        f"{MODEL}@staging={data_dir}/models/run-b/adapter",
    ]
    assert _option(args, "--max-lora-rank") == ["16"]  # ranks 12 and 16 -> the smallest vLLM rank >= 16
    assert _option(args, "--max-loras") == ["2"]
    assert _option(args, "--tokenizer") == [str(data_dir / "models/run-a/tokenizer")]  # production's template
    assert _option(args, "--generation-config") == ["vllm"]
    assert _option(args, "--served-model-name") == [f"{MODEL}@base"]
    assert _option(args, "--port") == ["8000"] and _option(args, "--host") == ["127.0.0.1"]
    assert shlex.split(plan.shell()) == args  # paste-able as it is


def test_only_production_when_staging_is_unset_and_an_error_without_production(registry, data_dir):
    with pytest.raises(LookupError, match="no production version"):
        plan_vllm(registry, MODEL, data_dir)
    _register(registry, data_dir, "run-a", 8, alias="production")
    _register(registry, data_dir, "run-b", 64, alias=None)  # a candidate: not served
    plan = plan_vllm(registry, MODEL, data_dir, VllmSettings(port=9000, max_model_len=2048))
    assert [a.served_name for a in plan.adapters] == [MODEL]
    args = plan.command()
    assert _option(args, "--max-lora-rank") == ["8"]
    assert _option(args, "--max-model-len") == ["2048"] and _option(args, "--port") == ["9000"]


def test_lora_rank_is_read_from_the_adapter_and_rounded_to_what_vllm_accepts(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "rank_pattern": {"q": 24}}))
    assert adapter_rank(tmp_path) == 24
    adapter = VllmAdapter("m", "production", 1, str(tmp_path), str(tmp_path), 24)
    plan = VllmPlan("m", "b", "/b", None, (adapter,), VllmSettings())
    assert plan.max_lora_rank == 32
    with pytest.raises(ValueError, match="above the largest rank"):
        _ = VllmPlan("m", "b", "/b", None, (VllmAdapter("m", "production", 1, "/a", "/a", 1024),), VllmSettings())
        _.max_lora_rank  # noqa: B018
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        adapter_rank(tmp_path)
    with pytest.raises(FileNotFoundError):
        adapter_rank(tmp_path / "missing")


def test_refuses_openai_models_mixed_bases_and_a_base_that_is_not_an_hf_folder(registry, data_dir):
    _register(registry, data_dir, "run-a", 8, alias="production")
    other = data_dir / "base_models/other"
    other.mkdir(parents=True)
    _register(registry, data_dir, "run-b", 8, alias="staging", base="base_models/other")
    with pytest.raises(ValueError, match="different bases"):
        plan_vllm(registry, MODEL, data_dir)
    assert len(plan_vllm(registry, MODEL, data_dir, VllmSettings(aliases=("production",))).adapters) == 1
    (data_dir / BASE_REL / "config.json").unlink()
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        plan_vllm(registry, MODEL, data_dir, VllmSettings(aliases=("production",)))


def test_refuses_a_hosted_model(data_dir):
    with ModelRegistry.for_data_dir(data_dir) as registry:
        dataset = registry.record_dataset_version("manual", "train", "1" * 64, 1)
        run = registry.record_training_run("oa", "openai", "gpt-4o-mini", dataset, None, {}, 0)
        v = registry.register_model_version(
            MODEL,
            training_run_id=run,
            model_uri="openai://ft:gpt-4o-mini:x",
            backend="openai",
            base_model="gpt-4o-mini",
            run_key="oa",
            dataset_version="d",
            config_hash="c",
            metrics={},
            remote_model_id="ft:gpt-4o-mini:x",
        )
        registry.record_evaluation(
            "e",
            MODEL,
            v.version,
            suite="test",
            eval_dataset_version_id=dataset,
            baseline_model_uri=None,
            base_model_uri="b",
            metrics={},
            per_example_uri="-",
            gate_config={},
            decision="pass",
            leakage_checked=True,
        )
        registry.promote(MODEL, v.version, evaluation_id="e", reason="t", actor="t")
        with pytest.raises(ValueError, match="vLLM serves local LoRA adapters only"):
            plan_vllm(registry, MODEL, data_dir)


def test_published_copies_are_what_vllm_loads(registry, data_dir, tmp_path):
    v1 = _register(registry, data_dir, "run-a", 16, alias="production")
    v2 = _register(registry, data_dir, "run-b", 16, alias="staging")
    # Production published to a local folder (file://): read in place.
    local = publish_model_dir(data_dir / "models/run-a", f"file://{data_dir}/published", MODEL, v1.version)
    registry.update_tags(MODEL, v1.version, {"published_uri": local.uri})
    # Staging "published to object storage": fetched into a local folder first.
    registry.update_tags(MODEL, v2.version, {"published_uri": f"s3://bucket/models/{MODEL}/v{v2.version}"})

    plan = plan_vllm(registry, MODEL, data_dir)
    production, staging = plan.adapters
    assert production.path == f"{data_dir}/published/{MODEL}/v1/adapter" and production.fetch_uri is None
    assert plan.tokenizer_path == f"{data_dir}/published/{MODEL}/v1/tokenizer"
    assert staging.fetch_uri == f"s3://bucket/models/{MODEL}/v2"
    assert staging.source == f"s3://bucket/models/{MODEL}/v2/adapter"
    assert staging.path == f"{data_dir}/vllm_adapters/{MODEL}/v2/adapter"
    fetch, serve = plan.shell().split(" && ")
    assert shlex.split(fetch)[-3:] == ["fetch", staging.fetch_uri, f"{data_dir}/vllm_adapters/{MODEL}/v2"]
    assert shlex.split(serve) == plan.command()

    pod = plan.in_pod(data_dir)
    assert pod.base_path == f"/data/{BASE_REL}"
    assert [a.path for a in pod.adapters] == [f"/data/published/{MODEL}/v1/adapter", f"/adapters/{MODEL}/v2/adapter"]
    assert pod.tokenizer_path == f"/data/published/{MODEL}/v1/tokenizer"

    manifests = vllm_manifests(pod, fetch_image="registry.example.com/ft-pipeline:1")
    spec = manifests[0]["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["command"][-3:] == ["fetch", staging.fetch_uri, f"/adapters/{MODEL}/v2"]
    assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in spec["containers"][0]["volumeMounts"]


def test_in_pod_refuses_folders_the_pod_cannot_see(registry, data_dir, tmp_path):
    _register(registry, data_dir, "run-a", 8, alias="production")
    plan = plan_vllm(registry, MODEL, data_dir)
    outside = tmp_path / "elsewhere"
    with pytest.raises(ValueError, match="outside the data directory"):
        plan.in_pod(outside)


def _validate(manifest: dict) -> None:
    model = getattr(kubernetes.client, f"V1{manifest['kind']}")
    k8s_model_from_dict(model, k8s_snake_case_dict(model, manifest))


def test_manifests_are_valid_kubernetes_objects_with_a_gpu_and_matching_ports(registry, data_dir):
    _register(registry, data_dir, "run-a", 16, alias="production")
    plan = plan_vllm(registry, MODEL, data_dir, VllmSettings(port=8100)).in_pod(data_dir)
    text = render_manifests(vllm_manifests(plan, gpus=2), header="generated\n\nby a test")
    assert text.startswith("# generated\n#\n# by a test\n")
    deployment, service = yaml.safe_load_all(text)
    for manifest in (deployment, service):
        _validate(manifest)
        assert manifest["metadata"]["namespace"] == "ft-pipeline"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == plan.command(host="0.0.0.0")
    assert container["command"][2] == f"/data/{BASE_REL}"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["ports"] == [{"name": "http", "containerPort": 8100}]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8100, "targetPort": "http"}]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "ft-pipeline-data", "readOnly": True}
    assert "initContainers" not in deployment["spec"]["template"]["spec"]  # nothing to fetch
    assert deployment["metadata"]["annotations"]["ft-pipeline/versions"] == "production=v1"


def _example_plan() -> VllmPlan:
    """The plan deploy/vllm/vllm.yaml was rendered from (the demo's layout on the data volume)."""
    run = "/data/models/RUN_KEY"
    adapters = (
        VllmAdapter(MODEL, "production", 1, f"{run}/adapter", f"{run}/adapter", 16),
        VllmAdapter(f"{MODEL}@staging", "staging", 2, f"{run}-staging/adapter", f"{run}-staging/adapter", 16),
    )
    return VllmPlan(
        MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct", f"/data/{BASE_REL}", f"{run}/tokenizer", adapters, VllmSettings()
    )


def test_the_checked_in_example_manifest_is_what_the_code_renders():
    path = REPO / "deploy" / "vllm" / "vllm.yaml"
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert documents == vllm_manifests(_example_plan()), "regenerate deploy/vllm/vllm.yaml (see its header)"
    for manifest in documents:
        _validate(manifest)


def test_fetch_checks_the_publication_before_copying(data_dir, tmp_path, capsys):
    run = _run_folder(data_dir, "run-a", 8)
    published = publish_model_dir(run, f"file://{tmp_path}/bucket", MODEL, 3)
    dest = tmp_path / "fetched"
    fetch_published(published.uri, dest)
    assert (dest / "adapter" / "adapter_model.safetensors").read_bytes() == b"weights-run-a"
    assert (dest / "tokenizer" / "tokenizer_config.json").is_file()
    assert not (dest / "checkpoints").exists()

    (tmp_path / "bucket" / MODEL / "v3" / "adapter" / "adapter_model.safetensors").write_bytes(b"tampered")
    shutil.rmtree(dest)
    assert main(["fetch", published.uri, str(dest)]) == 1
    assert "sha256 differs" in capsys.readouterr().err
    assert not dest.exists()


def test_cli_prints_the_command_and_the_manifest_and_never_starts_vllm_without_it(
    registry, data_dir, capsys, monkeypatch
):
    import argparse

    parser = argparse.ArgumentParser()
    add_vllm_arguments(parser)
    args = parser.parse_args(["--engine", "vllm", "--print-command"])
    assert (args.engine, args.print_command, args.print_manifest) == ("vllm", True, False)
    with_engine = argparse.ArgumentParser()
    with_engine.add_argument("--engine", choices=("transformers", "vllm", "other"))
    add_vllm_arguments(with_engine)  # the serve parser's own --engine is kept

    assert run_vllm_engine(registry, MODEL, data_dir, print_command=True) == 1
    assert "no production version" in capsys.readouterr().err
    _register(registry, data_dir, "run-a", 8, alias="production")

    assert run_vllm_engine(registry, MODEL, data_dir, print_command=True) == 0
    assert shlex.split(capsys.readouterr().out) == plan_vllm(registry, MODEL, data_dir).command()

    assert run_vllm_engine(registry, MODEL, data_dir, print_manifest=True, image="vllm/vllm-openai:v1") == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# vLLM serving {MODEL} (production v1)")
    deployment, service = yaml.safe_load_all(text)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v1"
    assert f"{MODEL}=/data/models/run-a/adapter" in deployment["spec"]["template"]["spec"]["containers"][0]["command"]

    # The same through `python -m ft_pipeline.lib.vllm_command command|manifest`.
    assert main(["command", "--data-dir", str(data_dir), "--port", "8001"]) == 0
    assert _option(shlex.split(capsys.readouterr().out), "--port") == ["8001"]
    assert main(["manifest", "--data-dir", str(data_dir), "--fetch-image", "x"]) == 0
    assert len(list(yaml.safe_load_all(capsys.readouterr().out))) == 2
    assert main(["command", "--data-dir", str(data_dir / "nowhere")]) == 1
    assert "no registry at" in capsys.readouterr().err

    monkeypatch.setattr("ft_pipeline.lib.vllm_command.vllm_available", lambda: False)
    monkeypatch.setattr("os.execvp", lambda *a: pytest.fail("vLLM must not be started"))
    assert run_vllm_engine(registry, MODEL, data_dir) == 2
    assert "vllm is not installed here" in capsys.readouterr().err


def test_ft_pipeline_serve_engine_vllm_prints_the_command_and_the_manifest(registry, data_dir, capsys):
    from ft_pipeline.cli import main as cli

    _register(registry, data_dir, "run-a", 8, alias="production")
    serve = ["serve", "--engine", "vllm", "--data-dir", str(data_dir), "--port", "8200"]
    assert cli([*serve, "--print-command"]) == 0
    args = shlex.split(capsys.readouterr().out)
    assert args == plan_vllm(registry, MODEL, data_dir, VllmSettings(port=8200)).command()
    assert cli([*serve, "--print-manifest", "--vllm-image", "vllm/vllm-openai:v9"]) == 0
    deployment, service = yaml.safe_load_all(capsys.readouterr().out)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v9"
    assert service["spec"]["ports"][0]["port"] == 8200


# --------------------------------------------------------------------------------------------- gpu


def _gpu_and_vllm() -> bool:
    try:
        import torch

        if not torch.cuda.is_available():
            return False
    except ImportError:
        return False
    return shutil.which("vllm") is not None


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not _gpu_and_vllm(), reason="needs a CUDA GPU and the vllm package")
def test_vllm_serves_the_generated_command(tmp_path):  # pragma: no cover - GPU machines only
    """Train nothing: a tiny base and an untrained LoRA adapter on it, registered and promoted,
    then the generated command starts vLLM and answers a chat request by the production name."""
    import time
    import urllib.request

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ft_pipeline.lib.training.tiny_base import build_tiny_base

    data = tmp_path / "data"
    base_dir = data / "base_models" / "tiny"
    build_tiny_base(base_dir, ["hello there, how can I help you today?", "thanks, that is all."] * 20)
    run = data / "models" / "run-gpu"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=8, target_modules=["q_proj", "v_proj"])
    )
    model.save_pretrained(run / "adapter")
    with ModelRegistry.for_data_dir(data) as registry:
        dataset = registry.record_dataset_version("manual", "train", "2" * 64, 1)
        training = registry.record_training_run("run-gpu", "local_lora", "tiny", dataset, None, {}, 0)
        v = registry.register_model_version(
            MODEL,
            training_run_id=training,
            model_uri="lora://gpu",
            backend="local_lora",
            base_model="tiny",
            run_key="run-gpu",
            dataset_version="d",
            config_hash="c",
            metrics={},
            artifact_path=str(run / "adapter"),
            tags={"base_model_path": "base_models/tiny", "tokenizer_dir": str(base_dir)},
        )
        registry.record_evaluation(
            "e",
            MODEL,
            v.version,
            suite="test",
            eval_dataset_version_id=dataset,
            baseline_model_uri=None,
            base_model_uri="b",
            metrics={},
            per_example_uri="-",
            gate_config={},
            decision="pass",
            leakage_checked=True,
        )
        registry.promote(MODEL, v.version, evaluation_id="e", reason="t", actor="t")
        plan = plan_vllm(registry, MODEL, data, VllmSettings(port=8765, gpu_memory_utilization=0.3, max_model_len=512))
    server = subprocess.Popen(plan.command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:8765/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert server.poll() is None, "vllm exited before it was ready"
                time.sleep(2)
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
        request = urllib.request.Request(
            "http://127.0.0.1:8765/v1/chat/completions", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.load(r)
        assert answer["model"] == MODEL and answer["choices"][0]["message"]["role"] == "assistant"
    finally:
        server.terminate()
        server.wait(timeout=60)
