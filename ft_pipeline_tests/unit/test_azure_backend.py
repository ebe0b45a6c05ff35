"""The azure backend against the loopback fake: ARM deployments (create, wait, re-use, fail,
retry, time out, delete), the backend's job + deployment run, and the rejected-candidate clean-up."""

from __future__ import annotations

import json

import pytest

from ft_pipeline.lib.manifests import SplitsManifest
from ft_pipeline.lib.training.backends import TrainingHooks, TrainingRequest, train_with
from ft_pipeline.lib.training.backends.azure import (
    AzureBackend,
    AzureDeploymentConfig,
    AzureDeployments,
    DeploymentError,
    DeploymentTimeout,
    delete_rejected_deployment,
)
from ft_pipeline.lib.training.openai_job import FineTuneError, OpenAIFineTuneConfig
from ft_pipeline.lib.training.record import ModelRecord, read_model_record
from ft_pipeline_tests.fakes.azure_server import FakeAzureOpenAI
from ft_pipeline_tests.fakes.openai_server import examples_jsonl

API_KEY = "azure-KEY-never-shown-0123456789"
ARM_TOKEN = "arm-TOKEN-never-shown-0123456789"
BASE = "gpt-4o-mini-2024-07-18"
HI = [{"role": "user", "content": "question 3"}]


@pytest.fixture
def fake():
    with FakeAzureOpenAI(api_key=API_KEY, arm_token=ARM_TOKEN, deployment_ticks=3) as server:
        yield server
        assert server.validation_errors == []
        for request in server.requests:  # the fake's own log never keeps a secret either
            assert API_KEY not in json.dumps(request.headers) and ARM_TOKEN not in json.dumps(request.headers)


def _deployments(fake, *, sleeps=None, **settings) -> AzureDeployments:
    config = AzureDeploymentConfig(
        subscription_id=fake.subscription_id,
        resource_group=fake.resource_group,
        account_name=fake.account_name,
        arm_base_url=fake.endpoint,
        **{"poll_interval_s": 0.5, **settings},
    )
    return AzureDeployments(
        config,
        lambda: ARM_TOKEN,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
    )


def _arm_puts(fake):
    return fake.requests_matching("PUT", r"/deployments/")


def test_deploy_waits_until_succeeded_and_only_then_answers(fake):
    client = fake.client(api_key=API_KEY)
    sleeps: list[float] = []
    deployments = _deployments(fake, sleeps=sleeps, sku_name="GlobalStandard", sku_capacity=2)
    lines: list[str] = []
    created = deployments.create("ft-one", BASE)
    assert created.state == "Creating"
    with pytest.raises(Exception, match="DeploymentNotFound|does not exist"):
        client.chat.completions.create(model="ft-one", messages=HI)
    deployment = deployments.wait("ft-one", on_log=lines.append)
    assert (deployment.name, deployment.model, deployment.state) == ("ft-one", BASE, "Succeeded")
    assert sleeps == [0.5, 0.5] and lines == ["azure deployment ft-one: Creating", "azure deployment ft-one: Succeeded"]
    (put,) = _arm_puts(fake)
    assert put.query_dict["api-version"] == "2023-05-01"
    assert put.json == {
        "sku": {"name": "GlobalStandard", "capacity": 2},
        "properties": {"model": {"format": "OpenAI", "name": BASE, "version": "1"}},
    }
    answer = client.chat.completions.create(model="ft-one", messages=HI)
    assert answer.choices[0].message.content == "question 3"
    assert fake.requests_matching("POST", r"/openai/deployments/ft-one/chat/completions$")


def test_deploy_is_idempotent_and_refuses_another_models_name(fake):
    deployments = _deployments(fake)
    first = deployments.deploy("ft-two", BASE)
    again = deployments.deploy("ft-two", BASE)
    assert (first.reused, again.reused, again.state) == (False, True, "Succeeded")
    assert len(_arm_puts(fake)) == 1
    with pytest.raises(DeploymentError, match="exists and serves gpt-4o-mini-2024-07-18, not gpt-4o-mini"):
        deployments.deploy("ft-two", "gpt-4o-mini")


