"""Load test of ``ft-pipeline serve`` with the real ``openai`` client on loopback.

    .venv/bin/python benchmarks/bench_serve.py                       # a tiny local model (quick)
    .venv/bin/python benchmarks/bench_serve.py --data-dir data       # the demo's promoted model
    .venv/bin/python benchmarks/bench_serve.py --url http://127.0.0.1:8000/v1 --model ft-pipeline-assistant

Without ``--url`` the script starts the server itself, as its own process (``ft-pipeline serve``
on a free loopback port), over ``--data-dir``'s registry, or by default over a throwaway data
directory with the tiny local base and one LoRA adapter registered and promoted. Then it drives
the server for ``--duration`` seconds twice: one request at a time (the baseline), and from
``--clients`` concurrent threads, each with its own ``openai.OpenAI`` client. Every request is a
support-style prompt with ``max_tokens=--max-tokens``. Printed per phase: requests, errors,
requests/s, p50/p95 latency and completion tokens/s (the server's usage counts).

The server generates for one request at a time per loaded model (the model's weights are shared,
so generation is serialized); concurrent clients overlap only the HTTP, JSON and tokenization work
with it. Throughput rises a little, and the concurrent phase's latency shows what a client waits
in the queue under load. Nothing is downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import openai  # noqa: E402

TINY_NAME = "bench-assistant"
_WORDS = (
    "my plug is offline the camera keeps blinking after the update thermostat will not pair doorbell "
    "shows error 42 speaker is very slow unplug wait ten seconds open the app reset button light blue"
).split()


def make_prompts(n: int) -> list[list[dict]]:
    """Support-style prompts of varied length (4 to 40 words), a third with a system message."""
    prompts = []
    for i in range(n):
        words = [_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(4 + (i * 11) % 37)]
        messages = [{"role": "user", "content": " ".join(words).capitalize() + "?"}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "You are Nimbus, a support assistant."})
        prompts.append(messages)
    return prompts


def tiny_data_dir(root: Path) -> Path:
    """A data directory whose registry has one local LoRA version (tiny base) in production."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from ft_pipeline.lib.quiet_logs import quiet_third_party_logs
    from ft_pipeline.lib.registry import ModelRegistry
    from ft_pipeline.lib.storage import portable_path
    from ft_pipeline.lib.training.base_models import resolve_base_model

    quiet_third_party_logs()
    hf_logging.disable_progress_bar()

    texts = [" ".join(m["content"] for m in p) for p in make_prompts(64)]
    base = Path(resolve_base_model("tiny", texts, root / "base_models").path)
    run = root / "models" / "bench-run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
        )
    model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "tokenizer")
    registry = ModelRegistry.for_data_dir(root)
    dataset = registry.record_dataset_version("bench", "train", "0" * 64, 1)
    training = registry.record_training_run("bench-run", "local_lora", "tiny", dataset, None, {}, 0)
    version = registry.register_model_version(
        TINY_NAME,
        training_run_id=training,
        model_uri=f"local:{run / 'adapter'}",
        backend="local_lora",
        base_model="tiny",
        run_key="bench-run",
        dataset_version="bench",
        config_hash="bench",
        metrics={},
        artifact_path=str(run / "adapter"),
        tags={"base_model_path": portable_path(str(base), root), "tokenizer_dir": str(run / "tokenizer")},
    )
    registry.record_evaluation(
        "bench-eval",
        TINY_NAME,
        version.version,
        suite="test",
        eval_dataset_version_id=dataset,
        baseline_model_uri=None,
        base_model_uri="tiny",
        metrics={},
        per_example_uri="-",
        gate_config={},
        decision="pass",
        leakage_checked=True,
    )
    registry.promote(TINY_NAME, version.version, evaluation_id="bench-eval", reason="benchmark", actor="bench")
    registry.close()
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, model: str, threads: int) -> tuple[subprocess.Popen, str]:
    """``ft-pipeline serve`` as its own process; returns it and its base URL once /health is ok."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "ft_pipeline.cli", "serve", "--data-dir", str(data_dir), "--model", model]
    server = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read() if server.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not answer /health within 300 s")


@dataclass
class Phase:
    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def drive(base_url: str, model: str, clients: int, duration_s: float, max_tokens: int) -> Phase:
    """``clients`` threads, each sending requests back to back until ``duration_s`` is up."""
    phase = Phase(clients)
    lock = threading.Lock()
    prompts = make_prompts(97)
    started = time.perf_counter()
    deadline = started + duration_s

    def worker(k: int) -> None:
        client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
        i = k
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                response = client.chat.completions.create(
                    model=model, messages=prompts[i % len(prompts)], max_tokens=max_tokens
                )
                tokens = response.usage.completion_tokens if response.usage else 0
                with lock:
                    phase.latencies.append(time.perf_counter() - t0)
                    phase.completion_tokens += tokens
            except openai.OpenAIError:
                with lock:
                    phase.errors += 1
            i += clients

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    phase.seconds = time.perf_counter() - started
    return phase


def report(name: str, phase: Phase) -> str:
    lat = sorted(phase.latencies)
    p50 = statistics.median(lat) if lat else float("nan")
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan")
    return (
        f"{name:<22} {phase.clients:>7} {len(lat):>8} {phase.errors:>6} {len(lat) / phase.seconds:>10.2f} "
        f"{p50:>8.3f} {p95:>8.3f} {phase.completion_tokens / phase.seconds:>10.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="", help="a running server's base URL (…/v1); default: start one")
    parser.add_argument("--data-dir", default="", help="serve this data directory's registry (default: a tiny model)")
    parser.add_argument("--model", default="", help="model name (default: the tiny model, or ft-pipeline-assistant)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default: 10)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request (default: 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of a server started here (default: 1)")
    args = parser.parse_args(argv)

    server = None
    tmp = None
    model = args.model or ("ft-pipeline-assistant" if args.data_dir or args.url else TINY_NAME)
    try:
        if args.url:
            base_url = args.url.rstrip("/")
            where = f"the server at {base_url}"
        else:
            if args.data_dir:
                data_dir = Path(args.data_dir).resolve()
                where = f"ft-pipeline serve over {data_dir}"
            else:
                tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
                data_dir = tiny_data_dir(Path(tmp.name))
                where = "ft-pipeline serve over a tiny local base + LoRA adapter"
            server, base_url = start_server(data_dir, model, args.threads)
        health = httpx.get(base_url.removesuffix("/v1") + "/health", timeout=10).json()
        print(f"# bench_serve: {where}")
        print(
            f"# model {model}: v{health.get('version')} ({health.get('backend')}), max_tokens={args.max_tokens}, "
            f"{args.duration:.0f} s per phase, {os.cpu_count()} CPUs"
        )
        # One untimed request: the first call pays for lazy initialisation.
        openai.OpenAI(base_url=base_url, api_key="none").chat.completions.create(
            model=model, messages=make_prompts(1)[0], max_tokens=args.max_tokens
        )
        print(
            f"{'phase':<22} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>10} {'p50 s':>8} {'p95 s':>8} "
            f"{'tokens/s':>10}"
        )
        baseline = drive(base_url, model, 1, args.duration, args.max_tokens)
        print(report("one at a time", baseline))
        loaded = drive(base_url, model, args.clients, args.duration, args.max_tokens)
        print(report(f"{args.clients} concurrent clients", loaded))
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
