"""The trainer process: a SIGTERM (what Dagster sends when a run is cancelled) stops training at a
checkpoint, and the next launch resumes from it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ft_pipeline_tests.unit.test_lora_training import _conversations

REPO = Path(__file__).resolve().parents[2]


def _launch(extras_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "ft_pipeline.lib.training.pipes_entrypoint", "--extras", str(extras_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # trains twice in a subprocess (about 1 minute on 2 cores)
def test_sigterm_stops_at_a_checkpoint_and_the_next_launch_resumes(tmp_path):
    train = tmp_path / "train.parquet"
    pd.DataFrame({"messages": _conversations(40, seed=1)}).to_parquet(train)
    config = {
        "max_steps": 400,
        "max_length": 256,
        "per_device_train_batch_size": 2,
        "gradient_checkpointing": False,
        "lora_r": 4,
        "lora_alpha": 8,
    }
    extras = {
        "train_parquet": str(train),
        "validation_parquet": None,
        "output_dir": str(tmp_path / "run"),
        "data_version": "v1",
        "config": config,
    }
    extras_path = tmp_path / "extras.json"
    extras_path.write_text(json.dumps(extras))

    process = _launch(extras_path)
    # Wait until training has logged a few steps, then cancel as Dagster would.
    deadline = time.monotonic() + 240
    steps_seen = 0
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if '"kind": "train"' in line:
            steps_seen += 1
            if steps_seen >= 3:
                process.send_signal(signal.SIGTERM)
                break
    assert steps_seen >= 3, process.stderr.read()[-2000:]
    _, stderr = process.communicate(timeout=240)
    assert process.returncode != 0
    assert "training was cancelled" in stderr
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, "a stop request must leave a resumable checkpoint"
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert 0 < stopped_at < 400

    # Relaunch with the same inputs: it must resume from that checkpoint, not start over.
    process = _launch(extras_path)
    first_step = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if '"kind": "train"' in line:
            first_step = json.loads(line)["step"]
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=240)
    assert first_step is not None, stderr[-3000:]
    assert first_step > stopped_at
