"""``train_preferences``: local LoRA preference training with TRL's ``DPOTrainer`` / ``KTOTrainer``.

The preference counterpart of :func:`~ft_pipeline.lib.training.trainer.train_lora`, with the same
run folder, the same guarantees and the same helpers (base model, tokenizer and chat template,
progress callback, checkpoints, portable adapter, model card)::

    <output_dir>/run.json, checkpoints/, adapter/, tokenizer/, [merged/], metrics.json,
    loss_history.json, loss.png, README.md

so the adapter loads like an SFT one and evaluation needs nothing new. The data is
``preference_dataset``'s TRL JSONL: ``dpo`` (conversational ``prompt`` / ``chosen`` /
``rejected``) or ``kto`` (``prompt`` / ``completion`` / ``label``). The reference model is the base
itself: with a PEFT model TRL computes the reference log-probabilities with the adapter disabled,
so no second copy of the weights is loaded.

Every Trainer log reaches ``on_log`` as it happens, with TRL's ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins`` and (DPO) ``rewards/accuracies``; ``loss_history.json``
keeps them per logged step. ``should_stop`` saves a checkpoint and stops; a later call on the same
``output_dir`` resumes from the newest complete checkpoint, and ``run.json`` refuses a folder of
another config or other data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ft_pipeline.lib.evaluation.generation import adapter_digest
from ft_pipeline.lib.training.artifacts import (
    loss_history,
    mean_logged_loss,
    write_json,
)
from ft_pipeline.lib.training.base_models import resolve_base_model
from ft_pipeline.lib.training.checkpoints import checkpoint_step
from ft_pipeline.lib.training.config import PREFERENCE_METHODS, LoraTrainingConfig
from ft_pipeline.lib.training.hf_runtime import quiet_peft_deprecation
from ft_pipeline.lib.training.trainer import (
    QLoRAUnavailable,
    TrainingDataError,
    TrainingResult,
    _file_digest,
    _load_model,
    _load_tokenizer,
    _make_progress_callback,
    _peak_memory_mb,
    _result_from_disk,
    finish_run,
    lora_config_of,
    previous_run,
    read_conversations,
    save_adapter_and_tokenizer,
    shared_training_args,
    train_lora,
    train_resuming,
)

__all__ = [
    "REWARD_METRICS",
    "kto_weights",
    "read_preference_jsonl",
    "train_preferences",
    "train_sft_then_dpo",
    "trl_method",
]

logger = logging.getLogger(__name__)


def trl_method(method: str) -> str:
    """The TRL trainer a preference method runs: ``sft_then_dpo``'s second stage is DPO."""
    return "dpo" if method == "sft_then_dpo" else method


REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
"""TRL's reward metrics kept per logged step in ``loss_history`` (KTO logs no accuracies)."""

_KEYS = {"dpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label")}


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise TrainingDataError(f"{where} is not a non-empty list of messages")
    out = []
    for msg in value:
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str) or not msg.get("role"):
            raise TrainingDataError(f"{where} has a message without a role and text content")
        out.append({"role": str(msg["role"]), "content": msg["content"]})
    return out


def read_preference_jsonl(path: Path, method: str) -> list[dict[str, Any]]:
    """The records of one TRL preference JSONL file, each exactly the keys ``method`` trains on
    (messages reduced to {role, content}). Raises ``TrainingDataError`` on a malformed line."""
    keys = _KEYS[method]
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            raw = json.loads(line)
            missing = [k for k in keys if k not in raw]
            if missing:
                raise TrainingDataError(f"{path}:{n} lacks {missing} (a {method} file has {list(keys)})")
            record: dict[str, Any] = {}
            for key in keys:
                if key == "label":
                    if not isinstance(raw[key], bool):
                        raise TrainingDataError(f"{path}:{n} label is not true/false")
                    record[key] = raw[key]
                else:
                    record[key] = _messages(raw[key], f"{path}:{n} {key}")
            records.append(record)
    return records


