"""Evaluation answer generation: tutorial-style loops against ``ft_pipeline.lib.evaluation.generation``.

    .venv/bin/python benchmarks/bench_eval.py [--openai-prompts 200] [--latency 0.1] [--concurrency 16]
                                              [--local-prompts 128] [--max-new-tokens 32] [--batch-size 16]
                                              [--threads 1] [--base tiny]
    .venv/bin/python benchmarks/bench_eval.py --skip-openai --base smollm2-135m-instruct \
                                              --local-prompts 32 --max-new-tokens 48 --threads 2

1. OpenAI-compatible model, against the local ``FakeOpenAI`` server with ``--latency`` seconds of
   latency per chat request: a plain loop of ``client.chat.completions.create`` (as tutorials do)
   against ``OpenAIChatGenerator`` with ``--concurrency`` requests in flight. Target: >= 10x.

   The latency is added around the fake's request handling, outside its global lock. The fake
   calls scripted responders while holding that lock, so a ``time.sleep`` inside a responder would
   serialise all requests and no client could be faster than the sequential loop.

2. Local model on CPU, ``--base`` (the tiny base built locally by default; ``smollm2-135m-instruct``
   for the real pretrained default, converted once into ``--base-cache``, by default the demo's
   ``data/base_models``): a loop of ``model.generate`` per prompt (as tutorials do) against
   ``LocalGenerator`` batched (``--batch-size``, left padding, KV cache), same prompts, same greedy
   decoding, same ``--max-new-tokens``. Target: >= 4x. Printed: prompts/s and generated tokens/s
   (answers re-tokenized, the same count for both), and how many answers are identical (greedy +
   correct left padding give the same text up to float rounding of padded batches). With a real
   model the prompts are the sample logs' first user turns, with their system prompt.

Every target prints PASS or MISS; a miss never makes the script exit non-zero. Nothing is
downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ft_pipeline.lib.evaluation.generation import GenerationConfig, LocalGenerator, OpenAIChatGenerator  # noqa: E402
from ft_pipeline_tests.fakes.openai_server import FakeOpenAI  # noqa: E402

MODEL = "gpt-4o-mini"
OPENAI_TARGET = 10.0
LOCAL_TARGET = 4.0

_WORDS = (
    "my plug is offline the camera keeps blinking after the update thermostat will not pair doorbell "
    "shows error 42 speaker is very slow unplug wait ten seconds open the app reset button light blue"
).split()


def make_prompts(n: int) -> list[list[dict]]:
    """Support-style prompts of varied length (4 to 40 words), a third with a system message."""
    prompts = []
    for i in range(n):
        words = [_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(4 + (i * 13) % 37)]
        msgs = [{"role": "system", "content": "You are Nimbus, a support assistant."}] if i % 3 == 0 else []
        msgs.append({"role": "user", "content": f"#{i} " + " ".join(words)})
        prompts.append(msgs)
    return prompts


def sample_prompts(n: int) -> list[list[dict]]:
    """The sample logs' openings (system prompt + first user turn): what the demo's model answers."""
    import random

    from ft_pipeline.lib.sample_data import _conversation

    rng = random.Random(3)
    return [_conversation(rng, i)["messages"][:2] for i in range(n)]


def verdict(speedup: float, target: float) -> str:
    return "PASS" if speedup >= target else "MISS"


def bench_openai(args: argparse.Namespace) -> None:
    print(
        f"== OpenAI-compatible generation: {args.openai_prompts} prompts, {args.latency * 1000:.0f} ms per request =="
    )
    prompts = make_prompts(args.openai_prompts)
    with FakeOpenAI(chat_latency_s=args.latency) as fake:
        fake.set_responder(MODEL, lambda messages, body: "answer to " + messages[-1]["content"])
        client = fake.client(api_key="sk-bench", strict=False, max_retries=2, timeout=30)
        client.chat.completions.create(model=MODEL, messages=prompts[0])  # warm the connection

        start = time.perf_counter()
        sequential = []
        for p in prompts:  # the tutorial loop
            r = client.chat.completions.create(model=MODEL, messages=p, temperature=0)
            sequential.append(r.choices[0].message.content)
        t_seq = time.perf_counter() - start

        fake.max_chat_in_flight = 0
        gen = OpenAIChatGenerator(client, MODEL, GenerationConfig(concurrency=args.concurrency))
        start = time.perf_counter()
        concurrent = gen.generate(prompts)
        t_conc = time.perf_counter() - start
        peak = fake.max_chat_in_flight
        assert fake.validation_errors == [], fake.validation_errors

    speedup = t_seq / t_conc
    print(f"  sequential loop (chat.completions.create)  {t_seq:7.2f} s   {len(prompts) / t_seq:7.1f} req/s")
    print(
        f"  OpenAIChatGenerator, concurrency {args.concurrency:<3}     {t_conc:7.2f} s   "
        f"{len(prompts) / t_conc:7.1f} req/s"
        f"   (peak in flight at the server: {peak})"
    )
    print(f"  answers identical and in order: {sequential == concurrent}")
    print(f"  speed-up {speedup:.1f}x (target >= {OPENAI_TARGET:.0f}x): {verdict(speedup, OPENAI_TARGET)}")


def bench_local(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ft_pipeline.lib.training.base_models import resolve_base_model

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    prompts = make_prompts(args.local_prompts) if args.base == "tiny" else sample_prompts(args.local_prompts)
    print(
        f"\n== Local generation, base {args.base} (CPU, {args.threads} torch thread(s)): {len(prompts)} prompts, "
        f"max_new_tokens={args.max_new_tokens} =="
    )
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        texts = [m["content"] for p in prompts for m in p]
        base = resolve_base_model(args.base, texts, Path(tmp) if args.base == "tiny" else Path(args.base_cache)).path

        # The tutorial loop: one prompt at a time, no padding.
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base).eval()
        config = model.config
        print(
            f"  model: Llama, hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab "
            f"{config.vocab_size}, "
            f"{sum(p.numel() for p in model.parameters()):,} parameters"
        )

        def one(p: list[dict]) -> str:
            enc = tok.apply_chat_template(p, add_generation_prompt=True, return_dict=True, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()

        one(prompts[0])  # warm-up
        start = time.perf_counter()
        loop_answers = [one(p) for p in prompts]
        t_loop = time.perf_counter() - start

        gen = LocalGenerator(
            base, config=GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size), device="cpu"
        )
        gen.generate(prompts[: args.batch_size])  # warm-up
        start = time.perf_counter()
        batched = gen.generate(prompts)
        t_batch = time.perf_counter() - start

    same = sum(a == b for a, b in zip(loop_answers, batched))
    speedup = t_loop / t_batch
    loop_tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in loop_answers)
    batch_tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in batched)
    print(
        f"  one-by-one loop (model.generate)           {t_loop:7.2f} s   {len(prompts) / t_loop:7.2f} prompts/s"
        f"   {loop_tokens / t_loop:7.1f} generated tokens/s"
    )
    print(
        f"  LocalGenerator, batch {args.batch_size:<3}                  {t_batch:7.2f} s   "
        f"{len(prompts) / t_batch:7.2f} prompts/s"
        f"   {batch_tokens / t_batch:7.1f} generated tokens/s"
    )
    print(f"  identical answers: {same}/{len(prompts)}")
    print(f"  speed-up {speedup:.1f}x (target >= {LOCAL_TARGET:.0f}x): {verdict(speedup, LOCAL_TARGET)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openai-prompts", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per chat request at the fake server")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--local-prompts", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine's cores are shared)")
    parser.add_argument("--base", default="tiny", help="tiny (default), smollm2-135m-instruct, or a local HF folder")
    parser.add_argument(
        "--base-cache",
        default=str(REPO / "data" / "base_models"),
        help="where a catalog base is converted once (default: the demo's data/base_models)",
    )
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.skip_openai:
        bench_openai(args)
    if not args.skip_local:
        bench_local(args)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
