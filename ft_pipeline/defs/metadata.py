"""Helpers that turn lib results into Dagster metadata values.

What the UI shows without a click (Dagster 1.13, the asset's Overview page and each event's
detail): numbers and text inline; tables (``MetadataValue.table``) inline at any size; Markdown and
JSON inline only when under 1,000 characters, otherwise behind "[Show Markdown]"/"[Show JSON]". So
headline figures are plain ints and floats (which Dagster also plots across materializations),
lists of things are tables, and charts are SVG images small enough to stay inline."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq

from ft_pipeline.lib.column_docs import COLUMN_DESCRIPTIONS
from ft_pipeline.lib.curation import PiiScan
from ft_pipeline.lib.pii import DEFAULT_PII_CONFIG, PERSON, PII_TYPES, PiiConfig, scrub_pii
from ft_pipeline.lib.storage import portable_path

#: Owners of every asset (Dagster shows them in the catalog and on each asset's page).
ASSET_OWNERS = ["team:ml-platform"]
#: Tags of assets that store conversation text (all of it PII scrubbed before it is written).
CONVERSATION_DATA_TAGS = {"domain": "conversations", "pii": "scrubbed"}
#: Tags of the model, its evaluation and its promotion.
MODEL_TAGS = {"domain": "model"}

#: The UI renders a Markdown value inline only below this many characters.
INLINE_MARKDOWN_LIMIT = 1000


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[dg.TableColumn]) -> dg.MetadataValue:
    """Rows as a table the UI shows inline. Values are kept as str, int, float, bool or None."""
    names = [c.name for c in columns]
    records = [dg.TableRecord({n: _cell(row.get(n)) for n in names}) for row in rows]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=list(columns)))


def _cell(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def counts_table(counts: Mapping[str, int], descriptions: Mapping[str, str] | None = None) -> dg.MetadataValue:
    """Reason -> count (with its description when known), largest first."""
    rows = [
        {"reason": reason, "count": int(count), "meaning": (descriptions or {}).get(reason, "")}
        for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return table(
        rows,
        [
            dg.TableColumn("reason", "string"),
            dg.TableColumn("count", "int"),
            dg.TableColumn("meaning", "string"),
        ],
    )


def key_value_table(values: Mapping[str, Any], key: str = "name", value: str = "value") -> dg.MetadataValue:
    """A flat mapping as a two-column table (instead of a JSON dump)."""
    return table(
        [{key: k, value: v} for k, v in values.items()],
        [dg.TableColumn(key, "string"), dg.TableColumn(value, "string")],
    )


def sample_rows(
    frame: pd.DataFrame | None, n: int = 3, max_chars: int = 160, pii: PiiConfig = DEFAULT_PII_CONFIG
) -> dg.MetadataValue:
    """The first ``n`` conversations as a table (one row per turn, up to four turns each, contents
    shortened), for a quick look in the UI.

    Every sample the UI shows comes from here or :func:`quarantine_sample`, and every piece of text
    in it goes through the PII scrubber first (then is shortened, so a cut can never leave half a
    card number unscrubbed): metadata lands in the event log database, which deleting a partition
    does not reach, so raw logs' personal data must never get there. ``pii`` is the pipeline's
    policy (custom patterns and person names included) where the frame holds raw text.
    """
    rows: list[dict[str, Any]] = []
    with_reason = frame is not None and "filter_reason" in frame.columns
    for record in [] if frame is None else frame.head(n).to_dict("records"):
        messages = record.get("messages")
        for turn, m in enumerate(list(messages if messages is not None else [])[:4]):
            rows.append(
                {
                    "conversation_id": _scrubbed(record.get("conversation_id"), pii),
                    "turn": turn,
                    "role": str(m["role"]),
                    "content": _shortened(_scrubbed(m["content"], pii), max_chars),
                    "filter_reason": record.get("filter_reason") or "",
                }
            )
    columns = [
        dg.TableColumn("conversation_id", "string"),
        dg.TableColumn("turn", "int"),
        dg.TableColumn("role", "string"),
        dg.TableColumn("content", "string", description="PII scrubbed, shortened"),
    ]
    if with_reason:
        columns.append(dg.TableColumn("filter_reason", "string"))
    return table(rows, columns)


def quarantine_sample(
    frame: pd.DataFrame | None, n: int = 5, max_chars: int = 160, pii: PiiConfig = DEFAULT_PII_CONFIG
) -> dg.MetadataValue:
    """The first ``n`` quarantined records: where, why, and the record itself, PII scrubbed and
    shortened (see :func:`sample_rows` for why scrubbing comes first)."""
    rows = [
        {
            "source_line": record.get("source_line"),
            "reason": str(record.get("reason", "")),
            "detail": _shortened(_scrubbed(record.get("detail", ""), pii), max_chars),
            "raw_text": _shortened(_scrubbed(record.get("raw_text", ""), pii), max_chars),
        }
        for record in ([] if frame is None else frame.head(n).to_dict("records"))
    ]
    return table(
        rows,
        [
            dg.TableColumn("source_line", "int"),
            dg.TableColumn("reason", "string"),
            dg.TableColumn("detail", "string"),
            dg.TableColumn("raw_text", "string", description="PII scrubbed, shortened"),
        ],
    )


def _scrubbed(value: Any, pii: PiiConfig) -> str:
    return scrub_pii("" if value is None else str(value), pii)[0]


def _shortened(text: str, max_chars: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def column_schema(parquet_path: str | Path) -> dg.TableSchema:
    """The columns of a Parquet file as Dagster's ``dagster/column_schema`` (Arrow types, and what
    each column holds)."""
    schema = pq.read_schema(parquet_path)
    return dg.TableSchema(
        columns=[
            dg.TableColumn(field.name, str(field.type), description=COLUMN_DESCRIPTIONS.get(field.name))
            for field in schema
        ]
    )


def data_path(path: str | Path, data_dir: Path) -> dg.MetadataValue:
    """A file or folder of the data directory, shown relative to it (``curated/<version>/…``).
    The metadata pane is narrow, and one long absolute path (it cannot wrap) widens the whole
    value column, pushing the right side of every table out of view."""
    return dg.MetadataValue.path(portable_path(path, data_dir))


def within_data_dir(text: str, data_dir: Path) -> str:
    """``text`` (a model id or URI that names a path) with the data directory's prefix removed,
    for the same reason as :func:`data_path`."""
    return text.replace(f"{Path(data_dir).resolve().as_posix()}/", "")


def svg_markdown(svg: str, title: str) -> dg.MetadataValue:
    """An SVG chart as a Markdown image with a data URI: no file server needed, and when the whole
    value stays under :data:`INLINE_MARKDOWN_LIMIT` characters the UI shows the chart inline."""
    encoded = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return dg.MetadataValue.md(f"![{title}](data:image/svg+xml;base64,{encoded})")


def png_markdown(path: str | Path, title: str) -> dg.MetadataValue:
    """A PNG chart as Markdown with a data URI (full size; too large for the UI to show inline,
    it opens with one click)."""
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")


def pii_check(scan: PiiScan, pii: PiiConfig) -> dg.AssetCheckResult:
    """``no_pii_left``: a fresh scan's matches per kind (every kind the policy detects, zeros
    included) and the first few places (ids and kinds only, never the matched text)."""
    kinds = [*PII_TYPES, *(p.name for p in pii.custom_patterns), *([PERSON] if pii.person_names_model else [])]
    return dg.AssetCheckResult(
        check_name="no_pii_left",
        passed=scan.total == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        description="no PII found by a fresh scan"
        if scan.total == 0
        else f"{scan.total} PII matches left: {scan.found}",
        metadata={
            "pii_left": counts_table({t: scan.found.get(t, 0) for t in kinds}),
            "examples": table(
                scan.examples, [dg.TableColumn("conversation_id", "string"), dg.TableColumn("type", "string")]
            ),
        },
    )


def counts_check(
    passed: bool, figures: str, *, accounted: str, lost: str, numbers: Mapping[str, int]
) -> dg.AssetCheckResult:
    """``counts_add_up``: what came in and where it went, in one line (``figures``), then
    ``accounted`` or ``lost``; the numbers as metadata."""
    return dg.AssetCheckResult(
        check_name="counts_add_up",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{figures}: {accounted if passed else lost}",
        metadata=dict(numbers),
    )
