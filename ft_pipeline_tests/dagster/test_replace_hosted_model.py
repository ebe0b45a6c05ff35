"""The job replace_hosted_model against the fake OpenAI server as the hosted production model: it
refuses without a hosted production model, keeps the hosted model when the local candidate is
worse, promotes the candidate when it is no worse (the registry naming the replaced model), and
refuses once production is local."""

import json
import random

import dagster as dg
import pandas as pd
import pytest

from ft_pipeline.cli import main as cli
from ft_pipeline.definitions import ALL_ASSETS
from ft_pipeline.defs.provider_exit import JOB_NAME, replace_hosted_model_job, replacement_run_config
from ft_pipeline.defs.resources import OpenAIFineTuningResource
from ft_pipeline.lib.evaluation.generation import split_prompt_reference
from ft_pipeline.lib.manifests import SplitsManifest, write_manifest
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline_tests.conftest import resources_for

SECRET = "sk-test-SECRET-replace-0123456789"
HOSTED = "ft:gpt-4o-mini-2024-07-18:org:assistant:hosted1"
MODEL = "ft-pipeline-assistant"
SPLITS_VERSION = "hosted-splits-v1"
# The tiny base on a few dozen templated conversations: six steps teach it enough of the answers'
# words to beat its untrained self (ROUGE-L about 0.36 against 0.04: the gate's beats_base stays on).
TRAIN = {
    "base_model": "tiny",
    "lora_r": 8,
    "lora_alpha": 16,
    "learning_rate": 0.01,
    "max_steps": 6,
    "per_device_train_batch_size": 2,
    "max_length": 256,
    "gradient_checkpointing": False,
}
EVAL = {
    "max_new_tokens": 24,
    "n_resamples": 300,
    "measure_latency": False,
    # The tiny local candidate recalls its training prompts and the random-weight base scores ~0, so
    # robustness is reported on 4 prompts, not gated (as in the whole-graph tests).
    "robustness_examples": 4,
    "robustness_gate": False,
    "compute_perplexity": False,
    "use_regression_suite": False,
    "concurrency": 4,
}
_PRODUCTS = ["plug", "bulb", "camera", "thermostat", "doorbell", "speaker"]
_ISSUES = ["is offline", "keeps blinking", "will not pair", "shows error 42", "is very slow"]


