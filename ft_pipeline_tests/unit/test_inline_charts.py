"""What the UI shows inline for the model stages: the small SVG charts (valid, deterministic, and
small enough as Markdown for the UI to render without a click) and the example rows of
evaluation_report (scrubbed, shortened)."""

import math
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from ft_pipeline.defs.metadata import INLINE_MARKDOWN_LIMIT, svg_markdown
from ft_pipeline.lib.evaluation.report import example_rows
from ft_pipeline.lib.inline_charts import MAX_SVG_BYTES, loss_sparkline_svg, metric_means_svg, series

SVG = "{http://www.w3.org/2000/svg}"
# The longest title the defs pass (the limit's arithmetic allows 40 characters).
TITLE = "train and validation loss"


def _history(steps: int, eval_every: int) -> list[dict]:
    """A noisy decreasing loss, logged every step, with an evaluation every ``eval_every`` steps."""
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "loss": 2.5 * math.exp(-step / (steps / 4)) + 0.3 + 0.2 * math.sin(step * 12.9898)}
        if step % eval_every == 0:
            row["eval_loss"] = 2.0 * math.exp(-step / (steps / 3)) + 0.45
        rows.append(row)
    return rows


def _markdown_length(svg: str, title: str = TITLE) -> int:
    return len(svg_markdown(svg, title).value)


def _paths(svg: str) -> list[ET.Element]:
    return ET.fromstring(svg).findall(f".//{SVG}path")


@pytest.mark.parametrize("steps, eval_every", [(1, 1), (6, 3), (120, 10), (5_000, 250), (100_000, 1_000)])
def test_loss_sparkline_is_valid_svg_and_inline_sized_for_any_history(steps, eval_every):
    history = _history(steps, eval_every)
    svg = loss_sparkline_svg(series(history, "loss"), series(history, "eval_loss"))
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg"
    assert len(svg.encode("utf-8")) <= MAX_SVG_BYTES
    assert _markdown_length(svg) < INLINE_MARKDOWN_LIMIT
    strokes = {p.get("stroke") for p in _paths(svg)}
    assert len(strokes) == 2  # a train line and a validation line
    text = "".join(root.itertext())
    assert f"train {series(history, 'loss')[0][1]:.3g}→{series(history, 'loss')[-1][1]:.3g}" in text
    assert f"step {steps}" in text


def test_long_history_is_downsampled_keeping_first_and_last_point():
    history = _history(5_000, 250)
    svg = loss_sparkline_svg(series(history, "loss"), series(history, "eval_loss"))
    train_path = _paths(svg)[0].get("d")
    # One absolute start plus far fewer relative moves than the 5,000 logged steps.
    moves = train_path.split("l", 1)[1].replace("-", " -").split()
    assert 2 <= len(moves) // 2 <= 40
    # The path starts at the first step (left edge) and ends at the last (right edge).
    x = int(train_path[1:].split()[0]) + sum(int(v) for v in moves[0::2])
    assert train_path.startswith("M2 ") and x == 218


def test_charts_are_deterministic():
    history = _history(300, 30)
    train, validation = series(history, "loss"), series(history, "eval_loss")
    assert loss_sparkline_svg(train, validation) == loss_sparkline_svg(list(train), list(validation))
    means = {"candidate": 0.41, "base": 0.21}
    ci = {"delta": 0.2, "ci_low": 0.15, "ci_high": 0.25}
    assert metric_means_svg("rougeL", means, ci) == metric_means_svg("rougeL", dict(means), dict(ci))


def test_a_single_validation_point_is_drawn_as_a_dot_and_nan_losses_are_skipped():
    svg = loss_sparkline_svg([(1, 2.0), (2, float("nan")), (3, 1.0)], [(3, 1.5)])
    validation = _paths(svg)[1]
    assert validation.get("d").endswith("h0") and validation.get("stroke-linecap") == "round"
    assert "nan" not in svg
    with pytest.raises(ValueError, match="no finite loss"):
        loss_sparkline_svg([(1, float("inf"))], [])


def test_series_takes_finite_numbers_in_step_order():
    records = [{"step": 3, "loss": 1.0}, {"step": 1, "loss": 2.0}, {"step": 2}, {"step": 4, "loss": ""}]
    assert series(records, "loss") == [(1.0, 2.0), (3.0, 1.0)]


