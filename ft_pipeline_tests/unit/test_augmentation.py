"""Augmentation of the train split: seeded, user turns only, train only, counts add up, copies
grouped with their source (so the leakage check cannot be fooled), and training reads it only
when asked."""

import dataclasses
import json
import random
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ft_pipeline.lib.augmentation import (
    AugmentationConfig,
    augment_messages,
    augmented_folder,
    augmented_leakage,
    copy_plan,
    make_augmented_train,
    read_augmented_train,
)
from ft_pipeline.lib.cleaning import CleaningConfig, clean_conversations
from ft_pipeline.lib.dedup import DEFAULT_DEDUP_CONFIG
from ft_pipeline.lib.manifests import CuratedManifest, SplitsManifest, write_manifest
from ft_pipeline.lib.records import CONVERSATION_COLUMNS
from ft_pipeline.lib.splits import SplitConfig, make_splits
from ft_pipeline.lib.training.fine_tune import NoAugmentedData, augmented_train_for, prepare_local_run
from ft_pipeline.lib.training.lora import LoraTrainingConfig

WORDS = (
    "hub camera doorbell thermostat wifi router battery refund invoice shipping tracking "
    "parcel setup reset light app phone account password email"
).split()
ON = AugmentationConfig(enabled=True)


def _conversation(rng: random.Random, i: int) -> dict:
    question = "Hello, my " + " ".join(rng.choice(WORDS) for _ in range(10)) + f" stopped, order {i}?"
    follow_up = "Thanks! And the " + " ".join(rng.choice(WORDS) for _ in range(6)) + "?"
    answer = " ".join(rng.choice(WORDS) for _ in range(40)) + f" ticket {i}."
    row = {c: None for c in CONVERSATION_COLUMNS}
    row.update(
        conversation_id=f"c{i:04d}",
        user_id=f"u{i % 50}",
        tags=[],
        source_format="raw",
        source_file="f",
        source_line=i,
        messages=[
            {"role": "system", "content": "You are the Nimbus support assistant."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": follow_up},
            {"role": "assistant", "content": "Sure. " + answer},
        ],
    )
    return row


def build_splits(data_dir: Path, n: int = 240) -> SplitsManifest:
    """Real splits (make_splits) of ``n`` cleaned conversations, laid out in ``data_dir`` as the
    pipeline does (``curated/latest.json``, ``splits/latest.json``), without the ingest stages."""
    rng = random.Random(0)
    rows = pd.DataFrame([_conversation(rng, i) for i in range(n)], columns=CONVERSATION_COLUMNS)
    kept = clean_conversations(rows, CleaningConfig(min_unique_word_ratio=0.0)).kept
    (data_dir / "curated").mkdir(parents=True)
    kept.to_parquet(data_dir / "curated" / "conversations.parquet")
    curated = CuratedManifest.of("cur1", str(data_dir / "curated" / "conversations.parquet"), "", DEFAULT_DEDUP_CONFIG)
    write_manifest(data_dir / "curated", curated)
    return make_splits(curated, data_dir / "splits", SplitConfig(min_train_examples=1)).manifest


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return build_splits(tmp_path_factory.mktemp("data"))


def _frames(splits, augmented_path):
    return (
        pd.read_parquet(augmented_path),
        {name: pd.read_parquet(splits.parquet(name)) for name in ("train", "validation", "test")},
    )


def test_off_by_default_writes_nothing_and_passes_the_counts_through(splits):
    assert AugmentationConfig().enabled is False
    result = make_augmented_train(splits, AugmentationConfig(), DEFAULT_DEDUP_CONFIG)
    train_rows = pq.ParquetFile(splits.parquet("train")).metadata.num_rows
    assert not result.enabled and result.manifest is None
    assert result.counts.source_examples == result.counts.total_examples == train_rows
    assert result.counts.augmented_copies == 0
    assert not augmented_folder(splits).exists() and read_augmented_train(splits) is None
    # A run asking for the augmented split without one fails clearly (no silent fallback).
    with pytest.raises(NoAugmentedData, match="materialize augmented_train_split with enabled=true"):
        augmented_train_for(splits, "sft")


def test_copies_are_seeded_and_perturb_user_turns_only(splits):
    first = make_augmented_train(splits, ON, DEFAULT_DEDUP_CONFIG)
    frame, plain = _frames(splits, first.manifest.parquet())
    again = make_augmented_train(splits, ON, DEFAULT_DEDUP_CONFIG)
    assert again.version == first.version
    pd.testing.assert_frame_equal(pd.read_parquet(again.manifest.parquet()), frame)
    # Another seed: another choice of examples, another version.
    other = make_augmented_train(splits, dataclasses.replace(ON, seed=7), DEFAULT_DEDUP_CONFIG)
    assert other.version != first.version
    other_sources = set(pd.read_parquet(other.manifest.parquet())["augmented_from"].dropna())
    assert other_sources != set(frame["augmented_from"].dropna())
    # The latest.json of these splits points at the last one written.
    assert read_augmented_train(splits).version == other.version

    originals = frame[frame["augmented_from"].isna()]
    copies = frame[frame["augmented_from"].notna()]
    assert originals["conversation_id"].tolist() == plain["train"]["conversation_id"].tolist()
    assert len(copies) > 20
    sources = plain["train"].set_index("conversation_id")
    for copy in copies.itertuples():
        source = sources.loc[copy.augmented_from]
        assert copy.conversation_id != copy.augmented_from
        changed = 0
        for new, old in zip(copy.messages, source["messages"], strict=True):
            assert new["role"] == old["role"]
            if old["role"] == "user":
                changed += new["content"] != old["content"]
            else:
                assert new["content"] == old["content"]  # system and assistant turns unchanged
        assert changed >= 1
        # Grouped with its source: the split step's group and the hashes every grouping uses.
        for column in ("split_group", "user_id", "exact_hash", "context_hash", "first_turn_hash", "split"):
            assert getattr(copy, column) == source[column]
    assert set(copies["augmentation"]) == set(ON.kinds)


def test_counts_add_up_and_files_agree(splits):
    config = AugmentationConfig(enabled=True, kinds=("typos", "case_whitespace", "punctuation"), copies_per_example=2)
    result = make_augmented_train(splits, config, DEFAULT_DEDUP_CONFIG)
    counts = result.counts
    frame = pd.read_parquet(result.manifest.parquet())
    with open(result.manifest.jsonl()) as f:
        lines = [json.loads(line) for line in f]
    assert len(frame) == len(lines) == counts.total_examples == result.manifest.rows
    assert counts.total_examples == counts.source_examples + counts.augmented_copies
    assert counts.selected_examples * config.copies_per_example == counts.augmented_copies + sum(
        counts.unchanged.values()
    )
    assert frame["augmentation"].value_counts().to_dict() == {k: v for k, v in counts.copies.items() if v}
    assert 0.3 < counts.selected_examples / counts.source_examples < 0.7  # fraction 0.5
    # Two copies of one example take two different kinds.
    per_source = frame.dropna(subset=["augmented_from"]).groupby("augmented_from")["augmentation"]
    assert (per_source.nunique() == per_source.size()).all()
    # The JSONL is the OpenAI chat format of the same rows, and it validates.
    assert (
        set(lines[0]) == {"messages"} and lines[-1]["messages"][1]["content"] == frame["messages"].iat[-1][1]["content"]
    )
    assert result.format.ok


def test_copy_plan_and_user_turn_perturbation_are_pure_functions():
    config = AugmentationConfig(enabled=True, copies_per_example=2, fraction=1.0)
    assert copy_plan("c1", config) == copy_plan("c1", config)
    assert [kind for kind, _ in copy_plan("c1", config)] in (["typos", "case_whitespace"], ["case_whitespace", "typos"])
    assert copy_plan("c1", dataclasses.replace(config, fraction=0.0)) == []
    messages = [
        {"role": "user", "content": "Where is my parcel <ORDER_ID>?"},
        {"role": "assistant", "content": "Here."},
    ]
    out = augment_messages(messages, "punctuation", 1, 0.05)
    assert out == [{"role": "user", "content": "Where is my parcel <ORDER_ID>"}, messages[1]]
    assert messages[0]["content"].endswith("?")  # the input is not modified
    with pytest.raises(ValueError, match="kinds must be some of"):
        AugmentationConfig(kinds=("paraphrase",))
    with pytest.raises(ValueError, match="fraction"):
        AugmentationConfig(fraction=1.5)


def test_only_train_rows_are_augmented_and_the_leakage_check_groups_copies_with_their_source(splits, tmp_path):
    result = make_augmented_train(splits, dataclasses.replace(ON, typo_rate=0.3), DEFAULT_DEDUP_CONFIG)
    frame, plain = _frames(splits, result.manifest.parquet())
    copies = frame.dropna(subset=["augmented_from"])
    # Copies come from train only: no validation or test prompt ever gets one.
    assert set(copies["augmented_from"]) <= set(plain["train"]["conversation_id"])
    for name in ("validation", "test"):
        assert not set(copies["augmented_from"]) & set(plain[name]["conversation_id"])
    assert not result.leakage.leaked, result.leakage.to_dict()

    # Plant a copy in test (its source stays in train). Its text is far from its source at a 30%
    # typo rate, but it carries its source's group and exact hash: the check flags it.
    planted = copies[copies["augmentation"] == "typos"].iloc[[0]].drop(columns=["augmented_from", "augmentation"])
    test_path = tmp_path / "test.parquet"
    pd.concat([plain["test"], planted], ignore_index=True).to_parquet(test_path)
    train_path = tmp_path / "train.parquet"
    frame.drop(index=planted.index).to_parquet(train_path)
    leaky = dataclasses.replace(
        splits, paths={**splits.paths, "test": {**splits.paths["test"], "parquet": str(test_path)}}
    )
    report = augmented_leakage(train_path, leaky, DEFAULT_DEDUP_CONFIG)
    assert report.leaked and report.shared_groups >= 1 and report.exact_duplicates >= 1
    assert report.near_duplicates == 0  # its text alone would have passed: the grouping is what catches it


def test_training_reads_the_augmented_split_only_when_asked(splits, tmp_path):
    config = LoraTrainingConfig(base_model="tiny")
    plain = prepare_local_run(splits, config, tmp_path / "models", tmp_path / "base")
    assert plain.extras["train_parquet"] == splits.parquet("train") and plain.data_version == splits.version

    augmented = make_augmented_train(splits, ON, DEFAULT_DEDUP_CONFIG).manifest
    assert augmented_train_for(splits, "sft") == augmented
    run = prepare_local_run(splits, config, tmp_path / "models", tmp_path / "base", augmented=augmented)
    assert run.extras["train_parquet"] == augmented.parquet() and Path(augmented.parquet()).exists()
    assert run.extras["validation_parquet"] == splits.parquet("validation")  # never augmented
    assert run.data_version == augmented.version != splits.version
    assert run.key != plain.key  # the augmented split's version keys the run
    assert run.data_paths["train"]["parquet"] == augmented.parquet()
    assert run.data_paths["test"] == splits.paths["test"]
    with pytest.raises(NoAugmentedData, match="SFT method only"):
        augmented_train_for(splits, "dpo")
