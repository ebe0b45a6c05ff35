"""Evaluation metrics against hand-computed values (SQuAD EM/F1, ROUGE, JSON, classification)."""

import math
import socket

import numpy as np
import pandas as pd
import pytest

from ft_pipeline.lib.evaluation.metrics import (
    INVALID_LABEL,
    LENGTH_RATIO_CAP,
    ExampleScores,
    aggregate,
    classification_report,
    detect_task,
    exact_match,
    json_schema_compliance,
    json_validity,
    length_ratio,
    looks_like_json,
    looks_like_label,
    normalize_answer,
    normalize_label,
    perplexity,
    rouge_scores,
    score_examples,
    token_f1,
)

# --- normalization, exact match, token F1 ----------------------------------------------------


def test_normalize_answer_is_squad_style():
    assert normalize_answer("  The  Eiffel Tower!  ") == "eiffel tower"
    assert normalize_answer("An apple, a pear.") == "apple pear"
    # Articles only as whole words; "theatre" and "banana" keep their letters.
    assert normalize_answer("the theatre and a banana") == "theatre and banana"
    # Unicode punctuation (curly quotes, em dash) is punctuation too.
    assert normalize_answer("“Paris”—France") == "parisfrance"


def test_exact_match():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("an Eiffel tower", "Eiffel Tower!") == 1.0
    assert exact_match("Eiffel Towers", "Eiffel Tower") == 0.0
    assert exact_match("", "") == 1.0


def test_token_f1_partial_overlap_exact_fraction():
    # pred "eiffel tower in paris" (4 tokens), ref "eiffel tower" (2): P = 2/4, R = 2/2, F = 2/3.
    assert token_f1("The Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 / 3, abs=1e-12)
    # Multiset overlap: pred "paris paris" vs ref "paris": common 1, P = 1/2, R = 1, F = 2/3.
    assert token_f1("Paris Paris", "Paris") == pytest.approx(2 / 3, abs=1e-12)
    # Asymmetric case: pred "red big cat" (3) vs ref "big cat sat down" (4): common 2, P = 2/3,
    # R = 1/2, F = 2 * (1/3) / (7/6) = 4/7.
    assert token_f1("red big cat", "big cat sat down") == pytest.approx(4 / 7, abs=1e-12)


def test_token_f1_empty_cases():
    assert token_f1("", "") == 1.0
    assert token_f1("the", "a") == 1.0  # both normalize to nothing
    assert token_f1("", "Paris") == 0.0
    assert token_f1("Paris", "") == 0.0
    assert token_f1("London", "Paris") == 0.0


# --- ROUGE -----------------------------------------------------------------------------------


def test_rouge_hand_computed_word_order():
    # ref "the cat chased the dog", pred "the dog chased the cat" (5 tokens each).
    # ROUGE-1: identical multisets -> 1. ROUGE-2: ref bigrams {the cat, cat chased, chased the,
    # the dog}, pred {the dog, dog chased, chased the, the cat}: 3 of 4 -> 0.75.
    # ROUGE-L: LCS "the chased the" = 3 -> P = R = 3/5 -> 0.6.
    out = rouge_scores(["the dog chased the cat"], ["the cat chased the dog"])
    assert set(out) == {"rouge1", "rouge2", "rougeL"}
    assert out["rouge1"][0] == pytest.approx(1.0)
    assert out["rouge2"][0] == pytest.approx(0.75)
    assert out["rougeL"][0] == pytest.approx(0.6)


def test_rouge_stemming():
    # Porter stemming: "running" and "runs" both become "run".
    # ref "he runs home" -> [he, run, home]; pred "he is running home" -> [he, is, run, home].
    # ROUGE-1: 3 common, P = 3/4, R = 1 -> 6/7. ROUGE-2: ref {he run, run home}, pred {he is,
    # is run, run home}: 1 common, P = 1/3, R = 1/2 -> 2/5. ROUGE-L: LCS 3 -> 6/7.
    # Without stemming ROUGE-1 would be 2 common -> 4/7.
    out = rouge_scores(["he is running home"], ["he runs home"])
    assert out["rouge1"][0] == pytest.approx(6 / 7)
    assert out["rouge2"][0] == pytest.approx(2 / 5)
    assert out["rougeL"][0] == pytest.approx(6 / 7)


def test_rouge_per_example_arrays_and_edge_cases():
    out = rouge_scores(["same words", "", "nothing shared"], ["same words", "something", "completely different"])
    np.testing.assert_allclose(out["rouge1"], [1.0, 0.0, 0.0])
    assert out["rougeL"].dtype == np.float64 and out["rougeL"].shape == (3,)
    empty = rouge_scores([], [])
    assert all(v.shape == (0,) for v in empty.values())
    with pytest.raises(ValueError):
        rouge_scores(["a"], [])


def test_rouge_never_touches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    from ft_pipeline.lib.evaluation import metrics

    metrics._rouge_scorer.cache_clear()  # rebuild the scorer under the guard
    assert rouge_scores(["running dogs"], ["the dog runs"])["rouge1"][0] > 0


# --- length ----------------------------------------------------------------------------------


def test_length_ratio():
    assert length_ratio("one two three", "one two") == pytest.approx(1.5)
    assert length_ratio("one", "one two three four") == pytest.approx(0.25)
    assert length_ratio("", "") == 0.0
    assert length_ratio("something", "") == LENGTH_RATIO_CAP == 10.0
    assert length_ratio(" ".join(["w"] * 50), "w") == LENGTH_RATIO_CAP  # clipped, not 50


# --- JSON ------------------------------------------------------------------------------------


def test_json_validity():
    assert json_validity('{"a": 1}') == 1.0
    assert json_validity("[1, 2]") == 1.0
    assert json_validity('"just a string"') == 1.0  # valid JSON text
    assert json_validity('```json\n{"a": [1, 2]}\n```') == 1.0
    assert json_validity('  ```JSON\n{"a": 1}\n```  ') == 1.0
    assert json_validity('```\n{"a": 1}\n```') == 1.0
    assert json_validity("{'a': 1}") == 0.0  # Python literal, not JSON
    assert json_validity('{"a": 1,}') == 0.0
    assert json_validity('{"a": NaN}') == 0.0  # Python's json would accept it; JSON does not
    assert json_validity('Here you go: {"a": 1}') == 0.0  # prose around it: not parseable as is
    assert json_validity("") == 0.0


def test_looks_like_json():
    assert looks_like_json('{"label": "x"}')
    assert looks_like_json("```json\n[1]\n```")
    assert not looks_like_json("42")
    assert not looks_like_json('"yes"')
    assert not looks_like_json("Paris")


SCHEMA = {
    "type": "object",
    "required": ["name", "priority"],
    "properties": {
        "name": {"type": "string"},
        "priority": {"type": "string", "enum": ["low", "high"]},
        "count": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "note": {"type": ["string", "null"]},
    },
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"name": "a", "priority": "low"}', 1.0),
        ('```json\n{"name": "a", "priority": "high", "count": 3, "tags": ["x"], "note": null}\n```', 1.0),
        ('{"name": "a", "priority": "low", "count": 2.0}', 1.0),  # 2.0 is an integer in JSON Schema
        ('{"name": "a"}', 0.0),  # required "priority" missing
        ('{"name": "a", "priority": "urgent"}', 0.0),  # not in enum
        ('{"name": 1, "priority": "low"}', 0.0),  # wrong type
        ('{"name": "a", "priority": "low", "count": true}', 0.0),  # a bool is not an integer
        ('{"name": "a", "priority": "low", "count": 1.5}', 0.0),
        ('{"name": "a", "priority": "low", "tags": ["x", 2]}', 0.0),  # items
        ('{"name": "a", "priority": "low", "extra": 1}', 0.0),  # additionalProperties false
        ('[{"name": "a", "priority": "low"}]', 0.0),  # wrong top-level type
        ("not json", 0.0),
    ],
)
def test_json_schema_compliance(text, expected):
    assert json_schema_compliance(text, SCHEMA) == expected


