"""The helpers behind the faster cleaning / curation paths give exactly what the slow paths give."""

import random

import numpy as np
import pyarrow as pa
import pytest

from ft_pipeline.lib.cleaning import repetition_bounds
from ft_pipeline.lib.dedup import context_hash, exact_hash, prefix_hashes, record_hashes
from ft_pipeline.lib.pii import find_pii, may_contain_pii
from ft_pipeline.lib.records import Message
from ft_pipeline.lib.tokens import TokenCounter, make_token_counter

from .test_pii import LOOKALIKES, POSITIVE_CASES

# --------------------------------------------------------------------------- pii


def _texts() -> list[str]:
    texts = [t for _, t, _ in POSITIVE_CASES] + list(LOOKALIKES)
    texts += ["", "plain words only", "naïve café 電話", "Bearer", "b e a r e r xyz", "API-Key : abc", "x" * 40]
    return texts


def test_may_contain_pii_false_means_find_pii_finds_nothing():
    texts = _texts()
    assert any(may_contain_pii(t) for t in texts)
    for text in texts:
        if not may_contain_pii(text):
            assert find_pii(text) == []
        if find_pii(text):
            assert may_contain_pii(text)


def test_may_contain_pii_over_a_joined_conversation_clears_every_message():
    rng = random.Random(3)
    texts = _texts()
    for _ in range(300):
        parts = rng.sample(texts, rng.randint(1, 4))
        if not may_contain_pii("\n".join(parts)):
            assert all(find_pii(p) == [] for p in parts)
        if any(find_pii(p) for p in parts):
            assert may_contain_pii("\n".join(parts))


# --------------------------------------------------------------------------- dedup


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2 ü \ud800"},
        ],
        [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}],
        [{"role": None, "content": "x"}, {"role": "assistant", "content": None}, {"role": "assistant"}],
        [{"role": "user", "content": 5}, {"role": "assistant", "content": "ok", "name": "n"}],
        [Message("user", "q"), Message("assistant", "a")],
    ],
)
def test_record_hashes_equal_the_three_functions(messages):
    assert record_hashes(messages) == (exact_hash(messages), context_hash(messages), prefix_hashes(messages))


# --------------------------------------------------------------------------- cleaning


def test_repetition_bounds_count_words_exactly_and_bound_distinct_words():
    rng = random.Random(1)
    pieces = [
        "a",
        "B",
        " ",
        "  ",
        "\t",
        "\n",
        "\x0b",
        "\x0c",
        "\r",
        "\x1c",
        "\x1f",
        "\x00",
        "\x01",
        "Hello",
        "hello",
        "abcdefghij",
        "abcdefghiJ",
        "x" * 9,
        ".",
    ]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    texts += ["", " ", "word " * 500, " ".join(f"w{i}" for i in range(6000))]
    n_words, bound = repetition_bounds(texts)
    for text, n, b in zip(texts, n_words, bound):
        words = text.lower().split()
        assert n == len(words)
        assert 0 < b <= len(set(words)) or b == len(words) == 0


# --------------------------------------------------------------------------- tokens


def _conversations():
    rng = random.Random(5)
    alphabet = ["a", "b", " ", "\n", "é", "語", "  ", "xyz", ""]

    def text():
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))

    out = []
    for _ in range(800):
        r = rng.random()
        if r < 0.03:
            out.append(None)
            continue
        if r < 0.06:
            out.append([])
            continue
        messages = []
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.03:
                messages.append(None)
                continue
            role = rng.choice(["user", "assistant", "system", "", None])
            messages.append({"role": role, "content": None if rng.random() < 0.03 else text()})
        out.append(messages)
    return out


@pytest.mark.parametrize(
    "counter",
    [make_token_counter(), TokenCounter("fake", lambda texts: [len(t) * 2 + 1 for t in texts], per_message_overhead=4)],
)
def test_count_conversations_arrow_equals_python_path(counter):
    conversations = _conversations()
    small = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    large = pa.large_list(pa.struct([("content", pa.large_string()), ("role", pa.string())]))
    array = pa.array(conversations, type=small)
    for column in (
        array,
        pa.array(conversations, type=large),
        array.slice(7, 300),
        pa.chunked_array([array.slice(0, 100), array.slice(100)]),
        pa.chunked_array([], small),
        pa.array([[{"role": "user", "content": "hi", "name": "x"}]]),  # another layout: Python path
    ):
        got = counter.count_conversations_arrow(column)
        want = counter.count_conversations(column.to_pylist())
        assert all(np.array_equal(g, w) and g.dtype == np.int64 for g, w in zip(got, want))
