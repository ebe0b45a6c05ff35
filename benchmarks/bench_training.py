"""Training throughput: the tutorial SFT recipe against ours, on the same data and model.

    python benchmarks/bench_training.py [--conversations 600] [--epochs 1] [--gpu]
    python benchmarks/bench_training.py --base smollm2-135m-instruct --conversations 32 --batch-size 4

Tutorial recipe: every example padded to 512 tokens, loss on all tokens, no packing.
Ours (what ``train_lora`` does): loss on assistant tokens only, bfd packing into padding-free
blocks of the same length. Same base, same LoRA (all-linear, r 16), batch size, epochs, seed.
``--base`` picks the model: ``tiny`` (default; built locally, random weights) or any base the
pipeline accepts, e.g. ``smollm2-135m-instruct`` (the real pretrained default, converted once into
``--base-cache``, by default the demo's ``data/base_models``).
Each variant runs in its own process so peak memory is its own. Printed per variant: training
tokens/s counted on real (non-pad) tokens, wall time, peak RSS (or CUDA memory), and the ratio.
Target: ours >= 2x the tutorial recipe on CPU, with the tiny model and with SmolLM2.

With ``--gpu`` (CUDA required) it also trains a ~0.5B-parameter random-weight Llama-shaped model
in bf16 with our recipe and prints tokens/s and model FLOPs utilization (MFU = 6 * params *
tokens/s / peak bf16 FLOP/s); target MFU >= 35%.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEQ_LEN = 512
# Dense bf16 peak of the Hopper parts this project is lent (H100 SXM / H200: 989 TFLOP/s).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def make_conversations(n: int, seed: int) -> list[list[dict[str, str]]]:
    from ft_pipeline.lib.sample_data import _conversation

    rng = random.Random(seed)
    return [_conversation(rng, i)["messages"] for i in range(n)]


def _build_sft(variant: str, base: str, train: list, args: argparse.Namespace, out: Path, *, bf16: bool, use_cpu: bool):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from ft_pipeline.lib.training.trainer import _load_tokenizer

    tokenizer = _load_tokenizer(base)
    common = dict(
        output_dir=str(out),
        max_length=SEQ_LEN,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=2e-4,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=use_cpu,
        bf16=bf16,
        seed=0,
        logging_steps=1000,
        disable_tqdm=True,
        activation_checkpointing=args.gradient_checkpointing,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )
    if variant == "tutorial":
        # Pad every example to 512 and train on every token, as most tutorials do.
        sft = SFTConfig(
            **common, packing=False, assistant_only_loss=False, completion_only_loss=False, pad_to_multiple_of=SEQ_LEN
        )
    else:
        sft = SFTConfig(**common, packing=True, packing_strategy="bfd", assistant_only_loss=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="bfloat16" if bf16 else "float32")
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    trainer = SFTTrainer(
        model=model,
        args=sft,
        train_dataset=Dataset.from_dict({"messages": train}),
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process; prints a JSON line with its figures."""
    import torch

    from ft_pipeline.lib.training.base_models import resolve_base_model

    cuda = torch.cuda.is_available() and args.device == "cuda"
    conversations = make_conversations(args.conversations, seed=1)
    workdir = Path(args.workdir)
    if args.big:
        base = str(build_big_base(workdir / "big_base"))
    else:
        cache = workdir / "base" if args.base == "tiny" else Path(args.base_cache)
        base = resolve_base_model(args.base, [m["content"] for c in conversations for m in c], cache).path
    trainer = _build_sft(
        args.variant, base, conversations, args, workdir / f"out-{args.variant}", bf16=cuda, use_cpu=not cuda
    )
    batches = list(trainer.get_train_dataloader())
    real_tokens = 0
    padded_tokens = 0
    trained_tokens = 0
    for batch in batches:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else int(ids.numel())
        real_tokens += real
        padded_tokens += int(ids.numel())
        trained_tokens += int((batch["labels"] != -100).sum())
    real_tokens *= int(args.epochs)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    n_params = sum(p.numel() for p in trainer.model.parameters())
    figures = {
        "variant": args.variant,
        "base": "big" if args.big else args.base,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "steps": trainer.state.global_step,
        "wall_s": wall,
        "real_tokens": real_tokens,
        "padded_tokens_per_epoch": padded_tokens,
        "loss_tokens_per_epoch": trained_tokens,
        "real_tokens_per_s": real_tokens / wall,
        "params": n_params,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1024**3 if cuda else None,
    }
    print("RESULT " + json.dumps(figures), flush=True)
    return figures


