"""preference_dataset in bounded memory: the stage reads the cleaned partitions batch by batch,
builds its rules shard by shard (every context group in one shard) and merges the shards into its
files. The files must not depend on the sharding and must hold what the rules give over the whole
input, in the same order."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ft_pipeline.lib import preference_dataset as stage
from ft_pipeline.lib.cleaning import clean_partition
from ft_pipeline.lib.curation import curate
from ft_pipeline.lib.preference_dataset import (
    PreferenceDatasetConfig,
    SftSplitIndex,
    assign_preference_splits,
    build_preference_dataset,
)
from ft_pipeline.lib.preferences import (
    INPUT_COLUMNS,
    PreferenceConfig,
    _Outcome,
    _place,
    _usable_rows,
    build_preferences,
    read_cleaned_for_preferences,
)
from ft_pipeline.lib.records import ingest_log_file
from ft_pipeline.lib.sample_data import write_sample
from ft_pipeline.lib.splits import SPLIT_NAMES, make_splits
from ft_pipeline.lib.storage import safe_name
from ft_pipeline_tests.unit.test_preferences import conv


def _signal_records() -> list[dict]:
    """Every signal, a few times over, with enough words per turn that the cleaning keeps them."""
    tail = " Please tell me the exact steps, I have tried the manual already without any luck."
    records = []

    def add(cid, user, question, answer, **extra):
        messages = [{"role": "user", "content": question + tail}, {"role": "assistant", "content": answer + tail}]
        records.append({"conversation_id": cid, "user_id": user, "messages": messages, **extra})

    for i in range(12):
        q = f"Question number {i} about the Nimbus device model {i * 7} and its settings?"
        add(
            f"edit-{i}",
            f"ue{i}",
            q + " edit",
            f"The edited answer {i} with all details.",
            edited=True,
            original_content=f"A vague original answer {i}.",
            rating=5,
        )
        add(f"regen-a-{i}", f"ur{i}", q + " regen", f"Unsure answer {i}, restart it.", regenerated=True)
        add(f"regen-b-{i}", f"ur{i}", q + " regen", f"Precise answer {i}: open Settings and pick Wifi.")
        add(f"rate-hi-{i}", f"ua{i}", q + " rate", f"Helpful answer {i} that solves it.", rating=5)
        add(f"rate-lo-{i}", f"ub{i}", q + " rate", f"Unhelpful answer {i} that does not.", rating=2)
        add(f"tie-a-{i}", f"ut{i}", q + " tie", f"First tied answer {i}.", rating=4)
        add(f"tie-b-{i}", f"uu{i}", q + " tie", f"Second tied answer {i}.", rating=4)
        add(f"up-{i}", f"uv{i}", q + " up", f"Liked answer {i}.", thumbs="up")
        add(f"contra-{i}", f"uw{i}", q + " contra", f"Disputed answer {i}.", rating=5, thumbs="down")
    return records


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The sample data cleaned (two partitions), curated and split: what preference_dataset reads."""
    root = tmp_path_factory.mktemp("pipeline")
    folders = {}
    signals = root / "raw" / "feedback.jsonl"
    paths = write_sample(root / "raw")
    signals.write_text("".join(json.dumps(r) + "\n" for r in _signal_records()), encoding="utf-8")
    for path in [*paths, signals]:
        name = safe_name(path.name)
        ingest_log_file(path, path.name, root / "parsed" / name, root / "quarantine" / f"{name}.parquet")
        clean_partition(root / "parsed" / name, root / "cleaned" / name)
        folders[path.name] = root / "cleaned" / name
    curated = curate(folders, root / "curated")
    splits = make_splits(curated.manifest, root / "splits").manifest
    return folders, splits, root


def _files(result):
    """Every written file: JSONL as bytes, Parquet as a frame."""
    out = {}
    for group, files in result.manifest.paths.items():
        for name, path in files.items():
            out[group, name] = pd.read_parquet(path) if path.endswith(".parquet") else Path(path).read_bytes()
    return out


def _assert_same_files(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], pd.DataFrame):
            pd.testing.assert_frame_equal(a[key], b[key], obj=str(key))
        else:
            assert a[key] == b[key], key


