"""The prompted baseline: the base model with a system prompt and k few-shot examples.

"Start with prompting": before a fine-tune is worth shipping it should beat what the base model
does when it is simply *told* what to do and shown a few examples. The evaluation answers the test
prompts a fourth time, with the base model behind :class:`PromptedGenerator`, and compares the
candidate with it (``result.comparisons["prompted"]``, a paired-bootstrap CI like the others).

* **Few-shot examples** (:func:`select_few_shot`) come from the TRAIN split only: the first
  (user, assistant) exchange of a training conversation. Never one whose conversation is in the
  test split (its ``exact_hash``), whose user turn equals a user turn of a test conversation, or
  whose reply equals an assistant turn of one (compared normalized: whitespace collapsed, case
  folded), so no test answer is handed to the model. Longer examples than ``max_example_chars``
  (user + reply) are not drawn, so k of them fit a small base's context. The draw is seeded and
  independent of row order: the k eligible examples with the smallest hash of (seed, content
  hash), distinct user turns only. The same split version and seed always give the same examples.
* **System prompt** (:func:`choose_system_prompt`): ``system_prompt`` when configured; otherwise
  the system turn the training conversations share (the most common first system turn, when at
  least half of them carry it: the instruction the fine-tune was trained under); otherwise
  :data:`DEFAULT_SYSTEM_PROMPT`.
* **Messages** (:meth:`PromptedGenerator.messages`): one system message, the k pairs as chat turns,
  then the test prompt's own turns. A system turn of the test prompt is kept: appended to the
  system prompt when it says something else, dropped when it is the same text.

Pure Python; the wrapper works for every backend because it only rewrites messages and delegates
to the base's generator (local or OpenAI-compatible).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ft_pipeline.lib.evaluation.generation import Generator

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "FewShotExample",
    "PromptedBaseline",
    "PromptedBaselineConfig",
    "PromptedGenerator",
    "build_prompted_baseline",
    "choose_system_prompt",
    "first_exchange",
    "prompted_baseline_from_splits",
    "select_few_shot",
]

#: The instruction of the prompted baseline when none is configured and the training
#: conversations share no system turn.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful support assistant. Answer the user's last message the way the example replies "
    "do: the same tone, length and format."
)
#: Columns of the training split the selection reads.
TRAIN_COLUMNS = ["conversation_id", "exact_hash", "messages"]
#: Share of training conversations that must carry the same first system turn for it to be "shared".
SHARED_SYSTEM_SHARE = 0.5


@dataclass(frozen=True)
class PromptedBaselineConfig:
    """The prompted baseline (the base model, a system prompt and k few-shot examples). Every
    default is the documented one."""

    enabled: bool = True
    """Answer the test prompts with the prompted base too and compare the candidate with it."""
    k: int = 3
    """Few-shot (user, assistant) examples from the training split; 0 = the system prompt alone."""
    seed: int = 0
    """Seed of the few-shot draw (the same split version and seed give the same examples)."""
    system_prompt: str = ""
    """The instruction; empty = the system turn the training conversations share (at least half of
    them), else :data:`DEFAULT_SYSTEM_PROMPT`."""
    max_example_chars: int = 600
    """Longest example drawn (user turn + reply, in characters; about 4 a token), so k examples fit
    a small base's context."""

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"the prompted baseline's k (prompted_k) must be >= 0, got {self.k}")
        if self.max_example_chars < 1:
            raise ValueError(
                f"the prompted baseline's max_example_chars (prompted_max_example_chars) must be >= 1, "
                f"got {self.max_example_chars}"
            )


@dataclass(frozen=True)
class FewShotExample:
    """One (user, assistant) exchange of a training conversation."""

    conversation_id: str
    exact_hash: int | str
    user: str
    assistant: str


@dataclass(frozen=True)
class PromptedBaseline:
    """What the prompted base is told: the system prompt (and where it came from) and the examples."""

    system_prompt: str
    system_prompt_source: str
    """``config`` (configured), ``training`` (the shared system turn) or ``default``."""
    examples: tuple[FewShotExample, ...]
    k_requested: int
    excluded_test_overlap: int = 0
    """Training examples not drawn because they match a test conversation, user turn or reply."""
    too_long: int = 0
    """Training examples not drawn because they are longer than ``max_example_chars``."""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def example_ids(self) -> list[str]:
        return [e.conversation_id for e in self.examples]

    def to_dict(self) -> dict[str, Any]:
        """For report.json (ids and counts; the example texts stay in the split files)."""
        return {
            "k_requested": self.k_requested,
            "k": len(self.examples),
            "example_ids": self.example_ids,
            "system_prompt": self.system_prompt,
            "system_prompt_source": self.system_prompt_source,
            "excluded_test_overlap": self.excluded_test_overlap,
            "too_long": self.too_long,
            "settings": dict(self.settings),
        }


