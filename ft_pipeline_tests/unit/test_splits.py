"""Splits: grouped, hash-stable, seeded, proportions; the leakage report finds planted leaks."""

import random

import pandas as pd

from ft_pipeline.lib.cleaning import CleaningConfig, clean_conversations
from ft_pipeline.lib.records import CONVERSATION_COLUMNS
from ft_pipeline.lib.splits import SplitConfig, assign_splits, check_min_sizes, group_keys, leakage_report

WORDS = (
    "hub camera doorbell thermostat wifi router battery refund invoice shipping tracking "
    "parcel setup reset light app phone account password email"
).split()


def _conversation(rng, i, user=None, first=None, tags=None):
    question = first or " ".join(rng.choice(WORDS) for _ in range(12)) + f" number {i}?"
    answer = " ".join(rng.choice(WORDS) for _ in range(60)) + f" ticket {i}."
    row = {c: None for c in CONVERSATION_COLUMNS}
    row.update(
        conversation_id=f"c{i:05d}",
        user_id=user,
        tags=tags or [],
        source_format="raw",
        source_file="f",
        source_line=i,
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
    )
    return row


def _curated(rows):
    return clean_conversations(
        pd.DataFrame(rows, columns=CONVERSATION_COLUMNS), CleaningConfig(min_unique_word_ratio=0.0)
    ).kept


def _dataset(n, seed=0, users=40):
    rng = random.Random(seed)
    return [_conversation(rng, i, user=f"u{rng.randint(0, users)}" if i % 3 else None) for i in range(n)]


def test_proportions_and_determinism():
    curated = _curated(_dataset(3000))
    a = assign_splits(curated)
    b = assign_splits(curated)
    assert a["split"].tolist() == b["split"].tolist()
    shares = a["split"].value_counts(normalize=True)
    assert (
        abs(shares["train"] - 0.8) < 0.05
        and abs(shares["validation"] - 0.1) < 0.04
        and abs(shares["test"] - 0.1) < 0.04
    )
    other_seed = assign_splits(curated, SplitConfig(seed=7))
    assert other_seed["split"].tolist() != a["split"].tolist()


def test_users_and_shared_first_turns_never_straddle():
    rng = random.Random(1)
    rows = _dataset(600)
    long_first = "my nimbus hub keeps blinking orange during setup and never finishes pairing"
    rows += [_conversation(rng, 1000 + k, first=long_first) for k in range(8)]
    assigned = assign_splits(_curated(rows))
    per_user = assigned.dropna(subset=["user_id"]).groupby("user_id")["split"].nunique()
    assert (per_user == 1).all()
    shared = assigned[assigned["messages"].map(lambda m: m[0]["content"] == long_first)]
    assert len(shared) == 8 and shared["split"].nunique() == 1


def test_hash_stable_when_new_data_arrives():
    rows = _dataset(1500, seed=3)
    before = assign_splits(_curated(rows)).set_index("conversation_id")["split"]
    more = rows + [_conversation(random.Random(9), 5000 + i) for i in range(500)]
    after = assign_splits(_curated(more)).set_index("conversation_id")["split"]
    assert (after.loc[before.index] == before).all()


def test_stratified_split_gives_per_tag_proportions():
    rng = random.Random(5)
    rows = [_conversation(rng, i, tags=["billing" if i % 4 else "setup"]) for i in range(2000)]
    assigned = assign_splits(_curated(rows), SplitConfig(stratify_by_tag=True, group_by_user=False))
    for _, group in assigned.groupby(assigned["tags"].map(lambda t: t[0])):
        shares = group["split"].value_counts(normalize=True)
        assert abs(shares["train"] - 0.8) < 0.01 and abs(shares["test"] - 0.1) < 0.01


def test_leakage_report_clean_and_planted():
    assigned = assign_splits(_curated(_dataset(800, seed=4)))
    frames = {
        name: assigned[assigned["split"] == name].reset_index(drop=True) for name in ("train", "validation", "test")
    }
    report = leakage_report(frames)
    assert not report.leaked, report.to_dict()
    # Plant: a train conversation copied into test (exact + near duplicate), and a user in two splits.
    leaked_row = frames["train"].iloc[[0]].copy()
    frames["test"] = pd.concat([frames["test"], leaked_row], ignore_index=True)
    report = leakage_report(frames)
    assert report.leaked
    assert report.exact_duplicates == 2 and report.near_duplicates >= 1 and report.shared_groups >= 1


def test_group_keys_prefer_user():
    curated = _curated([_conversation(random.Random(2), i, user="alice") for i in range(3)])
    assert set(group_keys(curated)) == {"user:alice"}


def test_min_sizes():
    assert check_min_sizes({"train": 9, "validation": 1, "test": 0}, {"train": 10, "validation": 1, "test": 1}) == [
        "train has 9 examples, fewer than the minimum 10",
        "test has 0 examples, fewer than the minimum 1",
    ]