def test_schema_enum_is_json_equality():
    # Python says True == 1; JSON Schema does not.
    assert json_schema_compliance("1", {"enum": [1, 2]}) == 1.0
    assert json_schema_compliance("true", {"enum": [1, 2]}) == 0.0
    assert json_schema_compliance("1.0", {"enum": [1]}) == 1.0


# --- classification --------------------------------------------------------------------------


def test_classification_report_hand_worked_three_classes():
    true = ["cat", "cat", "cat", "dog", "dog", "bird", "bird"]
    pred = ["cat", "cat", "dog", "dog", "cat", "bird", "dog"]
    report = classification_report(pred, true)
    # Labels sorted: bird, cat, dog. Rows are true labels, columns predicted.
    assert report["labels"] == ["bird", "cat", "dog"]
    assert report["confusion_matrix"] == [[1, 0, 1], [0, 2, 1], [0, 1, 1]]
    assert report["accuracy"] == pytest.approx(4 / 7)
    # bird: P = 1/1, R = 1/2, F = 2/3; cat: P = 2/3, R = 2/3, F = 2/3; dog: P = 1/3, R = 1/2, F = 2/5.
    per = report["per_label"]
    assert per["bird"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert per["cat"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert per["dog"] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 2 / 5, "support": 2})
    assert report["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 2 / 5) / 3)  # = 26/45
    assert report["macro_f1"] == pytest.approx(26 / 45)
    assert report["n_invalid"] == 0


def test_classification_invalid_outputs_and_label_normalization():
    true = ["Positive", "negative", "positive", "negative"]
    pred = ["positive.", "I think it is negative", "POSITIVE", " Negative "]
    report = classification_report(pred, true)
    assert report["labels"] == ["negative", "Positive"]  # first spelling, sorted by normalized form
    assert report["n_invalid"] == 1
    assert report["accuracy"] == pytest.approx(3 / 4)
    assert report["confusion_labels"] == ["negative", "Positive", INVALID_LABEL]
    assert report["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    # negative: P = 1, R = 1/2, F = 2/3; positive: F = 1. Macro over the real labels only.
    assert report["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)


def test_classification_with_explicit_labels():
    report = classification_report(["a", "a"], ["a", "a"], labels=["a", "b"])
    assert report["labels"] == ["a", "b"]
    assert report["per_label"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro_f1"] == pytest.approx(0.5)  # zero_division=0 for the unseen label
    with pytest.raises(ValueError, match="outside the given labels"):
        classification_report(["a"], ["c"], labels=["a", "b"])


def test_normalize_label():
    assert normalize_label(' "Positive." ') == "positive"
    assert normalize_label("n/a") == "n/a"


def test_looks_like_label():
    assert looks_like_label(["positive", "negative", "neutral", "positive", "negative", "positive"])
    assert not looks_like_label(["Paris", "1889", "Marie Curie"])  # distinct short answers: QA
    assert not looks_like_label(["positive"])
    long_answer = "this reference is a full sentence and not a label at all"
    assert not looks_like_label([long_answer, long_answer, "x", "x"])
    many = [f"label{i}" for i in range(25)] * 2
    assert not looks_like_label(many)
    assert looks_like_label(many, max_labels=30)


# --- per-example table -----------------------------------------------------------------------


def test_auto_task_detection():
    labels = ["spam", "ham", "ham", "spam", "ham", "ham"]
    assert detect_task(labels) == "classification"
    assert detect_task(['{"a": 1}', '```json\n{"b": 2}\n```']) == "json"
    assert detect_task(["The capital is Paris.", "It opened in 1889."]) == "generation"
    assert detect_task(["anything"], json_schema={"type": "object"}) == "json"

    frame = score_examples(["spam", "Ham.", "spam", "spam", "ham", "ham"], labels)
    assert frame.attrs["task"] == "classification"
    assert frame["correct"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert "json_valid" not in frame

    frame = score_examples(['{"a": 1}', "oops"], ['{"a": 1}', '{"a": 2}'])
    assert frame.attrs["task"] == "json"
    assert frame["json_valid"].tolist() == [1.0, 0.0]
    assert "schema_compliant" not in frame and "correct" not in frame


def test_score_examples_generation_columns():
    preds = ["The Eiffel Tower in Paris", "he is running home"]
    refs = ["the Eiffel Tower", "he runs home"]
    frame = score_examples(preds, refs)
    assert frame.attrs["task"] == "generation"
    assert list(frame.columns) == ["exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "length_ratio"]
    assert frame["exact_match"].tolist() == [0.0, 0.0]
    assert frame["token_f1"][0] == pytest.approx(2 / 3)
    assert frame["rouge1"][1] == pytest.approx(6 / 7)
    assert frame["length_ratio"].tolist() == pytest.approx([5 / 3, 4 / 3])
    assert all(dtype == np.float64 for dtype in frame.dtypes)


def test_score_examples_json_schema_and_errors():
    schema = {"type": "object", "required": ["x"]}
    frame = score_examples(['{"x": 1}', '{"y": 1}', "nope"], ['{"x": 1}'] * 3, json_schema=schema)
    assert frame["json_valid"].tolist() == [1.0, 1.0, 0.0]
    assert frame["schema_compliant"].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        score_examples(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        score_examples(["a"], ["a"], task="summarization")
    with pytest.raises(ValueError):
        score_examples(["a"], ["a"], task="generation", json_schema=schema)


def test_example_scores_to_dict_skips_inapplicable_columns():
    ones = np.ones(2)
    scores = ExampleScores("generation", ones, ones, ones, ones, ones, ones)
    assert set(scores.to_dict()) == {"exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "length_ratio"}
    scores.correct = np.zeros(2)
    assert "correct" in scores.to_frame()


def test_aggregate():
    frame = pd.DataFrame({"exact_match": [1.0, 0.0, 0.0, 1.0], "token_f1": [1.0, 0.5, 0.0, 0.5], "id": list("abcd")})
    assert aggregate(frame) == {"exact_match": 0.5, "token_f1": 0.5}
    assert math.isnan(aggregate(frame.iloc[:0])["exact_match"])


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(42.0)) == pytest.approx(42.0)
    assert perplexity(1e6) == math.inf
    assert math.isnan(perplexity(float("nan")))
