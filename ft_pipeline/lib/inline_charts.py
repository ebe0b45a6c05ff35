"""Tiny SVG charts for the Dagster UI: small enough to be shown inline, without a click.

The UI renders a Markdown metadata value inline only when it is under 1,000 characters, and a chart
travels as a base64 data-URI image (base64 makes it a third longer). So every chart here is kept
under :data:`MAX_SVG_BYTES` bytes: integer coordinates, relative path commands, no styling beyond
a few attributes, and long series downsampled. The full-size charts (PNG) are written beside the
artifacts as before; these are the at-a-glance versions.

Pure functions of their input (same numbers, same bytes), with no plotting library.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["MAX_SVG_BYTES", "Point", "loss_sparkline_svg", "metric_means_svg", "series"]

#: Largest SVG (UTF-8 bytes) these functions return: base64 makes 4 characters of every 3 bytes,
#: so a Markdown image of it (``![title](data:image/svg+xml;base64,…)``, 31 characters besides
#: the data and a title of up to 40) stays under the UI's 1,000-character inline limit.
MAX_SVG_BYTES = 696

_BLUE, _ORANGE, _GREY = "#4c78a8", "#f58518", "#9aa5b1"
_HEAD = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{sw}" height="{sh}" font-family="sans-serif"'
    ' font-size="10">'
)
#: Drawn in small integer coordinates (short to write), shown this many times larger (readable).
_SCALE = 1.6


def _head(width: int, height: int) -> str:
    return _HEAD.format(w=width, h=height, sw=round(width * _SCALE), sh=round(height * _SCALE))


Point = tuple[float, float]


def series(records: Iterable[Mapping[str, Any]], y: str, x: str = "step") -> list[Point]:
    """``(x, y)`` of the records that hold a finite number under both keys, in order of ``x``
    (e.g. a trainer's loss history: ``series(history, "loss")``)."""
    points = []
    for record in records:
        xv: Any = record.get(x)
        yv: Any = record.get(y)
        if _finite(xv) and _finite(yv):
            points.append((float(xv), float(yv)))
    return sorted(points, key=lambda p: p[0])


def loss_sparkline_svg(train: Sequence[Point], validation: Sequence[Point] = (), max_points: int = 40) -> str:
    """Training loss (blue line) and validation loss (orange, thicker; a dot when there is one
    evaluation) against step, on one shared scale, with the first and last value of each and the
    last step as text.

    Long histories are downsampled (evenly spaced points, the first and last always kept) until
    the SVG fits :data:`MAX_SVG_BYTES`.

    Raises:
        ValueError: neither series has a finite point.
    """
    train = [p for p in train if _finite(p[0]) and _finite(p[1])]
    validation = [p for p in validation if _finite(p[0]) and _finite(p[1])]
    if not train and not validation:
        raise ValueError("no finite loss to draw")
    limit = max(2, max_points)
    while True:
        svg = _sparkline(_downsample(train, limit), _downsample(validation, max(2, limit // 3)), train, validation)
        if len(svg.encode("utf-8")) <= MAX_SVG_BYTES or limit == 2:
            return _checked(svg)
        limit = max(2, limit * 2 // 3)


def _sparkline(train: list[Point], validation: list[Point], full_train: list[Point], full_val: list[Point]) -> str:
    width, left, right, top, bottom = 220, 2, 218, 4, 50
    everything = train + validation
    x_lo, x_hi = min(p[0] for p in everything), max(p[0] for p in everything)
    y_lo, y_hi = min(p[1] for p in everything), max(p[1] for p in everything)

    def xy(point: Point) -> tuple[int, int]:
        x = left + (point[0] - x_lo) / (x_hi - x_lo) * (right - left) if x_hi > x_lo else (left + right) / 2
        y = bottom - (point[1] - y_lo) / (y_hi - y_lo) * (bottom - top) if y_hi > y_lo else (top + bottom) / 2
        return round(x), round(y)

    parts = [_head(width, 66)]
    if train:
        parts.append(f'<path d="{_path(xy(p) for p in train)}" fill="none" stroke="{_BLUE}"/>')
    if validation:
        parts.append(
            f'<path d="{_path(xy(p) for p in validation)}" fill="none" stroke="{_ORANGE}" stroke-width="2" '
            'stroke-linecap="round"/>'
        )
    label = []
    if full_train:
        label.append(f'<tspan fill="{_BLUE}">train {_num(full_train[0][1])}→{_num(full_train[-1][1])}</tspan>')
    if full_val:
        label.append(f'<tspan fill="{_ORANGE}">val {_num(full_val[0][1])}→{_num(full_val[-1][1])}</tspan>')
    label.append(f"step {x_hi:.0f}")
    parts.append(f'<text x="2" y="63">{" ".join(label)}</text></svg>')
    return "".join(parts)


def metric_means_svg(
    metric: str,
    means: Mapping[str, float],
    delta_vs_base: Mapping[str, float] | None = None,
    delta_vs_production: Mapping[str, float] | None = None,
) -> str:
    """``metric``'s mean per model as horizontal bars (candidate first, in blue), with the
    candidate − base 95% confidence interval drawn on the candidate's bar (the interval of the
    difference, placed at the base's mean plus its bounds: where it sits entirely right of the
    dashed base line, the candidate is better). ``delta_vs_*``: ``{"delta", "ci_low", "ci_high"}``
    as in an evaluation's comparisons; the deltas and intervals are also written out.
    """
    roles = [role for role, value in means.items() if _finite(value)]
    if "candidate" not in roles:
        raise ValueError("metric_means_svg needs the candidate's mean")
    roles.sort(key=lambda role: (role != "candidate", role != "base"))
    base = float(means["base"]) if "base" in roles else None
    whisker = None
    if (
        delta_vs_base
        and base is not None
        and _finite(delta_vs_base.get("ci_low"))
        and _finite(delta_vs_base["ci_high"])
    ):
        whisker = (base + float(delta_vs_base["ci_low"]), base + float(delta_vs_base["ci_high"]))
    values = [float(means[r]) for r in roles] + list(whisker or ()) + [0.0]
    v_lo, v_hi = min(values), max(values)
    left, right = 96, 254

    def x(value: float) -> int:
        return round(left + (value - v_lo) / (v_hi - v_lo) * (right - left)) if v_hi > v_lo else left

    captions = [
        f"{name} {_fixed(d['delta'], '+')}, CI [{_fixed(d['ci_low'], '+')}, {_fixed(d['ci_high'], '+')}]"
        for name, d in (("Δ vs base", delta_vs_base), ("Δ vs prod", delta_vs_production))
        if d and all(_finite(d.get(k)) for k in ("delta", "ci_low", "ci_high"))
    ]
    # Captions repeat numbers the page shows anyway: with extreme values, the last ones are left
    # out rather than the chart growing past the inline limit.
    while True:
        svg = _means_chart(metric, roles, means, base, whisker, captions, x)
        if len(svg.encode("utf-8")) <= MAX_SVG_BYTES or not captions:
            return _checked(svg)
        captions = captions[:-1]


def _means_chart(
    metric: str,
    roles: list[str],
    means: Mapping[str, float],
    base: float | None,
    whisker: tuple[float, float] | None,
    captions: list[str],
    x: Callable[[float], int],
) -> str:
    row = 15
    height = 14 + row * len(roles) + 12 * len(captions)
    parts = [_head(260, height), f'<text x="2" y="10">{escape(metric[:30])}, mean per model</text>']
    bars: dict[str, list[str]] = {_BLUE: [], _GREY: []}
    for i, role in enumerate(roles):
        top, value = 14 + row * i, float(means[role])
        parts.append(f'<text x="2" y="{top + 9}">{escape(role)} {_fixed(value)}</text>')
        # A bar is a horizontal stroke 11 px wide: one path per colour is shorter than rectangles.
        bars[_BLUE if role == "candidate" else _GREY].append(f"M{x(0.0)} {top + 6}h{x(value) - x(0.0)}")
    parts.append('<g stroke-width="11">')
    parts += [f'<path d="{"".join(d)}" stroke="{colour}"/>' for colour, d in bars.items() if d]
    parts.append("</g>")
    if base is not None:
        parts.append(f'<path d="M{x(base)} 12V{14 + row * len(roles)}" stroke="#333" stroke-dasharray="2"/>')
    if whisker is not None:
        lo, hi, mid = x(whisker[0]), x(whisker[1]), 14 + 6
        parts.append(f'<path d="M{lo} {mid}H{hi}M{lo} {mid - 4}v8M{hi} {mid - 4}v8" stroke="#000"/>')
    for k, caption in enumerate(captions):
        parts.append(f'<text x="2" y="{14 + row * len(roles) + 10 + 12 * k}">{caption}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _downsample(points: list[Point], n: int) -> list[Point]:
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def _path(points: Iterable[tuple[int, int]]) -> str:
    """Absolute first point, then relative moves (shorter than a list of coordinates); a single
    point becomes a zero-length segment, which a round line cap draws as a dot."""
    coordinates = list(points)
    (x0, y0), rest = coordinates[0], coordinates[1:]
    if not rest:
        return f"M{x0} {y0}h0"
    steps, (px, py) = [], (x0, y0)
    for cx, cy in rest:
        steps.append(f"{cx - px}" + (f"{cy - py}" if cy < py else f" {cy - py}"))
        px, py = cx, cy
    return f"M{x0} {y0}l" + " ".join(steps)


def _num(value: Any) -> str:
    """Three significant digits (losses)."""
    return f"{float(value):.3g}"


def _fixed(value: Any, sign: str = "") -> str:
    """Three decimals (scores, mostly in [0, 1]); three significant digits for large values."""
    return f"{float(value):{sign}.3f}" if abs(float(value)) < 1000 else f"{float(value):{sign}.3g}"


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _checked(svg: str) -> str:
    size = len(svg.encode("utf-8"))
    if size > MAX_SVG_BYTES:
        raise ValueError(f"inline chart of {size} bytes exceeds {MAX_SVG_BYTES}")
    return svg