def test_files_do_not_depend_on_the_sharding_and_match_the_whole_input_rules(pipeline, tmp_path):
    folders, splits, _ = pipeline
    one = build_preference_dataset(folders, splits, tmp_path / "one", shard_rows=10**9)
    many = build_preference_dataset(folders, splits, tmp_path / "many", shard_rows=5)
    assert one.version == many.version
    assert one.build == many.build and one.build.counts_add_up and one.build.n_pairs > 0
    assert one.split_counts == many.split_counts and one.leakage == many.leakage == {}
    _assert_same_files(_files(one), _files(many))
    # No spill left behind.
    assert [p.name for p in (tmp_path / "many").iterdir() if p.name.startswith(".")] == []

    # What the rules give over the whole input in memory, split the same way: same rows, same order.
    frame, _ = read_cleaned_for_preferences(folders)
    whole = build_preferences(frame)
    assert whole.counts() == one.build
    index = SftSplitIndex.from_splits(splits, PreferenceDatasetConfig().first_turn_min_words)
    files = _files(many)
    for name, expected in (("pairs", whole.pairs), ("kto", whole.kto)):
        expected = expected.assign(split=assign_preference_splits(expected, index))
        pd.testing.assert_frame_equal(files["all", name], expected, check_dtype=False, obj=name)
    pd.testing.assert_frame_equal(files["all", "dropped"], whole.dropped, check_dtype=False)
    for split in SPLIT_NAMES:
        lines = files[split, "openai"].decode().splitlines()
        chosen = [json.loads(line)["preferred_output"][0]["content"] for line in lines]
        assert chosen == whole.pairs.loc[files["all", "pairs"]["split"] == split, "chosen"].tolist()
    # Row groups are bounded: the files are written batch by batch.
    assert pq.ParquetFile(many.manifest.paths["all"]["kto"]).metadata.num_row_groups >= 1


def test_shards_merged_by_sort_key_give_the_whole_input_order():
    """Every rule and drop reason, in context groups of one to three replies and exact copies: the
    records of the shards (any split of the context groups), merged by their keys, are the records
    of the whole input in its order."""
    rows = [
        conv("c01", "Sent.", prompt="A?", edited=True, original_content="Original."),
        conv("c02", "Good.", prompt="B?", rating=5),
        conv("c03", "Bad.", prompt="B?", rating=1),
        conv("c04", "Kept.", prompt="C?", regenerated=False, rating=3),
        conv("c05", "Away.", prompt="C?", regenerated=True),
        conv("c06", "Third.", prompt="C?", rating=5),
        conv("c07", "Same.", prompt="D?", rating=3),
        conv("c08", "Other.", prompt="D?", rating=3),
        conv("c09", "Up.", prompt="E?", thumbs="down", rating=5),
        conv("c10", "Down.", prompt="E?", thumbs="up", rating=1),
        conv("c11", "Copy.", prompt="F?", rating=5),
        conv("c12", "Copy.", prompt="F?"),
        conv("c13", prompt="G?", rating=3),
        conv("c14", prompt="H?"),
        conv("c15", prompt="I?", rating=5, thumbs="down"),
        conv("c16", prompt="J?", thumbs="up"),
        conv("c17", prompt="K?", filter_reason="too_long"),
        conv("c18", prompt="L?", filter_reason="duplicate_in_file"),
        conv("c00", "Late.", prompt="B?", rating=2),
        conv("c21", "Best.", prompt="M?", rating=5),
        conv("c24", "Worst.", prompt="M?", rating=1),
        conv("c22", "Worse.", prompt="N?", rating=1),
        conv("c23", "Better.", prompt="N?", rating=5),
    ]
    frame = pd.DataFrame(rows, columns=INPUT_COLUMNS)
    whole = build_preferences(frame)
    assert set(whole.dropped["reason"]) >= {"not_usable", "duplicate_reply", "tie", "contradictory", "neutral_rating"}
    assert set(whole.pairs["rule"]) == {"edit", "rating", "regeneration"}
    config = PreferenceConfig()
    for n_shards in (1, 2, 3, 7):
        first = _Outcome()
        usable = []
        for start in range(0, len(frame), 4):  # read in batches, numbered from the batch's offset
            usable += _usable_rows(frame.iloc[start : start + 4].reset_index(drop=True), config, first, start)
        outcomes = [first]
        for k in range(n_shards):
            out = _Outcome()
            _place([r for r in usable if r.context_hash % n_shards == k], config, out)
            outcomes.append(out)
        for name, keys in (("pairs", "pair_keys"), ("kto", "kto_keys"), ("dropped", "dropped_keys")):
            keyed = [kr for out in outcomes for kr in zip(getattr(out, keys), getattr(out, name))]
            merged = [record for _, record in sorted(keyed, key=lambda kr: kr[0])]
            expected = getattr(whole, name)
            got = pd.DataFrame(merged, columns=list(expected.columns)).to_dict("records")
            assert got == expected.to_dict("records"), (name, n_shards)


def test_a_failed_write_leaves_no_file_and_no_spill(pipeline, tmp_path, monkeypatch):
    folders, splits, _ = pipeline

    def broken(*args, **kwargs):
        raise ValueError("chosen and rejected are the same text: not a preference")

    monkeypatch.setattr(stage, "to_trl_kto_record", broken)
    with pytest.raises(ValueError, match="not a preference"):
        build_preference_dataset(folders, splits, tmp_path / "prefs", shard_rows=5)
    left = [p for p in (tmp_path / "prefs").rglob("*") if p.is_file()]
    assert left == []
    assert [p.name for p in (tmp_path / "prefs").iterdir() if p.name.startswith(".")] == []
