"""Local preference training (DPO, KTO) on the tiny base: adapter, reward logs, stop and resume.

CPU only, a handful of preference examples written with the project's own TRL record writers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest

from ft_pipeline.lib.preference_format import to_trl_dpo_record, to_trl_kto_record
from ft_pipeline.lib.training.lora import LoraTrainingConfig, newest_complete_checkpoint, run_key
from ft_pipeline.lib.training.preference_trainer import REWARD_METRICS, train_preferences
from ft_pipeline_tests.unit.test_lora_training import _env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DPO = LoraTrainingConfig(
    base_model="tiny",
    method="dpo",
    dpo_beta=0.1,
    lora_r=8,
    lora_alpha=16,
    learning_rate=5e-3,
    preference_learning_rate=5e-3,  # tiny random base, few steps: as fast as the SFT tests
    num_train_epochs=2,
    per_device_train_batch_size=2,
    max_length=128,
    gradient_checkpointing=False,
    warmup_ratio=0.0,
)
KTO = dataclasses.replace(DPO, method="kto")
VERSION = "prefs-v1"

_PRODUCTS = ["plug", "bulb", "camera", "thermostat", "doorbell", "speaker"]


def _prompt(product: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are Nimbus, a support assistant."},
        {"role": "user", "content": f"My {product} is offline. What should I do?"},
    ]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _dpo_file(path: Path, n: int) -> Path:
    good = "Unplug the {p}, wait ten seconds, plug it back in and open the app."
    bad = "No idea, sorry."
    return _write(
        path,
        [to_trl_dpo_record(_prompt(p), good.format(p=p), bad) for p in (_PRODUCTS * 2)[:n]],
    )


def _kto_file(path: Path, n: int) -> Path:
    good = "Unplug the {p}, wait ten seconds, plug it back in and open the app."
    records = []
    for i, p in enumerate((_PRODUCTS * 2)[:n]):
        records.append(to_trl_kto_record(_prompt(p), good.format(p=p) if i % 2 == 0 else "No idea.", i % 2 == 0))
    return _write(path, records)


def test_sft_config_hash_ignores_the_preference_fields():
    sft = LoraTrainingConfig(base_model="tiny")
    assert dataclasses.replace(sft, dpo_beta=0.5).config_hash() == sft.config_hash()
    assert dataclasses.replace(sft, method="dpo").config_hash() != sft.config_hash()
    assert DPO.config_hash() != dataclasses.replace(DPO, dpo_beta=0.5).config_hash()
    with pytest.raises(ValueError, match="method"):
        LoraTrainingConfig(method="ppo")
    with pytest.raises(ValueError, match="dpo_beta"):
        LoraTrainingConfig(method="dpo", dpo_beta=0.0)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    train, validation = _dpo_file(root / "train.jsonl", 8), _dpo_file(root / "validation.jsonl", 2)
    out = root / run_key(VERSION, DPO, DPO.base_model)
    logs: list[dict] = []
    result = train_preferences(train, validation, out, DPO, data_version=VERSION, on_log=logs.append)
    return result, logs, train, validation


def test_dpo_writes_an_adapter_and_logs_the_rewards(dpo_run):
    result, logs, _, _ = dpo_run
    train_logs = [d for d in logs if d["kind"] == "train"]
    assert train_logs and all(k in train_logs[0] for k in ("loss", *REWARD_METRICS))
    assert result.metrics["method"] == "dpo" and result.metrics["global_step"] == 8
    assert result.metrics["learning_rate"] == pytest.approx(5e-3)
    assert 0.0 <= result.metrics["rewards/accuracies"] <= 1.0
    assert result.metrics["eval_loss"] is not None
    assert all("rewards/margins" in r for r in result.loss_history if "loss" in r)
    # Margins grow: the policy moves toward the chosen replies (high learning rate, easy pairs).
    margins = [r["rewards/margins"] for r in result.loss_history if "loss" in r]
    assert margins[-1] > margins[0]
    assert (result.adapter_dir / "adapter_config.json").exists()
    assert json.loads((result.output_dir / "run.json").read_text())["status"] == "complete"


def test_dpo_adapter_loads_in_a_fresh_process(dpo_run, tmp_path):
    result, *_ = dpo_run
    script = tmp_path / "load.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys, torch
            from peft import AutoPeftModelForCausalLM
            from transformers import AutoTokenizer
            model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]).eval()
            tok = AutoTokenizer.from_pretrained(sys.argv[1])
            enc = tok.apply_chat_template([{"role": "user", "content": "My plug is offline."}],
                                          add_generation_prompt=True, return_dict=True, return_tensors="pt")
            with torch.no_grad():
                lora = model(**enc).logits
                with model.disable_adapter():
                    base = model(**enc).logits
            print(json.dumps({"adapter_effect": float((lora - base).abs().max())}))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(result.adapter_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["adapter_effect"] > 1e-4


def test_dpo_stops_at_a_checkpoint_and_resumes(dpo_run, tmp_path):
    full, _, train, validation = dpo_run
    out = tmp_path / "run"
    calls = {"n": 0}

    def stop_in_second_epoch() -> bool:
        calls["n"] += 1
        return newest_complete_checkpoint(out / "checkpoints") is not None

    stopped = train_preferences(train, validation, out, DPO, data_version=VERSION, should_stop=stop_in_second_epoch)
    assert stopped.metrics["stop_requested"] and stopped.metrics["global_step"] < 8
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"
    stop_step = stopped.metrics["global_step"]

    logs: list[dict] = []
    resumed = train_preferences(train, validation, out, DPO, data_version=VERSION, on_log=logs.append)
    assert resumed.metrics["resumed_from_step"] == stop_step
    assert min(d["step"] for d in logs if d["kind"] == "train") == stop_step + 1
    assert resumed.metrics["global_step"] == full.metrics["global_step"]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    # Done: a further call returns the stored result without training.
    again = train_preferences(train, validation, out, DPO, data_version=VERSION, on_log=lambda d: pytest.fail("ran"))
    assert again.metrics == resumed.metrics


def test_kto_trains_and_logs_rewards(tmp_path):
    train = _kto_file(tmp_path / "kto.jsonl", 8)
    logs: list[dict] = []
    cfg = dataclasses.replace(KTO, num_train_epochs=1)
    result = train_preferences(train, None, tmp_path / "run", cfg, data_version=VERSION, on_log=logs.append)
    assert result.metrics["method"] == "kto" and result.metrics["global_step"] == 4
    train_logs = [d for d in logs if d["kind"] == "train"]
    assert train_logs and "rewards/chosen" in train_logs[-1] and "loss" in train_logs[-1]
    assert (result.adapter_dir / "adapter_model.safetensors").exists()


def test_sft_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not method 'sft'"):
        train_preferences(_dpo_file(tmp_path / "t.jsonl", 2), None, tmp_path / "run", LoraTrainingConfig())


SFT_THEN_DPO = dataclasses.replace(DPO, method="sft_then_dpo", num_train_epochs=1, lora_dropout=0.0)


@pytest.fixture(scope="module")
def sft_then_dpo_inputs(tmp_path_factory):
    from ft_pipeline_tests.unit.test_lora_training import _conversations, _write_split

    root = tmp_path_factory.mktemp("sft_then_dpo")
    return (
        _write_split(root / "train.parquet", _conversations(12, seed=0)),
        _write_split(root / "validation.parquet", _conversations(4, seed=1)),
        _dpo_file(root / "train.jsonl", 8),
        _dpo_file(root / "validation.jsonl", 2),
    )


def test_sft_then_dpo_continues_the_sft_adapter_against_the_sft_model(sft_then_dpo_inputs, tmp_path):
    from ft_pipeline.lib.evaluation.generation import adapter_digest
    from ft_pipeline.lib.training.preference_trainer import train_sft_then_dpo

    train_parquet, validation_parquet, train_jsonl, validation_jsonl = sft_then_dpo_inputs
    out = tmp_path / "run"
    logs: list[dict] = []
    result = train_sft_then_dpo(
        train_parquet,
        validation_parquet,
        train_jsonl,
        validation_jsonl,
        out,
        SFT_THEN_DPO,
        sft_data_version="splits-v1",
        data_version=VERSION,
        on_log=logs.append,
    )
    # Stage 1 is a complete SFT run of its own; stage 2 the DPO run that is the model.
    sft_run = json.loads((out / "sft" / "run.json").read_text())
    assert sft_run["status"] == "complete" and sft_run["data_version"] == "splits-v1"
    dpo_run = json.loads((out / "run.json").read_text())
    assert dpo_run["init_adapter_digest"] == adapter_digest(out / "sft" / "adapter")
    assert result.adapter_dir == out / "adapter" and result.metrics["method"] == "sft_then_dpo"
    assert result.metrics["sft_global_step"] > 0 and result.metrics["sft_train_loss"] > 0
    assert {d["stage"] for d in logs} == {"sft", "dpo"}
    # Only the trained adapter is saved, not the frozen reference copy TRL adds.
    assert not (result.adapter_dir / "ref").exists()
    # The reference model is the SFT model: at the first step policy == reference, so the
    # margin is 0 and the DPO loss is ln 2. (Against the raw base it would not be: SFT moved it.)
    first = next(d for d in logs if d["stage"] == "dpo" and d["kind"] == "train")
    assert first["loss"] == pytest.approx(0.6931, abs=0.01)
    assert abs(first["rewards/margins"]) < 0.02
    # The DPO stage changed the SFT adapter.
    assert adapter_digest(result.adapter_dir) != adapter_digest(out / "sft" / "adapter")


def test_sft_then_dpo_resumes_after_a_stop_in_the_dpo_stage(sft_then_dpo_inputs, tmp_path):
    from ft_pipeline.lib.training.preference_trainer import train_sft_then_dpo

    out = tmp_path / "run"
    config = dataclasses.replace(SFT_THEN_DPO, num_train_epochs=2)  # a checkpoint per epoch: stop after the first

    def stop_once_dpo_has_a_checkpoint() -> bool:
        return newest_complete_checkpoint(out / "checkpoints") is not None

    kwargs = {"sft_data_version": "splits-v1", "data_version": VERSION}
    stopped = train_sft_then_dpo(
        *sft_then_dpo_inputs, out, config, should_stop=stop_once_dpo_has_a_checkpoint, **kwargs
    )
    assert stopped.metrics["stop_requested"] and stopped.metrics["global_step"] < 8
    logs: list[dict] = []
    resumed = train_sft_then_dpo(*sft_then_dpo_inputs, out, config, on_log=logs.append, **kwargs)
    # The SFT stage is complete and reused (nothing logged), DPO resumes from its checkpoint.
    assert {d["stage"] for d in logs} == {"dpo"}
    assert resumed.metrics["resumed_from_step"] == stopped.metrics["global_step"]
    assert resumed.metrics["global_step"] == 8
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_kto_weights_balance_the_labels_unless_set():
    from ft_pipeline.lib.training.preference_trainer import kto_weights

    records = [{"label": True}] * 6 + [{"label": False}] * 2
    assert kto_weights(records, KTO) == (1.0, 3.0)
    assert kto_weights([{"label": False}] * 3 + [{"label": True}], KTO) == (3.0, 1.0)
    assert kto_weights(records, dataclasses.replace(KTO, kto_desirable_weight=1.0, kto_undesirable_weight=1.33)) == (
        1.0,
        1.33,
    )
    assert kto_weights([{"label": True}] * 3, KTO) == (1.0, 1.0)  # one label only: nothing to balance
    with pytest.raises(ValueError, match="kto_undesirable_weight"):
        dataclasses.replace(KTO, kto_undesirable_weight=0.0)
    # Only KTO's run key depends on the weights.
    assert dataclasses.replace(DPO, kto_desirable_weight=2.0).config_hash() == DPO.config_hash()
    assert dataclasses.replace(KTO, kto_desirable_weight=2.0).config_hash() != KTO.config_hash()


def test_preference_stages_train_at_a_tenth_of_the_sft_rate_unless_set():
    default = LoraTrainingConfig(method="dpo", learning_rate=1e-3)
    assert default.effective_preference_learning_rate == pytest.approx(1e-4)
    explicit = dataclasses.replace(default, preference_learning_rate=1e-5)
    assert explicit.effective_preference_learning_rate == 1e-5
    assert explicit.config_hash() != default.config_hash()
    sft = LoraTrainingConfig(base_model="tiny")
    assert dataclasses.replace(sft, preference_learning_rate=1e-5).config_hash() == sft.config_hash()
    with pytest.raises(ValueError, match="preference_learning_rate"):
        dataclasses.replace(DPO, preference_learning_rate=0.0)
