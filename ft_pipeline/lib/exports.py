"""Exports of the splits for other tools: Alpaca JSONL, a Hugging Face ``datasets`` folder and a
dataset card.

Written to ``splits/<version>/exports/``:

- ``alpaca/{train,validation,test}.jsonl``: one record per conversation (see
  :func:`alpaca_record` for the mapping rule), for Alpaca-style loaders such as LLaMA-Factory.
- ``hf/``: a ``datasets.DatasetDict`` of the three splits (every column of the split Parquet
  files), written with ``save_to_disk``; ``datasets.load_from_disk`` reads it back offline.
- ``README.md``: a dataset card with Hugging Face YAML front matter (``license``, ``pretty_name``,
  …), the counts per split, the source files, the cleaning and curation filters and the PII policy.

The exports are derived from the split files only: they belong to the same version as the splits
and never change their content.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

#: Why a conversation could not be written as an Alpaca record (reason code -> meaning).
ALPACA_SKIP_REASONS = {
    "no_final_reply": "the conversation does not end with a non-empty assistant reply",
    "no_user_turn": "no non-empty user turn before the final reply",
    "turns_after_last_user": "assistant turns between the last user turn and the final reply (they would be lost)",
}

#: The licence the card names when none is configured: Hugging Face's id for "a licence of its own"
#: (logged customer conversations are rarely open data; the team states its terms).
DEFAULT_LICENSE = "other"

SPLIT_ORDER = ("train", "validation", "test")

_ROLE_LABEL = {"user": "User", "assistant": "Assistant"}
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class AlpacaSkip(ValueError):
    """A conversation that cannot be an Alpaca record; ``reason`` is a key of ``ALPACA_SKIP_REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(ALPACA_SKIP_REASONS[reason])
        self.reason = reason


