"""`ft-pipeline run --backend azure` raw -> promoted against the loopback Azure fake: the job, its
deployment, the evaluation through the deployment, a rerun that re-attaches, a rejected candidate
whose deployment is deleted, a failed deployment; and no secret anywhere."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from ft_pipeline.cli import main
from ft_pipeline.definitions import ALL_ASSETS
from ft_pipeline.lib.evaluation.candidate import CandidateEvaluationConfig
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline.lib.training.record import read_model_record
from ft_pipeline_tests.conftest import resources_for
from ft_pipeline_tests.fakes.azure_server import FakeAzureOpenAI
from ft_pipeline_tests.fakes.openai_server import _last_user_text

API_KEY = "azure-KEY-SECRET-ft-pipeline-0123456789"
ARM_TOKEN = "arm-TOKEN-SECRET-ft-pipeline-0123456789"
BASE = "gpt-4o-mini-2024-07-18"
MODEL_NAME = CandidateEvaluationConfig().model_name
FAST_JOB = {"backend": "azure", "openai_poll_interval_s": 0.01, "openai_max_poll_interval_s": 0.02}
#: The evaluation without its (informational) latency runs: fewer requests, the same gate.
# The fake's fine-tuned models recall their exact training prompts, so any perturbation defeats them:
# the robustness suite runs (on 4 prompts) and is reported, not gated, as in test_fine_tuned_model.
FAST_EVALUATION = {"n_resamples": 200, "measure_latency": False, "robustness_examples": 4, "robustness_gate": False}


def _train_and_evaluate(data, job: dict, *, evaluate: bool = True) -> dg.ExecuteInProcessResult:
    """fine_tuned_model (and evaluation_report) again, with the resources `ft-pipeline run` builds."""
    ops: dict = {"fine_tuned_model": {"config": {**FAST_JOB, **job}}}
    if evaluate:
        ops["evaluation_report"] = {"config": FAST_EVALUATION}
    with dg.DagsterInstance.get() as instance:
        return dg.materialize(
            ALL_ASSETS,
            selection=list(ops),
            instance=instance,
            resources=resources_for(data),
            run_config={"ops": ops},
            raise_on_error=False,
        )


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    event = next(
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ).materialization
    return {key: value.value for key, value in event.metadata.items()}


@pytest.mark.slow  # the whole graph through the CLI against the fake (about 15 s on 2 idle cores)
def test_run_backend_azure_deploys_evaluates_promotes_reattaches_and_deletes_rejected(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    data = tmp_path / "data"
    main(["sample-data", str(data / "raw")])
    with FakeAzureOpenAI(api_key=API_KEY, arm_token=ARM_TOKEN, deployment_ticks=1) as fake:
        for name, value in {
            "AZURE_OPENAI_ENDPOINT": fake.endpoint,
            "AZURE_OPENAI_API_KEY": API_KEY,
            "FT_PIPELINE_AZURE_ARM_TOKEN": ARM_TOKEN,
            "FT_PIPELINE_AZURE_ARM_URL": fake.endpoint,
            "FT_PIPELINE_AZURE_SUBSCRIPTION_ID": fake.subscription_id,
            "FT_PIPELINE_AZURE_RESOURCE_GROUP": fake.resource_group,
            "FT_PIPELINE_AZURE_ACCOUNT": fake.account_name,
        }.items():
            monkeypatch.setenv(name, value)
        quick = [f"--set=fine_tuned_model.{k}={v}" for k, v in FAST_JOB.items() if k != "backend"]
        quick += [f"--set=evaluation_report.{k}={json.dumps(v)}" for k, v in FAST_EVALUATION.items()]
        fake.lose_response_after_apply("POST", r"/fine_tuning/jobs$")  # the create's answer is lost once
        assert main(["run", "--data-dir", str(data), "--backend", "azure", *quick]) == 0
        printed = capsys.readouterr()
        assert "decision: PROMOTE" in printed.out

        # One job; its model deployed under the run key's name, and that is what the record calls.
        record = read_model_record(data / "models")
        assert record is not None and len(fake.jobs) == 1
        deployment = f"ft-pipeline-{record.run_key}"
        assert (record.backend, record.remote_model_id) == ("azure", deployment)
        assert record.fine_tuned_model_id == next(iter(fake.jobs.values()))["fine_tuned_model"]
        assert fake.deployments[deployment]["properties"]["provisioningState"] == "Succeeded"
        # Evaluated through the deployment, the base through its own deployment.
        assert fake.requests_matching("POST", rf"^/openai/deployments/{deployment}/chat/completions$")
        assert fake.requests_matching("POST", rf"^/openai/deployments/{BASE}/chat/completions$")
        registry = ModelRegistry.for_data_dir(data.resolve())
        production = registry.resolve(MODEL_NAME)
        assert production is not None and production.backend == "azure"
        assert production.remote_model_id == production.model_uri == deployment

        # A rerun re-attaches to the job and re-uses the deployment: nothing new is paid for.
        rerun = _train_and_evaluate(data, {}, evaluate=False)
        trained = _metadata(rerun, "fine_tuned_model")
        assert (trained["reattached"], trained["deployment_reused"], trained["deployment"]) == (True, True, deployment)
        assert len(fake.jobs) == 1 and len(fake.requests_matching("PUT", r"/deployments/")) == 1

        # Another candidate that only echoes (as the base does) is rejected: its deployment is
        # deleted, production's is kept.
        fake.new_deployment_responder = lambda messages, body: _last_user_text(messages)
        rejected = _train_and_evaluate(data, {"openai_suffix": "second"})
        gate = next(c for c in rejected.get_asset_check_evaluations() if c.check_name == "promotion_gate")
        assert not gate.passed and len(fake.jobs) == 2
        second = read_model_record(data / "models")
        assert second is not None and second.remote_model_id != deployment
        assert _metadata(rejected, "evaluation_report")["rejected_deployment"] == (
            f"rejected candidate's deployment {second.remote_model_id} deleted"
        )
        assert fake.deleted_deployments == [second.remote_model_id]
        assert deployment in fake.deployments and registry.resolve(MODEL_NAME).version == production.version
        assert registry.get_version(MODEL_NAME, production.version + 1).lifecycle == "rejected"

        # A deployment that fails fails the run with the reason.
        fake.fail_next_deployment("The fine-tuned model is not available for deployment in this region")
        failed = _train_and_evaluate(data, {"openai_suffix": "third"}, evaluate=False)
        assert not failed.success
        (failure,) = [e for e in failed.get_step_failure_events() if e.step_key == "fine_tuned_model"]
        assert "Failed: DeploymentFailed: The fine-tuned model is not available" in str(failure.step_failure_data.error)

        # No secret in any log line, event, metadata value, error, printed line, or file written.
        with dg.DagsterInstance.get() as instance:
            runs = [r.dagster_run.run_id for r in instance.get_run_records()]
            assert len(runs) > 3
            for run_id in runs:
                for entry in instance.all_logs(run_id):
                    text = f"{entry.message} {entry.dagster_event} {entry.user_message}"
                    assert API_KEY not in text and ARM_TOKEN not in text
        assert not any(secret in printed.out + printed.err for secret in (API_KEY, ARM_TOKEN))
        for path in [*data.rglob("*"), *home.rglob("*")]:
            if path.is_file():
                content = path.read_bytes()
                assert API_KEY.encode() not in content and ARM_TOKEN.encode() not in content, path
        assert all(API_KEY not in json.dumps(r.headers) for r in fake.requests)
        assert fake.validation_errors == []


@pytest.mark.parametrize("missing", ["AZURE_OPENAI_API_KEY", "FT_PIPELINE_AZURE_ACCOUNT"])
def test_resource_names_what_is_missing_and_never_holds_a_secret(monkeypatch, missing):
    from ft_pipeline.definitions import default_resources
    from ft_pipeline.defs.resources import AzureOpenAIResource

    settings = {
        "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9",
        "AZURE_OPENAI_API_KEY": API_KEY,
        "FT_PIPELINE_AZURE_ARM_TOKEN": ARM_TOKEN,
        "FT_PIPELINE_AZURE_SUBSCRIPTION_ID": "sub",
        "FT_PIPELINE_AZURE_RESOURCE_GROUP": "rg",
        "FT_PIPELINE_AZURE_ACCOUNT": "acct",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(missing)
    resource = default_resources()["azure_openai"]
    assert isinstance(resource, AzureOpenAIResource)
    dumped = json.dumps(resource.model_dump())
    assert API_KEY not in dumped and ARM_TOKEN not in dumped and "AZURE_OPENAI_API_KEY" in dumped
    if missing == "AZURE_OPENAI_API_KEY":
        with pytest.raises(dg.Failure, match="AZURE_OPENAI_API_KEY is not set"):
            resource.get_client()
        assert resource.deployments().config.account_name == "acct"
    else:
        assert resource.chat_client().api_key == API_KEY
        with pytest.raises(dg.Failure, match="needs account_name"):
            resource.deployments()
