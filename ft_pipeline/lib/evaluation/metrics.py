"""Per-example evaluation metrics for generated answers, and their aggregation.

Everything here is a pure function of (predictions, references): no model, no network. The
per-example scores (one row per eval item) are what the paired statistics in
``ft_pipeline.lib.evaluation.statistics`` consume, so every column is a float per item rather
than only a corpus-level number.

Conventions:

* Exact match and token F1 follow the SQuAD evaluation script (lower-case, drop punctuation and
  the articles a/an/the, collapse whitespace). Punctuation here is ASCII ``string.punctuation``
  plus every Unicode punctuation character (category P*), so curly quotes and dashes from a chat
  model do not cost a match.
* ROUGE uses google-research ``rouge-score`` with the Porter stemmer (``use_stemmer=True``),
  target (reference) first. Its default tokenizer keeps only ``[a-z0-9]``, so non-English text
  scores near 0; ``rougeLsum`` is not computed (it needs nltk's punkt data, i.e. a download).
* Classification labels are compared after ``normalize_label`` (case, surrounding whitespace,
  quotes and punctuation), and an output that is not one of the labels becomes the explicit
  ``INVALID_LABEL``, counted as wrong.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
"""The ROUGE variants scored (F-measure of each)."""

LENGTH_RATIO_CAP = 10.0
"""Upper bound of ``length_ratio``: a non-empty answer to an empty reference would be infinite,
and one runaway generation must not dominate a mean, so every ratio is clipped here."""

INVALID_LABEL = "__invalid__"
"""The label an output that is none of the known labels is mapped to (always counted wrong)."""

TASKS = ("auto", "generation", "json", "classification")
"""Accepted ``task`` values of ``score_examples``; "auto" resolves to one of the other three."""

LABEL_MAX_WORDS = 4
LABEL_MAX_CHARS = 40
"""A reference longer than this is free text, not a class label (``looks_like_label``)."""

# ----------------------------------------------------------------------------------------------
# SQuAD-style normalization, exact match, token F1
# ----------------------------------------------------------------------------------------------

# ASCII punctuation (includes symbols such as $ + < that Unicode files under S*) goes through a
# translation table; other characters are checked by Unicode category only when the text is not
# ASCII (building a table of all Unicode punctuation would cost ~0.3 s at import).
_ASCII_PUNCT_TABLE = {ord(ch): None for ch in string.punctuation}


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def _strip_punctuation(text: str) -> str:
    text = text.translate(_ASCII_PUNCT_TABLE)
    if text.isascii():
        return text
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation and the articles a/an/the, collapse whitespace (SQuAD).

    The order matters and is SQuAD's: punctuation goes before articles, so "the-end" becomes
    "theend" (not "end"), exactly as the reference script does.
    """
    text = _strip_punctuation((text or "").lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalized prediction equals the normalized reference, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-overlap F1 on normalized tokens (a multiset intersection).

    Both empty -> 1.0 (nothing asked, nothing said); exactly one empty -> 0.0.
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = Counter(pred_tokens) & Counter(ref_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------------------------
# ROUGE
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer():
    """One scorer for the process: building it (and importing nltk) is the slow part."""
    # Imported lazily: rouge-score pulls in nltk and absl, which lib users that never score
    # text should not pay for. Only the Porter stemmer is used; nothing is downloaded.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-example ROUGE-1/2/L F-measures, as ``{"rouge1": array, "rouge2": ..., "rougeL": ...}``.

    ``RougeScorer.score`` takes the target first; swapping the arguments would swap precision and
    recall, which leaves F unchanged but is still kept right here.
    """
    _check_same_length(predictions, references)
    out = {name: np.zeros(len(predictions), dtype=np.float64) for name in ROUGE_TYPES}
    if not len(predictions):
        return out
    scorer = _rouge_scorer()
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        scores = scorer.score(ref or "", pred or "")
        for name in ROUGE_TYPES:
            out[name][i] = scores[name].fmeasure
    return out


# ----------------------------------------------------------------------------------------------
# Length
# ----------------------------------------------------------------------------------------------


def length_ratio(prediction: str, reference: str) -> float:
    """Whitespace words of the prediction over those of the reference, clipped to ``LENGTH_RATIO_CAP``.

    An empty reference gives 0.0 for an empty prediction and the cap otherwise (the ratio would be
    infinite). Words are raw whitespace tokens, not normalized ones: verbosity is what is measured.
    """
    n_pred = len((prediction or "").split())
    n_ref = len((reference or "").split())
    if n_ref == 0:
        return 0.0 if n_pred == 0 else LENGTH_RATIO_CAP
    return min(n_pred / n_ref, LENGTH_RATIO_CAP)


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------

# The whole output is one fenced block: ```json ... ``` (language tag optional, any case).
_FENCE = re.compile(r"\A\s*```[ \t]*(?:json)?[ \t]*\r?\n?(.*?)\r?\n?[ \t]*```\s*\Z", re.DOTALL | re.IGNORECASE)


def strip_code_fence(text: str) -> str:
    """The content of a Markdown code fence if the whole text is one (```json ... ```), else the text.

    Only a fence around the *whole* output is removed: prose around the JSON means a consumer
    could not parse the output as is, which is exactly what format validity measures.
    """
    match = _FENCE.match(text or "")
    return match.group(1) if match else (text or "")


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN / Infinity / -Infinity, which RFC 8259 JSON does not.
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> tuple[bool, Any]:
    """``(True, value)`` if the text (after ``strip_code_fence``) is strict JSON, else ``(False, None)``."""
    try:
        return True, json.loads(strip_code_fence(text).strip(), parse_constant=_reject_constant)
    except (ValueError, TypeError, RecursionError):
        return False, None


def json_validity(prediction: str) -> float:
    """1.0 if the prediction parses as JSON (a whole-output code fence is tolerated), else 0.0."""
    return float(parse_json(prediction)[0])


def looks_like_json(text: str) -> bool:
    """True if the text parses as a JSON object or array (a bare ``42`` or ``"x"`` does not count:
    short numeric or quoted answers are QA, not structured output)."""
    ok, value = parse_json(text)
    return ok and isinstance(value, (dict, list))


_JSON_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    # bool is an int subclass in Python but not a number in JSON.
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    # JSON Schema (draft 6+) counts 1.0 as an integer: it is the mathematical value that matters.
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _json_equal(a: Any, b: Any) -> bool:
    """JSON value equality for ``enum``: unlike Python ``==``, true is not 1 and 1.0 is 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def validate_json_schema(value: Any, schema: dict | bool) -> bool:
    """Whether a parsed JSON value satisfies a minimal JSON-Schema subset.

    Supported keywords: ``type`` (a name or a list of names), ``enum``, ``required``,
    ``properties``, ``additionalProperties`` (bool or schema; OpenAI strict structured outputs
    always set it to false) and ``items`` (one schema for every element). Boolean schemas
    (``True``/``False``) work too. Other keywords are ignored, as a JSON-Schema validator ignores
    unknown ones, so a schema using, say, ``minLength`` is checked only on the supported part.
    """
    if schema is True:
        return True
    if schema is False:
        return False
    if not isinstance(schema, dict):
        raise TypeError(f"a JSON schema must be a dict or a bool, not {type(schema).__name__}")

    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        unknown = [n for n in names if n not in _JSON_TYPES]
        if unknown:
            raise ValueError(f"unsupported JSON schema type(s): {unknown}")
        if not any(_JSON_TYPES[n](value) for n in names):
            return False
    if "enum" in schema and not any(_json_equal(value, option) for option in schema["enum"]):
        return False

    if isinstance(value, dict):
        if any(key not in value for key in schema.get("required", ())):
            return False
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                if not validate_json_schema(item, properties[key]):
                    return False
            elif "additionalProperties" in schema:
                if not validate_json_schema(item, schema["additionalProperties"]):
                    return False
    if isinstance(value, list) and "items" in schema:
        if not all(validate_json_schema(item, schema["items"]) for item in value):
            return False
    return True


def json_schema_compliance(prediction: str, schema: dict) -> float:
    """1.0 if the prediction is JSON that satisfies ``schema`` (see ``validate_json_schema``);
    0.0 if it does not or is not JSON at all."""
    ok, value = parse_json(prediction)
    return float(ok and validate_json_schema(value, schema))


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


def normalize_label(text: str) -> str:
    """Case-fold, collapse whitespace and strip surrounding quotes/punctuation: "Positive." -> "positive".

    Inner punctuation is kept ("n/a", "re-open" stay distinct labels).
    """
    words = " ".join((text or "").split())
    start, end = 0, len(words)
    while start < end and (_is_punctuation(words[start]) or words[start].isspace()):
        start += 1
    while end > start and (_is_punctuation(words[end - 1]) or words[end - 1].isspace()):
        end -= 1
    return words[start:end].casefold()


def looks_like_label(references: Sequence[str], max_labels: int = 20) -> bool:
    """Whether the references are a small closed set of short strings (a classification task).

    Requires: every reference short (at most ``LABEL_MAX_WORDS`` words and ``LABEL_MAX_CHARS``
    characters, one line, not JSON), at most ``max_labels`` distinct normalized labels, and labels
    that repeat (distinct count at most half the references). The repetition rule keeps a short-
    answer QA set ("Paris", "1889", "Marie Curie") from passing as a label set; it also means an
    eval set of under 4 items is never auto-detected as classification (pass ``task`` instead).
    """
    refs = list(references)
    if len(refs) < 2:
        return False
    labels = set()
    for ref in refs:
        text = (ref or "").strip()
        if not text or "\n" in text or len(text) > LABEL_MAX_CHARS or len(text.split()) > LABEL_MAX_WORDS:
            return False
        if looks_like_json(text):
            return False
        labels.add(normalize_label(text))
    if "" in labels:  # a reference that was only punctuation
        return False
    return len(labels) <= max_labels and 2 * len(labels) <= len(refs)


def classification_report(
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, confusion matrix and per-label precision/recall/F1/support.

    Labels are matched after ``normalize_label``; a prediction that is none of the labels becomes
    ``INVALID_LABEL`` and is wrong. ``labels`` defaults to the distinct references (first spelling
    seen, sorted by normalized form); when given, every reference must be one of them.

    Returns a dict with:

    * ``accuracy``: fraction of predictions equal to their reference label;
    * ``macro_f1``: sklearn ``f1_score(average="macro", zero_division=0)`` over ``labels`` only
      (invalid outputs lower the recall of their true label; they are not a class of their own);
    * ``labels``: the class labels, in the order used below;
    * ``confusion_matrix``: sklearn's (rows true, columns predicted) as a list of lists, over
      ``confusion_labels``, which is ``labels`` plus ``INVALID_LABEL`` when some output was invalid;
    * ``per_label``: ``{label: {"precision", "recall", "f1", "support"}}``;
    * ``n`` and ``n_invalid``.
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    _check_same_length(predictions, references)
    if labels is None:
        canonical: dict[str, str] = {}
        for ref in references:
            canonical.setdefault(normalize_label(ref), (ref or "").strip())
        keys = sorted(canonical)
    else:
        canonical = {}
        for label in labels:
            canonical.setdefault(normalize_label(label), label)
        keys = list(canonical)
        missing = sorted({(r or "").strip() for r in references if normalize_label(r) not in canonical})
        if missing:
            raise ValueError(f"references outside the given labels: {missing[:10]}")
    if INVALID_LABEL in canonical:
        raise ValueError(f"{INVALID_LABEL!r} is reserved for outputs that are none of the labels")

    y_true = [normalize_label(r) for r in references]
    y_pred = [key if (key := normalize_label(p)) in canonical else INVALID_LABEL for p in predictions]
    n_invalid = sum(p == INVALID_LABEL for p in y_pred)
    n = len(y_true)
    report: dict[str, Any] = {
        "n": n,
        "n_invalid": n_invalid,
        "labels": [canonical[k] for k in keys],
    }
    if n == 0:
        report.update(
            accuracy=float("nan"), macro_f1=float("nan"), confusion_matrix=[], confusion_labels=[], per_label={}
        )
        return report

    matrix_keys = keys + ([INVALID_LABEL] if n_invalid else [])
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=keys, average=None, zero_division=0
    )
    report.update(
        accuracy=float(np.mean([t == p for t, p in zip(y_true, y_pred)])),
        macro_f1=float(f1_score(y_true, y_pred, labels=keys, average="macro", zero_division=0)),
        confusion_labels=[canonical.get(k, k) for k in matrix_keys],
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=matrix_keys).tolist(),
        per_label={
            canonical[k]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, k in enumerate(keys)
        },
    )
    return report


# ----------------------------------------------------------------------------------------------
# Per-example table
# ----------------------------------------------------------------------------------------------


def detect_task(references: Sequence[str], *, json_schema: dict | None = None) -> str:
    """Resolve ``task="auto"``: "json" if a schema is given or every non-empty reference is a JSON
    object/array, "classification" if ``looks_like_label``, else "generation"."""
    if json_schema is not None:
        return "json"
    non_empty = [r for r in references if (r or "").strip()]
    if non_empty and all(looks_like_json(r) for r in non_empty):
        return "json"
    if looks_like_label(references):
        return "classification"
    return "generation"


@dataclass
class ExampleScores:
    """Per-example metric columns, one float64 array per metric, all of the same length.

    The task-specific columns are ``None`` when they do not apply to the resolved ``task``.
    ``to_dict`` / ``to_frame`` drop them, so the frame only has columns that mean something.
    """

    task: str
    exact_match: np.ndarray
    token_f1: np.ndarray
    rouge1: np.ndarray
    rouge2: np.ndarray
    rougeL: np.ndarray
    length_ratio: np.ndarray
    json_valid: np.ndarray | None = None
    schema_compliant: np.ndarray | None = None
    correct: np.ndarray | None = None

    def to_dict(self) -> dict[str, np.ndarray]:
        """``{column: array}`` for the metric columns that apply (``task`` is not a column)."""
        return {
            f.name: value for f in fields(self) if f.name != "task" and (value := getattr(self, f.name)) is not None
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per example; the resolved task is kept in ``frame.attrs["task"]``."""
        frame = pd.DataFrame(self.to_dict())
        frame.attrs["task"] = self.task
        return frame


def example_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    task: str = "auto",
    json_schema: dict | None = None,
) -> ExampleScores:
    """Compute every applicable per-example metric (see ``score_examples``)."""
    _check_same_length(predictions, references)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if task == "auto":
        task = detect_task(references, json_schema=json_schema)
    if json_schema is not None and task != "json":
        raise ValueError(f"json_schema was given but task is {task!r}")

    pairs = list(zip(predictions, references))
    rouge = rouge_scores(predictions, references)
    scores = ExampleScores(
        task=task,
        exact_match=np.array([exact_match(p, r) for p, r in pairs], dtype=np.float64),
        token_f1=np.array([token_f1(p, r) for p, r in pairs], dtype=np.float64),
        rouge1=rouge["rouge1"],
        rouge2=rouge["rouge2"],
        rougeL=rouge["rougeL"],
        length_ratio=np.array([length_ratio(p, r) for p, r in pairs], dtype=np.float64),
    )
    if task == "json":
        scores.json_valid = np.array([json_validity(p) for p in predictions], dtype=np.float64)
        if json_schema is not None:
            scores.schema_compliant = np.array(
                [json_schema_compliance(p, json_schema) for p in predictions], dtype=np.float64
            )
    elif task == "classification":
        scores.correct = np.array([float(normalize_label(p) == normalize_label(r)) for p, r in pairs], dtype=np.float64)
    return scores


def score_examples(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    task: str = "auto",
    json_schema: dict | None = None,
) -> pd.DataFrame:
    """One row per example, in input order, with float columns:

    ``exact_match``, ``token_f1``, ``rouge1``, ``rouge2``, ``rougeL``, ``length_ratio``; plus
    ``json_valid`` (and ``schema_compliant`` when ``json_schema`` is given) for a JSON task, or
    ``correct`` (normalized label equality) for a classification task.

    ``task`` is "generation", "json", "classification" or "auto" (``detect_task``: a schema or
    JSON references mean json, a small repeated label set means classification). The resolved
    task is in ``frame.attrs["task"]``.
    """
    return example_scores(predictions, references, task=task, json_schema=json_schema).to_frame()


def aggregate(frame: pd.DataFrame) -> dict[str, float]:
    """Mean of every numeric (or boolean) column; NaN for an empty frame. Non-numeric columns
    (ids, raw text a caller kept alongside) are skipped."""
    numeric = frame.select_dtypes(include=["number", "bool"])
    return {
        str(col): (float(numeric[col].astype(np.float64).mean()) if len(numeric) else float("nan"))
        for col in numeric.columns
    }


def perplexity(mean_nll: float) -> float:
    """``exp(mean_nll)`` (mean negative log-likelihood per token, in nats); ``inf`` instead of
    an OverflowError when the loss is huge (a diverged run must still produce a report)."""
    mean_nll = float(mean_nll)
    if math.isnan(mean_nll):
        return float("nan")
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return float("inf")


def _check_same_length(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
