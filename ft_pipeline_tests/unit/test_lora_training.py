"""Local LoRA trainer: tiny base, assistant-only masking, training, saved adapter, resume, QLoRA guard.

Everything runs on CPU with the locally built tiny base (a few hundred thousand random weights) and
a few dozen synthetic conversations; nothing is downloaded. One training run is shared by the
tests that only inspect its outputs. Tests that need CUDA carry ``@pytest.mark.gpu`` and are
skipped without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pandas as pd
import pytest
import torch

from ft_pipeline.lib.training import trainer
from ft_pipeline.lib.training.base_models import resolve_base_model
from ft_pipeline.lib.training.chat_template import CHATML_TRAINING_TEMPLATE
from ft_pipeline.lib.training.lora import (
    LoraTrainingConfig,
    QLoRAUnavailable,
    RunMismatchError,
    TrainingDataError,
    newest_complete_checkpoint,
    read_conversations,
    run_key,
    train_lora,
)
from ft_pipeline.lib.training.tiny_base import TinyBaseSpec, build_tiny_base

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Small and fast on a shared 2-core CPU: 48 conversations packed into 256-token sequences, two per
# step, give 7 steps per epoch. The high learning rate makes the loss drop visibly within 3 epochs.
FAST = LoraTrainingConfig(
    base_model="tiny",
    lora_r=8,
    lora_alpha=16,
    learning_rate=5e-3,
    num_train_epochs=3,
    per_device_train_batch_size=2,
    max_length=256,
    gradient_checkpointing=False,
    warmup_ratio=0.0,
    merge_full_model=True,
)
DATA_VERSION = "test-v1"

_PRODUCTS = ["plug", "bulb", "camera", "thermostat", "doorbell", "speaker"]
_ISSUES = ["is offline", "keeps blinking", "will not pair", "shows error 42", "is very slow"]


def _conversations(n: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        product, issue = rng.choice(_PRODUCTS), rng.choice(_ISSUES)
        msgs = [
            {"role": "system", "content": "You are Nimbus, a support assistant."},
            # An extra key on some messages: Parquet stores the union of keys, with None elsewhere.
            {"role": "user", "content": f"My {product} {issue}. What should I do?", "name": "customer"},
            {
                "role": "assistant",
                "content": (
                    f"Sorry about your {product}. Unplug the {product}, wait ten seconds, plug it back in and "
                    "open the app."
                ),
            },
        ]
        if i % 3 == 0:
            msgs += [
                {"role": "user", "content": "Thanks, it works now."},
                {"role": "assistant", "content": "Glad to help. Have a great day."},
            ]
        out.append(msgs)
    return out


def _write_split(path: Path, conversations: list[list[dict]]) -> Path:
    pd.DataFrame(
        {"conversation_id": [f"c{i}" for i in range(len(conversations))], "messages": conversations, "rating": 5.0}
    ).to_parquet(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    train = _write_split(root / "train.parquet", _conversations(48, seed=0))
    validation = _write_split(root / "validation.parquet", _conversations(12, seed=1))
    return train, validation


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    """One complete training run with a validation split, shared by the output-inspecting tests."""
    train, validation = splits
    out = tmp_path_factory.mktemp("run") / run_key(DATA_VERSION, FAST, FAST.base_model)
    logs: list[dict] = []
    result = train_lora(train, validation, out, FAST, data_version=DATA_VERSION, on_log=logs.append)
    return result, logs


def _base_ref(result) -> str:
    ref = json.loads((result.output_dir / "run.json").read_text())["base_model_ref"]
    assert ref == result.base_model_ref
    return ref


# ------------------------------------------------------------------------------ config / keys


def test_run_key_is_stable_and_changes_with_data_config_and_base():
    key = run_key("v1", FAST, "tiny")
    assert key == run_key("v1", dataclasses.replace(FAST), "tiny")
    assert len(key) == 16 and int(key, 16) >= 0
    assert run_key("v2", FAST, "tiny") != key
    assert run_key("v1", dataclasses.replace(FAST, lora_r=16), "tiny") != key
    assert run_key("v1", dataclasses.replace(FAST, use_dora=True), "tiny") != key
    assert run_key("v1", dataclasses.replace(FAST, learning_rate=1e-4), "tiny") != key
    assert run_key("v1", FAST, "Qwen/Qwen2.5-0.5B-Instruct") != key
    # Output-only fields keep the run (and its checkpoints): turning the merge on later reuses it.
    assert run_key("v1", dataclasses.replace(FAST, merge_full_model=False, save_total_limit=5), "tiny") == key
    # A list of target modules is the same config as the equal tuple, and the config stays hashable.
    a = LoraTrainingConfig(target_modules=["q_proj", "v_proj"])
    b = LoraTrainingConfig(target_modules=("q_proj", "v_proj"))
    assert a == b and hash(a) == hash(b) and a.config_hash() == b.config_hash()
    assert LoraTrainingConfig().config_hash() == LoraTrainingConfig().config_hash()


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="warmup_ratio"):
        LoraTrainingConfig(warmup_ratio=1.5)
    with pytest.raises(ValueError, match="lora_r"):
        LoraTrainingConfig(lora_r=0)
    with pytest.raises(ValueError, match="max_steps"):
        LoraTrainingConfig(max_steps=0)


# ------------------------------------------------------------------------------------- data


def test_read_conversations_keeps_exactly_role_and_content(tmp_path):
    path = _write_split(
        tmp_path / "s.parquet",
        [[{"role": "user", "content": "hi", "name": "x"}, {"role": "assistant", "content": "hello", "weight": 1}]],
    )
    assert read_conversations(path) == [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]

    bad_role = _write_split(
        tmp_path / "r.parquet", [[{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]]
    )
    with pytest.raises(TrainingDataError, match="role 'tool'"):
        read_conversations(bad_role)
    no_reply = _write_split(tmp_path / "n.parquet", [[{"role": "user", "content": "x"}]])
    with pytest.raises(TrainingDataError, match="assistant"):
        read_conversations(no_reply)


# -------------------------------------------------------------------------------- tiny base


def test_tiny_base_is_deterministic_and_cached(tmp_path, monkeypatch):
    texts = [m["content"] for conv in _conversations(10, seed=3) for m in conv]
    a = build_tiny_base(tmp_path / "a", texts, TinyBaseSpec(vocab_size=512, hidden_size=32))
    b = build_tiny_base(tmp_path / "b", texts, TinyBaseSpec(vocab_size=512, hidden_size=32))
    files = sorted(p.name for p in a.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "README.md"} <= set(files)
    assert all(_sha(a / f) == _sha(b / f) for f in files)
    assert "a demo base built locally, random weights, not a language model" in (a / "README.md").read_text().lower()

    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a)
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|im_end|>"
    assert all(t in tok.get_vocab() for t in ("<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    assert tok.chat_template == CHATML_TRAINING_TEMPLATE
    cfg = AutoConfig.from_pretrained(a)
    assert cfg.vocab_size == len(tok) and cfg.max_position_embeddings == 2048 and cfg.hidden_size == 32

    cache = tmp_path / "cache"
    first = resolve_base_model("tiny", texts, cache)
    monkeypatch.setattr("ft_pipeline.lib.training.base_models.build_tiny_base", lambda *a, **k: pytest.fail("rebuilt"))
    assert resolve_base_model("tiny", texts, cache) == first
    assert resolve_base_model("Qwen/Qwen2.5-0.5B-Instruct", texts, cache).path == "Qwen/Qwen2.5-0.5B-Instruct"


# ------------------------------------------------------------------------------------ masks


def test_assistant_only_masking(trained, splits, tmp_path):
    """User/system tokens are masked; assistant content and its <|im_end|> are trained, packed or not."""
    result, _ = trained
    base_ref = _base_ref(result)
    tok = trainer._load_tokenizer(base_ref)
    conv = [
        {"role": "system", "content": "You are Nimbus."},
        {"role": "user", "content": "My plug is offline."},
        {"role": "assistant", "content": "Unplug it."},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "Glad to help."},
    ]
    enc = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "Unplug it.<|im_end|>Glad to help.<|im_end|>"
    masked = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert masked == (
        "<|im_start|>system\nYou are Nimbus.<|im_end|>\n<|im_start|>user\nMy plug is offline.<|im_end|>\n"
        "<|im_start|>assistant\n\n<|im_start|>user\nThanks.<|im_end|>\n<|im_start|>assistant\n\n"
    )
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    assert is_chat_template_stop_token_trained(tok)

    # The labels TRL actually trains on, through our SFTConfig, with and without bfd packing.
    convs = read_conversations(splits[0])[:6]
    expected = sorted("".join(m["content"] + "<|im_end|>" for m in c if m["role"] == "assistant") for c in convs)
    for packing in (True, False):
        cfg = dataclasses.replace(FAST, packing=packing)
        setup = trainer._build_trainer(convs, [], base_ref, cfg, tmp_path / f"ck{packing}", cuda=False, use_bf16=False)
        trained_texts, masked_texts = [], []
        for row in setup.trainer.train_dataset:
            lengths = row["seq_lengths"] if packing else [len(row["input_ids"])]
            assert sum(lengths) == len(row["input_ids"]) == len(row["labels"])
            start = 0
            for n in lengths:
                seq_ids, seq_labels = row["input_ids"][start : start + n], row["labels"][start : start + n]
                start += n
                assert all(label in (-100, i) for i, label in zip(seq_ids, seq_labels))
                trained_texts.append(tok.decode([i for i, label in zip(seq_ids, seq_labels) if label != -100]))
                masked_texts.append(tok.decode([i for i, label in zip(seq_ids, seq_labels) if label == -100]))
        assert sorted(trained_texts) == expected, f"packing={packing}"
        for text in masked_texts:
            assert "<|im_start|>system\nYou are Nimbus, a support assistant.<|im_end|>" in text
            assert "<|im_start|>user\nMy " in text and "Sorry about" not in text


def test_all_zero_assistant_mask_is_an_error(trained, tmp_path):
    result, _ = trained
    tok = trainer._load_tokenizer(_base_ref(result))
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    tok.chat_template = CHATML_TRAINING_TEMPLATE.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    with pytest.raises(TrainingDataError, match="all-zero assistant mask"):
        trainer._check_assistant_masks(tok, convs, 256, "train")

    tok.chat_template = CHATML_TRAINING_TEMPLATE
    long_prompt = [[{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]]
    with pytest.raises(TrainingDataError, match="within max_length=64"):
        trainer._check_assistant_masks(tok, long_prompt, 64, "train")

    # A template that leaves <|im_end|> outside the generation block never teaches the model to stop.
    bad = tmp_path / "bad_tok"
    shutil.copytree(result.tokenizer_dir, bad)
    (bad / "chat_template.jinja").write_text(
        CHATML_TRAINING_TEMPLATE.replace("{{- content + '<|im_end|>' }}", "{{- content }}").replace(
            "{%- endgeneration %}", "{%- endgeneration %}{{- '<|im_end|>' }}"
        )
    )
    with pytest.raises(TrainingDataError, match="never learn to stop"):
        trainer._load_tokenizer(str(bad))


# --------------------------------------------------------------------------------- training


def test_training_reduces_loss_and_writes_outputs(trained):
    result, logs = trained
    history = result.loss_history
    train_losses = [r["loss"] for r in history if "loss" in r]
    eval_losses = [r["eval_loss"] for r in history if "eval_loss" in r]
    assert len(train_losses) >= 10 and train_losses[0] > train_losses[-1]
    assert len(eval_losses) == 3 and eval_losses[0] > eval_losses[-1]
    assert all({"step", "loss", "learning_rate", "epoch"} <= r.keys() for r in history if "loss" in r)

    m = result.metrics
    for key in (
        "train_loss",
        "eval_loss",
        "epochs",
        "global_step",
        "train_runtime_s",
        "train_tokens",
        "tokens_per_second",
        "peak_memory_mb",
        "resumed_from_step",
    ):
        assert key in m, key
    assert m["global_step"] == 21 and m["epochs"] == 3.0 and m["resumed_from_step"] is None
    assert m["eval_loss"] == min(eval_losses) and m["train_tokens"] > 0 and m["tokens_per_second"] > 0
    assert json.loads((result.output_dir / "metrics.json").read_text()) == m

    # on_log saw every log live: train steps, one evaluation per epoch, the final summary.
    kinds = [d["kind"] for d in logs]
    assert kinds.count("train") == len(train_losses) and kinds.count("eval") == 3 and kinds[-1] == "summary"
    assert all(d["tokens_per_second"] > 0 for d in logs if d["kind"] == "train")
    assert [d["loss"] for d in logs if d["kind"] == "train"] == train_losses

    png = result.loss_plot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    card = result.model_card.read_text()
    assert DATA_VERSION in card and "`tiny`" in card and "not a language model" in card and "eval_loss" in card
    assert (result.tokenizer_dir / "chat_template.jinja").read_text() == CHATML_TRAINING_TEMPLATE
    assert (result.adapter_dir / "adapter_model.safetensors").is_file() and result.merged_dir is not None
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    # The adapter names the base by its portable hub id (registered in the local hub cache), never
    # by a path of this machine; the run record keeps where it was loaded from.
    assert adapter_config["base_model_name_or_path"] == result.base_model_hub_id
    assert result.base_model_hub_id.startswith("ft-pipeline-local/tiny-")
    assert Path(_base_ref(result)).parent == result.output_dir / "base"
    assert (result.adapter_dir / "chat_template.jinja").read_text() == CHATML_TRAINING_TEMPLATE


def test_saved_adapter_loads_and_generates_in_a_fresh_process(trained, tmp_path):
    result, _ = trained
    script = tmp_path / "load_adapter.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            import torch
            from peft import AutoPeftModelForCausalLM
            from transformers import AutoModelForCausalLM, AutoTokenizer

            # The ecosystem's way: the adapter folder alone (base resolved from adapter_config.json).
            adapter_dir, merged_dir = sys.argv[1:3]
            model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir).eval()
            tok = AutoTokenizer.from_pretrained(adapter_dir)
            messages = [
                {"role": "system", "content": "You are Nimbus, a support assistant."},
                {"role": "user", "content": "My camera is offline. What should I do?"},
            ]
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=6, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            new = out[0, enc["input_ids"].shape[1]:]
            with torch.no_grad():
                lora_logits = model(**enc).logits
                with model.disable_adapter():
                    base_logits = model(**enc).logits
                merged_logits = AutoModelForCausalLM.from_pretrained(merged_dir)(**enc).logits
            print(json.dumps({
                "prompt_tail": prompt[-30:],
                "new_tokens": int(new.numel()),
                "text": tok.decode(new),
                "adapter_effect": float((lora_logits - base_logits).abs().max()),
                "merge_diff": float((lora_logits - merged_logits).abs().max()),
            }))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(result.adapter_dir), str(result.merged_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["prompt_tail"].endswith("<|im_start|>assistant\n")
    assert report["new_tokens"] >= 1
    assert report["adapter_effect"] > 1e-3  # the adapter changes the model
    assert report["merge_diff"] < 1e-4  # merged weights == base + adapter


def test_completed_run_is_returned_not_retrained_and_foreign_config_refused(trained, splits):
    result, _ = trained
    again = train_lora(
        *splits, result.output_dir, FAST, data_version=DATA_VERSION, on_log=lambda d: pytest.fail("retrained")
    )
    assert again.metrics == result.metrics and again.loss_history == result.loss_history
    with pytest.raises(RunMismatchError, match="config_hash"):
        train_lora(*splits, result.output_dir, dataclasses.replace(FAST, lora_r=4), data_version=DATA_VERSION)
    with pytest.raises(RunMismatchError, match="data_version"):
        train_lora(*splits, result.output_dir, FAST, data_version="other")


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    # Validation replies contradict the training replies, so eval_loss rises once training fits them.
    train = _write_split(
        tmp_path / "train.parquet",
        [
            [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Yes yes yes yes yes."}]
            for i in range(24)
        ],
    )
    validation = _write_split(
        tmp_path / "validation.parquet",
        [
            [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": "No, never; absolutely not."},
            ]
            for i in range(6)
        ],
    )
    cfg = dataclasses.replace(
        FAST, num_train_epochs=8, early_stopping_patience=1, learning_rate=1e-2, max_length=128, merge_full_model=False
    )
    result = train_lora(train, validation, tmp_path / "run", cfg)
    evals = [r["eval_loss"] for r in result.loss_history if "eval_loss" in r]
    assert result.metrics["early_stopped"] and result.metrics["global_step"] < result.metrics["max_steps"]
    # patience=1: training stopped at the first evaluation that did not improve on the best one.
    assert evals[-1] > min(evals[:-1]) and result.metrics["eval_loss"] == min(evals)
    best_step = next(r["step"] for r in result.loss_history if r.get("eval_loss") == min(evals))
    assert (
        result.metrics["best_checkpoint"].endswith(f"checkpoint-{best_step}")
        and best_step < result.metrics["global_step"]
    )
    # The saved adapter is the best epoch's, not the last one's.
    from safetensors.torch import load_file

    best = Path(result.metrics["best_checkpoint"])
    saved, at_best = (
        load_file(result.adapter_dir / "adapter_model.safetensors"),
        load_file(best / "adapter_model.safetensors"),
    )
    assert saved.keys() == at_best.keys() and all(torch.equal(saved[k], at_best[k]) for k in saved)


def test_should_stop_saves_a_checkpoint_and_stops(splits, tmp_path):
    cfg = dataclasses.replace(FAST, merge_full_model=False)
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    result = train_lora(splits[0], None, tmp_path / "run", cfg, should_stop=should_stop)
    assert result.metrics["stop_requested"] and result.metrics["global_step"] < 21
    ckpt = newest_complete_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt is not None and ckpt.name == f"checkpoint-{result.metrics['global_step']}"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "stopped"


# ----------------------------------------------------------------------------------- resume


_KILLABLE_TRAINER = """
import sys, time
from pathlib import Path
from ft_pipeline.lib.training.lora import LoraTrainingConfig, newest_complete_checkpoint, train_lora

