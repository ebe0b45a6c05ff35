"""Hugging Face runtime switches shared by the trainer and the artifact writers."""

from __future__ import annotations

import contextlib
import os
import warnings

__all__ = ["offline", "quiet_peft_deprecation"]


@contextlib.contextmanager
def quiet_peft_deprecation():
    """peft 0.21 still reads ``model.is_gradient_checkpointing``, deprecated in transformers 5.23:
    a FutureWarning on every PeftModel creation that nobody here can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def offline() -> bool:
    """Hugging Face is told to stay offline: load with ``local_files_only``."""
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in {"1", "true", "yes", "on"} for flag in flags)
