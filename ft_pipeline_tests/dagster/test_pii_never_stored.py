"""Nothing leaked: PII of every kind the scrubber knows (the built-in types, a team's custom
patterns, person names), planted in every field of raw records, must not appear anywhere the
pipeline writes outside the landing folder: not in the data directory (parsed, quarantine,
cleaned, curated, splits, models, reports, registry) and not in DAGSTER_HOME (run storage, the
event log, compute logs).

The runs go through Dagster's run machinery as in production: ``execute_job`` with the
multiprocess executor, so every step runs in its own process and its stdout/stderr land in the
compute-log storage, which is searched too. Parquet files are searched by value (their pages are
compressed, so a byte search could miss a value), every other file byte for byte.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import sqlite3
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.lib.sample_data import _conversation
from ft_pipeline_tests.dagster.test_data_safety import PLANTED_PII
from ft_pipeline_tests.dagster.whole_graph import EVAL, TRAIN

# The whole graph, training and evaluation included, through execute_job (1-2 minutes on 2 cores).
pytestmark = pytest.mark.slow

# One value of every built-in kind, as written in a raw log.
BUILT_IN = PLANTED_PII
# The team's own kinds, through the PII policy's patterns file.
CUSTOM = {"ORDER_ID": "ORD-482913", "USERNAME": "@maria_g77"}
CUSTOM_PATTERNS = [
    {"name": "ORDER_ID", "regex": r"\bORD-[0-9]{6}\b"},
    {"name": "USERNAME", "regex": r"(?<![\w.])@[a-z][a-z0-9_]{2,15}\b"},
]
# A person name, through Presidio over a spaCy pipeline built here (no model download).
PERSON = {"PERSON": "Maria Garcia"}

HAS_PRESIDIO = importlib.util.find_spec("presidio_analyzer") is not None
PLANTED = {**BUILT_IN, **CUSTOM, **(PERSON if HAS_PRESIDIO else {})}
PROBE_FILE = "pii_probe.jsonl"


def ingest_log_file_job():
    from ft_pipeline.definitions import defs

    return defs.get_job_def("ingest_log_file")


def train_model_job():
    from ft_pipeline.definitions import defs

    return defs.get_job_def("train_model")


def _planted_record(base: dict, kind: str, value: str, index: int) -> dict:
    """``value`` in every field a raw record has: the ids, each role's message, tags, and the
    record's unknown keys (a string, a nested object, a list, and a key)."""
    record = json.loads(json.dumps(base))
    # Unique per record, with no digit next to the value: "123-45-6789 4" could be part of a
    # longer number, which the detectors rightly do not claim.
    record["conversation_id"] = f"{value} case {chr(ord('a') + index)}"
    record["user_id"] = value
    record["messages"][0]["content"] += f" Account note: {value}."
    record["messages"][1]["content"] += f" My details: {value}."
    record["messages"][2]["content"] += f" I have noted {value} on your case."
    record["tags"] = [record["tags"][0], f"contact {value}"]
    record["notes"] = f"customer gave {value}"
    record["customer"] = {"contact": value, "history": [f"called about {value}"], value: True}
    return record


def _probe_lines() -> list[str]:
    rng = random.Random(15)
    records = [_conversation(rng, i, turns=1) for i in range(60)]
    # The planted records first: the UI's samples show a file's first rows.
    lines = [json.dumps(_planted_record(records[i], kind, value, i)) for i, (kind, value) in enumerate(PLANTED.items())]
    lines += [json.dumps(r) for r in records[len(PLANTED) :]]
    # Records that are quarantined: PII in a field that fails the schema (its detail echoes the
    # value), and a line that is not JSON at all (the quarantine keeps its raw text).
    bad_date = _planted_record(records[0], "EMAIL", BUILT_IN["EMAIL"], 98)
    bad_date["created_at"] = f"sent by {BUILT_IN['EMAIL']}"
    lines.append(json.dumps(bad_date))
    lines.append("{not json, from " + ", ".join(PLANTED.values()) + "\n")
    return lines


