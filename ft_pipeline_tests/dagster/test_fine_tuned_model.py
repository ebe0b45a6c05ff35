"""fine_tuned_model materialized in process: local LoRA through Pipes, and OpenAI against the fake."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ft_pipeline.definitions import ALL_ASSETS, DATASET_ASSETS, PER_FILE_ASSETS, TRAINING_ASSETS, default_resources
from ft_pipeline.defs.evaluation import registry_kinds
from ft_pipeline.defs.metadata import ASSET_OWNERS, INLINE_MARKDOWN_LIMIT, MODEL_TAGS
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import OpenAIFineTuningResource
from ft_pipeline.defs.training import model_kinds
from ft_pipeline.lib.sample_data import build_sample

SECRET = "sk-test-SECRET-ft-pipeline-0123456789"
FAST_LORA = {
    "base_model": "tiny",
    "max_steps": 6,
    "max_length": 256,
    "per_device_train_batch_size": 8,
    "num_train_epochs": 1.0,
}


@pytest.fixture
def built_dataset(instance, resources):
    names = sorted(build_sample())
    instance.add_dynamic_partitions(log_files_partitions.name, names)
    for name in names:
        assert dg.materialize(PER_FILE_ASSETS, partition_key=name, instance=instance, resources=resources).success
    assert dg.materialize(ALL_ASSETS, selection=DATASET_ASSETS, instance=instance, resources=resources).success
    return instance


def _spec(key):
    return next(spec for asset in ALL_ASSETS for spec in asset.specs if spec.key.to_user_string() == key)


def test_model_assets_kinds_follow_what_the_deployment_can_run():
    assert model_kinds({}) == {"pytorch", "huggingface"}
    for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT"):
        assert model_kinds({variable: "x"}) == {"pytorch", "huggingface", "openai"}
    assert model_kinds({"OPENAI_API_KEY": ""}) == {"pytorch", "huggingface"}
    assert model_kinds({"TOGETHER_API_KEY": "x"}) == {"pytorch", "huggingface", "together"}
    assert registry_kinds({}) == {"sqlite"}
    assert registry_kinds({"FT_PIPELINE_REGISTRY_URL": "postgresql+psycopg2://u@h/db"}) == {"postgres"}
    assert registry_kinds({"FT_PIPELINE_REGISTRY_URL": "sqlite:////tmp/r.db"}) == {"sqlite"}
    # The definitions use them, with owners and the model tags.
    assert set(_spec("fine_tuned_model").kinds) == model_kinds()
    assert set(_spec("promoted_model").kinds) == registry_kinds()
    for key in ("fine_tuned_model", "evaluation_report", "promoted_model"):
        spec = _spec(key)
        assert list(spec.owners) == ASSET_OWNERS
        assert MODEL_TAGS.items() <= spec.tags.items()


def assert_model_metadata(materialization, backend, data_dir):
    """A fine_tuned_model AssetMaterialization: the run key as the one version, the training
    input's version, headline numbers as plain values, an inline-sized loss chart, no JSON dumps;
    file paths relative to the data directory."""
    metadata = materialization.metadata
    assert not Path(metadata["model_record"].value).is_absolute()
    record = json.loads((data_dir / metadata["model_record"].value).read_text())
    assert materialization.tags["dagster/data_version"] == record["version"] == Path(record["path"]).parent.name
    assert metadata["backend"].value == backend
    assert metadata["train_split_version"].value == record["data_version"]
    assert "metrics" not in metadata and "data_version" not in metadata and "version" not in metadata
    assert not [k for k, v in metadata.items() if isinstance(v, dg.JsonMetadataValue)]
    assert isinstance(metadata["train_loss"], dg.FloatMetadataValue)
    chart = metadata["loss_chart"].value
    assert chart.startswith("![train and validation loss](data:image/svg+xml;base64,")
    assert len(chart) < INLINE_MARKDOWN_LIMIT
    return metadata, record


def _train(instance, resources, config):
    return dg.materialize(
        ALL_ASSETS,
        selection=TRAINING_ASSETS,
        instance=instance,
        resources={**default_resources(), **resources},
        run_config={"ops": {"fine_tuned_model": {"config": config}}},
        raise_on_error=False,
    )


@pytest.mark.slow  # LoRA training through Pipes in a subprocess (about 40 s on 2 cores)
def test_local_lora_trains_through_pipes_and_adapter_loads(built_dataset, resources, data_dir):
    result = _train(built_dataset, resources, {"backend": "local_lora", **FAST_LORA})
    assert result.success
    event = result.get_asset_materialization_events()[0]
    metadata, record = assert_model_metadata(event.materialization, "local_lora", data_dir)
    assert metadata["adapter_digest"].value == record["adapter_version"]
    assert metadata["global_step"].value == record["metrics"]["global_step"] == 6
    details = {r.data["name"] for r in metadata["training_details"].value.records}
    assert "total_parameters" in details and "train_loss" not in details
    adapter = Path(record["adapter_dir"])
    assert (adapter / "adapter_config.json").exists()
    assert "data:image/png;base64," in metadata["loss_curve"].value
    # Trainer log lines were streamed back into the Dagster log through Pipes.
    logs = [e.message for e in built_dataset.all_logs(result.run_id) if e.message]
    assert any("train " in m and "loss=" in m for m in logs)
    # The data directory moves (a copy to another machine, a renamed volume): a fresh process still
    # loads the adapter the ecosystem's way, from the adapter folder alone.
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert not Path(config["base_model_name_or_path"]).is_absolute()
    assert not Path(record["base_model_path"]).is_absolute()
    moved = data_dir.parent / "moved-data"
    shutil.move(str(data_dir), moved)
    moved_adapter = moved / adapter.relative_to(data_dir)
    script = (
        "import sys; from transformers import AutoTokenizer; from peft import AutoPeftModelForCausalLM;"
        "m=AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); t=AutoTokenizer.from_pretrained(sys.argv[1]);"
        "ids=t.apply_chat_template([{'role':'user','content':'hello'}], add_generation_prompt=True, "
        "return_tensors='pt', return_dict=True);"
        "out=m.generate(**ids, max_new_tokens=4, do_sample=False); print('generated', out.shape[1])"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HUB_CACHE": os.environ["HF_HUB_CACHE"]}
    done = subprocess.run(
        [sys.executable, "-c", script, str(moved_adapter)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=moved.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generated" in done.stdout


def test_qlora_without_cuda_fails_clearly(built_dataset, resources):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _train(built_dataset, resources, {"backend": "local_lora", "qlora": True, **FAST_LORA})
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    text = str(failure.to_string()) + " ".join(e.message or "" for e in built_dataset.all_logs(result.run_id))
    assert "QLoRA" in text and "CUDA" in text


def test_openai_backend_against_the_fake_server(built_dataset, resources, data_dir, monkeypatch):
    from ft_pipeline_tests.fakes.openai_server import FakeOpenAI

    monkeypatch.setenv("FT_TEST_OPENAI_KEY", SECRET)
    with FakeOpenAI() as fake:
        # The key comes from the variable the resource names; the run config only holds that name.
        openai_resource = OpenAIFineTuningResource(
            api_key_env="FT_TEST_OPENAI_KEY", base_url=fake.base_url, max_retries=2
        )
        config = {"backend": "openai", "openai_poll_interval_s": 0.01, "openai_max_poll_interval_s": 0.02}
        result = _train(built_dataset, {**resources, "openai_fine_tuning": openai_resource}, config)
        assert result.success
        metadata, record_data = assert_model_metadata(
            result.get_asset_materialization_events()[0].materialization, "openai", data_dir
        )
        assert metadata["fine_tuned_model"].value.startswith("ft:")
        assert record_data["remote_model_id"] == metadata["fine_tuned_model"].value
        assert metadata["checkpoints"].value.records[-1].data["step"] > 0
        assert metadata["trained_tokens"].value > 0
        assert len(fake.jobs) == 1
        # A second materialization with the same data and config re-attaches: still one job.
        again = _train(built_dataset, {**resources, "openai_fine_tuning": openai_resource}, config)
        assert again.success and len(fake.jobs) == 1
        assert again.get_asset_materialization_events()[0].materialization.metadata["reattached"].value is True
        # The key never reaches logs or metadata.
        for run in (result, again):
            for entry in built_dataset.all_logs(run.run_id):
                assert SECRET not in (entry.message or "")
                assert SECRET not in str(entry.dagster_event or "")
        record = (data_dir / metadata["model_record"].value).read_text()
        assert SECRET not in record

        # Evaluate the OpenAI model through the same client, with an LLM judge that always says TIE.
        fake.register_model("judge-model")
        fake.set_responder("judge-model", lambda messages, body: "TIE")
        evaluation = dg.materialize(
            ALL_ASSETS,
            selection=[a for a in ALL_ASSETS if "evaluation_report" in {k.to_user_string() for k in a.keys}],
            instance=built_dataset,
            resources={**default_resources(), **resources, "openai_fine_tuning": openai_resource},
            run_config={
                "ops": {
                    "evaluation_report": {
                        # Robustness report only: the fake's fine-tuned model recalls exact prompts.
                        "config": {
                            "judge_model": "judge-model",
                            "n_resamples": 200,
                            "concurrency": 4,
                            "robustness_gate": False,
                        }
                    }
                }
            },
            raise_on_error=False,
        )
        report_meta = evaluation.get_asset_materialization_events()[0].materialization.metadata
        assert report_meta["candidate"].value.startswith("openai:ft:")
        assert report_meta["base"].value == "openai:gpt-4o-mini-2024-07-18"
        judge = next(r.data for r in report_meta["llm_judge"].value.records if r.data["versus"] == "base")
        assert judge["judge_model"] == "judge-model"
        assert judge["ties"] == judge["n"] > 0
        # The human review sample's path, relative to the data directory like the other paths, and
        # the judge's agreement with human review (no verdicts yet).
        review_sample = report_meta["review_sample"].value
        assert review_sample.startswith("reports/") and (data_dir / review_sample).is_file()
        assert report_meta["judge_human_labels"].value == 0 and "judge_human_kappa" not in report_meta
        assert not [k for k, v in report_meta.items() if isinstance(v, dg.JsonMetadataValue)]
        gate = next(c for c in evaluation.get_asset_check_evaluations() if c.check_name == "promotion_gate")
        # The fake's fine-tuned model recalls training answers (the sample repeats follow-up
        # questions), its base echoes: the gate compares them with numbers either way.
        assert "rougeL candidate − base = " in gate.description and "95% CI" in gate.description
        # The robustness suite ran through the OpenAI generators: punctuation defeats exact recall.
        assert "report only (robustness_gate off)" in gate.description and "worst punctuation" in gate.description
        for entry in built_dataset.all_logs(evaluation.run_id):
            assert SECRET not in (entry.message or "")
