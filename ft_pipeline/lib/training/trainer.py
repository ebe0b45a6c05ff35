"""``train_lora``: local LoRA / QLoRA supervised fine-tuning with TRL's ``SFTTrainer``.

``train_lora`` reads the train/validation splits (Parquet, ``messages`` column), trains a PEFT LoRA
adapter on the assistant turns only, and writes a self-contained run folder::

    <output_dir>/
        run.json            identity of the run (config hash, data version, input digests, status)
        checkpoints/        Trainer checkpoints, one per epoch (the resume points)
        adapter/            PEFT adapter: PeftModel.from_pretrained(AutoModelForCausalLM..., adapter/)
        tokenizer/          tokenizer + chat_template.jinja (the template used in training)
        merged/             optional: base weights with the adapter merged in (bf16/fp32, never 4-bit)
        metrics.json        final metrics
        loss_history.json   every logged step
        loss.png            train / eval loss curve
        README.md           model card

It is meant to run in its own process (a Dagster Pipes subprocess): ``on_log`` receives every log
as it happens and ``should_stop`` is polled after every optimizer step. Heavy libraries (torch,
transformers, trl, peft) are imported lazily, so importing this module to build a config or a run
key costs nothing.

Resume: ``output_dir`` is meant to be per run key (``run_key``: data version + config + base
model). If it already holds a complete checkpoint the trainer resumes from the newest one, with
optimizer, scheduler, RNG and early-stopping state. ``run.json`` guards against resuming with other
data or another config -- a checkpoint trained with DoRA cannot even be loaded by a non-DoRA
optimizer, and one trained on other data would silently mix datasets. A run that already finished
is not trained again: its stored result is returned (and the merge done if it is newly requested).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_pipeline.lib.training.artifacts import (
    loss_history,
    make_adapter_portable,
    mean_logged_loss,
    merge_adapter,
    replace_dir,
    write_json,
    write_loss_plot,
    write_model_card,
)
from ft_pipeline.lib.training.base_models import resolve_base_model
from ft_pipeline.lib.training.checkpoints import (
    checkpoint_step,
    drop_incomplete_checkpoints_after,
    newest_complete_checkpoint,
)
from ft_pipeline.lib.training.config import LoraTrainingConfig
from ft_pipeline.lib.training.hf_runtime import offline, quiet_peft_deprecation

__all__ = [
    "QLoRAUnavailable",
    "RunMismatchError",
    "TrainingDataError",
    "TrainingResult",
    "read_conversations",
    "train_lora",
]

logger = logging.getLogger(__name__)

_ROLES = frozenset({"system", "user", "assistant"})

# Log at most about this many points per run (Trainer treats a float logging_steps < 1 as a ratio
# of the total steps): dense enough for a loss curve, sparse enough that a long run does not flood
# Dagster's event log through Pipes.
_LOGGING_RATIO = 0.01


class QLoRAUnavailable(RuntimeError):
    """QLoRA was requested but this machine cannot run it (no CUDA GPU)."""


class TrainingDataError(ValueError):
    """The training data cannot be trained on as asked (bad messages, nothing to learn, ...)."""


class RunMismatchError(ValueError):
    """``output_dir`` holds a run with a different config or different data: refusing to resume it."""


@dataclass
class TrainingResult:
    """What ``train_lora`` produced. Paths are inside ``output_dir``."""

    output_dir: Path
    adapter_dir: Path
    tokenizer_dir: Path
    merged_dir: Path | None
    metrics: dict
    """train_loss (mean over the whole run, resumes included), eval_loss (best epoch), epochs,
    global_step, train_runtime_s and tokens_per_second (this process's share of the run),
    train_tokens (non-pad tokens seen over the whole run), peak_memory_mb (CUDA max allocated, or
    the process's max RSS on CPU; see peak_memory_kind), resumed_from_step (None for a fresh run),
    and a few more (stop_requested, early_stopped, dataset token counts, parameter counts)."""
    loss_history: list[dict]
    """Per logged step: step, loss, learning_rate, epoch and, at evaluations, eval_loss."""
    loss_plot: Path
    model_card: Path
    resumed_from: Path | None
    base_model_ref: str | None = None
    """What the adapter was trained on, as loaded here: the converted or built base's folder
    (``<base_cache_dir>/<name>-<hash>``) or the Hugging Face id / path given."""
    base_model_hub_id: str | None = None
    """The portable name of the base in ``adapter/adapter_config.json`` (``base_model_name_or_path``):
    a hub id registered in the local hub cache, so the adapter loads after the folders move."""


# --------------------------------------------------------------------------------------- data


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """The ``messages`` column of a split's Parquet file, each message exactly {role, content}.

    Other columns are not read. Message structs may carry more keys (``name``, ``weight``, ...),
    and datasets/pyarrow fill keys missing in some messages with None; both are dropped so that
    no None reaches the chat template. A None content becomes "". Raises ``TrainingDataError``
    for unknown roles, non-text content, or a conversation that does not end with an assistant
    reply.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["messages"])
    conversations: list[list[dict[str, str]]] = []
    for i, raw in enumerate(table.column("messages").to_pylist()):
        if not raw:
            raise TrainingDataError(f"{path}: row {i} has no messages")
        conv = []
        for j, msg in enumerate(raw):
            role = msg.get("role") if isinstance(msg, dict) else None
            content = msg.get("content") if isinstance(msg, dict) else None
            if role not in _ROLES:
                raise TrainingDataError(
                    f"{path}: row {i} message {j} has role {role!r}; expected one of {sorted(_ROLES)}"
                )
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise TrainingDataError(f"{path}: row {i} message {j} content is {type(content).__name__}, not text")
            conv.append({"role": role, "content": content})
        if conv[-1]["role"] != "assistant":
            raise TrainingDataError(f"{path}: row {i} does not end with an assistant message")
        conversations.append(conv)
    return conversations


def _file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _check_assistant_masks(
    tokenizer: Any, conversations: list[list[dict[str, str]]], max_length: int, split: str
) -> dict[str, int]:
    """Tokenize like TRL does and fail loudly when an example would train nothing.

    An all-zero assistant mask (a template without working ``{% generation %}`` markers, or a
    reply starting beyond ``max_length`` and truncated away) gives a loss that looks healthy while
    the example teaches nothing; TRL catches only the first case and only with a generic message.
    Returns token statistics of the split.
    """
    stats = {"examples": len(conversations), "tokens": 0, "assistant_tokens": 0, "truncated": 0}
    empty: list[int] = []
    truncated_away: list[int] = []
    batch = 256
    for start in range(0, len(conversations), batch):
        chunk = conversations[start : start + batch]
        out = tokenizer.apply_chat_template(chunk, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        for k, (ids, mask) in enumerate(zip(out["input_ids"], out["assistant_masks"])):
            idx = start + k
            n_assistant = sum(mask)
            stats["tokens"] += len(ids)
            stats["assistant_tokens"] += n_assistant
            if n_assistant == 0:
                empty.append(idx)
            elif len(ids) > max_length:
                stats["truncated"] += 1
                if sum(mask[:max_length]) == 0:
                    truncated_away.append(idx)
    if empty:
        raise TrainingDataError(
            f"{split}: {len(empty)} example(s) have an all-zero assistant mask (first rows: {empty[:5]}). "
            "The chat template must wrap every assistant reply and its end-of-turn token in "
            "{% generation %}...{% endgeneration %}; otherwise those examples train nothing."
        )
    if truncated_away:
        raise TrainingDataError(
            f"{split}: {len(truncated_away)} example(s) have no assistant token within max_length={max_length} "
            f"(first rows: {truncated_away[:5]}), so truncation would leave nothing to learn. Raise max_length "
            "or filter conversations by token length upstream."
        )
    if stats["truncated"]:
        logger.warning(
            "%s: %d example(s) are longer than max_length=%d and will be truncated",
            split,
            stats["truncated"],
            max_length,
        )
    return stats


def _prepare_chat_template(tokenizer: Any) -> None:
    """Give the tokenizer a chat template with ``{% generation %}`` markers, in place.

    Kept as is when it already has them. A template we ship a training variant for (SmolLM2's)
    or one TRL knows (Qwen, Llama 3, Gemma, Phi, ...) is replaced by that variant -- here rather
    than inside the trainer, so the saved tokenizer carries exactly the template the model was
    trained with -- after checking that the variant renders the same text as the original (the
    markers render nothing, so inference prompts stay what the base model expects). A tokenizer
    without a template gets ChatML when it has the ChatML tokens. Anything else cannot be masked
    reliably and is refused.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    from ft_pipeline.lib.training.chat_template import CHATML_TRAINING_TEMPLATE, IM_END, IM_START, TRAINING_VARIANTS

    template = tokenizer.chat_template
    if template is not None and has_generation_markers(template):
        return
    if template is not None:
        patched = TRAINING_VARIANTS.get(template) or get_training_chat_template(tokenizer)
        if patched is not None:
            _check_same_rendering(tokenizer, template, patched)
            tokenizer.chat_template = patched
            return
    vocab = tokenizer.get_vocab()
    if template is None and IM_START in vocab and IM_END in vocab:
        tokenizer.chat_template = CHATML_TRAINING_TEMPLATE
        return
    raise TrainingDataError(
        "The base model's chat template has no {% generation %} markers and TRL has no training variant "
        "for it, so assistant-only loss cannot be masked. Use a base whose template is supported, or give "
        "its tokenizer a template that wraps assistant replies (and their end-of-turn token) in "
        "{% generation %}...{% endgeneration %}."
    )


_PROBE_CONVERSATIONS = (
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ],
)


def _check_same_rendering(tokenizer: Any, original: str, training: str) -> None:
    """Refuse a training template that renders other text than the base's own template: the model
    would be trained on prompts it never sees at inference (or the other way round)."""
    for conv in _PROBE_CONVERSATIONS:
        for generation_prompt in (False, True):
            rendered = [
                tokenizer.apply_chat_template(
                    conv[:-1] if generation_prompt else conv,
                    chat_template=t,
                    tokenize=False,
                    add_generation_prompt=generation_prompt,
                )
                for t in (original, training)
            ]
            if rendered[0] != rendered[1]:
                raise TrainingDataError(
                    "the training variant of the base's chat template renders different text than the original "
                    f"({rendered[1]!r} vs {rendered[0]!r}); refusing to train with a template inference would not use"
                )


def _load_model(base_ref: str, *, qlora: bool, use_bf16: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"local_files_only": offline()}
    if qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["dtype"] = torch.bfloat16
        # A 4-bit model cannot be moved after loading, so it is placed on the GPU while it loads.
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    else:
        kwargs["dtype"] = torch.bfloat16 if use_bf16 else torch.float32
    return AutoModelForCausalLM.from_pretrained(base_ref, **kwargs)


def _peak_memory_mb(cuda: bool) -> tuple[float, str]:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024), "process_max_rss"


# ----------------------------------------------------------------------------------- callback


def _make_progress_callback(on_log: Callable[[dict], None], should_stop: Callable[[], bool]) -> Any:
    from transformers import TrainerCallback

    class _ProgressCallback(TrainerCallback):
        """Forwards every Trainer log to ``on_log`` and turns ``should_stop()`` into a clean stop."""

        def __init__(self) -> None:
            self.stop_requested = False
            self._t0 = time.monotonic()
            self.tokens_at_start = 0

        def on_train_begin(self, args, state, control, **kwargs):
            # Throughput is per process lifetime: a resumed run starts counting at its resume point.
            self._t0 = time.monotonic()
            self.tokens_at_start = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            if not self.stop_requested and should_stop():
                self.stop_requested = True
                control.should_training_stop = True
                # Save where we are, so a later call with the same output_dir resumes from here.
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            record: dict[str, Any] = {
                k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            record["step"] = state.global_step
            record["epoch"] = logs.get("epoch", state.epoch)
            elapsed = max(time.monotonic() - self._t0, 1e-9)
            record["tokens_seen"] = state.num_input_tokens_seen
            record["tokens_per_second"] = (state.num_input_tokens_seen - self.tokens_at_start) / elapsed
            record["kind"] = "eval" if "eval_loss" in logs else "train" if "loss" in logs else "summary"
            on_log(record)
            if not self.stop_requested and should_stop():
                self.stop_requested = True
                control.should_training_stop = True
                control.should_save = True

    return _ProgressCallback()


def _result_from_disk(output_dir: Path, run: dict) -> TrainingResult:
    merged = output_dir / "merged"
    resumed = run.get("resumed_from")
    return TrainingResult(
        output_dir=output_dir,
        adapter_dir=output_dir / "adapter",
        tokenizer_dir=output_dir / "tokenizer",
        merged_dir=merged if merged.is_dir() else None,
        metrics=json.loads((output_dir / "metrics.json").read_text(encoding="utf-8")),
        loss_history=json.loads((output_dir / "loss_history.json").read_text(encoding="utf-8")),
        loss_plot=output_dir / "loss.png",
        model_card=output_dir / "README.md",
        resumed_from=Path(resumed) if resumed else None,
        base_model_ref=run.get("base_model_ref"),
        base_model_hub_id=run.get("base_model_hub_id"),
    )


# ------------------------------------------------------------------------------------- train


@dataclass
class _Setup:
    trainer: Any
    tokenizer: Any
    train_stats: dict[str, int]
    val_stats: dict[str, int] | None


def _load_tokenizer(base_ref: str) -> Any:
    """The base's tokenizer with a training-compatible chat template whose end-of-turn is trained."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    tokenizer = AutoTokenizer.from_pretrained(base_ref, local_files_only=offline())
    _prepare_chat_template(tokenizer)
    if not is_chat_template_stop_token_trained(tokenizer):
        # TRL only warns here; a model that never learns to stop is not worth the training time.
        raise TrainingDataError(
            "The chat template leaves the assistant's end-of-turn token outside {% generation %}: the model would "
            "never learn to stop. Move the end-of-turn token inside the generation block."
        )
    return tokenizer


def lora_config_of(config: LoraTrainingConfig) -> Any:
    """The PEFT LoRA settings of a run (SFT and preference training alike)."""
    from peft import LoraConfig

    target_modules = list(config.target_modules) if isinstance(config.target_modules, tuple) else config.target_modules
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_modules,
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        bias="none",
    )


def shared_training_args(
    config: LoraTrainingConfig, checkpoints_dir: Path, *, has_val: bool, cuda: bool, use_bf16: bool
) -> dict[str, Any]:
    """The trainer arguments SFT, DPO and KTO share: checkpoints per epoch (the best by validation
    loss kept when there is a validation split), seeds, schedule, logging."""
    return dict(
        output_dir=str(checkpoints_dir),
        max_length=config.max_length,
        eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch",
        load_best_model_at_end=has_val,
        metric_for_best_model="eval_loss" if has_val else None,
        greater_is_better=False if has_val else None,
        save_total_limit=config.save_total_limit,
        report_to="none",
        use_cpu=not cuda,
        seed=config.seed,
        data_seed=config.seed,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # transformers 5: warmup_ratio is gone; a float < 1 in warmup_steps is the ratio.
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler_type,
        # Explicit, so TRL's default gradient_checkpointing=True does not emit the 5.23 rename warning.
        activation_checkpointing=config.gradient_checkpointing,
        bf16=use_bf16,
        fp16=False,
        logging_strategy="steps",
        logging_steps=_LOGGING_RATIO,
        logging_first_step=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _build_trainer(
    train_convs: list[list[dict[str, str]]],
    val_convs: list[list[dict[str, str]]],
    base_ref: str,
    config: LoraTrainingConfig,
    checkpoints_dir: Path,
    *,
    callbacks: Sequence[Any] = (),
    cuda: bool,
    use_bf16: bool,
) -> _Setup:
    """Tokenizer checks, base model, LoRA config, ``SFTConfig`` and the ``SFTTrainer`` (not yet trained)."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    has_val = bool(val_convs)
    tokenizer = _load_tokenizer(base_ref)
    train_stats = _check_assistant_masks(tokenizer, train_convs, config.max_length, "train")
    val_stats = _check_assistant_masks(tokenizer, val_convs, config.max_length, "validation") if has_val else None

    # Built from plain {role, content} dicts (read_conversations), so datasets infers a
    # struct<role, content> with no None-filled extra keys to leak into the template.
    train_ds = Dataset.from_dict({"messages": train_convs})
    val_ds = Dataset.from_dict({"messages": val_convs}) if has_val else None

    model = _load_model(base_ref, qlora=config.qlora, use_bf16=use_bf16)
    lora_config = lora_config_of(config)
    args = SFTConfig(
        **shared_training_args(config, checkpoints_dir, has_val=has_val, cuda=cuda, use_bf16=use_bf16),
        assistant_only_loss=True,
        packing=config.packing,
        packing_strategy="bfd",
        # Stored in trainer_state.json, so the token count survives a resume.
        include_num_input_tokens_seen="non_padding",
    )
    all_callbacks = list(callbacks)
    if has_val and config.early_stopping_patience > 0:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    with quiet_peft_deprecation():
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            # Always the local tokenizer: without it TRL calls AutoProcessor.from_pretrained (a Hub lookup).
            processing_class=tokenizer,
            peft_config=lora_config,
            callbacks=all_callbacks,
        )
    # With disable_tqdm the Trainer prints every log dict to stdout; on_log already carries them,
    # and stray stdout lines would only clutter the Pipes subprocess output.
    trainer.remove_callback(PrinterCallback)
    return _Setup(trainer=trainer, tokenizer=tokenizer, train_stats=train_stats, val_stats=val_stats)


def previous_run(output_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The ``run.json`` of an earlier attempt in ``output_dir`` (``None`` for a new folder).

    Raises:
        RunMismatchError: the folder holds a run with other inputs; its checkpoints are never resumed.
    """
    run_path = output_dir / "run.json"
    previous = json.loads(run_path.read_text(encoding="utf-8")) if run_path.exists() else None
    if previous is not None:
        diff = {k: (previous.get(k), v) for k, v in identity.items() if previous.get(k) != v}
        if diff:
            raise RunMismatchError(
                f"{output_dir} holds a run with different inputs {diff} (previous, now); refusing to resume it. "
                "Name output_dir by run_key(data_version, config, base_model), or delete the folder."
            )
    return previous


def train_resuming(trainer: Any, checkpoints_dir: Path, on_progress: Callable[[str], None]) -> tuple[Any, Path | None]:
    """Train from the newest complete checkpoint (incomplete ones after it dropped); the train
    output and the checkpoint resumed from (``None`` for a fresh start)."""
    resume = newest_complete_checkpoint(checkpoints_dir)
    drop_incomplete_checkpoints_after(checkpoints_dir, resume)
    if resume is not None:
        on_progress(f"resuming from {resume}")
    train_output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return train_output, resume


def save_adapter_and_tokenizer(trainer: Any, tokenizer: Any, base: Any, output_dir: Path) -> tuple[Path, Path]:
    """Write ``output_dir/adapter`` (portable: it names its base by content) and
    ``output_dir/tokenizer``, each through a temporary folder swapped in whole."""
    adapter_dir, tokenizer_dir = output_dir / "adapter", output_dir / "tokenizer"

    def save_adapter(folder: str) -> None:
        # Only the trained adapter: DPO from an existing adapter (sft_then_dpo) also holds its
        # frozen reference copy ("ref"), which is not part of the model.
        adapters = list(getattr(trainer.model, "peft_config", {}) or {})
        trainer.model.save_pretrained(folder, **({"selected_adapters": ["default"]} if len(adapters) > 1 else {}))
        make_adapter_portable(Path(folder), tokenizer, base)

    for final, save in ((adapter_dir, save_adapter), (tokenizer_dir, tokenizer.save_pretrained)):
        tmp = final.with_name(f".{final.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        save(str(tmp))
        replace_dir(tmp, final)
    return adapter_dir, tokenizer_dir


def train_lora(
    train_parquet: Path,
    validation_parquet: Path | None,
    output_dir: Path,
    config: LoraTrainingConfig,
    *,
    data_version: str = "",
    on_log: Callable[[dict], None] = lambda d: None,
    should_stop: Callable[[], bool] = lambda: False,
    base_cache_dir: Path | None = None,
    on_progress: Callable[[str], None] = logger.info,
) -> TrainingResult:
    """Train a LoRA (or QLoRA) adapter on the assistant turns of ``train_parquet``.

    Args:
        train_parquet: training split, a Parquet file with a ``messages`` column.
        validation_parquet: validation split, or None. With one, every epoch is evaluated, the
            best epoch (lowest eval_loss) is what gets saved, and early stopping applies.
        output_dir: the run folder, one per ``run_key``; resumed from when it holds checkpoints.
        config: the training configuration.
        data_version: recorded in run.json and the model card; a folder trained on another data
            version is refused (``RunMismatchError``).
        on_log: called with every Trainer log as it happens (train steps, evaluations, the final
            summary): step, epoch, loss, learning_rate, eval_loss, tokens_seen, tokens_per_second,
            kind ("train" / "eval" / "summary") and the other numeric values the Trainer logged.
            It runs on the training thread: keep it quick; an exception it raises aborts training
            (the last epoch checkpoint stays resumable).
        should_stop: polled after every optimizer step; when it returns True the trainer saves a
            checkpoint and stops. The outputs are still written, ``metrics["stop_requested"]`` is
            True, and the next call with the same ``output_dir`` resumes.
        base_cache_dir: where catalog bases are converted and the ``"tiny"`` base is built, and
            reused from (``<data dir>/base_models`` in the pipeline; default ``output_dir/base``).
        on_progress: called with a line of text at each long step (base conversion, model
            loading, saving) so a user sees where the time goes.

    Raises:
        QLoRAUnavailable: ``config.qlora`` without CUDA.
        TrainingDataError: unusable data or a chat template that cannot mask assistant turns.
        RunMismatchError: ``output_dir`` belongs to a run with another config or other data.
    """
    import torch

    cuda = torch.cuda.is_available()
    if config.qlora and not cuda:
        raise QLoRAUnavailable(
            "QLoRA loads the base model in 4-bit NF4 through bitsandbytes and needs a CUDA GPU, but "
            "torch.cuda.is_available() is False here. Set qlora=False to train a regular LoRA adapter "
            "(works on CPU), or run this step on a machine with an NVIDIA GPU."
        )
    use_bf16 = config.bf16 if config.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints_dir = output_dir / "checkpoints"
    train_convs = read_conversations(Path(train_parquet))
    if not train_convs:
        raise TrainingDataError(f"{train_parquet}: the training split is empty")
    val_convs = read_conversations(Path(validation_parquet)) if validation_parquet is not None else []
    if validation_parquet is not None and not val_convs:
        logger.warning("%s is empty: training without evaluation or early stopping", validation_parquet)
    has_val = bool(val_convs)

    # ---- run identity: never resume someone else's checkpoints
    identity = {
        "config_hash": config.config_hash(),
        "data_version": data_version,
        "base_model": config.base_model,
        "train_digest": _file_digest(Path(train_parquet)),
        "validation_digest": _file_digest(Path(validation_parquet)) if has_val and validation_parquet else None,
    }
    run_path = output_dir / "run.json"
    previous = previous_run(output_dir, identity)
    if previous is not None:
        if (
            previous.get("status") == "complete"
            and (output_dir / "metrics.json").exists()
            and (output_dir / "adapter").is_dir()
        ):
            result = _result_from_disk(output_dir, previous)
            if config.merge_full_model and result.merged_dir is None:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(result.tokenizer_dir))
                merge_adapter(previous["base_model_ref"], result.adapter_dir, tok, output_dir / "merged", use_bf16)
                result.merged_dir = output_dir / "merged"
            logger.info("%s is already trained; returning the stored result", output_dir)
            return result
    write_json(run_path, {**identity, "status": "running", "config": config.to_dict()})

    # ---- base model, tokenizer, trainer
    texts = [m["content"] for conv in train_convs for m in conv]
    base = resolve_base_model(
        config.base_model,
        texts,
        Path(base_cache_dir) if base_cache_dir else output_dir / "base",
        on_progress=on_progress,
    )
    base_ref = base.path
    on_progress(f"base model {config.base_model}: loading {base_ref}")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    progress = _make_progress_callback(on_log, should_stop)
    setup = _build_trainer(
        train_convs, val_convs, base_ref, config, checkpoints_dir, callbacks=[progress], cuda=cuda, use_bf16=use_bf16
    )
    trainer, tokenizer, train_stats, val_stats = setup.trainer, setup.tokenizer, setup.train_stats, setup.val_stats

    train_output, resume = train_resuming(trainer, checkpoints_dir, lambda text: logger.info("%s", text))
    state = trainer.state
    resumed_step = checkpoint_step(resume) if resume is not None else None
    # ---- outputs (the best epoch's weights when there is a validation split)
    adapter_dir, tokenizer_dir = save_adapter_and_tokenizer(trainer, tokenizer, base, output_dir)
    on_progress(f"adapter saved to {adapter_dir}")

    history = loss_history(state.log_history)
    session_steps = state.global_step - (resumed_step or 0)
    if resumed_step is None:
        train_loss = float(train_output.training_loss)
    else:
        # Trainer's training_loss covers only this process's steps; add the steps before the resume.
        before = mean_logged_loss(history, resumed_step)
        parts = [(before, resumed_step), (float(train_output.training_loss) if session_steps else None, session_steps)]
        weight = sum(w for v, w in parts if v is not None)
        train_loss = sum(v * w for v, w in parts if v is not None) / weight if weight else float("nan")
    eval_losses = [r["eval_loss"] for r in history if "eval_loss" in r]
    runtime = float(train_output.metrics.get("train_runtime", 0.0))
    session_tokens = state.num_input_tokens_seen - progress.tokens_at_start
    peak_mb, peak_kind = _peak_memory_mb(cuda)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    expected_steps = state.max_steps
    metrics: dict[str, Any] = {
        "train_loss": train_loss,
        "eval_loss": float(state.best_metric)
        if state.best_metric is not None
        else (eval_losses[-1] if eval_losses else None),
        "epochs": float(state.epoch or 0.0),
        "global_step": int(state.global_step),
        "train_runtime_s": runtime,
        "train_tokens": int(state.num_input_tokens_seen),
        "tokens_per_second": session_tokens / runtime if runtime > 0 else None,
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": peak_kind,
        "resumed_from_step": resumed_step,
        "max_steps": int(expected_steps),
        "stop_requested": progress.stop_requested,
        "early_stopped": bool(has_val and not progress.stop_requested and state.global_step < expected_steps),
        "best_checkpoint": state.best_model_checkpoint,
        "train_examples": train_stats["examples"],
        "train_dataset_tokens": train_stats["tokens"],
        "train_assistant_tokens": train_stats["assistant_tokens"],
        "train_truncated_examples": train_stats["truncated"],
        "validation_examples": val_stats["examples"] if val_stats else 0,
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
        base_ref=base_ref,
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


def finish_run(
    output_dir: Path,
    run_path: Path,
    identity: dict[str, Any],
    config: LoraTrainingConfig,
    *,
    base: Any,
    base_ref: str,
    data_version: str,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    tokenizer: Any,
    use_bf16: bool,
    adapter_dir: Path,
    tokenizer_dir: Path,
    stop_requested: bool,
    resume: Path | None,
) -> TrainingResult:
    """The end of every training run (SFT, DPO, KTO): the merged model when asked for, metrics,
    loss history and plot, the model card, ``run.json`` (``complete``, or ``stopped`` when a stop
    was requested: the next launch resumes) and the result. ``base`` is the resolved base model
    (its hub id and GGUF hash go into ``run.json``), ``base_ref`` the folder it was loaded from."""
    merged_dir = None
    if config.merge_full_model:
        merged_dir = output_dir / "merged"
        merge_adapter(base_ref, adapter_dir, tokenizer, merged_dir, use_bf16)

    write_json(output_dir / "metrics.json", metrics)
    write_json(output_dir / "loss_history.json", history)
    loss_plot = write_loss_plot(history, output_dir / "loss.png")
    card = write_model_card(
        output_dir / "README.md",
        base_ref=base_ref,
        base_hub_id=base.hub_id,
        base_name=config.base_model,
        data_version=data_version,
        config=config,
        metrics=metrics,
        merged=merged_dir is not None,
    )
    status = "stopped" if stop_requested else "complete"
    write_json(
        run_path,
        {
            **identity,
            "status": status,
            "config": config.to_dict(),
            "base_model_ref": base_ref,
            "base_model_hub_id": base.hub_id,
            "base_model_sha256": base.source_sha256,
            "resumed_from": str(resume) if resume else None,
        },
    )
    return TrainingResult(
        output_dir=output_dir,
        adapter_dir=adapter_dir,
        tokenizer_dir=tokenizer_dir,
        merged_dir=merged_dir,
        metrics=metrics,
        loss_history=history,
        loss_plot=loss_plot,
        model_card=card,
        resumed_from=resume,
        base_model_ref=base_ref,
        base_model_hub_id=base.hub_id,
    )
