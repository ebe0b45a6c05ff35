"""Local LoRA / QLoRA fine-tuning, by concern (as TRL splits its trainers):

- :mod:`~ft_pipeline.lib.training.config`: ``LoraTrainingConfig`` and ``run_key``;
- :mod:`~ft_pipeline.lib.training.checkpoints`: complete checkpoints, the resume point, crash leftovers;
- :mod:`~ft_pipeline.lib.training.artifacts`: loss history and plot, model card, portable adapter, merge;
- :mod:`~ft_pipeline.lib.training.trainer`: ``train_lora`` (data checks, chat template, ``SFTTrainer``).

This module re-exports their public names, so ``from ft_pipeline.lib.training.lora import
train_lora`` keeps working.
"""

from __future__ import annotations

from ft_pipeline.lib.training.checkpoints import newest_complete_checkpoint
from ft_pipeline.lib.training.config import LoraTrainingConfig, run_key
from ft_pipeline.lib.training.trainer import (
    QLoRAUnavailable,
    RunMismatchError,
    TrainingDataError,
    TrainingResult,
    read_conversations,
    train_lora,
)

__all__ = [
    "LoraTrainingConfig",
    "QLoRAUnavailable",
    "RunMismatchError",
    "TrainingDataError",
    "TrainingResult",
    "newest_complete_checkpoint",
    "read_conversations",
    "run_key",
    "train_lora",
]