def build_big_base(path: Path) -> Path:
    """A ~0.5B-parameter Llama/Qwen-shaped model with random weights and the tiny tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ft_pipeline.lib.training.base_models import resolve_base_model

    if (path / "config.json").exists():
        return path
    texts = [m["content"] for c in make_conversations(200, seed=1) for m in c]
    tiny = resolve_base_model("tiny", texts, path.parent / "tok").path
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    # Qwen2.5-0.5B-like shape (hidden 896, 24 layers, GQA 14/2, MLP 4864), Llama architecture.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _spawn(variant: str, args: argparse.Namespace, workdir: Path, *, big: bool = False) -> dict:
    command = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--workdir",
        str(workdir),
        "--conversations",
        str(args.conversations),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--device",
        "cuda" if big else args.device,
        "--base",
        args.base,
        "--base-cache",
        args.base_cache,
    ]
    if big:
        command.append("--big")
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"{variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="on for both variants (off by default: tiny model)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--base", default="tiny", help="tiny (default), smollm2-135m-instruct, or a local HF folder")
    parser.add_argument(
        "--base-cache",
        default=str(REPO / "data" / "base_models"),
        help="where a catalog base is converted once (default: the demo's data/base_models)",
    )
    parser.add_argument("--gpu", action="store_true", help="also run the ~0.5B bf16 model on CUDA and print MFU")
    parser.add_argument("--variant", choices=["tutorial", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--big", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args)
        return

    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        workdir = Path(tmp)
        print(
            f"bench_training: base {args.base}, {args.conversations} conversations, {args.epochs:g} epoch(s), "
            f"batch {args.batch_size}, block/pad length {SEQ_LEN}, device {args.device}, load average "
            f"{os.getloadavg()[0]:.2f}"
        )
        tutorial = _spawn("tutorial", args, workdir)
        ours = _spawn("ours", args, workdir)
        rows = []
        for r in (tutorial, ours):
            rows.append(
                {
                    "recipe": "tutorial (pad 512, all tokens, no packing)"
                    if r["variant"] == "tutorial"
                    else "ours (assistant-only, bfd packing)",
                    "steps": r["steps"],
                    "wall s": round(r["wall_s"], 1),
                    "real tokens": r["real_tokens"],
                    "padded tok/epoch": r["padded_tokens_per_epoch"],
                    "loss tok/epoch": r["loss_tokens_per_epoch"],
                    "real tok/s": round(r["real_tokens_per_s"], 1),
                    "peak RSS GB": round(r["peak_rss_gb"], 2),
                }
            )
        print(pd.DataFrame(rows).to_string(index=False))
        ratio = ours["real_tokens_per_s"] / tutorial["real_tokens_per_s"]
        print(
            f"\nthroughput ratio ours/tutorial on real tokens: {ratio:.2f}x  (target >= 2x: "
            f"{'PASS' if ratio >= 2 else 'MISS'})"
        )
        print(f"wall time ratio tutorial/ours for the same data: {tutorial['wall_s'] / ours['wall_s']:.2f}x")

        if args.gpu:
            import torch

            if not torch.cuda.is_available():
                print("\n--gpu: no CUDA device here; the 0.5B bf16 MFU run was skipped")
                return
            big = _spawn("ours", args, workdir, big=True)
            name = big["device"]
            peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
            mfu = 6 * big["params"] * big["real_tokens_per_s"] / peak if peak else float("nan")
            # With a frozen base, the weight-gradient half of the backward pass is skipped: the
            # FLOPs actually executed are closer to 4N per token. Both are printed.
            mfu_frozen = 4 * big["params"] * big["real_tokens_per_s"] / peak if peak else float("nan")
            print(
                f"\n0.5B random-weight Llama, bf16 on {name}: {big['params'] / 1e6:.0f}M params, "
                f"{big['real_tokens_per_s']:,.0f} tokens/s, peak CUDA memory {big['peak_cuda_gb']:.1f} GB, "
                f"MFU {mfu:.1%} by the 6N convention, {mfu_frozen:.1%} counting 4N for a frozen base "
                f"(target >= 35%: {'PASS' if mfu >= 0.35 else 'MISS'})"
            )


if __name__ == "__main__":
    main()
