"""The local LoRA trainer (SFT, or DPO/KTO by ``config.method``) as its own process, speaking Dagster Pipes.

    python -m ft_pipeline.lib.training.pipes_entrypoint

Launched by ``fine_tuned_model`` through ``PipesSubprocessClient`` (or a Kubernetes Pipes client
on a GPU node): a crash or an out-of-memory kill takes down this process, not the Dagster run
worker, and the GPU memory is released when it exits. Only ``dagster_pipes`` (a small protocol
package without Dagster itself) is imported. When not launched by Dagster, Pipes is not used and
the extras come from ``--extras FILE.json`` instead, so the same entry point runs standalone.
"""

from __future__ import annotations

import os

# The trainer sends its own progress lines over Pipes (conversion, steps, saving); tqdm bars (GGUF
# dequantization, weight loading) would only be redrawn noise in the Dagster log. tqdm reads this
# when it is imported, so it is set before anything imports it; an explicit setting wins.
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes  # noqa: E402

from ft_pipeline.lib.evaluation.generation import adapter_digest  # noqa: E402
from ft_pipeline.lib.quiet_logs import quiet_third_party_logs  # noqa: E402
from ft_pipeline.lib.training.lora import LoraTrainingConfig, train_lora  # noqa: E402
from ft_pipeline.lib.training.preference_trainer import train_preferences, train_sft_then_dpo  # noqa: E402


def _config_from_extras(values: dict[str, Any]) -> LoraTrainingConfig:
    known = set(LoraTrainingConfig.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown training config keys: {sorted(unknown)}")
    return LoraTrainingConfig(**values)


def run(extras: dict[str, Any], pipes: PipesContext | None) -> dict[str, Any]:
    stop = threading.Event()

    def _terminate(signum, _frame):
        # PipesSubprocessClient forwards a Dagster run cancellation as SIGTERM/SIGINT: the trainer
        # stops after the current step and saves a checkpoint, so a retry resumes from there.
        stop.set()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)

    def on_log(record: dict[str, Any]) -> None:
        if pipes is None:
            print(json.dumps(record), flush=True)
            return
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
        pipes.log.info("train " + " ".join(parts))

    config = _config_from_extras(extras.get("config", {}))
    on_progress: Callable[[str], None] = (lambda line: print(line, flush=True)) if pipes is None else pipes.log.info
    common: dict[str, Any] = {
        "on_progress": on_progress,
        "should_stop": stop.is_set,
        "base_cache_dir": Path(extras["base_cache_dir"]) if extras.get("base_cache_dir") else None,
    }

    def optional(name: str) -> Path | None:
        return Path(extras[name]) if extras.get(name) else None

    if config.method == "sft":
        result = train_lora(
            Path(extras["train_parquet"]),
            optional("validation_parquet"),
            Path(extras["output_dir"]),
            config,
            data_version=extras.get("data_version", ""),
            on_log=on_log,
            **common,
        )
    elif config.method == "sft_then_dpo":
        result = train_sft_then_dpo(
            Path(extras["train_parquet"]),
            optional("validation_parquet"),
            Path(extras["train_jsonl"]),
            optional("validation_jsonl"),
            Path(extras["output_dir"]),
            config,
            sft_data_version=extras.get("sft_data_version", ""),
            data_version=extras.get("data_version", ""),
            on_log=on_log,
            **common,
        )
    else:
        # dpo / kto: the preference JSONL of the method, same run folder layout and guarantees.
        result = train_preferences(
            Path(extras["train_jsonl"]),
            optional("validation_jsonl"),
            Path(extras["output_dir"]),
            config,
            data_version=extras.get("data_version", ""),
            on_log=on_log,
            **common,
        )
    if stop.is_set():
        raise SystemExit("training was cancelled")
    return {
        "output_dir": str(result.output_dir),
        "adapter_dir": str(result.adapter_dir),
        "tokenizer_dir": str(result.tokenizer_dir),
        "merged_dir": str(result.merged_dir) if result.merged_dir else None,
        "metrics": result.metrics,
        "loss_history": result.loss_history,
        "loss_plot": str(result.loss_plot),
        "model_card": str(result.model_card),
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "base_model_ref": str(result.base_model_ref),
        "base_model_hub_id": result.base_model_hub_id,
        # The same digest names the model in evaluation reports, so registry URIs and report ids agree.
        "adapter_version": adapter_digest(result.adapter_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", help="JSON file with the extras when not launched by Dagster")
    args = parser.parse_args(argv)
    quiet_third_party_logs()
    if PipesEnvVarParamsLoader().is_dagster_pipes_process():
        with open_dagster_pipes() as pipes:
            try:
                summary = run(dict(pipes.extras), pipes)
            except Exception as err:
                # Put the reason in the Dagster event log, not only on the process's stderr.
                pipes.log.error(f"training failed: {type(err).__name__}: {err}")
                raise
            # The asset builds its own metadata from this summary (paths, metrics, loss curve).
            pipes.report_custom_message(json.loads(json.dumps(summary, default=str)))
        return 0
    if not args.extras:
        parser.error("--extras is required outside Dagster")
    summary = run(json.loads(Path(args.extras).read_text()), None)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