def _history(log_history: list[dict]) -> list[dict]:
    """``loss_history`` with the reward metrics of each logged train step."""
    history = loss_history(log_history)
    by_step = {r["step"]: r for r in history}
    for entry in log_history:
        record = by_step.get(int(entry.get("step", 0)))
        if record is not None and "loss" in entry:
            record.update({k: float(entry[k]) for k in REWARD_METRICS if k in entry})
    return history


def _build_trainer(
    method: str,
    train: list[dict[str, Any]],
    validation: list[dict[str, Any]],
    base_ref: str,
    config: LoraTrainingConfig,
    checkpoints_dir: Path,
    callbacks: list[Any],
    *,
    cuda: bool,
    use_bf16: bool,
    init_adapter_dir: Path | None = None,
) -> tuple[Any, Any]:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    tokenizer = _load_tokenizer(base_ref)
    model = _load_model(base_ref, qlora=config.qlora, use_bf16=use_bf16)
    lora_config = lora_config_of(config)
    if init_adapter_dir is not None:
        from peft import PeftModel

        # Continue a trained adapter (sft_then_dpo). Given a PeftModel and no peft_config, TRL's
        # DPOTrainer adds a frozen copy of this adapter as "ref": the reference model is the SFT
        # model, as in the DPO paper's recipe, not the raw base.
        with quiet_peft_deprecation():
            model = PeftModel.from_pretrained(model, str(init_adapter_dir), is_trainable=True)
        lora_config = None
    has_val = bool(validation)
    extra: dict[str, Any] = {"beta": config.dpo_beta}
    if method == "dpo":
        config_class, trainer_class = DPOConfig, DPOTrainer
    else:
        config_class, trainer_class = KTOConfig, KTOTrainer
        extra["desirable_weight"], extra["undesirable_weight"] = kto_weights(train, config)
    at_preference_rate = dataclasses.replace(config, learning_rate=config.effective_preference_learning_rate)
    args = config_class(
        **shared_training_args(at_preference_rate, checkpoints_dir, has_val=has_val, cuda=cuda, use_bf16=use_bf16),
        **extra,
    )
    with quiet_peft_deprecation():
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(validation) if has_val else None,
            processing_class=tokenizer,
            peft_config=lora_config,
            callbacks=callbacks,
        )
    trainer.remove_callback(PrinterCallback)
    return trainer, tokenizer


def kto_weights(train: list[dict[str, Any]], config: LoraTrainingConfig) -> tuple[float, float]:
    """KTO's (desirable_weight, undesirable_weight): the configured ones, or (None) balanced so
    that weight x count is equal for both labels -- the logs hold many more thumbs-up than
    thumbs-down, and unbalanced KTO then learns mostly from the majority label."""
    n_good = sum(1 for r in train if r.get("label") is True)
    n_bad = len(train) - n_good
    desirable, undesirable = config.kto_desirable_weight, config.kto_undesirable_weight
    if desirable is None:
        desirable = 1.0 if n_good == 0 or n_bad == 0 or n_good >= n_bad else n_bad / n_good
    if undesirable is None:
        undesirable = 1.0 if n_good == 0 or n_bad == 0 or n_bad >= n_good else n_good / n_bad
    return float(desirable), float(undesirable)