def _normalized(text: str) -> str:
    return " ".join(str(text).casefold().split())


def first_exchange(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The first user turn followed directly by an assistant reply (system turns skipped), or
    None when the conversation has none with non-empty text."""
    turns = [m for m in messages if m.get("role") != "system"]
    for current, following in zip(turns, turns[1:]):
        if current.get("role") == "user" and following.get("role") == "assistant":
            user, reply = current.get("content"), following.get("content")
            if isinstance(user, str) and isinstance(reply, str) and user.strip() and reply.strip():
                return user, reply
            return None
    return None


def _hash_value(value: Any) -> int | str:
    """An ``exact_hash`` as a set member: the splits store int64; anything else is compared as text
    rather than failing the evaluation."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _draw_key(seed: int, exact_hash: int | str, conversation_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{exact_hash}:{conversation_id}".encode()).digest()


def select_few_shot(
    train_rows: Iterable[Mapping[str, Any]],
    test_conversations: Iterable[Sequence[Mapping[str, Any]]],
    test_hashes: Iterable[int],
    config: PromptedBaselineConfig = PromptedBaselineConfig(),
) -> tuple[list[FewShotExample], dict[str, int]]:
    """The k few-shot examples of the prompted baseline (see the module docstring), in draw order,
    and the counts ``excluded_test_overlap`` and ``too_long`` of training examples not eligible.

    ``train_rows``: ``conversation_id``, ``exact_hash`` and ``messages`` of the training split
    (streamed: only the best k are held). ``test_conversations`` / ``test_hashes``: every
    conversation and ``exact_hash`` of the test split.
    """
    hashes = {_hash_value(h) for h in test_hashes}
    test_users: set[str] = set()
    test_replies: set[str] = set()
    for conversation in test_conversations:
        for message in conversation:
            if message.get("role") == "user":
                test_users.add(_normalized(str(message.get("content", ""))))
            elif message.get("role") == "assistant":
                test_replies.add(_normalized(str(message.get("content", ""))))
    counts = {"excluded_test_overlap": 0, "too_long": 0}
    best: list[tuple[bytes, str, FewShotExample]] = []  # (key, normalized user, example), at most k
    if config.k == 0:
        return [], counts
    for row in train_rows:
        exchange = first_exchange(list(row["messages"]))
        if exchange is None:
            continue
        user, reply = exchange
        exact = _hash_value(row["exact_hash"])
        normalized_user = _normalized(user)
        if exact in hashes or normalized_user in test_users or _normalized(reply) in test_replies:
            counts["excluded_test_overlap"] += 1
            continue
        if len(user) + len(reply) > config.max_example_chars:
            counts["too_long"] += 1
            continue
        key = _draw_key(config.seed, exact, str(row["conversation_id"]))
        example = FewShotExample(str(row["conversation_id"]), exact, user, reply)
        same = next((i for i, (_, u, _) in enumerate(best) if u == normalized_user), None)
        if same is not None:  # one example per distinct user turn: the one with the smaller key
            if key < best[same][0]:
                best[same] = (key, normalized_user, example)
        elif len(best) < config.k or key < max(b[0] for b in best):
            best.append((key, normalized_user, example))
            if len(best) > config.k:
                best.remove(max(best, key=lambda b: b[0]))
    best.sort(key=lambda b: b[0])
    return [example for _, _, example in best], counts


def choose_system_prompt(
    train_messages: Iterable[Sequence[Mapping[str, Any]]], config: PromptedBaselineConfig = PromptedBaselineConfig()
) -> tuple[str, str]:
    """``(system prompt, source)``: the configured one (``config``), else the first system turn at
    least :data:`SHARED_SYSTEM_SHARE` of the training conversations carry (``training``), else
    :data:`DEFAULT_SYSTEM_PROMPT` (``default``)."""
    if config.system_prompt.strip():
        return config.system_prompt, "config"
    seen: Counter[str] = Counter()
    total = 0
    for messages in train_messages:
        total += 1
        seen[_first_system_turn(messages)] += 1
    return _shared_or_default(seen, total)


