"""Human review (lib/evaluation/review.py): Cohen's kappa and its CI, the stratified blinded review
sample, importing a filled sample into the registry (bad rows rejected by line), and the gate rule
that lets the judge gate only with enough agreement."""

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from ft_pipeline.cli import main
from ft_pipeline.lib.evaluation.review import (
    JUDGE_COLUMN,
    REVIEW_COLUMNS,
    ReviewConfig,
    ReviewFileError,
    agreement_rule,
    cohen_kappa,
    import_review_file,
    judge_agreement,
    kappa_with_ci,
    select_review_sample,
    write_review_sample,
)
from ft_pipeline.lib.registry import ModelRegistry, NotFound
from ft_pipeline_tests.conftest import register_evaluated_version

# ---------------------------------------------------------------------------------------------
# Cohen's kappa
# ---------------------------------------------------------------------------------------------


def test_kappa_perfect_chance_and_a_textbook_example():
    labels = ["candidate", "base", "tie", "candidate", "base"]
    assert cohen_kappa(labels, labels) == 1.0
    # Observed agreement 0.5 = the agreement expected from the label shares (0.5·0.5 + 0.5·0.5): 0.
    assert cohen_kappa(["candidate", "candidate", "base", "base"], ["candidate", "base", "candidate", "base"]) == 0.0
    # The usual 2x2 example (Wikipedia, "Cohen's kappa"): 50 items, yes/yes 20, yes/no 5, no/yes 10,
    # no/no 15: p_o = 0.7, p_e = 0.5, kappa = 0.4.
    first = ["candidate"] * 25 + ["base"] * 25
    second = ["candidate"] * 20 + ["base"] * 5 + ["candidate"] * 10 + ["base"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    # Systematic disagreement is worse than chance.
    assert cohen_kappa(["candidate", "base"] * 3, ["base", "candidate"] * 3) == pytest.approx(-1.0)
    # Three categories, against an independent implementation.
    rng = np.random.default_rng(3)
    cats = np.array(["candidate", "base", "tie"])
    a = cats[rng.integers(0, 3, 60)].tolist()
    b = [x if rng.random() < 0.6 else str(cats[rng.integers(0, 3)]) for x in a]
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert cohen_kappa(a, b) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b))


def test_kappa_undefined_and_bad_input():
    # Both raters gave one and the same label to everything: chance agreement is 1, kappa is 0/0.
    assert math.isnan(cohen_kappa(["tie"] * 4, ["tie"] * 4))
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa(["tie"], ["tie", "base"])
    with pytest.raises(ValueError, match="one of candidate, base, tie"):
        cohen_kappa(["A"], ["tie"])


def test_kappa_ci_is_seeded_and_brackets_the_estimate():
    first = ["candidate"] * 25 + ["base"] * 25
    second = ["candidate"] * 20 + ["base"] * 5 + ["candidate"] * 10 + ["base"] * 15
    one = kappa_with_ci(first, second, n_resamples=500, seed=7)
    assert one == kappa_with_ci(first, second, n_resamples=500, seed=7)  # deterministic
    assert one.kappa == pytest.approx(0.4) and one.ci_low < one.kappa < one.ci_high
    assert (one.n, one.raw_agreement) == (50, pytest.approx(0.7))
    assert kappa_with_ci(first, second, n_resamples=500, seed=8).ci_low != one.ci_low
    perfect = kappa_with_ci(first, first, n_resamples=200)
    assert (perfect.kappa, perfect.ci_low, perfect.ci_high) == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# The review sample
# ---------------------------------------------------------------------------------------------


def _examples(n_a=8, n_b=2, n_untagged=3, judge=True):
    """An evaluation's examples: candidate and base rows, with tags, answers and rougeL scores."""
    tags = [["billing"]] * n_a + [["login", "x"]] * n_b + [[]] * n_untagged
    n = len(tags)
    rows = []
    for role, score in (("candidate", lambda i: 0.5 + 0.04 * i), ("base", lambda i: 0.5)):
        for i in range(n):
            rows.append(
                {
                    "model": role,
                    "conversation_id": f"c{i}" if i != 1 else "c0",  # a repeated id gets its own example id
                    "tags": tags[i],
                    "prompt": "=SUM(A1:A9) please" if i == 0 else f"question {i}\nsecond line",
                    "prediction": f"{role} answer {i}",
                    "rougeL": score(i),
                }
            )
    frame = pd.DataFrame(rows)
    if judge:
        frame.loc[frame["model"] == "candidate", JUDGE_COLUMN] = (["win", "loss", "tie"] * n)[:n]
    return frame


