"""Answer generation for evaluation: local HF models (optionally with a LoRA adapter) and
OpenAI-compatible chat models, behind one small synchronous interface.

Every evaluated model -- the freshly trained candidate, the base it was trained from and the model
in production -- answers the same frozen test prompts through a :class:`Generator`::

    prompt, reference = split_prompt_reference(example["messages"])
    answers = generator.generate([prompt, ...])      # one string per prompt, in input order
    report["model"] = generator.name                 # the exact model id the answers came from

Implementations:

* :class:`LocalGenerator` -- a Hugging Face causal LM plus an optional PEFT adapter. Greedy by
  default, batched with *left* padding, rendered with the tokenizer's own chat template and
  ``add_generation_prompt=True`` (the template the adapter was trained with), stopping at the
  tokenizer's end-of-turn token. Also :meth:`LocalGenerator.mean_nll` for validation perplexity.
* :class:`OpenAIChatGenerator` -- ``chat.completions`` through a caller-supplied ``openai`` client,
  with bounded concurrency, the SDK's own retries and results in input order.
* :class:`ScriptedGenerator` -- a plain callable, for tests and dry runs.

Heavy libraries (torch, transformers, peft) are imported lazily, so importing this module to build
a config or use the scripted / OpenAI generators costs nothing.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from collections.abc import Generator as Stream
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "GenerationConfig",
    "GenerationError",
    "Generator",
    "LocalGenerator",
    "OpenAIChatGenerator",
    "ScriptedGenerator",
    "adapter_digest",
    "split_prompt_reference",
]


# --------------------------------------------------------------------------------------------- data


def split_prompt_reference(messages: list[dict]) -> tuple[list[dict], str]:
    """Split a conversation into the prompt and the reference answer.

    Everything before the final assistant turn is the prompt (system message and earlier turns
    included, so multi-turn examples are evaluated in context); the final assistant content is the
    reference the generated answer is scored against.

    Returns:
        ``(prompt_messages, reference)``. The prompt is a new list of shallow-copied message dicts,
        so callers may mutate it without touching the example.

    Raises:
        ValueError: the conversation is empty, its last message is not an assistant turn, nothing
            precedes that turn, or its content is not a string.
    """
    if not messages:
        raise ValueError("empty conversation: nothing to split into prompt and reference")
    last = messages[-1]
    role = last.get("role") if isinstance(last, dict) else None
    if role != "assistant":
        raise ValueError(f"the last message must be the assistant's reference answer, got role {role!r}")
    if len(messages) < 2:
        raise ValueError("the conversation has no prompt before the final assistant message")
    reference = last.get("content")
    if not isinstance(reference, str):
        raise ValueError(f"the final assistant content must be a string, got {type(reference).__name__}")
    return [dict(m) for m in messages[:-1]], reference


@dataclass(frozen=True)
class GenerationConfig:
    """How answers are generated. The defaults are what the evaluation uses."""

    max_new_tokens: int = 128
    """Upper bound on generated tokens per answer (``max_completion_tokens`` for OpenAI). 128
    covers the support replies of the logs and keeps a CPU evaluation of the test split short."""
    batch_size: int = 16
    """Local models: prompts per forward batch (also used by ``mean_nll``)."""
    seed: int = 0
    """Seed of torch's RNG for local generation and the ``seed`` field of OpenAI requests."""
    temperature: float = 0.0
    """0 means greedy decoding (``do_sample=False`` locally, ``temperature=0`` for OpenAI)."""
    concurrency: int = 16
    """OpenAI-compatible models: most requests in flight at once."""
    request_timeout_s: float = 60.0
    """OpenAI-compatible models: timeout of one HTTP attempt."""
    max_retries: int = 4
    """OpenAI-compatible models: SDK retries on connection errors, timeouts, 408/409/429/5xx."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


@runtime_checkable
class Generator(Protocol):
    """Anything that answers chat prompts. ``name`` identifies the exact model in reports."""

    name: str

    def generate(self, prompts: Sequence[list[dict]]) -> list[str]:
        """One answer per prompt (a list of ``{"role", "content"}`` messages), in input order."""
        ...


class GenerationError(RuntimeError):
    """A prompt could not be answered. ``index`` is the prompt's position in the input."""

    def __init__(self, message: str, *, index: int, model: str, status_code: int | None = None):
        super().__init__(message)
        self.index = index
        self.model = model
        self.status_code = status_code