def train_preferences(
    train_jsonl: Path,
    validation_jsonl: Path | None,
    output_dir: Path,
    config: LoraTrainingConfig,
    *,
    data_version: str = "",
    on_log: Callable[[dict], None] = lambda d: None,
    should_stop: Callable[[], bool] = lambda: False,
    base_cache_dir: Path | None = None,
    on_progress: Callable[[str], None] = logger.info,
    init_adapter_dir: Path | None = None,
    base_texts: Sequence[str] | None = None,
) -> TrainingResult:
    """Train a LoRA adapter with ``config.method`` ("dpo", "kto", or "sft_then_dpo"'s DPO stage)
    on a TRL preference JSONL file.

    Arguments, outputs, resume and stopping as in ``train_lora``; ``validation_jsonl`` may be None
    or empty (no evaluation). ``metrics`` adds the last logged reward metrics (``rewards/...``).
    ``init_adapter_dir``: an adapter to continue (sft_then_dpo: the SFT stage's), whose frozen copy
    is then the reference model; its digest is part of the run's identity. ``base_texts``: the texts
    a ``tiny`` base is built from, when it must be the one an earlier stage built (sft_then_dpo:
    the SFT stage's training texts); default the preference records' own texts.

    Raises:
        ValueError: ``config.method`` is not a preference method.
        QLoRAUnavailable, TrainingDataError, RunMismatchError: as ``train_lora``.
    """
    import torch

    if config.method not in PREFERENCE_METHODS:
        raise ValueError(f"train_preferences trains {sorted(PREFERENCE_METHODS)}, not method {config.method!r}")
    method = trl_method(config.method)
    cuda = torch.cuda.is_available()
    if config.qlora and not cuda:
        raise QLoRAUnavailable("QLoRA needs a CUDA GPU; set qlora=False to train a regular LoRA adapter on CPU.")
    use_bf16 = config.bf16 if config.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints_dir = output_dir / "checkpoints"
    train = read_preference_jsonl(Path(train_jsonl), method)
    if not train:
        raise TrainingDataError(f"{train_jsonl}: no {method} examples to train on")
    has_val = validation_jsonl is not None and Path(validation_jsonl).exists()
    validation = read_preference_jsonl(Path(validation_jsonl), method) if has_val and validation_jsonl else []
    has_val = bool(validation)

    identity = {
        "config_hash": config.config_hash(),
        "data_version": data_version,
        "base_model": config.base_model,
        "train_digest": _file_digest(Path(train_jsonl)),
        "validation_digest": _file_digest(Path(validation_jsonl)) if has_val and validation_jsonl else None,
        "init_adapter_digest": adapter_digest(init_adapter_dir) if init_adapter_dir is not None else None,
    }
    run_path = output_dir / "run.json"
    previous = previous_run(output_dir, identity)
    if previous is not None:
        if previous.get("status") == "complete" and (output_dir / "metrics.json").exists():
            logger.info("%s is already trained; returning the stored result", output_dir)
            return _result_from_disk(output_dir, previous)
    write_json(run_path, {**identity, "status": "running", "config": config.to_dict()})

    texts = (
        list(base_texts)
        if base_texts is not None
        else [
            m["content"]
            for r in train
            for key in ("prompt", "chosen", "rejected", "completion")
            for m in r.get(key, [])
        ]
    )
    cache_dir = Path(base_cache_dir) if base_cache_dir else output_dir / "base"
    base = resolve_base_model(config.base_model, texts, cache_dir, on_progress=on_progress)
    on_progress(f"base model {config.base_model}: loading {base.path} for {method.upper()}")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    progress = _make_progress_callback(on_log, should_stop)
    trainer, tokenizer = _build_trainer(
        method,
        train,
        validation,
        base.path,
        config,
        checkpoints_dir,
        [progress],
        cuda=cuda,
        use_bf16=use_bf16,
        init_adapter_dir=init_adapter_dir,
    )

    train_output, resume = train_resuming(trainer, checkpoints_dir, on_progress)
    state = trainer.state
    resumed_step = checkpoint_step(resume) if resume is not None else None
    adapter_dir, tokenizer_dir = save_adapter_and_tokenizer(trainer, tokenizer, base, output_dir)
    on_progress(f"adapter saved to {adapter_dir}")

    history = _history(state.log_history)
    eval_losses = [r["eval_loss"] for r in history if "eval_loss" in r]
    last_rewards: dict[str, Any] = next((r for r in reversed(history) if "rewards/chosen" in r), {})
    peak_mb, peak_kind = _peak_memory_mb(cuda)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    metrics: dict[str, Any] = {
        "method": config.method,
        # Trainer's training_loss covers only this process's steps; the logged losses cover the whole run.
        "train_loss": float(train_output.training_loss)
        if resumed_step is None
        else mean_logged_loss(history, state.global_step),
        "eval_loss": float(state.best_metric)
        if state.best_metric is not None
        else (eval_losses[-1] if eval_losses else None),
        **{k: last_rewards[k] for k in REWARD_METRICS if k in last_rewards},
        "epochs": float(state.epoch or 0.0),
        "global_step": int(state.global_step),
        "train_runtime_s": float(train_output.metrics.get("train_runtime", 0.0)),
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": peak_kind,
        "resumed_from_step": resumed_step,
        "max_steps": int(state.max_steps),
        "stop_requested": progress.stop_requested,
        "best_checkpoint": state.best_model_checkpoint,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "dpo_beta": config.dpo_beta,
        "learning_rate": config.effective_preference_learning_rate,
        **(
            dict(zip(("kto_desirable_weight", "kto_undesirable_weight"), kto_weights(train, config), strict=True))
            if method == "kto"
            else {}
        ),
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "device": "cuda" if cuda else "cpu",
        "bf16": use_bf16,
        "qlora": config.qlora,
    }

    return finish_run(
        output_dir,
        run_path,
        identity,
        config,
        base=base,
        base_ref=base.path,
        data_version=data_version,
        metrics=metrics,
        history=history,
        tokenizer=tokenizer,
        use_bf16=use_bf16,
        adapter_dir=adapter_dir,
        tokenizer_dir=tokenizer_dir,
        stop_requested=progress.stop_requested,
        resume=resume,
    )


