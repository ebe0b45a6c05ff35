"""Seeded, deterministic perturbations of a user turn: the noise real users add to a prompt.

Each perturbation is a pure function ``fn(text, rate, rng) -> str`` of the text, a rate and a
:class:`random.Random`; :func:`perturb` seeds that generator from ``(seed, kind, text)``, so a
prompt perturbs the same way on every run and on every machine (no dependence on ``hash()``
randomisation or on the order prompts are processed in).

* ``typos`` (:func:`typos`): each letter, with probability ``rate``, is replaced by a QWERTY
  keyboard neighbour (case kept), dropped, or swapped with the next letter.
* ``case_whitespace`` (:func:`case_and_whitespace`): the text is lower-cased or upper-cased
  (chosen by the seed), each space is doubled with probability ``rate``, each space after a
  punctuation mark is removed with probability ``rate``, and leading/trailing whitespace is trimmed.
* ``punctuation`` (:func:`strip_punctuation`): every ASCII punctuation mark is removed (``rate``
  is not used: a user who skips punctuation skips all of it).

What is never touched: PII placeholders (``<EMAIL>``, ``<ORDER_ID>``: the cleaned data's typed
tokens), URLs, e-mail addresses and numbers (``42``, ``3.14``, ``2024-01-31``): a typo in an order
number changes the question, not its wording. Empty or whitespace-only text is returned unchanged.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Callable

__all__ = [
    "PERTURBATIONS",
    "QWERTY_NEIGHBOURS",
    "case_and_whitespace",
    "perturb",
    "protected_spans",
    "strip_punctuation",
    "typos",
]

#: Keys next to each letter on a QWERTY keyboard (same row and the rows above/below).
QWERTY_NEIGHBOURS: dict[str, str] = {
    "q": "wa",
    "w": "qeas",
    "e": "wrsd",
    "r": "etdf",
    "t": "ryfg",
    "y": "tugh",
    "u": "yihj",
    "i": "uojk",
    "o": "ipkl",
    "p": "ol",
    "a": "qwsz",
    "s": "weadzx",
    "d": "erfsxc",
    "f": "rtdgcv",
    "g": "tyfhvb",
    "h": "yugjbn",
    "j": "uihknm",
    "k": "iojlm",
    "l": "opk",
    "z": "asx",
    "x": "zsdc",
    "c": "xdfv",
    "v": "cfgb",
    "b": "vghn",
    "n": "bhjm",
    "m": "njk",
}

# Spans no perturbation changes: placeholders, URLs, e-mail addresses, numbers.
_PROTECTED = re.compile(
    r"<[A-Z][A-Z0-9_]*>"  # PII placeholder
    r"|(?:https?://|www\.)[^\s<>]+"  # URL
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # e-mail address
    r"|\d+(?:[.,:/-]\d+)*"  # number, decimal, date, time
)
_PUNCTUATION = frozenset(string.punctuation)


def protected_spans(text: str) -> list[tuple[int, int]]:
    """Return the ``(start, end)`` spans of ``text`` that perturbations leave intact."""
    return [m.span() for m in _PROTECTED.finditer(text)]


def _map_free(text: str, fn: Callable[[str], str]) -> str:
    """Apply ``fn`` to each stretch of ``text`` between protected spans, in order."""
    out: list[str] = []
    pos = 0
    for start, end in protected_spans(text):
        if start > pos:
            out.append(fn(text[pos:start]))
        out.append(text[start:end])
        pos = end
    if pos < len(text):
        out.append(fn(text[pos:]))
    return "".join(out)


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"perturbation rate must be between 0 and 1, got {rate}")


def typos(text: str, rate: float, rng: random.Random) -> str:
    """Keyboard typos: each letter, with probability ``rate``, becomes a QWERTY neighbour (case
    kept), is dropped, or is swapped with the following letter (one of the three, uniformly; a swap
    needs a different letter after it, else the letter becomes a neighbour). Letters inside
    protected spans (placeholders, URLs, e-mail addresses, numbers) are never changed."""
    _check_rate(rate)
    if not text.strip() or rate == 0.0:
        return text

    def noisy(chunk: str) -> str:
        chars = list(chunk)
        out: list[str] = []
        i = 0
        while i < len(chars):
            ch = chars[i]
            low = ch.lower()
            if low not in QWERTY_NEIGHBOURS or rng.random() >= rate:
                out.append(ch)
                i += 1
                continue
            edit = rng.choice(("substitute", "drop", "swap"))
            nxt = chars[i + 1] if i + 1 < len(chars) else ""
            if edit == "swap" and nxt.lower() in QWERTY_NEIGHBOURS and nxt.lower() != low:
                out.extend((nxt, ch))
                i += 2
                continue
            if edit == "drop":
                i += 1
                continue
            sub = rng.choice(QWERTY_NEIGHBOURS[low])
            out.append(sub.upper() if ch.isupper() else sub)
            i += 1
        return "".join(out)

    return _map_free(text, noisy)


def case_and_whitespace(text: str, rate: float, rng: random.Random) -> str:
    """Case and spacing: the text is lower-cased (three times in four) or upper-cased, each space
    is doubled with probability ``rate``, each space right after a punctuation mark is removed with
    probability ``rate`` (``"Hi, there"`` -> ``"hi,there"``), and leading/trailing whitespace is
    trimmed. Protected spans keep their case (``<EMAIL>`` stays upper-case)."""
    _check_rate(rate)
    if not text.strip():
        return text
    upper = rng.random() < 0.25

    def respace(chunk: str) -> str:
        chunk = chunk.upper() if upper else chunk.lower()
        out: list[str] = []
        for i, ch in enumerate(chunk):
            if ch == " ":
                after_punct = i > 0 and chunk[i - 1] in _PUNCTUATION
                if after_punct and rng.random() < rate:
                    continue
                if rng.random() < rate:
                    out.append(" ")
            out.append(ch)
        return "".join(out)

    return _map_free(text, respace).strip()


def strip_punctuation(text: str, rate: float, rng: random.Random) -> str:
    """Remove every ASCII punctuation mark outside protected spans (``rate`` and ``rng`` are not
    used: the perturbation is the same for every seed)."""
    _check_rate(rate)
    if not text.strip():
        return text
    return _map_free(text, lambda chunk: "".join(ch for ch in chunk if ch not in _PUNCTUATION))


#: Perturbation name (as configured) -> function ``fn(text, rate, rng)``.
PERTURBATIONS: dict[str, Callable[[str, float, random.Random], str]] = {
    "typos": typos,
    "case_whitespace": case_and_whitespace,
    "punctuation": strip_punctuation,
}


def perturb(text: str, kind: str, seed: int = 0, rate: float = 0.05) -> str:
    """Apply the perturbation named ``kind`` (a key of :data:`PERTURBATIONS`) to ``text``, with a
    random generator seeded from ``(seed, kind, text)``: the same prompt perturbs the same way on
    every run, independently of the other prompts. Raises ``ValueError`` for an unknown kind."""
    try:
        fn = PERTURBATIONS[kind]
    except KeyError:
        raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(sorted(PERTURBATIONS))}") from None
    digest = hashlib.sha256(f"{seed}\x00{kind}\x00{text}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return fn(text, rate, rng)