def _conversations(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        product, issue = rng.choice(_PRODUCTS), rng.choice(_ISSUES)
        out.append(
            [
                {"role": "user", "content": f"My {product} {issue}. What should I do?"},
                {
                    "role": "assistant",
                    "content": f"Sorry about your {product}. Unplug the {product}, wait ten seconds, plug it back "
                    "in and open the app.",
                },
            ]
        )
    return out


def _write_splits(data_dir):
    """Splits as train_validation_test_split leaves them (files under splits/<version>/ and the
    latest pointer), with templated conversations small enough to train on in seconds."""
    folder = data_dir / "splits" / SPLITS_VERSION
    folder.mkdir(parents=True)
    paths = {}
    for name, (n, seed) in {"train": (48, 0), "validation": (8, 1), "test": (12, 2)}.items():
        conversations = _conversations(n, seed)
        pd.DataFrame(
            {
                "conversation_id": [f"{name}{i}" for i in range(n)],
                "messages": conversations,
                "tags": [["support"]] * n,
                # Distinct per split: the test split shares nothing with training.
                "exact_hash": [f"{name}-{i}" for i in range(n)],
            }
        ).to_parquet(folder / f"{name}.parquet")
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
        paths[name] = {"parquet": str(folder / f"{name}.parquet"), "jsonl": str(folder / f"{name}.jsonl")}
    manifest = SplitsManifest(version=SPLITS_VERSION, curated_version="c", paths=paths)
    write_manifest(data_dir / "splits", manifest)
    return manifest


def _key(messages):
    return json.dumps([[m["role"], m["content"]] for m in messages])


def _register_hosted_production(registry, splits_version):
    """The hosted model as `fine_tuned_model` (backend openai) and a passing evaluation left it."""
    train = registry.record_dataset_version("curated", "train", "0" * 64, 1)
    run = registry.record_training_run("hosted-run", "openai", "gpt-4o-mini-2024-07-18", train, None, {}, 0)
    version = registry.register_model_version(
        MODEL,
        training_run_id=run,
        model_uri=HOSTED,
        backend="openai",
        base_model="gpt-4o-mini-2024-07-18",
        run_key="hosted-run",
        dataset_version=splits_version,
        config_hash="h",
        metrics={},
        remote_model_id=HOSTED,
    )
    registry.record_evaluation(
        "e-hosted",
        MODEL,
        version.version,
        suite="test",
        eval_dataset_version_id=registry.record_dataset_version("curated", "eval", "1" * 64, 1),
        baseline_model_uri=None,
        base_model_uri="gpt-4o-mini-2024-07-18",
        metrics={},
        per_example_uri="-",
        gate_config={},
        decision="pass",
        leakage_checked=True,
    )
    registry.promote(MODEL, version.version, evaluation_id="e-hosted", reason="hosted fine-tune", actor="test")
    return version


def _failure(result):
    error = result.get_step_failure_events()[0].step_failure_data.error
    return error.message


# Trains through Pipes in a subprocess like the other local-training Dagster tests: about 20 s of CPU
# (a minute on a loaded 2-core machine), most of it the trainer process importing torch and TRL.
@pytest.mark.slow
def test_replace_hosted_model_promotes_only_a_non_inferior_local_model(
    instance, tmp_path, monkeypatch, capsys, one_torch_thread
):
    data_dir = tmp_path / "data"
    resources = resources_for(data_dir)
    splits = _write_splits(data_dir)
    test = pd.read_parquet(splits.parquet("test"), columns=["messages"])
    references = {_key(p): r for p, r in (split_prompt_reference(list(m)) for m in test["messages"])}

    from ft_pipeline_tests.fakes.openai_server import FakeOpenAI

    monkeypatch.setenv("FT_TEST_OPENAI_KEY", SECRET)
    with FakeOpenAI() as fake:
        fake.register_model(HOSTED)
        openai = OpenAIFineTuningResource(api_key_env="FT_TEST_OPENAI_KEY", base_url=fake.base_url, max_retries=0)
        defs = dg.Definitions(
            assets=ALL_ASSETS, jobs=[replace_hosted_model_job], resources={**resources, "openai_fine_tuning": openai}
        )
        job = defs.resolve_job_def(JOB_NAME)

        def run(evaluation=EVAL, **kwargs):
            config = {"fine_tuned_model": {"config": TRAIN}, "evaluation_report": {"config": evaluation}}
            return job.execute_in_process(
                instance=instance, run_config=replacement_run_config({"ops": config}), raise_on_error=False, **kwargs
            )

        # No production model: nothing to replace, before any training.
        nothing = run()
        assert not nothing.success
        assert "there is no hosted model to replace" in _failure(nothing)
        assert not nothing.get_asset_materialization_events()

        registry = ModelRegistry.for_data_dir(data_dir)
        hosted = _register_hosted_production(registry, splits.version)

        # The hosted model answers every test prompt with its reference: the local candidate is
        # inferior, the gate keeps the hosted model and promoted_model does not run.
        fake.set_responder(HOSTED, lambda messages, body: references.get(_key(messages), "no idea"))
        inferior = run()
        gate = next(c for c in inferior.get_asset_check_evaluations() if c.check_name == "promotion_gate")
        assert not gate.passed
        assert "non_inferior_to_production failed" in gate.description
        assert "non-inferiority margin" in gate.description
        assert {e.asset_key.to_user_string() for e in inferior.get_asset_materialization_events()} == {
            "fine_tuned_model",
            "evaluation_report",
        }
        report = inferior.asset_materializations_for_node("evaluation_report")[0].metadata
        assert report["production"].value == f"openai:{HOSTED}"
        assert report["replaces_model_id"].value == HOSTED
        assert report["production_rougeL"].value == pytest.approx(1.0)
        assert registry.resolve(MODEL).version == hosted.version
        rejected = registry.list_versions(MODEL)[-1]
        assert rejected.backend == "local_lora" and rejected.lifecycle == "rejected"
        assert rejected.dataset_version == splits.version

        # The hosted model answers badly: the same candidate, evaluated again, is no worse, and is
        # promoted (a new evaluation: other resamples, so another evaluation id).
        fake.set_responder(HOSTED, lambda messages, body: "No.")
        keys = [dg.AssetKey("evaluation_report"), dg.AssetKey("promoted_model")]
        replaced = run({**EVAL, "n_resamples": 301}, asset_selection=keys)
        assert replaced.success, [e.message for e in instance.all_logs(replaced.run_id) if e.message][-5:]
        production = registry.resolve(MODEL)
        assert production.version == rejected.version and production.backend == "local_lora"
        assert production.tags["replaced_model_id"] == HOSTED
        assert (production.tags["replaced_backend"], production.tags["replaced_version"]) == ("openai", 1)
        event = registry.history(MODEL, "production")[-1]
        assert (event.action, event.from_version, event.to_version) == ("promote", 1, production.version)
        assert event.reason.startswith(f"replaces hosted openai model {HOSTED} ({MODEL} v1): rougeL candidate")
        promoted = replaced.asset_materializations_for_node("promoted_model")[0].metadata
        assert promoted["replaced_model_id"].value == HOSTED
        for result in (nothing, inferior, replaced):
            for entry in instance.all_logs(result.run_id):
                assert SECRET not in (entry.message or "") and SECRET not in str(entry.dagster_event or "")

    # Production is local now: the command refuses before training, and says why.
    home = tmp_path / "cli_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    capsys.readouterr()
    assert cli(["replace-hosted-model", "--data-dir", str(data_dir), "--set", "fine_tuned_model.max_steps=1"]) == 1
    err = capsys.readouterr().err
    assert f"production is v{production.version}, a local_lora model" in err and "not a hosted one" in err
    assert cli(["replace-hosted-model", "--data-dir", str(data_dir), "--set", "splits.seed=1"]) == 2
    assert "has no step 'train_validation_test_split'" in capsys.readouterr().err