def test_the_sample_is_stratified_by_tag_plus_the_largest_disagreements():
    config = ReviewConfig(review_sample_size=3, review_disagreements=2)
    items = select_review_sample(_examples(), "rougeL", config, seed=0)
    by_tag = {}
    for item in items:
        by_tag.setdefault((item.tag, item.selected_by), []).append(item.example_id)
    # Up to 3 per tag (fewer when the tag has fewer), the first tag names the stratum.
    assert {k: len(v) for k, v in by_tag.items() if k[1] == "tag"} == {
        ("billing", "tag"): 3,
        ("login", "tag"): 2,
        ("untagged", "tag"): 3,
    }
    # Then the two largest |candidate − base| among the examples not drawn (the gap grows with the
    # position, so the last ones); a repeated conversation id got its own example id.
    ids = ["c0", "c0#2"] + [f"c{i}" for i in range(2, 13)]
    drawn = {i.example_id for i in items if i.selected_by == "tag"}
    rest = [x for x in ids[:8] if x not in drawn]
    assert [i.example_id for i in items if i.selected_by == "disagreement"] == rest[-2:]
    assert len({i.example_id for i in items}) == len(items) == 10
    assert [i.example_id for i in items] == [x for x in ids if x in {i.example_id for i in items}]  # test order
    # Seeded: the same draw and the same A/B sides again; another seed draws differently.
    again = select_review_sample(_examples(), "rougeL", config, seed=0)
    assert [(i.example_id, i.candidate_side) for i in again] == [(i.example_id, i.candidate_side) for i in items]
    other = select_review_sample(_examples(), "rougeL", config, seed=1)
    assert [(i.example_id, i.candidate_side) for i in other] != [(i.example_id, i.candidate_side) for i in items]
    assert {i.candidate_side for i in items} == {"A", "B"}
    # The judge's per-example outcome is kept as candidate/base/tie (hidden from the reviewer).
    assert {i.judge_verdict for i in items} <= {"candidate", "base", "tie"}
    assert select_review_sample(_examples(judge=False), "rougeL", config, seed=0)[0].judge_verdict is None
    assert select_review_sample(_examples(), "rougeL", ReviewConfig(0, 0), seed=0) == []
    with pytest.raises(ValueError, match="review_sample_size must be 0 or more"):
        ReviewConfig(review_sample_size=-1)
    with pytest.raises(ValueError, match="judge_min_kappa must be within"):
        ReviewConfig(judge_min_kappa=1.5)


def test_the_sample_files_are_blinded_and_spreadsheet_safe(tmp_path):
    items = select_review_sample(_examples(), "rougeL", ReviewConfig(review_sample_size=20), seed=0)  # all 13
    paths = write_review_sample(items, "ev1", tmp_path)
    with paths["review_sample"].open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == REVIEW_COLUMNS and len(rows) == len(items)
    jsonl = [json.loads(line) for line in paths["review_sample_jsonl"].read_text().splitlines()]
    for row, item, raw in zip(rows, items, jsonl):
        assert row["eval_id"] == "ev1" and row["example_id"] == item.example_id
        assert row["preferred"] == row["note"] == ""
        # The candidate's answer is on its side, the words "candidate"/"base" only as the fake answers.
        expected = ("candidate", "base") if item.candidate_side == "A" else ("base", "candidate")
        assert (row["answer_a"].split()[0], row["answer_b"].split()[0]) == expected
        assert "judge" not in " ".join(row)  # no judge column: the reviewer is not anchored on it
        assert raw["prompt"] == item.prompt
    formula = next(r for r in rows if r["example_id"] == "c0")
    assert formula["prompt"] == "'=SUM(A1:A9) please"  # a spreadsheet shows it, never runs it