def test_a_failed_deployment_raises_its_reason_and_a_retry_creates_it_again(fake):
    deployments = _deployments(fake)
    fake.fail_next_deployment("quota exceeded for Standard in this region")
    with pytest.raises(DeploymentError, match="ft-three of .* Failed: DeploymentFailed: quota exceeded"):
        deployments.deploy("ft-three", BASE)
    lines: list[str] = []
    deployment = deployments.deploy("ft-three", BASE, on_log=lines.append)
    assert deployment.state == "Succeeded" and not deployment.reused
    assert lines[0] == "azure deployment ft-three is Failed: creating it again"


def test_arm_calls_are_retried_and_a_lost_put_makes_one_deployment(fake):
    sleeps: list[float] = []
    deployments = _deployments(fake, sleeps=sleeps)
    fake.lose_response_after_apply("PUT", r"/deployments/ft-four$")
    fake.inject("GET", r"/deployments/ft-four$", times=1, status=503, headers={"retry-after": "2"})
    assert deployments.deploy("ft-four", BASE).state == "Succeeded"
    assert len(_arm_puts(fake)) == 2 and 2.0 in sleeps
    assert "ft-four" in fake.deployments
    fake.inject("GET", r"/deployments/ft-five$", times=3, status=500)
    with pytest.raises(DeploymentError, match=r"GET failed after 3 attempt\(s\) \(HTTP 500\)"):
        deployments.get("ft-five")


def test_a_deployment_that_never_succeeds_times_out_and_is_left(fake):
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    config = _deployments(fake, timeout_s=5.0).config
    deployments = AzureDeployments(config, lambda: ARM_TOKEN, sleep=sleep, clock=lambda: now[0])
    fake.deployment_ticks = 1000
    deployments.create("ft-six", BASE)
    with pytest.raises(DeploymentTimeout, match="still Creating after 5 s; it was left"):
        deployments.wait("ft-six")
    assert now[0] == 5.0
    assert fake.deployments["ft-six"]["properties"]["provisioningState"] == "Creating"


def test_errors_never_carry_the_token_and_name_what_is_missing(fake):
    # A server that echoes the token in its error message (defence in depth).
    fake.inject(
        "GET", r"/deployments/ft-seven$", status=403, body={"error": {"code": "Forbidden", "message": ARM_TOKEN}}
    )
    with pytest.raises(DeploymentError) as caught:
        _deployments(fake).get("ft-seven")
    assert "HTTP 403 Forbidden: ***" in str(caught.value) and ARM_TOKEN not in str(caught.value)
    wrong = AzureDeployments(_deployments(fake).config, lambda: "not-the-token")
    with pytest.raises(DeploymentError, match="HTTP 401 InvalidAuthenticationToken"):
        wrong.get("ft-seven")

    def no_credential() -> str:
        raise RuntimeError("DefaultAzureCredential failed to retrieve a token")

    with pytest.raises(DeploymentError, match=r"could not get an Azure Resource Manager token \(RuntimeError\)"):
        AzureDeployments(_deployments(fake).config, no_credential).get("ft-seven")
    with pytest.raises(ValueError, match="needs resource_group, account_name"):
        AzureDeployments(AzureDeploymentConfig(subscription_id="s"), lambda: ARM_TOKEN)


def test_deployment_names_follow_the_run_key_within_64_characters():
    config = AzureDeploymentConfig()
    assert config.deployment_name("d0fdd94f0d215071") == "ft-pipeline-d0fdd94f0d215071"
    assert config.deployment_name("a/b c") == "ft-pipeline-a-b-c"
    long = config.deployment_name("k" * 100)
    assert len(long) <= 64 and long.startswith("ft-pipeline-") and long != config.deployment_name("k" * 99)
    with pytest.raises(ValueError, match="deployment_prefix"):
        AzureDeploymentConfig(deployment_prefix="has space")
    with pytest.raises(ValueError, match="sku_capacity"):
        AzureDeploymentConfig(sku_capacity=0)


def _request(tmp_path) -> TrainingRequest:
    paths = {}
    for split, n in (("train", 12), ("validation", 3)):
        path = tmp_path / f"{split}.jsonl"
        path.write_bytes(examples_jsonl([(f"question {i}", f"answer {i}") for i in range(n)]))
        paths[split] = {"jsonl": str(path), "parquet": str(tmp_path / f"{split}.parquet")}
    splits = SplitsManifest(version="splits-v1", curated_version="curated-v1", paths=paths)
    return TrainingRequest("sft", splits, None, tmp_path / "models", tmp_path)


