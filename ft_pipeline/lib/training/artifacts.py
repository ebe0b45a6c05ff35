"""What a training run writes around its adapter: loss history and plot, model card, the
portable adapter folder, the optional merged model, and the JSON files of the run folder."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ft_pipeline.lib.training.base_models import ResolvedBase
from ft_pipeline.lib.training.config import LoraTrainingConfig
from ft_pipeline.lib.training.hf_runtime import offline, quiet_peft_deprecation
from ft_pipeline.lib.training.tiny_base import TINY_BASE_NAME

__all__ = [
    "loss_history",
    "make_adapter_portable",
    "mean_logged_loss",
    "merge_adapter",
    "replace_dir",
    "write_json",
    "write_loss_plot",
    "write_model_card",
]


def loss_history(log_history: list[dict]) -> list[dict]:
    """Trainer's log_history as one record per logged step; eval_loss joins the step's record."""
    by_step: dict[int, dict] = {}
    for entry in log_history:
        step = int(entry.get("step", 0))
        if "loss" in entry:
            rec = by_step.setdefault(step, {"step": step})
            rec.update(
                loss=float(entry["loss"]),
                learning_rate=float(entry.get("learning_rate", float("nan"))),
                epoch=entry.get("epoch"),
            )
        elif "eval_loss" in entry:
            rec = by_step.setdefault(step, {"step": step, "epoch": entry.get("epoch")})
            rec["eval_loss"] = float(entry["eval_loss"])
    return [by_step[s] for s in sorted(by_step)]


def mean_logged_loss(history: list[dict], upto_step: int) -> float | None:
    """Step-weighted mean of the logged train losses up to ``upto_step`` (each logged loss is
    the mean over the steps since the previous log)."""
    total = weight = 0.0
    prev = 0
    for rec in history:
        if rec["step"] > upto_step:
            break
        if "loss" in rec:
            w = rec["step"] - prev
            total += rec["loss"] * w
            weight += w
            prev = rec["step"]
    return total / weight if weight else None


# ------------------------------------------------------------------------------------- plot


def write_loss_plot(history: Sequence[dict], path: Path) -> Path:
    """Train loss and eval loss against step, as a PNG (shown in the Dagster UI)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in history if "loss" in r and math.isfinite(r["loss"])]
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r and math.isfinite(r["eval_loss"])]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train), label="train loss", color="tab:blue")
        if evals:
            ax.plot(*zip(*evals), "o-", label="validation loss", color="tab:orange")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if train or evals:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------- model card


def write_model_card(
    path: Path,
    *,
    base_ref: str,
    base_hub_id: str | None,
    base_name: str,
    data_version: str,
    config: LoraTrainingConfig,
    metrics: dict,
    merged: bool,
) -> Path:
    tiny_note = (
        "\n> **Demo base.** The base model is the locally built tiny model: random weights, not a language "
        "model. This adapter demonstrates the training mechanics only; its outputs are not meaningful text.\n"
        if base_name == TINY_BASE_NAME
        else ""
    )
    metric_rows = "\n".join(f"| {k} | {_card_value(v)} |" for k, v in metrics.items())
    config_rows = "\n".join(f"| {k} | `{v}` |" for k, v in config.to_dict().items())
    text = f"""# LoRA adapter

Fine-tuned locally by ft-pipeline ({"QLoRA, 4-bit NF4 base" if config.qlora else "LoRA"}, TRL SFTTrainer,
assistant-only loss).
{tiny_note}
- **Base model:** `{base_name}` (hub id `{base_hub_id or base_ref}`, loaded from `{base_ref}` when trained)
- **Data version:** `{data_version or "unversioned"}`
- **Run folder:** `{path.parent.name}` (config hash `{config.config_hash()}`)
- **Merged full model:** {"yes, in `merged/`" if merged else "no"}

## Metrics

| metric | value |
|---|---|
{metric_rows}

![loss curve](loss.png)

## Training configuration

| field | value |
|---|---|
{config_rows}

## Loading

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("adapter")   # the base comes from `{base_hub_id or base_ref}`
tokenizer = AutoTokenizer.from_pretrained("adapter")
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
output = model.generate(**prompt, max_new_tokens=128, eos_token_id=tokenizer.eos_token_id)
```

The adapter folder carries the tokenizer with the chat template it was trained with (also in `tokenizer/`); use it
at inference. The base is found through the local Hugging Face cache, where ft-pipeline registered it.
"""
    path.write_text(text, encoding="utf-8")
    return path


def _card_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


# ------------------------------------------------------------------------------------ outputs


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a freshly written folder into place (readers never see a half-written one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def merge_adapter(base_ref: str, adapter_dir: Path, tokenizer: Any, merged_dir: Path, use_bf16: bool) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # A fresh full-precision (bf16/fp32) base, never the 4-bit one used for QLoRA: merging into
    # quantized weights rounds the update away (peft#2321).
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_ref, dtype=dtype, local_files_only=offline())
    with quiet_peft_deprecation():
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tmp = merged_dir.with_name(f".{merged_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, merged_dir)


def make_adapter_portable(adapter_dir: Path, tokenizer: Any, base: ResolvedBase) -> None:
    """Make the adapter folder load the ecosystem's way, on any machine that has the base.

    ``adapter_config.json`` gets the base's hub id instead of this machine's path (a published
    adapter must not point into the trainer's disk), and the tokenizer with the training chat
    template goes beside the weights, so ``AutoPeftModelForCausalLM.from_pretrained(adapter_dir)``
    and ``AutoTokenizer.from_pretrained(adapter_dir)`` are all a user needs.
    """
    config_path = adapter_dir / "adapter_config.json"
    if base.hub_id is not None and config_path.is_file():
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = base.hub_id
        # Pin the exact snapshot: the same hub id may name other weights in a cache (the original
        # download, an older conversion); the adapter belongs to these.
        adapter_config["revision"] = base.revision
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(adapter_dir))


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)