# ---------------------------------------------------------------------------------------------
# The registry and the import
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry(request, tmp_path):
    """A fresh registry: a SQLite file, or a new database on a real PostgreSQL server."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    if request.param == "postgres":
        from ft_pipeline_tests.postgres_server import sqlalchemy_url

        url = sqlalchemy_url(request.getfixturevalue("postgres_database_url"))
    with ModelRegistry(url) as reg:
        yield reg


def _sample(registry, eval_id="ev1", sides="AB", judge=("candidate", "base", "tie", "candidate")):
    register_evaluated_version(
        registry, "bot", model_uri=f"ft:{eval_id}", backend="openai", base_model="b", eval_id=eval_id, run_key=eval_id
    )
    items = [
        {
            "example_id": f"x{i}",
            "tag": "t",
            "candidate_side": sides[i % len(sides)],
            "judge_verdict": verdict,
            "judge_model": "judge-1",
            "selected_by": "tag",
        }
        for i, verdict in enumerate(judge)
    ]
    assert registry.record_review_sample(eval_id, items) == len(items)
    assert registry.record_review_sample(eval_id, items) == 0  # idempotent


def _csv(path, rows):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(REVIEW_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in REVIEW_COLUMNS})
    return path


def test_import_validates_every_row_and_maps_a_b_back(registry, tmp_path):
    _sample(registry)  # x0: candidate is A, x1: candidate is B, x2: A, x3: B
    rows = [
        {"eval_id": "ev1", "example_id": "x0", "prompt": "two\nlines", "preferred": "A", "note": "clearer"},  # line 2-3
        {"eval_id": "ev1", "example_id": "x1", "preferred": "a"},  # line 4: A is the base here
        {"eval_id": "ev1", "example_id": "x2", "preferred": " TIE "},  # line 5
        {"eval_id": "ev1", "example_id": "x3", "preferred": ""},  # line 6: not reviewed
        {"eval_id": "ev1", "example_id": "x9", "preferred": "A"},  # line 7: not in the sample
        {"eval_id": "nope", "example_id": "x0", "preferred": "B"},  # line 8: unknown evaluation
        {"eval_id": "ev1", "example_id": "x3", "preferred": "maybe"},  # line 9: bad value, also a duplicate
    ]
    result = import_review_file(registry, _csv(tmp_path / "filled.csv", rows), reviewer="alice")
    assert (result.rows, result.imported, result.skipped_blank, len(result.rejected)) == (7, 3, 0, 4)
    assert result.rows == result.imported + result.skipped_blank + len(result.rejected)
    assert result.rejected == [
        "line 6: example x3 of evaluation ev1 is also on line 9 (one verdict per example in a file; "
        "none of them is imported)",
        "line 7: example_id x9 is not in the review sample of evaluation ev1",
        "line 8: unknown eval_id nope (the registry has no review sample for it)",
        "line 9: example x3 of evaluation ev1 is also on line 6 (one verdict per example in a file; "
        "none of them is imported)",
    ]
    stored = {v["example_id"]: (v["preferred"], v["note"]) for v in registry.review_verdicts(eval_id="ev1")}
    assert stored == {"x0": ("candidate", "clearer"), "x1": ("base", None), "x2": ("tie", None)}

    # Re-import (a corrected file, JSON lines this time): the latest verdict per reviewer wins.
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"eval_id": "ev1", "example_id": "x0", "preferred": "A", "note": "clearer"},
                {"eval_id": "ev1", "example_id": "x1", "preferred": "B"},
                {"eval_id": "ev1", "example_id": "x3", "preferred": ""},
            ]
        )
        + "\nnot json\n"
    )
    again = import_review_file(registry, fixed, reviewer="alice")
    assert (again.imported, again.unchanged, again.updated, again.skipped_blank) == (2, 1, 1, 1)
    assert again.rejected == ["line 4: not JSON (Expecting value)"]
    assert len(registry.review_verdicts(eval_id="ev1")) == 3
    assert {v["example_id"]: v["preferred"] for v in registry.review_verdicts(eval_id="ev1")}["x1"] == "candidate"
    # Another reviewer's verdicts are kept beside alice's.
    import_review_file(registry, fixed, reviewer="bob")
    assert len(registry.review_verdicts(eval_id="ev1")) == 5

    with pytest.raises(ReviewFileError, match="missing column"):
        bad = tmp_path / "bad.csv"
        bad.write_text("eval_id,example_id\nev1,x0\n")
        import_review_file(registry, bad, reviewer="alice")
    with pytest.raises(NotFound):
        registry.record_review_sample("unknown", [])


def test_an_existing_registry_gets_the_review_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with ModelRegistry(url) as reg:
        with reg._tx(write=True) as conn:  # a registry from before the review tables
            conn.execute(text("DROP TABLE review_verdicts"))
            conn.execute(text("DROP TABLE review_items"))
    with ModelRegistry(url) as reg:
        assert reg.review_sample("anything") == [] and reg.review_verdicts() == []


def test_review_commands(registry, tmp_path, capsys):
    _sample(registry)
    url = registry.url
    filled = _csv(
        tmp_path / "filled.csv",
        [
            {"eval_id": "ev1", "example_id": "x0", "preferred": "A"},
            {"eval_id": "ev1", "example_id": "x1", "preferred": "B"},
            {"eval_id": "ev1", "example_id": "x2", "preferred": "tie"},
            {"eval_id": "ev1", "example_id": "x3", "preferred": "B"},
        ],
    )
    assert main(["review", "import", str(filled), "--reviewer", "carol", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "imported 4 verdicts by carol (new 4" in out and "rejected 0" in out
    assert main(["review", "--url", url, "show", "ev1"]) == 0
    out = capsys.readouterr().out
    assert "review sample of 4 examples (4 judged by judge-1), 4 human verdicts" in out
    assert "REVIEWER  CANDIDATE  BASE  TIE" in out and "carol     3          0     1" in out
    assert "Cohen's kappa" in out
    bad = _csv(tmp_path / "bad.csv", [{"eval_id": "ev1", "example_id": "x0", "preferred": "yes"}])
    assert main(["review", "import", str(bad), "--url", url]) == 1
    assert "rejected: line 2: preferred 'yes' is not A, B or tie" in capsys.readouterr().err
    assert main(["review", "show", "nope", "--url", url]) == 1
    assert main(["review", "import", str(tmp_path / "missing.csv"), "--url", url]) == 2


# ---------------------------------------------------------------------------------------------
# When the judge may gate
# ---------------------------------------------------------------------------------------------


def _verdicts(pairs):
    return [
        {"eval_id": "e", "example_id": f"x{i}", "reviewer": "r", "judge_verdict": j, "preferred": h}
        for i, (j, h) in enumerate(pairs)
    ]


def test_the_judge_gates_only_with_enough_agreeing_human_labels():
    config = ReviewConfig(judge_min_kappa=0.4, judge_min_human_labels=30)
    agree = [("candidate", "candidate"), ("base", "base"), ("tie", "tie")] * 12
    good = judge_agreement(_verdicts(agree), config, judge_model="j", n_resamples=300)
    assert good["passed"] and good["n"] == 36 and good["kappa"] == 1.0
    rule = agreement_rule(good)
    assert rule.passed and rule.rule == "judge_agreement" and "lower bound ≥ judge_min_kappa 0.4" in rule.detail

    few = judge_agreement(_verdicts(agree[:10]), config, judge_model="j", n_resamples=300)
    assert not few["passed"] and "10 human verdict(s)" in few["reason"] and "fewer than" in few["reason"]
    # Enough labels, but the judge agrees with people no better than chance: the judge may not gate.
    noise = [("candidate", "base"), ("base", "candidate"), ("tie", "tie"), ("candidate", "candidate")] * 10
    low = judge_agreement(_verdicts(noise), config, judge_model="j", n_resamples=300)
    assert not low["passed"] and "lower bound <" in low["reason"] and low["ci_low"] < 0.4
    # Rows the judge did not judge do not count; no judge at all fails the rule with the reason.
    unjudged = judge_agreement(_verdicts([(None, "tie")] * 40), config, judge_model="j")
    assert unjudged["n"] == 0 and not unjudged["passed"]
    assert not agreement_rule(None).passed