def _backend(fake, **job) -> AzureBackend:
    config = OpenAIFineTuneConfig(poll_interval_s=0.01, max_poll_interval_s=0.01, **job)
    return AzureBackend(fake.client(api_key=API_KEY), config, _deployments(fake))


def test_the_backend_trains_deploys_and_records_the_deployment_and_a_rerun_reuses_both(fake, tmp_path):
    request = _request(tmp_path)
    fake.lose_response_after_apply("POST", r"/fine_tuning/jobs$")  # the create's answer is lost
    lines: list[str] = []
    outcome = train_with(_backend(fake), request, TrainingHooks(on_log=lines.append))
    record = outcome.record
    assert len(fake.jobs) == 1
    assert record.backend == "azure" and record.remote_model_id == f"ft-pipeline-{record.run_key}"
    assert record.model_uri == record.remote_model_id
    assert record.fine_tuned_model_id == outcome.headline["fine_tuned_model"]
    assert record.fine_tuned_model_id.startswith("ft:gpt-4o-mini")
    assert outcome.headline["deployment"] == record.remote_model_id
    assert (outcome.headline["deployment_reused"], outcome.headline["deployment_state"]) == (False, "Succeeded")
    assert f"azure: deploying {record.fine_tuned_model_id} as {record.remote_model_id}" in lines
    assert read_model_record(request.models_folder) == record
    # The deployment answers as the fine-tuned model (which recalls its training answers).
    answer = fake.client(api_key=API_KEY).chat.completions.create(model=record.remote_model_id, messages=HI)
    assert answer.choices[0].message.content == "answer 3"

    again = train_with(_backend(fake), request, TrainingHooks())
    assert len(fake.jobs) == 1 and len(_arm_puts(fake)) == 1
    assert (again.headline["reattached"], again.headline["deployment_reused"]) == (True, True)
    assert again.record.run_key == record.run_key
    # An older record (before fine_tuned_model_id existed) still reads.
    latest = request.models_folder / "latest.json"
    body = json.loads(latest.read_text())
    del body["fine_tuned_model_id"]
    latest.write_text(json.dumps(body))
    assert read_model_record(request.models_folder).fine_tuned_model_id is None


def test_a_failed_deployment_fails_the_run_and_a_cancel_while_deploying_deletes_it(fake, tmp_path):
    request = _request(tmp_path)
    fake.fail_next_deployment("The model is not available in this region")
    with pytest.raises(FineTuneError, match="Failed: DeploymentFailed: The model is not available in this region"):
        train_with(_backend(fake), request, TrainingHooks())

    def interrupt(line: str) -> None:
        if "requested" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_with(_backend(fake, seed=7), request, TrainingHooks(on_log=interrupt))
    (name,) = fake.deleted_deployments
    assert name not in fake.deployments and name.startswith("ft-pipeline-")


def _record(backend: str, remote: str | None) -> ModelRecord:
    return ModelRecord(
        version="k",
        path="p",
        backend=backend,
        run_key="k",
        base_model=BASE,
        data_version="d",
        split_paths={},
        config={},
        config_hash="h",
        metrics={},
        remote_model_id=remote,
    )


def test_a_rejected_candidates_deployment_is_deleted_unless_kept(fake):
    deployments = _deployments(fake)
    deployments.deploy("ft-rejected", BASE)
    lines: list[str] = []
    assert delete_rejected_deployment(_record("openai", "ft:x"), lambda: deployments, production_uri=None) is None
    kept = _deployments(fake, delete_rejected=False)
    outcome = delete_rejected_deployment(_record("azure", "ft-rejected"), lambda: kept, production_uri=None)
    assert outcome is not None and "kept (delete_rejected is off)" in outcome
    outcome = delete_rejected_deployment(
        _record("azure", "ft-rejected"), lambda: deployments, production_uri="ft-rejected"
    )
    assert outcome == "deployment ft-rejected kept: it serves the production model"
    outcome = delete_rejected_deployment(
        _record("azure", "ft-rejected"), lambda: deployments, production_uri="ft-other", log=lines.append
    )
    assert outcome == lines[0] == "rejected candidate's deployment ft-rejected deleted"
    assert fake.deleted_deployments == ["ft-rejected"] and "ft-rejected" not in fake.deployments
    again = delete_rejected_deployment(_record("azure", "ft-rejected"), lambda: deployments, production_uri=None)
    assert again == "rejected candidate's deployment ft-rejected was already gone"