def train_sft_then_dpo(
    train_parquet: Path,
    validation_parquet: Path | None,
    train_jsonl: Path,
    validation_jsonl: Path | None,
    output_dir: Path,
    config: LoraTrainingConfig,
    *,
    sft_data_version: str = "",
    data_version: str = "",
    on_log: Callable[[dict], None] = lambda d: None,
    should_stop: Callable[[], bool] = lambda: False,
    base_cache_dir: Path | None = None,
    on_progress: Callable[[str], None] = logger.info,
) -> TrainingResult:
    """``method="sft_then_dpo"``: SFT on the split Parquet files into ``output_dir/sft`` (an SFT run
    like any other: resumed, or reused when complete), then DPO on the TRL DPO JSONL into
    ``output_dir``, continuing the SFT adapter with a frozen copy of it as the reference model.

    Returns the DPO stage's result (``output_dir/adapter`` is the model), with the SFT stage's
    losses added as ``sft_*`` metrics; a stop during SFT returns the SFT result (``stop_requested``).
    Each logged record carries ``stage`` ("sft" or "dpo").
    """
    if config.method != "sft_then_dpo":
        raise ValueError(f"train_sft_then_dpo trains method 'sft_then_dpo', not {config.method!r}")
    output_dir = Path(output_dir)

    def staged(stage: str) -> Callable[[dict], None]:
        return lambda record: on_log({"stage": stage, **record})

    common: dict[str, Any] = {"should_stop": should_stop, "base_cache_dir": base_cache_dir, "on_progress": on_progress}
    sft = train_lora(
        train_parquet,
        validation_parquet,
        output_dir / "sft",
        dataclasses.replace(config, method="sft"),
        data_version=sft_data_version,
        on_log=staged("sft"),
        **common,
    )
    if sft.metrics.get("stop_requested"):
        return sft
    on_progress(f"SFT stage done ({sft.adapter_dir}); DPO continues its adapter")
    result = train_preferences(
        train_jsonl,
        validation_jsonl,
        output_dir,
        config,
        data_version=data_version,
        on_log=staged("dpo"),
        init_adapter_dir=sft.adapter_dir,
        # The base the SFT adapter was trained on (a `tiny` base is built from its texts).
        base_texts=[m["content"] for conv in read_conversations(Path(train_parquet)) for m in conv],
        **common,
    )
    for name in ("train_loss", "eval_loss", "global_step", "train_runtime_s"):
        if sft.metrics.get(name) is not None:
            result.metrics[f"sft_{name}"] = sft.metrics[name]
    return result