# ------------------------------------------------------------------------------------- scripted


class ScriptedGenerator:
    """Answers from a callable ``fn(prompt_messages) -> str``; for tests and dry runs.

    Each call gets a deep copy of the prompt, so a careless script cannot alter the caller's data.
    """

    def __init__(self, fn: Callable[[list[dict]], str], name: str = "scripted"):
        self.fn = fn
        self.name = name

    def generate(self, prompts: Sequence[list[dict]]) -> list[str]:
        """``[fn(prompt) for prompt in prompts]``, each answer coerced to ``str``."""
        return [str(self.fn(copy.deepcopy(list(p)))) for p in prompts]


# ---------------------------------------------------------------------------------------- local


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def adapter_digest(adapter_dir: str | Path) -> str:
    """A short SHA-256 of an adapter folder's weights and config (12 hex characters).

    Two adapters saved at the same path by different runs get different names in the report,
    so an evaluation can never be attributed to the wrong weights.
    """
    adapter_dir = Path(adapter_dir)
    files = sorted(p for p in adapter_dir.iterdir() if p.is_file() and p.name.startswith("adapter_"))
    if not files:
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json / adapter_model.* files")
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


class LocalGenerator:
    """A Hugging Face causal LM, optionally with a PEFT (LoRA) adapter, answering chat prompts.

    * Prompts are rendered with the tokenizer's chat template and ``add_generation_prompt=True``.
      With an adapter and no ``tokenizer_dir`` the tokenizer saved next to the adapter
      (``<run>/tokenizer``, the layout ``train_lora`` writes) is preferred, then the base's: the
      template must be the one used in training or the adapter is evaluated on prompts it never saw.
    * Batches of ``config.batch_size`` prompts, sorted by length to waste little compute on
      padding, left-padded (a decoder continues from the last position, so pads must be on the
      left; ``generate`` derives position ids from the attention mask), results in input order.
    * Greedy when ``temperature == 0``; stops at the tokenizer's eos (``<|im_end|>`` for ChatML)
      and at any eos the model's generation config lists; decodes only the new tokens with
      ``skip_special_tokens=True``, whitespace-stripped.
    * Deterministic: torch's RNG is seeded with ``config.seed`` before every batch, inside a
      forked RNG state so the caller's global RNG is left untouched.

    ``name`` is ``"local:<adapter dir>#<adapter sha>"`` with an adapter, else ``"local:<base>"``.
    This class never changes torch's thread count; the caller decides that.
    """

    def __init__(
        self,
        base_model_path: str,
        adapter_dir: str | None = None,
        tokenizer_dir: str | None = None,
        config: GenerationConfig = GenerationConfig(),
        device: str | None = None,
        on_progress: Callable[[str], None] | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        # Called after every batch with a line of progress (answers done, new tokens, tokens/s):
        # generation is the long step of an evaluation on CPU, and the Dagster log should show it.
        self.on_progress = on_progress
        self.base_model_path = str(base_model_path)
        self.adapter_dir = str(adapter_dir) if adapter_dir is not None else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

        if tokenizer_dir is None and adapter_dir is not None and (Path(adapter_dir).parent / "tokenizer").is_dir():
            tokenizer_dir = str(Path(adapter_dir).parent / "tokenizer")
        self.tokenizer_dir = str(tokenizer_dir or base_model_path)
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=_offline())
        if not tokenizer.chat_template:
            raise ValueError(f"the tokenizer in {self.tokenizer_dir} has no chat template; cannot render chat prompts")
        if tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer in {self.tokenizer_dir} has no eos token; generation would never stop")
        if tokenizer.pad_token_id is None:
            # Pads are masked out, so any id works; eos is the conventional choice.
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.tokenizer = tokenizer

        # bf16 on a GPU that supports it (how the adapters are trained there); fp32 on CPU, where
        # bf16 matmuls are slow and greedy decoding is more sensitive to rounding.
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        model = AutoModelForCausalLM.from_pretrained(
            self.base_model_path, dtype=torch.bfloat16 if use_bf16 else torch.float32, local_files_only=_offline()
        )
        if self.adapter_dir is not None:
            from peft import PeftModel

            # Not merged: the evaluated weights are exactly the trained adapter on the exact base.
            with warnings.catch_warnings():
                # peft 0.21 reads model.is_gradient_checkpointing, deprecated in transformers 5.23: a
                # FutureWarning on every adapter load that nobody here can act on.
                warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
                model = PeftModel.from_pretrained(model, self.adapter_dir, is_trainable=False)
            self.name = f"local:{self.adapter_dir}#{adapter_digest(self.adapter_dir)}"
        else:
            self.name = f"local:{self.base_model_path}"
        self.model = model.to(self.device).eval()

        eos_ids = {tokenizer.eos_token_id}
        model_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if model_eos is not None:
            eos_ids.update([model_eos] if isinstance(model_eos, int) else model_eos)
        # Sorted so the generation config (and so the output) is independent of set order.
        self.eos_token_ids: list[int] = sorted(eos_ids)

    # ----------------------------------------------------------------------------- rendering
    def _render(self, prompts: Sequence[list[dict]]) -> list[str]:
        # Rendered to text, then tokenized without special tokens: templates that spell out the
        # BOS token (Llama 3, ...) would otherwise get it twice.
        return [
            self.tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts
        ]

    def _generation_config(self):
        gen = copy.deepcopy(self.model.generation_config)
        greedy = self.config.temperature == 0
        # Pure greedy (or pure temperature) decoding, whatever the base's generation_config says:
        # its sampling defaults (e.g. Qwen's temperature 0.7, top_p 0.8, repetition_penalty 1.05)
        # would make base and candidate decode differently from what the report claims. Neutral
        # values, not None: generate() refills None from the model's config and then warns that
        # the sampling flags are ignored.
        gen.update(
            do_sample=not greedy,
            temperature=1.0 if greedy else self.config.temperature,
            top_p=1.0,
            top_k=50 if greedy else 0,  # 50 is the neutral default for greedy; 0 disables top-k when sampling
            min_p=None,
            typical_p=1.0,
            repetition_penalty=1.0,
            num_beams=1,
            max_new_tokens=self.config.max_new_tokens,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            num_return_sequences=1,
        )
        return gen

    def _seeded(self):
        import torch

        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    # ------------------------------------------------------------------------------ generate
    def generate(self, prompts: Sequence[list[dict]]) -> list[str]:
        """Answer every prompt; one string per prompt, in input order."""
        import torch

        if not prompts:
            return []
        texts = self._render(prompts)
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        # Longest first: similar lengths share a batch (little padding), and an out-of-memory
        # error, if any, happens on the first batch rather than after most of the work.
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
        gen_config = self._generation_config()
        answers: list[str | None] = [None] * len(texts)
        bs = self.config.batch_size
        started, generated = time.perf_counter(), 0
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                enc = self.tokenizer(
                    [texts[i] for i in idx], add_special_tokens=False, padding=True, return_tensors="pt"
                ).to(self.device)
                with self._seeded():
                    torch.manual_seed(self.config.seed)
                    out = self.model.generate(**enc, generation_config=gen_config)
                new_tokens = out[:, enc["input_ids"].shape[1] :]
                for i, text in zip(idx, self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    answers[i] = text.strip()
                if self.on_progress is not None:
                    generated += int((new_tokens != gen_config.pad_token_id).sum())
                    elapsed = time.perf_counter() - started
                    self.on_progress(
                        f"{self.name}: {min(start + bs, len(order))}/{len(order)} answers, "
                        f"{generated} new tokens, {generated / max(elapsed, 1e-9):.1f} tokens/s"
                    )
        return [a if a is not None else "" for a in answers]

    def generate_stream(self, prompt: list[dict], stop: threading.Event | None = None) -> Stream[str, None, list[int]]:
        """Answer one prompt in pieces of text as they are generated (``ft-pipeline serve``). The
        same rendering, generation config and seeding as :meth:`generate` with a batch of one, so
        ``"".join(pieces) == generate([prompt])[0]`` (leading whitespace is dropped and trailing
        whitespace held back, as ``generate`` strips). Returns (``StopIteration.value``, or
        ``yield from``) the generated token ids, end-of-turn token included. Setting ``stop`` (or
        closing the iterator) ends generation at the next token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        stopped = stop or threading.Event()
        new_ids: list[int] = []

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stopped.is_set(), dtype=torch.bool, device=input_ids.device)

        class _Streamer(TextIteratorStreamer):
            def put(self, value: Any) -> None:
                if not self.next_tokens_are_prompt:  # the prompt comes first, then one token per step
                    new_ids.extend(int(t) for t in value.reshape(-1).tolist())
                super().put(value)

        enc = self.tokenizer(self._render([prompt]), add_special_tokens=False, return_tensors="pt").to(self.device)
        streamer = _Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode(), self._seeded():
                    torch.manual_seed(self.config.seed)
                    self.model.generate(
                        **enc,
                        generation_config=self._generation_config(),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Stop()]),
                    )
            except BaseException as err:  # noqa: BLE001 - re-raised in the consuming thread
                failed.append(err)
                streamer.end()

        worker = threading.Thread(target=run, name="local-generate-stream", daemon=True)
        worker.start()
        held, started = "", False
        try:
            for piece in streamer:
                text = held + piece
                if not started:
                    text = text.lstrip()
                    started = bool(text)
                body = text.rstrip()
                held = text[len(body) :]
                if body:
                    yield body
        finally:
            stopped.set()
            worker.join()
        if failed:
            raise failed[0]
        return new_ids

    # ------------------------------------------------------------------------------ mean_nll
    def mean_nll(self, conversations: Sequence[list[dict]]) -> float:
        """Average negative log-likelihood per assistant token (nats), over all conversations.

        The assistant tokens are those inside the chat template's ``{% generation %}`` markers
        (``return_assistant_tokens_mask``), i.e. exactly what ``assistant_only_loss`` trained on,
        end-of-turn token included. ``exp(mean_nll)`` is the validation perplexity. The average is
        token-weighted (total NLL / total assistant tokens), like the trainer's loss.

        Raises:
            ValueError: the template has no generation markers, or no conversation has an
                assistant token (an all-zero mask would otherwise silently yield NaN).
        """
        import torch
        import torch.nn.functional as F

        if not conversations:
            raise ValueError("mean_nll needs at least one conversation")
        encoded: list[tuple[list[int], list[int]]] = []
        for conv in conversations:
            enc = self.tokenizer.apply_chat_template(
                list(conv), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
            encoded.append((ids, mask))
        if not any(any(m) for _, m in encoded):
            raise ValueError(
                "no assistant tokens found: the chat template needs {% generation %} markers around assistant "
                "turns, and the conversations need assistant messages"
            )
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
        total_nll, total_tokens = 0.0, 0
        pad_id = self.tokenizer.pad_token_id
        bs = self.config.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                batch = [encoded[i] for i in order[start : start + bs]]
                width = max(len(ids) for ids, _ in batch)
                # Right padding with explicit position ids: a plain forward pass does not derive
                # positions from the attention mask the way generate() does.
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                for row, (ids, mask) in enumerate(batch):
                    n = len(ids)
                    input_ids[row, :n] = torch.tensor(ids)
                    attention[row, :n] = 1
                    labels[row, :n] = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
                position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    position_ids=position_ids.to(self.device),
                ).logits
                # Token t is predicted from position t-1.
                shift_logits = logits[:, :-1, :].float()
                shift_labels = labels[:, 1:].to(self.device)
                total_nll += F.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]),
                    shift_labels.reshape(-1),
                    ignore_index=-100,
                    reduction="sum",
                ).item()
                total_tokens += int((shift_labels != -100).sum().item())
        if total_tokens == 0:
            # Only possible if every assistant token is a conversation's very first token.
            raise ValueError("no predictable assistant tokens in the conversations")
        return total_nll / total_tokens


# --------------------------------------------------------------------------------------- openai


class OpenAIChatGenerator:
    """Answers through an OpenAI-compatible ``chat.completions`` endpoint.

    * ``client`` is an ``openai.OpenAI`` (or compatible) instance supplied by the caller; its key,
      base URL and HTTP client are used as they are. Retries and the per-attempt timeout come from
      ``config`` via ``client.with_options(max_retries=..., timeout=...)``: the SDK retries
      connection errors, timeouts, 408/409/429 and 5xx with exponential backoff and honours
      ``retry-after(-ms)`` headers, so nothing is re-implemented here.
    * ``temperature=config.temperature`` (0 by default) and ``seed=config.seed`` make answers as
      reproducible as the provider allows; ``max_completion_tokens=config.max_new_tokens``.
    * At most ``config.concurrency`` requests are in flight (a thread pool: the HTTP client is
      thread-safe and the public API stays synchronous). Results come back in input order.
    * A request that still fails after the retries raises :class:`GenerationError` naming the
      example index, the model and the HTTP status; queued requests are cancelled. The message
      never contains the API key (it is scrubbed defensively, and the original exception is not
      chained, since its request object carries the ``Authorization`` header).
    """

    def __init__(self, client: Any, model: str, config: GenerationConfig = GenerationConfig()):
        if not model:
            raise ValueError("model must be a non-empty model id")
        self.client = client
        self.model = model
        self.config = config
        self.name = f"openai:{model}"
        self._request_client = client.with_options(max_retries=config.max_retries, timeout=config.request_timeout_s)

    def _complete(self, messages: list[dict]) -> str:
        response = self._request_client.chat.completions.create(
            model=self.model,
            messages=messages,
            temperature=self.config.temperature,
            seed=self.config.seed,
            max_completion_tokens=self.config.max_new_tokens,
            n=1,
        )
        if not response.choices:
            raise ValueError("the response has no choices")
        # None for a refusal (or a tool call): scored as an empty answer, not the text "None".
        return response.choices[0].message.content or ""

    def _scrub(self, text: str) -> str:
        key = getattr(self.client, "api_key", None)
        if isinstance(key, str) and len(key) >= 4:
            text = text.replace(key, "***")
        return text

    def _error(self, index: int, total: int, err: BaseException) -> GenerationError:
        status = getattr(err, "status_code", None)
        parts = [f"{type(err).__name__}"]
        if status is not None:
            parts.append(f"HTTP {status}")
        request_id = getattr(err, "request_id", None)
        if request_id:
            parts.append(f"request id {request_id}")
        detail = getattr(err, "message", None) or str(err)
        message = (
            f"chat completion for example {index} (of {total}) with model {self.model!r} failed "
            f"after up to {self.config.max_retries} retries: {', '.join(parts)}: {detail}"
        )
        return GenerationError(self._scrub(message), index=index, model=self.model, status_code=status)

    def generate(self, prompts: Sequence[list[dict]]) -> list[str]:
        """Answer every prompt, at most ``config.concurrency`` at a time; results in input order."""
        if not prompts:
            return []
        total = len(prompts)
        results: list[str | None] = [None] * total
        # Set by the worker whose request failed, before that worker can pick up the next queued
        # prompt: once one example has failed for good, the rest are not worth paying for.
        stop = threading.Event()

        def task(messages: list[dict]) -> str | None:
            if stop.is_set():
                return None
            try:
                return self._complete(messages)
            except BaseException:
                stop.set()
                raise

        executor = ThreadPoolExecutor(
            max_workers=min(self.config.concurrency, total), thread_name_prefix="openai-generate"
        )
        failure: GenerationError | None = None
        try:
            futures = {executor.submit(task, [dict(m) for m in p]): i for i, p in enumerate(prompts)}
            pending = set(futures)
            while pending and failure is None:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                # Lowest failing index first, so the error is stable when several fail together.
                for future in sorted(done, key=futures.__getitem__):
                    index = futures[future]
                    err = future.exception()
                    if err is None:
                        results[index] = future.result()
                    elif failure is None:
                        failure = self._error(index, total, err)
        finally:
            # In-flight requests finish (their threads cannot be interrupted); queued ones are dropped.
            executor.shutdown(wait=True, cancel_futures=True)
        if failure is not None:
            raise failure
        return [r if r is not None else "" for r in results]
