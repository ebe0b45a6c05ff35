"""preference_dataset in process: the shipped sample plus a file with every preference signal."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from ft_pipeline.definitions import ALL_ASSETS, DATASET_ASSETS, PER_FILE_ASSETS, PREFERENCE_ASSETS
from ft_pipeline.defs.partitions import log_files_partitions

SIGNALS = "feedback_2024-05-06.jsonl"
SIGN = " Is there anything else I can help with? – Nimbus Care"


def _conversation(cid: str, user: str, question: str, answer: str, **extra) -> dict:
    return {
        "conversation_id": cid,
        "user_id": user,
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer + SIGN}],
        **extra,
    }


def _signal_records() -> list[dict]:
    return [
        # An agent edited the model's reply before sending it.
        _conversation(
            "pref-edit",
            "user-edit",
            "How long is the warranty of the Nimbus Lamp when bought in a shop?",
            "The Nimbus Lamp has a two-year warranty from the date on your receipt, shop or online.",
            edited=True,
            original_content="The lamp has a warranty. Please check the box for the details of it.",
            rating=5,
        ),
        # The user regenerated away from the first reply and accepted the second.
        _conversation(
            "pref-regen-1",
            "user-regen",
            "Can the Nimbus Cam record continuously to a memory card without the cloud plan?",
            "I am not sure about that, maybe try restarting the camera and the app first.",
            regenerated=True,
        ),
        _conversation(
            "pref-regen-2",
            "user-regen",
            "Can the Nimbus Cam record continuously to a memory card without the cloud plan?",
            "Yes: insert a microSD card of up to 256 GB and turn on Continuous recording in Settings.",
        ),
        # Two replies to one prompt, rated 5 and 2.
        _conversation(
            "pref-rate-hi",
            "user-rate-a",
            "Does the Nimbus Plug work with a 2.4 GHz network only or also with 5 GHz networks?",
            "The Nimbus Plug joins 2.4 GHz networks only; your router can keep 5 GHz on for other devices.",
            rating=5,
        ),
        _conversation(
            "pref-rate-lo",
            "user-rate-b",
            "Does the Nimbus Plug work with a 2.4 GHz network only or also with 5 GHz networks?",
            "It works with everything, there is nothing you need to configure on the network at all.",
            rating=2,
        ),
        # Unpaired replies with a clear signal (KTO) and without one.
        _conversation(
            "pref-up",
            "user-up",
            "How do I share the Nimbus Hub with my partner so they can control the lights too?",
            "Open Settings > Household > Invite and enter their email; they get full control once they accept.",
            thumbs="up",
        ),
        _conversation(
            "pref-down",
            "user-down",
            "Why does the Nimbus Thermostat show a different temperature than my old wall thermometer?",
            "Thermometers are sometimes different from each other, that is just how they work in general.",
            thumbs="down",
        ),
        _conversation(
            "pref-contra",
            "user-contra",
            "What happens to my recordings if I cancel the Nimbus cloud plan at the end of the month?",
            "Your recordings stay available for 30 days after the plan ends, then they are deleted for good.",
            rating=5,
            thumbs="down",
        ),
        # Two replies to one prompt with the same rating: a tie.
        _conversation(
            "pref-tie-1",
            "user-tie-a",
            "Can I move the Nimbus Hub to another room without setting all the devices up again?",
            "Yes, unplug it and plug it in again in the new room; every paired device stays paired.",
            rating=4,
        ),
        _conversation(
            "pref-tie-2",
            "user-tie-b",
            "Can I move the Nimbus Hub to another room without setting all the devices up again?",
            "You can move it. The devices keep their pairing as long as they are in range of the hub.",
            rating=4,
        ),
    ]


def _build(instance, resources, data_dir, records):
    with open(data_dir / "raw" / SIGNALS, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    names = sorted(p.name for p in (data_dir / "raw").iterdir())
    instance.add_dynamic_partitions(log_files_partitions.name, names)
    for name in names:
        assert dg.materialize(PER_FILE_ASSETS, partition_key=name, instance=instance, resources=resources).success
    result = dg.materialize(
        ALL_ASSETS, selection=[*DATASET_ASSETS, *PREFERENCE_ASSETS], instance=instance, resources=resources
    )
    assert result.success
    event = next(
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "preference_dataset"
    )
    checks = {
        c.check_name: c for c in result.get_asset_check_evaluations() if c.asset_key.path == ["preference_dataset"]
    }
    return event, checks, data_dir


@pytest.fixture
def built(instance, resources, data_dir):
    return _build(instance, resources, data_dir, _signal_records())


def test_preference_dataset_on_the_sample_with_every_signal(built):
    event, checks, data_dir = built
    metadata = event.materialization.metadata
    assert set(checks) == {"no_pii_left", "no_leakage", "counts_add_up", "openai_format"}
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
    # The counts add up: 2 conversations per pair (1 for an edit), 1 per KTO example and dropped row.
    pairs = pd.read_parquet(data_dir / metadata["pairs_path"].value)
    kto = pd.read_parquet(data_dir / metadata["kto_path"].value)
    dropped = pd.read_parquet(data_dir / metadata["dropped_path"].value)
    edits = int((pairs["rule"] == "edit").sum())
    assert 2 * len(pairs) - edits + len(kto) + len(dropped) == metadata["conversations_in"].value
    assert (metadata["pairs"].value, metadata["kto_examples"].value) == (len(pairs), len(kto))
    # Each planted signal ended where its rule says.
    by_rule = {r.data["reason"]: r.data["count"] for r in metadata["pairs_by_rule"].value.records}
    assert by_rule.get("edit", 0) >= 1 and by_rule.get("regeneration", 0) >= 1 and by_rule.get("rating", 0) >= 1
    # The sample logs carry signals too: pick the planted records' pairs by id.
    regen = pairs[(pairs["rule"] == "regeneration") & (pairs["chosen_conversation_id"] == "pref-regen-2")].iloc[0]
    assert regen["chosen"].startswith("Yes: insert a microSD card")
    edit = pairs[(pairs["rule"] == "edit") & (pairs["chosen_conversation_id"] == "pref-edit")].iloc[0]
    assert edit["chosen"].startswith("The Nimbus Lamp has a two-year warranty")
    assert edit["rejected"].startswith("The lamp has a warranty")
    labels = dict(zip(kto["conversation_id"], kto["label"]))
    assert labels.get("pref-up") is True or labels.get("pref-up") == True  # noqa: E712 (numpy bool)
    assert labels.get("pref-down") == False  # noqa: E712
    reasons = dict(zip(dropped["conversation_id"], dropped["reason"]))
    assert reasons["pref-contra"] == "contradictory"
    assert reasons["pref-tie-1"] == reasons["pref-tie-2"] == "tie"
    # One version: the DataVersion is the folder's name.
    version = event.materialization.tags["dagster/data_version"]
    assert Path(metadata["pairs_path"].value).parent.name == version


def test_preference_jsonl_loads_as_trl_expects(built):
    from datasets import load_dataset

    event, _, data_dir = built
    folder = data_dir / Path(event.materialization.metadata["pairs_path"].value).parent
    dpo_files = [str(p) for p in sorted(folder.glob("*.dpo.jsonl")) if p.stat().st_size]
    kto_files = [str(p) for p in sorted(folder.glob("*.kto.jsonl")) if p.stat().st_size]
    assert dpo_files and kto_files
    dpo = load_dataset("json", data_files=dpo_files, split="train")
    assert {"prompt", "chosen", "rejected"} <= set(dpo.column_names)
    assert dpo[0]["prompt"][-1]["role"] == "user" and dpo[0]["chosen"][0]["role"] == "assistant"
    kto = load_dataset("json", data_files=kto_files, split="train")
    assert {"prompt", "completion", "label"} <= set(kto.column_names)
    openai_lines = [
        json.loads(line) for p in sorted(folder.glob("*.openai.jsonl")) for line in p.read_text().splitlines()
    ]
    assert openai_lines and set(openai_lines[0]) == {"input", "preferred_output", "non_preferred_output"}


_PRODUCTS = ["Lamp", "Cam", "Plug", "Hub", "Thermostat", "Doorbell", "Sensor", "Speaker"]
_TOPICS = ["firmware update", "night mode", "guest access", "energy report", "schedule", "battery saver"]


def _regeneration_pairs(n: int) -> list[dict]:
    """``n`` prompts, each answered twice: a reply the user regenerated away from, then the accepted one."""
    records = []
    for i in range(n):
        product, topic = _PRODUCTS[i % len(_PRODUCTS)], _TOPICS[(i // len(_PRODUCTS)) % len(_TOPICS)]
        question = f"How do I turn on the {topic} of my Nimbus {product} number {i} from the app?"
        records.append(
            _conversation(
                f"regen-{i}-a", f"user-regen-{i}", question, "I do not know, try again later.", regenerated=True
            )
        )
        records.append(
            _conversation(
                f"regen-{i}-b",
                f"user-regen-{i}",
                question,
                f"Open Devices > Nimbus {product} > Settings and switch on {topic.title()}; it takes effect at once.",
            )
        )
    return records


def test_a_dpo_job_from_the_preference_pairs_against_the_fake(instance, data_dir, monkeypatch):
    """fine_tuned_model with method dpo trains a hosted DPO job on preference_dataset's pairs through the
    real openai client and re-attaches on a second run; local DPO trains the tiny base on the same pairs."""
    from ft_pipeline.defs.resources import OpenAIFineTuningResource
    from ft_pipeline_tests.conftest import resources_for
    from ft_pipeline_tests.fakes.openai_server import FakeOpenAI

    resources = resources_for(data_dir)
    event, checks, _ = _build(instance, resources, data_dir, _regeneration_pairs(30))
    assert all(c.passed for c in checks.values()), {n: c.description for n, c in checks.items()}
    preference_version = event.materialization.tags["dagster/data_version"]
    monkeypatch.setenv("FT_TEST_OPENAI_KEY", "sk-test-dpo-0123456789")
    dpo = {"backend": "openai", "method": "dpo", "openai_poll_interval_s": 0.01, "openai_max_poll_interval_s": 0.02}
    with FakeOpenAI() as fake:
        openai_resource = OpenAIFineTuningResource(api_key_env="FT_TEST_OPENAI_KEY", base_url=fake.base_url)

        def train(config):
            return dg.materialize(
                ALL_ASSETS,
                selection=["fine_tuned_model"],
                instance=instance,
                resources={**resources, "openai_fine_tuning": openai_resource},
                run_config={"ops": {"fine_tuned_model": {"config": config}}},
                raise_on_error=False,
            )

        result = train(dpo)
        assert result.success
        metadata = result.get_asset_materialization_events()[0].materialization.metadata
        assert metadata["method"].value == "dpo" and metadata["preference_version"].value == preference_version
        assert len(fake.jobs) == 1
        (job,) = fake.jobs.values()
        assert job["method"]["type"] == "dpo"
        again = train(dpo)
        assert again.success and len(fake.jobs) == 1
        assert again.get_asset_materialization_events()[0].materialization.metadata["reattached"].value is True
        # Local DPO: TRL DPOTrainer on the same pairs (TRL JSONL) in the Pipes trainer process.
        tiny = {"base_model": "tiny", "num_train_epochs": 1, "max_length": 128, "gradient_checkpointing": False}
        local = train({"backend": "local_lora", "method": "dpo", **tiny})
        assert local.success
        metadata = local.get_asset_materialization_events()[0].materialization.metadata
        assert metadata["backend"].value == "local_lora" and metadata["method"].value == "dpo"
        assert metadata["preference_version"].value == preference_version
        details = {row.data["name"] for row in metadata["training_details"].value.records}
        assert {"rewards/margins", "rewards/accuracies"} <= details
        # sft_then_dpo, hosted: an SFT job on the splits, then a DPO job on the SFT job's model;
        # a rerun re-attaches to both (no new job).
        both = {**dpo, "method": "sft_then_dpo"}
        staged = train(both)
        assert staged.success and len(fake.jobs) == 3
        sft_job, dpo_job = sorted(
            (j for j in fake.jobs.values() if j["id"] != job["id"]), key=lambda j: j["method"]["type"] == "dpo"
        )
        assert sft_job["method"]["type"] == "supervised" and dpo_job["method"]["type"] == "dpo"
        assert dpo_job["model"] == sft_job["fine_tuned_model"]
        metadata = staged.get_asset_materialization_events()[0].materialization.metadata
        assert metadata["method"].value == "sft_then_dpo" and metadata["preference_version"].value == preference_version
        assert (
            metadata["train_split_version"].value and metadata["fine_tuned_model"].value == dpo_job["fine_tuned_model"]
        )
        assert train(both).success and len(fake.jobs) == 3
        # sft_then_dpo, local: SFT on the splits, then DPO from that adapter, in one trainer process.
        local_staged = train({"backend": "local_lora", "method": "sft_then_dpo", **tiny})
        assert local_staged.success
        metadata = local_staged.get_asset_materialization_events()[0].materialization.metadata
        assert metadata["method"].value == "sft_then_dpo"
        details = {row.data["name"] for row in metadata["training_details"].value.records}
        assert {"rewards/margins", "sft_train_loss", "sft_global_step"} <= details
        # The gate on preference accuracy (held-out pairs): its numbers are the primary metric's.
        evaluation = dg.materialize(
            ALL_ASSETS,
            selection=["evaluation_report"],
            instance=instance,
            resources={**resources, "openai_fine_tuning": openai_resource},
            run_config={
                "ops": {
                    "evaluation_report": {
                        "config": {
                            "primary_metric": "preference_accuracy",
                            "max_test_examples": 4,
                            "max_new_tokens": 8,
                            "n_resamples": 200,
                            "measure_latency": False,
                            "robustness": False,
                            "use_regression_suite": False,
                        }
                    }
                }
            },
            raise_on_error=False,
        )
        report = evaluation.get_asset_materialization_events()[0].materialization.metadata
        assert report["primary_metric"].value == "preference_accuracy"
        assert {"candidate_preference_accuracy", "base_preference_accuracy"} <= set(report)
        assert "delta_vs_base_preference_accuracy_ci_low" in report
        gate = next(c for c in evaluation.get_asset_check_evaluations() if c.check_name == "promotion_gate")
        assert "preference_accuracy candidate − base =" in gate.description
        kto = train({"backend": "openai", "method": "kto"})
        assert not kto.success
        error = kto.get_step_failure_events()[0].step_failure_data.error
        assert "trained locally only" in str(error.to_string())
