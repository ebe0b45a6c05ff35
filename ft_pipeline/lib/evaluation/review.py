"""Human review of an evaluation: the sample a person reviews, importing their verdicts, and the
LLM judge's agreement with them, which decides whether the judge may gate promotion.

**The review sample.** Every evaluation writes ``review_sample.csv`` and ``review_sample.jsonl``
next to its report: up to ``review_sample_size`` examples per tag (a seeded draw; an example's
tag is its first one, ``untagged`` without), plus the ``review_disagreements`` examples (not
drawn already) where candidate and base differ most on the answer metric. Columns:
:data:`REVIEW_COLUMNS`.

**Blinded.** The reviewer sees the two answers as ``answer_a`` and ``answer_b``, the candidate's
on a seeded coin flip per row, and fills in ``preferred`` with ``A``, ``B`` or ``tie`` (blank: not
reviewed) and an optional ``note``. Which side is the candidate's (the hidden key) and the
judge's verdict are recorded in the registry (``review_items``), not in the file: a reviewer who
knew which answer is the fine-tuned one, or what the judge said, would be nudged towards it, and
the agreement measured below would say more about the nudge than about the judge. The import
maps A/B back to candidate/base with the key.

**Import** (``ft-pipeline review import FILE``): every row is validated (its eval_id must have a
review sample in the registry, its example_id must be in it, ``preferred`` must be A, B, tie or
blank, and an example may appear once per file); a bad row is rejected with its line number, the
good ones are recorded (``review_verdicts``; the latest verdict per evaluation, example and
reviewer wins, so re-importing a corrected file is safe).

**Judge agreement.** Cohen's kappa between the judge's verdict (candidate/base/tie: a win, a loss
or a tie of the candidate against the base, both orders agreeing) and each human verdict on the
examples both judged, over every earlier evaluation of the same model name judged by the same
judge model; with a seeded percentile-bootstrap CI (resampling the verdict pairs), n, and the raw
agreement. When the gate's primary metric is ``judge_win_rate``, the rule ``judge_agreement``
passes only with at least ``judge_min_human_labels`` pairs and the kappa CI's *lower bound* at or
above ``judge_min_kappa``: otherwise the judge-based gate fails with that reason (it does not fall
back to an answer metric: a gate configured to trust the judge should not silently trust
something else, and a failing candidate can be re-evaluated once people have reviewed enough).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ft_pipeline.lib.evaluation.gate import RuleResult
from ft_pipeline.lib.evaluation.statistics import BOOTSTRAP_CHUNK_ELEMENTS
from ft_pipeline.lib.registry_schema import REVIEW_PREFERENCES
from ft_pipeline.lib.storage import content_version

__all__ = [
    "JUDGE_COLUMN",
    "REVIEW_COLUMNS",
    "KappaResult",
    "ReviewConfig",
    "ReviewFileError",
    "ReviewImport",
    "ReviewItem",
    "agreement_rule",
    "cohen_kappa",
    "import_review_file",
    "judge_agreement",
    "kappa_with_ci",
    "read_review_file",
    "review_markdown",
    "select_review_sample",
    "write_review_sample",
]

#: The columns of the review sample, in order. ``preferred`` and ``note`` are left blank to fill in.
REVIEW_COLUMNS = ("eval_id", "example_id", "tag", "prompt", "answer_a", "answer_b", "preferred", "note")
#: Columns an imported file must have (the others are for the reviewer to read).
REQUIRED_COLUMNS = ("eval_id", "example_id", "preferred")
#: What a reviewer may write in ``preferred`` (any case); blank means not reviewed.
REVIEWER_CHOICES = ("A", "B", "tie")
#: The column of the evaluation's ``examples`` (candidate rows) with the judge's verdict against the
#: base per example: ``win``, ``loss`` or ``tie`` of the candidate (absent without a judge).
JUDGE_COLUMN = "judge_vs_base"
_JUDGE_VERDICT = {"win": "candidate", "loss": "base", "tie": "tie"}
#: Cells a spreadsheet would run as a formula: they get a leading apostrophe in the CSV (OWASP's
#: CSV-injection advice; prompts come from users). The JSONL has the texts as they are.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ReviewConfig:
    """The review sample and when the LLM judge may gate. Every default is the documented one."""

    review_sample_size: int = 5
    """Examples per tag in the review sample (a seeded draw within each tag); 0 = none by tag."""
    review_disagreements: int = 10
    """Plus this many examples, not drawn already, where candidate and base differ most on the
    answer metric; 0 = none. Both 0: no review sample is written."""
    judge_min_kappa: float = 0.4
    """With ``judge_win_rate`` as the primary metric, the lower bound of the 95% CI of Cohen's kappa
    between the judge and human reviewers must be at least this. 0.4 is where "moderate" agreement
    begins on the usual Landis & Koch scale (0.21-0.40 is "fair"); requiring it of the lower bound,
    not the point estimate, keeps a judge that agreed by luck on a few examples from gating."""
    judge_min_human_labels: int = 30
    """Fewest human verdicts on judge-labelled examples before the judge may gate: below ~30 pairs
    a kappa's CI spans most of its range, so the lower bound says little."""

    def __post_init__(self) -> None:
        for name in ("review_sample_size", "review_disagreements", "judge_min_human_labels"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if not -1.0 <= self.judge_min_kappa <= 1.0:
            raise ValueError(f"judge_min_kappa must be within [-1, 1] (kappa's range), not {self.judge_min_kappa}")


@dataclass(frozen=True)
class ReviewItem:
    """One example of a review sample, with the hidden key and the judge's verdict."""

    example_id: str
    tag: str
    prompt: str
    candidate_answer: str
    base_answer: str
    candidate_side: str
    """``A`` or ``B``: where the candidate's answer is shown."""
    judge_verdict: str | None
    """``candidate``, ``base`` or ``tie`` (None without a judge)."""
    selected_by: str
    """``tag`` (the per-tag draw) or ``disagreement``."""
    score_gap: float
    """Candidate minus base on the answer metric (NaN when not scored)."""

    def answers(self) -> tuple[str, str]:
        """The answers as the reviewer sees them: (A, B)."""
        if self.candidate_side == "A":
            return self.candidate_answer, self.base_answer
        return self.base_answer, self.candidate_answer

    def registry_row(self, judge_model: str) -> dict[str, Any]:
        """What the registry keeps (``review_items``): no texts, the key and the judge's verdict."""
        return {
            "example_id": self.example_id,
            "tag": self.tag,
            "candidate_side": self.candidate_side,
            "judge_verdict": self.judge_verdict,
            "judge_model": (judge_model or None) if self.judge_verdict else None,
            "selected_by": self.selected_by,
        }


def _example_ids(conversation_ids: Iterable[Any]) -> list[str]:
    """The conversation id; a repeated one gets ``#2``, ``#3``... so every example has its own id."""
    seen: dict[str, int] = {}
    ids = []
    for cid in conversation_ids:
        text = str(cid)
        seen[text] = seen.get(text, 0) + 1
        ids.append(text if seen[text] == 1 else f"{text}#{seen[text]}")
    return ids


def _tag(tags: Any) -> str:
    if tags is None or not len(tags):
        return "untagged"
    return str(tags[0])


def select_review_sample(examples: pd.DataFrame, metric: str, config: ReviewConfig, *, seed: int) -> list[ReviewItem]:
    """The stratified review sample of an evaluation's ``examples`` (one row per model and test
    example, as :func:`~ft_pipeline.lib.evaluation.runner.run_evaluation` builds them): per tag up
    to ``review_sample_size`` examples (``numpy.random.default_rng(seed)``), then the largest
    ``|candidate − base|`` on ``metric`` among the rest (ties by test order; a gap of 0 is no
    disagreement). Returned in test order, each with a seeded A/B side for the candidate."""
    candidate = examples[examples["model"] == "candidate"].reset_index(drop=True)
    base = examples[examples["model"] == "base"].reset_index(drop=True)
    n = len(candidate)
    if len(base) != n:
        raise ValueError(f"the candidate answered {n} examples and the base {len(base)}")
    ids = _example_ids(candidate["conversation_id"])
    tags = [_tag(t) for t in candidate["tags"]] if "tags" in candidate else ["untagged"] * n
    if metric in candidate and metric in base:
        gap = candidate[metric].to_numpy(dtype=float) - base[metric].to_numpy(dtype=float)
    else:
        gap = np.full(n, np.nan)
    rng = np.random.default_rng(seed)
    chosen: dict[int, str] = {}
    for tag in sorted(set(tags)):
        members = [i for i, t in enumerate(tags) if t == tag]
        k = min(config.review_sample_size, len(members))
        for i in rng.choice(members, size=k, replace=False) if k else []:
            chosen[int(i)] = "tag"
    rest = [i for i in range(n) if i not in chosen and math.isfinite(gap[i]) and gap[i] != 0]
    rest.sort(key=lambda i: (-abs(gap[i]), i))
    for i in rest[: config.review_disagreements]:
        chosen[i] = "disagreement"
    order = sorted(chosen)
    sides = rng.random(len(order)) < 0.5
    judged = candidate.get(JUDGE_COLUMN)
    items = []
    for i, candidate_first in zip(order, sides):
        outcome = judged.iloc[i] if judged is not None else None
        items.append(
            ReviewItem(
                example_id=ids[i],
                tag=tags[i],
                prompt=str(candidate.at[i, "prompt"]) if "prompt" in candidate else "",
                candidate_answer=str(candidate.at[i, "prediction"]),
                base_answer=str(base.at[i, "prediction"]),
                candidate_side="A" if candidate_first else "B",
                judge_verdict=_JUDGE_VERDICT.get(str(outcome)) if isinstance(outcome, str) else None,
                selected_by=chosen[i],
                score_gap=float(gap[i]),
            )
        )
    return items


def _spreadsheet_safe(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def write_review_sample(items: Sequence[ReviewItem], eval_id: str, out_dir: str | Path) -> dict[str, Path]:
    """``review_sample.csv`` (UTF-8 with a byte-order mark, so spreadsheets read it as UTF-8; cells
    that would start a formula get a leading apostrophe) and ``review_sample.jsonl`` in
    ``out_dir``: one row per item, :data:`REVIEW_COLUMNS`, ``preferred`` and ``note`` blank."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in items:
        answer_a, answer_b = item.answers()
        rows.append(
            {
                "eval_id": eval_id,
                "example_id": item.example_id,
                "tag": item.tag,
                "prompt": item.prompt,
                "answer_a": answer_a,
                "answer_b": answer_b,
                "preferred": "",
                "note": "",
            }
        )
    paths = {"review_sample": out_dir / "review_sample.csv", "review_sample_jsonl": out_dir / "review_sample.jsonl"}
    with paths["review_sample"].open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(REVIEW_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _spreadsheet_safe(v) for k, v in row.items()})
    paths["review_sample_jsonl"].write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    return paths


def sample_summary(items: Sequence[ReviewItem], paths: Mapping[str, Path], config: ReviewConfig) -> dict[str, Any]:
    """What report.json (``extra.review_sample``) and report.md say about the sample."""
    return {
        "csv": str(paths["review_sample"]),
        "jsonl": str(paths["review_sample_jsonl"]),
        "n": len(items),
        "by_tag": sum(1 for i in items if i.selected_by == "tag"),
        "disagreements": sum(1 for i in items if i.selected_by == "disagreement"),
        "review_sample_size": config.review_sample_size,
        "review_disagreements": config.review_disagreements,
        "blinded": True,
    }


# ------------------------------------------------------------------------------------------------
# Cohen's kappa
# ------------------------------------------------------------------------------------------------


def _codes(values: Sequence[str], categories: Sequence[str]) -> np.ndarray:
    index = {c: k for k, c in enumerate(categories)}
    unknown = sorted({v for v in values if v not in index})
    if unknown:
        raise ValueError(f"verdicts must be one of {', '.join(categories)}; got {', '.join(map(repr, unknown))}")
    return np.asarray([index[v] for v in values], dtype=np.int64)


def _kappa_rows(first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """Kappa of each row of two (r, n) code matrices; NaN where chance agreement is 1 (both raters
    gave one and the same category to every item: kappa is 0/0 there)."""
    observed = (first == second).mean(axis=1)
    chance = np.zeros(first.shape[0])
    for c in range(k):
        chance += (first == c).mean(axis=1) * (second == c).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = (observed - chance) / (1.0 - chance)
    return np.where(np.isclose(chance, 1.0), np.nan, kappa)


def cohen_kappa(first: Sequence[str], second: Sequence[str], categories: Sequence[str] = REVIEW_PREFERENCES) -> float:
    """Cohen's kappa of two raters' labels of the same items: (p_o − p_e) / (1 − p_e), p_o the
    observed agreement, p_e the agreement expected by chance from each rater's label shares.
    1 = perfect, 0 = chance, below 0 = worse than chance; NaN when it is undefined (p_e = 1)."""
    if len(first) != len(second):
        raise ValueError(f"two raters must label the same items: {len(first)} vs {len(second)} labels")
    if not len(first):
        raise ValueError("no items to compare")
    a, b = _codes(first, categories), _codes(second, categories)
    return float(_kappa_rows(a[None, :], b[None, :], len(categories))[0])


@dataclass(frozen=True)
class KappaResult:
    """Cohen's kappa with a percentile-bootstrap confidence interval."""

    kappa: float
    ci_low: float
    ci_high: float
    n: int
    raw_agreement: float
    """Share of items both raters labelled the same."""
    n_resamples: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def kappa_with_ci(
    first: Sequence[str],
    second: Sequence[str],
    *,
    categories: Sequence[str] = REVIEW_PREFERENCES,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> KappaResult:
    """Cohen's kappa and a percentile CI from ``n_resamples`` resamples of the item pairs with
    replacement (``numpy.random.default_rng(seed)``: the same inputs give the same interval).
    Resamples where kappa is undefined are left out; NaN bounds when every one is."""
    kappa = cohen_kappa(first, second, categories)
    a, b = _codes(first, categories), _codes(second, categories)
    n = a.size
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    values = np.empty(max(1, n_resamples))
    rows = max(1, BOOTSTRAP_CHUNK_ELEMENTS // n)
    for start in range(0, values.size, rows):
        stop = min(start + rows, values.size)
        idx = rng.integers(0, n, size=(stop - start, n))
        values[start:stop] = _kappa_rows(a[idx], b[idx], len(categories))
    defined = values[np.isfinite(values)]
    alpha = 1.0 - confidence
    if defined.size:
        low, high = (float(v) for v in np.quantile(defined, [alpha / 2, 1 - alpha / 2]))
    else:
        low = high = math.nan
    return KappaResult(kappa, low, high, n, float((a == b).mean()), n_resamples, confidence)


# ------------------------------------------------------------------------------------------------
# The judge's agreement with human verdicts, and the gate rule on it
# ------------------------------------------------------------------------------------------------


def judge_agreement(
    verdicts: Sequence[Mapping[str, Any]],
    config: ReviewConfig,
    *,
    judge_model: str,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The judge's agreement with human review from registry rows (``review_verdicts``: each with
    ``preferred`` and the example's ``judge_verdict``); rows without a judge verdict are left out.
    Each (example, reviewer) verdict is one pair. ``passed``: enough pairs and the kappa CI's lower
    bound at or above ``judge_min_kappa``; ``reason`` says why not."""
    pairs = [(str(v["judge_verdict"]), str(v["preferred"])) for v in verdicts if v.get("judge_verdict")]
    out: dict[str, Any] = {
        "judge_model": judge_model,
        "n": len(pairs),
        "evaluations": sorted({str(v["eval_id"]) for v in verdicts if v.get("judge_verdict")}),
        "reviewers": sorted({str(v["reviewer"]) for v in verdicts if v.get("judge_verdict")}),
        "judge_min_kappa": config.judge_min_kappa,
        "judge_min_human_labels": config.judge_min_human_labels,
        "basis": "ci_low",
        # Which verdicts these numbers come from: part of the evaluation id, so an import of new
        # verdicts makes the next evaluation a new one (with a new report) instead of a re-run.
        "fingerprint": content_version(
            sorted(
                (str(v["eval_id"]), str(v["example_id"]), str(v["reviewer"]), str(v["preferred"]))
                for v in verdicts
                if v.get("judge_verdict")
            )
        ),
    }
    if pairs:
        result = kappa_with_ci(
            [j for j, _ in pairs], [h for _, h in pairs], n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        out.update(result.to_dict())
    passed, reason = _agreement_verdict(out)
    return {**out, "passed": passed, "reason": reason}


def _agreement_verdict(agreement: Mapping[str, Any]) -> tuple[bool, str]:
    n, minimum = int(agreement["n"]), int(agreement["judge_min_human_labels"])
    judge = agreement["judge_model"]
    if n < minimum:
        return False, (
            f"{n} human verdict(s) on examples {judge} judged, fewer than judge_min_human_labels {minimum}: "
            "review more of a review sample (ft-pipeline review import) before the judge can gate"
        )
    low, kappa = agreement.get("ci_low"), agreement.get("kappa")
    if low is None or kappa is None or not math.isfinite(low) or not math.isfinite(kappa):
        return False, f"Cohen's kappa of {judge} with human review is undefined on {n} verdicts (no variation)"
    threshold = float(agreement["judge_min_kappa"])
    sign = "≥" if low >= threshold else "<"
    return low >= threshold, (
        f"Cohen's kappa of {judge} with human review {kappa:.3f}, 95% CI [{low:.3f}, {agreement['ci_high']:.3f}] "
        f"on n={n}: lower bound {sign} judge_min_kappa {threshold:g}"
    )


def agreement_rule(agreement: Mapping[str, Any] | None) -> RuleResult:
    """The gate rule ``judge_agreement`` (added when ``judge_win_rate`` is the primary metric)."""
    if agreement is None:
        return RuleResult("judge_agreement", False, "no judge_model is configured: no agreement with human review")
    numbers = {k: agreement.get(k) for k in ("kappa", "ci_low", "ci_high", "n", "raw_agreement")}
    return RuleResult("judge_agreement", bool(agreement["passed"]), str(agreement["reason"]), numbers)


# ------------------------------------------------------------------------------------------------
# report.md
# ------------------------------------------------------------------------------------------------


def review_markdown(extra: Mapping[str, Any] | None) -> list[str]:
    """report.md's "Human review" section (the sample's path and how to import it) and, when human
    verdicts exist, "Judge agreement with human review"."""
    extra = extra or {}
    lines: list[str] = []
    sample = extra.get("review_sample")
    if sample:
        lines += [
            "",
            "## Human review",
            "",
            f"Review sample: `{sample['csv']}` (and `.jsonl`): {sample['n']} examples, {sample['by_tag']} drawn "
            f"per tag (up to {sample['review_sample_size']} each) and {sample['disagreements']} of the largest "
            "candidate-vs-base disagreements. Blinded: the answers are A and B in a random order per row, the "
            "judge's verdict is not shown. Fill in `preferred` (A, B or tie) and `note`, then "
            f"`ft-pipeline review import {sample['csv']} --reviewer NAME`.",
        ]
    agreement = extra.get("judge_agreement")
    if agreement and agreement.get("n"):
        lines += [
            "",
            "## Judge agreement with human review",
            "",
            "| judge | n | Cohen's kappa | 95% CI | raw agreement | evaluations | reviewers |",
            "|---|---:|---:|---|---:|---:|---:|",
            f"| `{agreement['judge_model']}` | {agreement['n']} | {_number(agreement.get('kappa'))} | "
            f"[{_number(agreement.get('ci_low'))}, {_number(agreement.get('ci_high'))}] | "
            f"{_number(agreement.get('raw_agreement'))} | {len(agreement['evaluations'])} | "
            f"{len(agreement['reviewers'])} |",
            "",
            f"{'May' if agreement['passed'] else 'May not'} gate promotion: {agreement['reason']}.",
        ]
    return lines


def _number(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"


# ------------------------------------------------------------------------------------------------
# Import
# ------------------------------------------------------------------------------------------------


class ReviewFileError(ValueError):
    """A review file that cannot be read at all (not CSV/JSONL, a missing column)."""


def read_review_file(path: str | Path) -> list[tuple[int, dict[str, str] | None, str]]:
    """The rows of a filled review sample, CSV (``.csv``) or JSON lines (otherwise): per row its
    first line's number, the row (None when it cannot be read) and why not."""
    path = Path(path)
    if not path.is_file():
        raise ReviewFileError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    rows: list[tuple[int, dict[str, str] | None, str]] = []
    columns: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append((number, None, f"not JSON ({err.msg})"))
            continue
        if not isinstance(value, dict):
            rows.append((number, None, "not a JSON object"))
            continue
        row = {str(k): "" if v is None else str(v) for k, v in value.items()}
        columns |= row.keys()
        rows.append((number, row, ""))
    _check_columns(path, columns if rows else set(REQUIRED_COLUMNS))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict[str, str] | None, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ReviewFileError(f"{path}: empty file (no header)") from None
        except csv.Error as err:
            raise ReviewFileError(f"{path}: not CSV ({err})") from None
        _check_columns(path, set(header))
        rows: list[tuple[int, dict[str, str] | None, str]] = []
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                rows.append((start, None, f"not CSV ({err})"))
                break
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                rows.append((start, None, f"{len(fields)} fields, the header has {len(header)}"))
                continue
            rows.append((start, dict(zip(header, fields)), ""))
    return rows


def _check_columns(path: Path, columns: set[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ReviewFileError(
            f"{path}: missing column(s) {', '.join(missing)} (a review sample has {', '.join(REVIEW_COLUMNS)})"
        )


@dataclass
class ReviewImport:
    """What an import did: counts that add up to the rows read, and each rejected row's reason."""

    reviewer: str
    rows: int = 0
    imported: int = 0
    skipped_blank: int = 0
    rejected: list[str] = field(default_factory=list)
    """``line N: why`` per rejected row."""
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    by_eval: dict[str, int] = field(default_factory=dict)
    """Imported verdicts per evaluation."""


def _preferred(value: str) -> str | None:
    """``A``/``B``/``tie`` (any case), ``""`` for blank; None when it is something else."""
    text = value.strip()
    if not text:
        return ""
    for choice in REVIEWER_CHOICES:
        if text.lower() == choice.lower():
            return choice
    return None


def import_review_file(registry: Any, path: str | Path, *, reviewer: str) -> ReviewImport:
    """Validate every row of a filled review sample against the registry's review samples and
    record the valid, non-blank verdicts for ``reviewer`` (A/B mapped back to candidate/base with
    the hidden key). Rejected rows are listed with their line; they do not stop the others.
    Raises :class:`ReviewFileError` when the file cannot be read at all."""
    reviewer = reviewer.strip()
    if not reviewer:
        raise ReviewFileError("the reviewer's name is empty (--reviewer NAME)")
    rows = read_review_file(path)
    result = ReviewImport(reviewer=reviewer, rows=len(rows))
    lines_of: dict[tuple[str, str], list[int]] = {}
    for number, row, _ in rows:
        if row is not None:
            key = (row.get("eval_id", "").strip(), row.get("example_id", "").strip())
            lines_of.setdefault(key, []).append(number)
    samples: dict[str, dict[str, Mapping[str, Any]]] = {}
    accepted: dict[str, list[dict[str, Any]]] = {}
    for number, row, problem in rows:
        if row is None:
            result.rejected.append(f"line {number}: {problem}")
            continue
        eval_id, example_id = row.get("eval_id", "").strip(), row.get("example_id", "").strip()
        preferred = _preferred(row.get("preferred", ""))
        reason = ""
        if not eval_id or not example_id:
            reason = "no eval_id" if not eval_id else "no example_id"
        elif len(lines_of[(eval_id, example_id)]) > 1:
            others = [str(n) for n in lines_of[(eval_id, example_id)] if n != number]
            reason = (
                f"example {example_id} of evaluation {eval_id} is also on line {', '.join(others)} "
                "(one verdict per example in a file; none of them is imported)"
            )
        elif preferred is None:
            reason = f"preferred {row.get('preferred', '').strip()!r} is not A, B or tie (blank: not reviewed)"
        else:
            if eval_id not in samples:
                samples[eval_id] = {str(item["example_id"]): item for item in registry.review_sample(eval_id)}
            if not samples[eval_id]:
                reason = f"unknown eval_id {eval_id} (the registry has no review sample for it)"
            elif example_id not in samples[eval_id]:
                reason = f"example_id {example_id} is not in the review sample of evaluation {eval_id}"
        if reason:
            result.rejected.append(f"line {number}: {reason}")
            continue
        if preferred == "":
            result.skipped_blank += 1
            continue
        side = samples[eval_id][example_id]["candidate_side"]
        verdict = "tie" if preferred == "tie" else ("candidate" if preferred == side else "base")
        accepted.setdefault(eval_id, []).append(
            {"example_id": example_id, "preferred": verdict, "note": row.get("note", "").strip()}
        )
    for eval_id, verdicts in accepted.items():
        counts = registry.record_review_verdicts(eval_id, verdicts, reviewer=reviewer, source=Path(path).name)
        result.new += counts["new"]
        result.updated += counts["updated"]
        result.unchanged += counts["unchanged"]
        result.by_eval[eval_id] = len(verdicts)
        result.imported += len(verdicts)
    return result
