"""Seeded text perturbations of a user turn (lib/perturbations.py): deterministic per (seed, kind,
text), changing the text at the configured rate, never touching placeholders, URLs, e-mail
addresses or numbers, and leaving empty input alone."""

import random
import string

import pytest

from ft_pipeline.lib.perturbations import (
    PERTURBATIONS,
    QWERTY_NEIGHBOURS,
    case_and_whitespace,
    perturb,
    protected_spans,
    strip_punctuation,
    typos,
)

PROMPT = (
    "Hello, my order 12345 never arrived. Please email me at <EMAIL> or see "
    "https://shop.example.com/orders/12345?x=1 before 2024-01-31, thanks! Contact jane.doe@example.org."
)
PROTECTED = ["<EMAIL>", "https://shop.example.com/orders/12345?x=1", "2024-01-31", "12345", "jane.doe@example.org"]
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 200)


@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
def test_each_perturbation_is_deterministic_per_seed_and_changes_the_text(kind):
    first = perturb(PROMPT, kind, seed=3, rate=0.2)
    assert first == perturb(PROMPT, kind, seed=3, rate=0.2)
    assert first != PROMPT
    if kind != "punctuation":  # punctuation removal does not depend on the seed
        outs = {perturb(PROMPT, kind, seed=s, rate=0.2) for s in range(6)}
        assert len(outs) > 1


@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
def test_placeholders_urls_emails_and_numbers_are_never_touched(kind):
    for seed in range(20):
        out = perturb(PROMPT, kind, seed=seed, rate=1.0 if kind == "typos" else 0.5)
        for span in PROTECTED:
            assert span in out, (kind, seed, out)


@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_or_whitespace_only_input_is_returned_unchanged(kind, text):
    assert perturb(text, kind, seed=1, rate=1.0) == text


def test_the_seed_depends_on_the_text_not_on_call_order():
    a = perturb("where is my parcel please", "typos", seed=0, rate=0.3)
    perturb("some other prompt entirely", "typos", seed=0, rate=0.3)
    assert perturb("where is my parcel please", "typos", seed=0, rate=0.3) == a


def test_typos_change_letters_at_the_rate_with_keyboard_neighbours():
    letters = sum(ch.isalpha() for ch in LONG)
    out = typos(LONG, 0.05, random.Random(0))
    # count edits word by word (typos never add or remove a space)
    words_in, words_out = LONG.split(" "), out.split(" ")
    assert len(words_in) == len(words_out)
    changed_words = sum(a != b for a, b in zip(words_in, words_out, strict=True))
    # about 5% of ~7000 letters edited (one edit per changed word almost always)
    assert 0.03 * letters < changed_words < 0.07 * letters
    assert typos(LONG, 0.0, random.Random(0)) == LONG
    # every substitution is a neighbour key: with drops/swaps ruled out by equal length and
    # sorted-letter difference, a single changed letter must be a QWERTY neighbour
    for a, b in zip(words_in, words_out, strict=True):
        if len(a) == len(b) and sorted(a) != sorted(b):
            diffs = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
            if len(diffs) == 1:
                x, y = diffs[0]
                assert y in QWERTY_NEIGHBOURS[x]


def test_typos_keep_the_case_of_a_substituted_letter():
    out = typos("ABCDEFGHIJKLMNOP", 1.0, random.Random(5))
    assert out == out.upper()


def test_case_and_whitespace_changes_case_and_spacing_at_the_rate():
    text = "  " + LONG.title() + ", Done.  "
    out = case_and_whitespace(text, 0.1, random.Random(0))
    assert out == out.strip()
    assert out.lower() == out or out.upper() == out
    spaces = text.strip().count(" ")
    doubled = out.count("  ")
    assert 0.05 * spaces < doubled < 0.15 * spaces
    # only spacing and case changed
    assert "".join(out.lower().split()) == "".join(text.lower().split())


def test_case_and_whitespace_keeps_placeholder_case():
    out = case_and_whitespace("Write To <EMAIL> Now", 0.0, random.Random(1))
    assert "<EMAIL>" in out
    assert out in ("write to <EMAIL> now", "WRITE TO <EMAIL> NOW")


def test_strip_punctuation_removes_marks_outside_protected_spans():
    out = strip_punctuation(PROMPT, 0.05, random.Random(0))
    outside = out
    for span in PROTECTED:
        outside = outside.replace(span, "")
    assert not any(ch in string.punctuation for ch in outside)
    assert out.startswith("Hello my order 12345 never arrived Please email me at <EMAIL>")


def test_protected_spans_are_found():
    found = {PROMPT[s:e] for s, e in protected_spans(PROMPT)}
    assert set(PROTECTED) <= found


def test_unknown_kind_and_bad_rate_are_clear_errors():
    with pytest.raises(ValueError, match="unknown perturbation 'paraphrase'.*typos"):
        perturb("hello", "paraphrase")
    with pytest.raises(ValueError, match="between 0 and 1"):
        perturb("hello", "typos", rate=1.5)
