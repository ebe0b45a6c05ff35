"""Silence third-party log lines that are noise in this pipeline, and only those.

On a CPU machine, importing peft imports bitsandbytes, which tries to fetch an optional CPU
4-bit kernel from the hub and logs two warnings when it cannot ("Skipping publisher trust check
..." and "Failed to load CPU gemm_4bit_forward ..."). The pipeline never runs 4-bit on CPU (QLoRA
needs CUDA and says so), so both lines are dropped by message, not by muting the loggers: any
other warning of those libraries still shows. Per-tensor progress bars of model loading are
turned off too: the pipeline logs its own progress lines (conversion, training steps, generation
batches), which reach the Dagster log, where a redrawn bar cannot.
"""

from __future__ import annotations

import logging

__all__ = ["quiet_third_party_logs"]

_NOISE = {
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
    "kernels._internals.hf_hub": ("Skipping publisher trust check",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_third_party_logs(progress_bars: bool = False) -> None:
    """Install the filters (idempotent); with ``progress_bars=False`` also turn off the
    transformers / huggingface_hub tqdm bars. Call before peft or bitsandbytes is imported."""
    for name, prefixes in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
    if not progress_bars:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        disable_progress_bars()