train, validation, out, config_json, data_version = sys.argv[1:6]
out = Path(out)

def hang_after_first_checkpoint(record):
    # Park the trainer once a checkpoint is on disk so the test can SIGKILL it mid-training.
    if newest_complete_checkpoint(out / "checkpoints") is not None:
        print("CHECKPOINT", record["step"], flush=True)
        time.sleep(600)

config = LoraTrainingConfig(**__import__("json").loads(config_json))
train_lora(Path(train), Path(validation), out, config, data_version=data_version, on_log=hang_after_first_checkpoint)
print("FINISHED", flush=True)
"""


@pytest.mark.slow  # a training subprocess killed and resumed (about 10 s)
def test_resume_after_sigkill_continues_from_the_checkpoint(trained, splits, tmp_path):
    full, _ = trained
    out = tmp_path / run_key(DATA_VERSION, FAST, FAST.base_model)
    script = tmp_path / "killable.py"
    script.write_text(_KILLABLE_TRAINER)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(splits[0]),
            str(splits[1]),
            str(out),
            json.dumps(FAST.to_dict()),
            DATA_VERSION,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 240
        while newest_complete_checkpoint(out / "checkpoints") is None:
            assert proc.poll() is None, f"trainer exited early: {proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    first = newest_complete_checkpoint(out / "checkpoints")
    assert first is not None and first.name == "checkpoint-7"
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    logs: list[dict] = []
    resumed = train_lora(*splits, out, FAST, data_version=DATA_VERSION, on_log=logs.append)
    assert resumed.resumed_from == first
    assert resumed.metrics["resumed_from_step"] == 7
    assert min(d["step"] for d in logs if d["kind"] == "train") == 8  # continues, does not restart
    assert resumed.metrics["global_step"] == full.metrics["global_step"] == 21
    # The history before the kill comes back from the checkpoint, so the curve is whole.
    assert [r["step"] for r in resumed.loss_history if "loss" in r] == [
        r["step"] for r in full.loss_history if "loss" in r
    ]
    assert resumed.metrics["train_tokens"] == full.metrics["train_tokens"]
    # Optimizer, scheduler, RNG and data order are restored: the resumed run ends where the
    # uninterrupted one did.
    assert resumed.metrics["eval_loss"] == pytest.approx(full.metrics["eval_loss"], rel=1e-3)


def test_newest_complete_checkpoint_skips_truncated_ones(trained, tmp_path):
    result, _ = trained
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(result.output_dir / "checkpoints", ckpts)
    good = newest_complete_checkpoint(ckpts)
    assert good is not None and good.name == "checkpoint-21"

    def clone(step: int) -> Path:
        path = ckpts / f"checkpoint-{step}"
        shutil.copytree(good, path)
        state = json.loads((path / "trainer_state.json").read_text())
        state["global_step"] = step
        (path / "trainer_state.json").write_text(json.dumps(state))
        return path

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    truncate(clone(30) / "adapter_model.safetensors")  # killed while writing the weights
    (clone(40) / "trainer_state.json").unlink()  # killed before the state was written
    truncate(clone(50) / "trainer_state.json")
    truncate(clone(60) / "optimizer.pt")
    (clone(70) / "scheduler.pt").unlink()
    (ckpts / "checkpoint-80").mkdir()
    assert newest_complete_checkpoint(ckpts) == good

    assert newest_complete_checkpoint(clone(90).parent) == ckpts / "checkpoint-90"
    assert newest_complete_checkpoint(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert newest_complete_checkpoint(tmp_path / "empty") is None


# ------------------------------------------------------------------------------------ QLoRA


def test_qlora_without_cuda_raises_clearly(splits, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(QLoRAUnavailable, match="needs a CUDA GPU") as err:
        train_lora(*splits, tmp_path / "run", dataclasses.replace(FAST, qlora=True))
    assert "qlora=False" in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before doing any work


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qlora_trains_a_4bit_base_on_gpu(splits, tmp_path):
    import bitsandbytes as bnb

    cfg = dataclasses.replace(FAST, qlora=True, gradient_checkpointing=True)
    result = train_lora(*splits, tmp_path / "run", cfg, data_version=DATA_VERSION)
    losses = [r["loss"] for r in result.loss_history if "loss" in r]
    assert losses[0] > losses[-1]
    assert result.metrics["qlora"] and result.metrics["device"] == "cuda"
    model = trainer._load_model(_base_ref(result), qlora=True, use_bf16=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    # The merge went into a full-precision base, never the 4-bit one.
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert merged.dtype in (torch.bfloat16, torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_lora_on_gpu(splits, tmp_path):
    cfg = dataclasses.replace(FAST, bf16=True, merge_full_model=False)
    result = train_lora(*splits, tmp_path / "run", cfg, data_version=DATA_VERSION)
    losses = [r["loss"] for r in result.loss_history if "loss" in r]
    assert losses[0] > losses[-1]
    assert result.metrics["bf16"] is True and result.metrics["device"] == "cuda"
    assert result.metrics["peak_memory_kind"] == "cuda_max_allocated" and result.metrics["peak_memory_mb"] > 0
