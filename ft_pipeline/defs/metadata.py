"""Helpers that turn lib results into Dagster metadata values."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from ft_pipeline.lib.pii import DEFAULT_PII_CONFIG, PiiConfig, scrub_pii


def counts_table(counts: Mapping[str, int], descriptions: Mapping[str, str] | None = None) -> dg.MetadataValue:
    """A Markdown table of reason -> count (with its description when known)."""
    if not counts:
        return dg.MetadataValue.md("_none_")
    rows = ["| reason | count | meaning |", "|---|---:|---|"]
    for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append(f"| `{reason}` | {count} | {(descriptions or {}).get(reason, '')} |")
    return dg.MetadataValue.md("\n".join(rows))


def sample_rows(
    frame: pd.DataFrame, n: int = 3, max_chars: int = 160, pii: PiiConfig = DEFAULT_PII_CONFIG
) -> dg.MetadataValue:
    """A few rows as Markdown, message contents shortened, for a quick look in the UI.

    Every sample the UI shows comes from here, and every piece of text in it goes through the PII
    scrubber first (then is shortened, so a cut can never leave half a card number unscrubbed):
    metadata lands in the event log database, which deleting a partition does not reach, so raw
    logs' personal data must never get there. ``pii`` is the pipeline's policy (custom patterns
    and person names included) where the frame holds raw text.
    """
    if frame is None or not len(frame):
        return dg.MetadataValue.md("_no rows_")
    lines = []
    for row in frame.head(n).to_dict("records"):
        lines.append(
            f"**{_scrubbed(row.get('conversation_id'), pii)}**"
            + (f" — {row['filter_reason']}" if row.get("filter_reason") else "")
        )
        messages = row.get("messages")
        for m in list(messages if messages is not None else [])[:4]:
            content = _scrubbed(m["content"], pii).replace("\n", " ")
            if len(content) > max_chars:
                content = content[: max_chars - 1] + "…"
            lines.append(f"- *{m['role']}*: {content}")
        lines.append("")
    return dg.MetadataValue.md("\n".join(lines))


def _scrubbed(value: Any, pii: PiiConfig) -> str:
    return scrub_pii(str(value), pii)[0]


def json_value(value: Any) -> dg.MetadataValue:
    return dg.MetadataValue.json(value)


def png_markdown(path: str | Path, title: str) -> dg.MetadataValue:
    """A PNG chart as Markdown: the UI renders it inline, and a data URI needs no file server."""
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")
