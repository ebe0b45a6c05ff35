"""Fine-tuning backends: one module each, all implementing
:class:`~ft_pipeline.lib.training.backends.base.FineTuningBackend` (prepare, start or re-attach,
wait, result, cancel), run by :func:`~ft_pipeline.lib.training.backends.base.train_with`.

=============  =====================================================  ==========================
backend        trains                                                 module
=============  =====================================================  ==========================
local_lora     TRL + PEFT LoRA/QLoRA, sft / dpo / kto / sft_then_dpo  ``backends.local_lora``
openai         OpenAI fine-tuning jobs, sft / dpo / sft_then_dpo      ``backends.openai``
azure          Azure OpenAI jobs (as openai), then a deployment       ``backends.azure``
together       Together AI jobs (LoRA), sft / dpo / sft_then_dpo      ``backends.together``
=============  =====================================================  ==========================
"""

from ft_pipeline.lib.training.backends.base import (
    FineTuningBackend,
    JobHandle,
    PreparedRun,
    TrainingHooks,
    TrainingOutcome,
    TrainingRequest,
    train_with,
)

__all__ = [
    "FineTuningBackend",
    "JobHandle",
    "PreparedRun",
    "TrainingHooks",
    "TrainingOutcome",
    "TrainingRequest",
    "train_with",
]