def _first_system_turn(messages: Sequence[Mapping[str, Any]]) -> str:
    first = next((m for m in messages if m.get("role") == "system"), None)
    content = first.get("content") if first is not None else None
    return content if isinstance(content, str) and content.strip() else ""


def _shared_or_default(seen: Counter[str], total: int) -> tuple[str, str]:
    """The most common first system turn when at least SHARED_SYSTEM_SHARE of ``total`` carry it."""
    carried = {text: count for text, count in seen.items() if text}
    if carried:
        text, count = min(carried.items(), key=lambda kv: (-kv[1], kv[0]))
        if count >= SHARED_SYSTEM_SHARE * total:
            return text, "training"
    return DEFAULT_SYSTEM_PROMPT, "default"


def build_prompted_baseline(
    train_batches: Iterable[Sequence[Mapping[str, Any]]],
    test_conversations: Sequence[Sequence[Mapping[str, Any]]],
    test_hashes: Iterable[int],
    config: PromptedBaselineConfig = PromptedBaselineConfig(),
) -> PromptedBaseline:
    """System prompt and few-shot examples from the training split, read once in batches of rows
    (``conversation_id``, ``exact_hash``, ``messages``)."""
    seen: Counter[str] = Counter()
    total = 0

    def rows() -> Iterable[Mapping[str, Any]]:
        nonlocal total
        for batch in train_batches:
            for row in batch:
                total += 1
                seen[_first_system_turn(row["messages"])] += 1
                yield row

    stream = iter(rows())
    examples, counts = select_few_shot(stream, test_conversations, test_hashes, config)
    for _ in stream:  # k = 0 draws nothing, but the system turns are still counted
        pass
    if config.system_prompt.strip():
        system_prompt, source = config.system_prompt, "config"
    else:
        system_prompt, source = _shared_or_default(seen, total)
    return PromptedBaseline(
        system_prompt=system_prompt,
        system_prompt_source=source,
        examples=tuple(examples),
        k_requested=config.k,
        excluded_test_overlap=counts["excluded_test_overlap"],
        too_long=counts["too_long"],
        settings=asdict(config),
    )


def prompted_baseline_from_splits(
    train_path: str | Path, test_path: str | Path, config: PromptedBaselineConfig = PromptedBaselineConfig()
) -> PromptedBaseline:
    """:func:`build_prompted_baseline` from a split version's train and test Parquet files (the
    training split streamed in batches; the WHOLE test split excluded, not only the evaluated subset)."""
    test = pq.read_table(test_path, columns=["messages", "exact_hash"])
    train = pq.ParquetFile(train_path)
    return build_prompted_baseline(
        (batch.to_pylist() for batch in train.iter_batches(batch_size=2048, columns=TRAIN_COLUMNS)),
        test.column("messages").to_pylist(),
        test.column("exact_hash").to_pylist(),
        config,
    )


class PromptedGenerator:
    """The base's generator, told what to do: every prompt becomes one system message (the
    baseline's system prompt, plus the prompt's own system turn when it differs), the few-shot
    pairs as user/assistant turns, then the prompt's other turns. Delegates to ``base``, so it
    works for every backend; the base's model is not loaded twice."""

    def __init__(self, base: Generator, baseline: PromptedBaseline):
        self.base = base
        self.baseline = baseline
        digest = hashlib.sha256(
            "\0".join([baseline.system_prompt, *(f"{e.user}\0{e.assistant}" for e in baseline.examples)]).encode()
        ).hexdigest()[:8]
        self.name = f"prompted[{len(baseline.examples)}-shot #{digest}]:{base.name}"

    def messages(self, prompt: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The messages the base answers for ``prompt``."""
        system = [self.baseline.system_prompt]
        for message in prompt:
            content = str(message.get("content", ""))
            if message.get("role") == "system" and content.strip() and content not in system:
                system.append(content)
        shots: list[dict[str, Any]] = []
        for example in self.baseline.examples:
            shots += [{"role": "user", "content": example.user}, {"role": "assistant", "content": example.assistant}]
        turns = [dict(m) for m in prompt if m.get("role") != "system"]
        return [{"role": "system", "content": "\n\n".join(system)}, *shots, *turns]

    def generate(self, prompts: Sequence[list[dict]]) -> list[str]:
        """The base's answers to the prompted messages, in input order."""
        return self.base.generate([self.messages(p) for p in prompts])