def test_metric_means_chart_labels_every_model_and_the_confidence_intervals():
    means = {"base": 0.2101, "production": 0.3999, "candidate": 0.41234}
    versus_base = {"delta": 0.2022, "ci_low": 0.151, "ci_high": 0.2533}
    versus_production = {"delta": 0.0124, "ci_low": -0.0312, "ci_high": 0.0547}
    svg = metric_means_svg("json_schema_compliance", means, versus_base, versus_production)
    root = ET.fromstring(svg)
    assert len(svg.encode("utf-8")) <= MAX_SVG_BYTES
    assert _markdown_length(svg, "primary metric by model") < INLINE_MARKDOWN_LIMIT
    texts = [t.text for t in root.iter(f"{SVG}text")]
    # The candidate first, then base, then production.
    assert texts[1:4] == ["candidate 0.412", "base 0.210", "production 0.400"]
    assert "Δ vs base +0.202, CI [+0.151, +0.253]" in texts
    assert "Δ vs prod +0.012, CI [-0.031, +0.055]" in texts
    # The whisker spans base + CI bounds, and sits right of the dashed base line (a real gain).
    paths = _paths(svg)
    base_line = next(p for p in paths if p.get("stroke-dasharray"))
    whisker = next(p for p in paths if p.get("stroke") == "#000")
    base_x = int(base_line.get("d")[1:].split()[0])
    low_x = int(whisker.get("d")[1:].split()[0])
    assert low_x > base_x


def test_metric_means_chart_handles_negative_means_and_no_baseline_interval():
    svg = metric_means_svg("length_delta", {"candidate": -0.5, "base": 0.25})
    ET.fromstring(svg)
    assert "Δ vs" not in svg and 'stroke="#000"' not in svg
    with pytest.raises(ValueError, match="candidate"):
        metric_means_svg("rougeL", {"base": 0.2})


def _examples(prompts: list[str], answers: dict[str, list[str]], scores: dict[str, list[float]]) -> pd.DataFrame:
    frames = []
    for role, texts in answers.items():
        frames.append(
            pd.DataFrame(
                {
                    "model": role,
                    "conversation_id": [f"c{i}" for i in range(len(prompts))],
                    "prompt": prompts,
                    "reference": [f"reference {i}" for i in range(len(prompts))],
                    "prediction": texts,
                    "rougeL": scores[role],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_example_rows_are_scrubbed_then_shortened_with_per_example_scores():
    long_answer = "Write to jane.doe@example.com " + "and then wait " * 40
    examples = _examples(
        ["How do I reset it?", "Call me at +1 415 555 0134", "How do I reset it?", "Thanks"],
        {"candidate": [long_answer, "ok", "again", "bye"], "base": ["no", "sure", "hm", "bye"]},
        {"candidate": [0.5, 0.25, 0.1, float("nan")], "base": [0.0, 0.125, 0.2, 1.0]},
    )
    rows = example_rows(examples, 10, "rougeL", max_chars=60)
    # The first distinct prompts in order (the repeated one once).
    assert [r["prompt"] for r in rows] == ["How do I reset it?", "Call me at <PHONE>", "Thanks"]
    assert set(rows[0]) == {"prompt", "reference", "candidate", "base", "candidate_rougeL", "base_rougeL"}
    assert rows[0]["candidate"].startswith("Write to <EMAIL> and then wait")
    assert len(rows[0]["candidate"]) == 60 and rows[0]["candidate"].endswith("…")
    assert (rows[0]["candidate_rougeL"], rows[0]["base_rougeL"]) == (0.5, 0.0)
    assert rows[2]["candidate_rougeL"] is None  # NaN is no number to show
    assert len(example_rows(examples, 2, "rougeL")) == 2
    assert example_rows(examples, 0, "rougeL") == []


def test_extreme_values_drop_captions_instead_of_growing_past_the_limit():
    extreme = {"delta": -123.456, "ci_low": -999.999, "ci_high": -100.123}
    means = {"candidate": -999.123, "base": -888.888, "production": -777.777}
    svg = metric_means_svg("x" * 40, means, extreme, extreme)
    assert len(svg.encode("utf-8")) <= MAX_SVG_BYTES
    ET.fromstring(svg)
    # The bars and their values stay; a caption the page shows as numbers anyway gave way.
    assert "candidate -999.123" in svg and "production -777.777" in svg
    assert "Δ vs prod" not in svg