def alpaca_record(messages: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One conversation as an Alpaca record.

    The rule:

    - ``output``: the final message, which must be a non-empty assistant reply;
    - ``instruction``: the last non-empty user turn, which must come right before the final reply
      (assistant turns in between would be lost, so such a conversation is skipped);
    - ``input``: the turns before that user turn, rendered one per line as ``User: …`` /
      ``Assistant: …`` (``""`` for a single-turn conversation);
    - ``system``: the system messages joined by a blank line (``""`` when none), a field
      Alpaca-style loaders such as LLaMA-Factory map to the system prompt.

    Raises:
        AlpacaSkip: the conversation cannot be expressed this way (the reason is on the exception).
    """
    system = [str(m["content"]) for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "assistant" or not str(turns[-1]["content"]).strip():
        raise AlpacaSkip("no_final_reply")
    last_user = max((i for i, m in enumerate(turns[:-1]) if m["role"] == "user"), default=None)
    if last_user is None or not str(turns[last_user]["content"]).strip():
        raise AlpacaSkip("no_user_turn")
    if last_user != len(turns) - 2:
        raise AlpacaSkip("turns_after_last_user")
    history = "\n".join(f"{_ROLE_LABEL[m['role']]}: {m['content']}" for m in turns[:last_user])
    return {
        "instruction": str(turns[last_user]["content"]),
        "input": history,
        "output": str(turns[-1]["content"]),
        "system": "\n\n".join(system),
    }


@dataclass
class AlpacaExport:
    """One split written as Alpaca JSONL."""

    path: str
    records: int
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason code -> conversations not written (never silently lost)."""


def write_alpaca_jsonl(parquet: str | Path, path: str | Path, batch_rows: int = 20_000) -> AlpacaExport:
    """Write the conversations of a split Parquet file as Alpaca JSONL (atomically), counting the
    ones that cannot be expressed by reason."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    records = 0
    skipped: Counter[str] = Counter()
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as out:
            for batch in pq.ParquetFile(parquet).iter_batches(batch_size=batch_rows, columns=["messages"]):
                lines = []
                for messages in batch.column(0).to_pylist():
                    try:
                        lines.append(_ENCODER.encode(alpaca_record(messages or [])))
                    except AlpacaSkip as skip:
                        skipped[skip.reason] += 1
                if lines:
                    out.write("\n".join(lines) + "\n")
                    records += len(lines)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return AlpacaExport(str(target), records, dict(skipped))


def write_datasets_folder(split_parquets: Mapping[str, str | Path], folder: str | Path) -> Path:
    """The splits as a ``datasets.DatasetDict`` (every column of the Parquet files), saved with
    ``save_to_disk`` into ``folder`` (replaced whole); ``datasets.load_from_disk(folder)`` reads it."""
    import datasets  # heavy import, only when exporting

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset = datasets.DatasetDict(
        {name: datasets.Dataset(pq.read_table(path)) for name, path in split_parquets.items()}
    )
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one progress bar per split would fill the run's logs
    try:
        dataset.save_to_disk(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            datasets.enable_progress_bars()
    return folder


def source_counts(split_parquets: Mapping[str, str | Path]) -> dict[str, dict[str, int]]:
    """Source file (partition) -> split -> conversations, from the ``source_file`` column."""
    counts: dict[str, dict[str, int]] = {}
    for name, path in split_parquets.items():
        if "source_file" not in pq.ParquetFile(path).schema_arrow.names:
            continue
        column = pq.read_table(path, columns=["source_file"]).column(0).to_pylist()
        for source, n in Counter(str(s) for s in column).items():
            counts.setdefault(source, {})[name] = n
    return dict(sorted(counts.items()))


def removal_counts(removed_parquet: str | Path | None) -> dict[str, int]:
    """Reason -> conversations a stage removed, from its removed/filtered Parquet file's ``reason``
    (or ``filter_reason``) column; empty when there is no such file."""
    if not removed_parquet or not Path(removed_parquet).exists():
        return {}
    names = pq.ParquetFile(removed_parquet).schema_arrow.names
    column = "reason" if "reason" in names else "filter_reason" if "filter_reason" in names else None
    if column is None:
        return {}
    return dict(Counter(str(r) for r in pq.read_table(removed_parquet, columns=[column]).column(0).to_pylist()))


def _size_category(total: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if total < limit:
            return label
    return "1M<n<10M" if total < 10_000_000 else "n>10M"


def _yaml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def dataset_card(
    *,
    version: str,
    rows: Mapping[str, int],
    alpaca: Mapping[str, AlpacaExport],
    sources: Mapping[str, Mapping[str, int]],
    filters: Mapping[str, Mapping[str, int]],
    pii_policy: str,
    license: str = DEFAULT_LICENSE,
) -> str:
    """The dataset card (``README.md``) text: Hugging Face YAML front matter, then the counts per
    split, the source files, the filters with their counts (stage -> reason -> conversations) and
    the PII policy."""
    total = sum(rows.values())
    splits = [s for s in SPLIT_ORDER if s in rows]
    lines = [
        "---",
        f"license: {_yaml_string(license)}",
        f"pretty_name: {_yaml_string(f'ft-pipeline splits {version}')}",
        "task_categories:",
        "- text-generation",
        "tags:",
        "- conversational",
        "- ft-pipeline",
        "size_categories:",
        f"- {_size_category(total)}",
        "---",
        "",
        f"# ft-pipeline splits {version}",
        "",
        f"Conversations of split version `{version}`: grouped, hash-stable train/validation/test splits "
        "(one user's conversations, and conversations sharing a context or a long first turn, sit in one split).",
        "",
        f"- **Licence**: `{license}`",
        f"- **PII policy**: {pii_policy}",
        "",
        "## Counts",
        "",
        "| split | conversations | Alpaca records | not in Alpaca |",
        "|---|---:|---:|---:|",
    ]
    for name in splits:
        export = alpaca.get(name)
        skipped = sum(export.skipped.values()) if export else 0
        lines.append(f"| {name} | {rows[name]} | {export.records if export else 0} | {skipped} |")
    lines.append(
        f"| total | {total} | {sum(e.records for e in alpaca.values())} | "
        f"{sum(sum(e.skipped.values()) for e in alpaca.values())} |"
    )
    skipped_reasons = Counter[str]()
    for export in alpaca.values():
        skipped_reasons.update(export.skipped)
    if skipped_reasons:
        lines += ["", "Not in the Alpaca files (they are in `hf/` and the split files):", ""]
        lines += [f"- `{r}`: {n} ({ALPACA_SKIP_REASONS[r]})" for r, n in sorted(skipped_reasons.items())]
    lines += ["", "## Sources", ""]
    if sources:
        lines += ["| source file | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
        for source, per_split in sources.items():
            lines.append(f"| {source} | " + " | ".join(str(per_split.get(s, 0)) for s in splits) + " |")
    else:
        lines.append("The split files record no source file.")
    lines += ["", "## Filters", ""]
    lines.append(
        "Records were parsed and validated (bad records quarantined), cleaned (roles and turns normalized; "
        "filtered on agent edits, negative feedback, rating, response time, reply length, repetition and "
        "in-file duplicates), then curated (exact, prefix and near duplicates and conversations over the "
        "token limit removed)."
    )
    for stage, counts in filters.items():
        if not counts:
            continue
        lines += ["", f"Removed by {stage}:", "", "| reason | conversations |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += [
        "",
        "## Files",
        "",
        "- `alpaca/<split>.jsonl`: `instruction` (the last user turn), `input` (the earlier turns, one per line "
        "as `User: …` / `Assistant: …`, empty for one turn), `output` (the final assistant reply), "
        "`system` (the system prompt, empty when none).",
        '- `hf/`: `datasets.load_from_disk("hf")` gives a `DatasetDict` of the splits with every column.',
        "- `../<split>.jsonl`: the OpenAI chat fine-tuning format; `../<split>.parquet`: the split files.",
        "",
    ]
    return "\n".join(lines)


@dataclass
class ExportsResult:
    """What :func:`export_splits` wrote."""

    folder: str
    alpaca: dict[str, AlpacaExport]
    hf_folder: str
    card_path: str


def export_splits(
    split_parquets: Mapping[str, str | Path],
    out_dir: str | Path,
    *,
    version: str,
    pii_policy: str,
    license: str = DEFAULT_LICENSE,
    filters: Mapping[str, Mapping[str, int]] | None = None,
    sources: Mapping[str, Mapping[str, int]] | None = None,
) -> ExportsResult:
    """Write ``out_dir/alpaca/<split>.jsonl``, ``out_dir/hf/`` and ``out_dir/README.md`` for the
    split Parquet files of ``version``. ``filters`` (stage -> reason -> conversations removed, see
    :func:`removal_counts`) goes into the card, with ``sources`` (default: :func:`source_counts`)."""
    out = Path(out_dir)
    alpaca = {name: write_alpaca_jsonl(path, out / "alpaca" / f"{name}.jsonl") for name, path in split_parquets.items()}
    hf_folder = write_datasets_folder(split_parquets, out / "hf")
    rows = {name: pq.ParquetFile(path).metadata.num_rows for name, path in split_parquets.items()}
    card = dataset_card(
        version=version,
        rows=rows,
        alpaca=alpaca,
        sources=source_counts(split_parquets) if sources is None else sources,
        filters=filters or {},
        pii_policy=pii_policy,
        license=license,
    )
    card_path = out / "README.md"
    tmp = card_path.with_name(".README.md.tmp")
    tmp.write_text(card, encoding="utf-8")
    os.replace(tmp, card_path)
    return ExportsResult(str(out), alpaca, str(hf_folder), str(card_path))