@pytest.fixture
def person_name_model(tmp_path):
    """A spaCy pipeline folder that tags the planted name as PERSON, standing in for en_core_web_sm."""
    if not HAS_PRESIDIO:
        return ""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns(
        [{"label": "PERSON", "pattern": [{"LOWER": "maria"}, {"LOWER": "garcia"}]}]
    )
    folder = tmp_path / "spacy-names"
    nlp.to_disk(folder)
    return str(folder)


def _texts_of(path: Path) -> list[str]:
    """What a written file holds, as text to search: a Parquet file's values, a gzip file's
    content, anything else as raw bytes (SQLite databases included: they store text as is)."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return [json.dumps(table.to_pylist(), default=str, ensure_ascii=False), str(table.schema)]
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [data.decode("utf-8", errors="replace"), data.decode("latin-1")]


def _leaks(root: Path, skip: Path | None = None) -> dict[str, list[str]]:
    leaks: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if skip is not None and path.is_relative_to(skip):
            continue
        texts = _texts_of(path)
        for kind, value in PLANTED.items():
            variants = {value, json.dumps(value)[1:-1]}
            if any(v in text for v in variants for text in texts):
                leaks.setdefault(kind, []).append(str(path.relative_to(root)))
    return leaks


def test_planted_pii_reaches_nothing_the_pipeline_writes(tmp_path, monkeypatch, person_name_model):
    data_dir = tmp_path / "data"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (data_dir / "raw").mkdir(parents=True)
    (data_dir / "raw" / PROBE_FILE).write_text("\n".join(_probe_lines()) + "\n", encoding="utf-8")
    patterns_file = tmp_path / "pii_patterns.json"
    patterns_file.write_text(json.dumps(CUSTOM_PATTERNS))
    # The step processes build the definitions from the environment, as `dagster dev` does.
    monkeypatch.setenv("FT_PIPELINE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("FT_PIPELINE_PII_PATTERNS", str(patterns_file))
    monkeypatch.setenv("FT_PIPELINE_PII_PERSON_MODEL", person_name_model)

    with dg.instance_for_test(temp_dir=str(home)) as instance:
        instance.add_dynamic_partitions(log_files_partitions.name, [PROBE_FILE])
        with dg.execute_job(
            dg.reconstructable(ingest_log_file_job), instance, tags={"dagster/partition": PROBE_FILE}
        ) as ingest:
            assert ingest.success
            raw_meta = ingest.asset_materializations_for_node("raw_conversation_logs")[0].metadata
            assert raw_meta["quarantined"].value == 2  # the bad date and the broken line
            found = {r.data["reason"]: r.data["count"] for r in raw_meta["pii_found"].records}
            assert all(found.get(kind, 0) > 0 for kind in PLANTED), found
        run_config = {"ops": {"fine_tuned_model": {"config": TRAIN}, "evaluation_report": {"config": EVAL}}}
        with dg.execute_job(dg.reconstructable(train_model_job), instance, run_config=run_config) as train:
            done = {e.asset_key.to_user_string() for e in train.get_asset_materialization_events()}
            # The evaluation ran (the gate may or may not promote a tiny model); everything it
            # and the stages before it wrote is searched below.
            assert {"curated_dataset", "train_split", "test_split", "fine_tuned_model", "evaluation_report"} <= done, (
                done
            )
            checks = {c.check_name: c.passed for c in train.get_asset_check_evaluations()}
            assert checks["no_pii_left"], "the curated dataset still holds PII"

    # Everything was written, and searched: the stores this test means to cover exist.
    compute_logs = [p for p in home.rglob("*") if p.is_file() and p.suffix in (".out", ".err", ".complete")]
    assert compute_logs, "no compute logs were captured"
    assert any(p.suffix == ".db" for p in home.rglob("*")), "no SQLite run/event storage found"
    for folder in ("parsed", "quarantine", "cleaned", "curated", "splits", "models", "reports"):
        assert (data_dir / folder).is_dir(), folder
    with sqlite3.connect(data_dir / "registry.db") as db:
        assert db.execute("select count(*) from model_versions").fetchone()[0] >= 1

    # The landing folder holds the raw file, so the search would find each value there.
    assert set(_leaks(data_dir / "raw")) == set(PLANTED)
    assert _leaks(data_dir, skip=data_dir / "raw") == {}
    assert _leaks(home) == {}
