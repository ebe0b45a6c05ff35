"""The preference builder: DPO pairs, KTO examples and drop reasons from the logs' own signals."""

import json

import pandas as pd
import pytest

from ft_pipeline.lib import preferences
from ft_pipeline.lib.cleaning import clean_partition, text_hash
from ft_pipeline.lib.dedup import context_hash
from ft_pipeline.lib.preferences import (
    DROP_REASONS,
    DROPPED_COLUMNS,
    INPUT_COLUMNS,
    KTO_COLUMNS,
    PAIR_COLUMNS,
    PAIR_RULES,
    PreferenceConfig,
    build_preferences,
    parse_thumbs,
    read_cleaned_for_preferences,
)
from ft_pipeline.lib.records import ingest_log_file
from ft_pipeline.lib.sample_data import write_sample
from ft_pipeline.lib.storage import safe_name

PROMPT = "My thermostat will not connect to the wifi network, what should I do?"


def conv(
    cid,
    reply="Restart the thermostat and the router, then pair again from the app.",
    *,
    prompt=PROMPT,
    rating=None,
    edited=None,
    filter_reason="",
    tags=("support",),
    user_id="u1",
    system=None,
    **meta,
):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": reply},
    ]
    return {
        "conversation_id": cid,
        "user_id": user_id,
        "messages": messages,
        "rating": rating,
        "edited": edited,
        "tags": list(tags),
        "metadata": json.dumps(meta) if meta else None,
        "source_file": "logs.jsonl",
        "source_line": int("".join(ch for ch in cid if ch.isdigit()) or 0),
        "filter_reason": filter_reason,
        "filter_detail": "",
    }


def build(*rows, **config):
    frame = pd.DataFrame(list(rows), columns=INPUT_COLUMNS)
    result = build_preferences(frame, PreferenceConfig(**config))
    assert result.conversations_accounted == result.n_in == len(rows)
    return result


def reasons(result):
    return dict(zip(result.dropped["conversation_id"], result.dropped["reason"]))


def only_pair(result):
    assert len(result.pairs) == 1
    return result.pairs.iloc[0]


# --- pair rules --------------------------------------------------------------------------------


def test_edit_pair_chooses_the_sent_reply_over_the_original():
    result = build(conv("c1", "Sent reply, fixed by the agent.", edited=True, original_content="  Model   reply.  "))
    pair = only_pair(result)
    assert pair["rule"] == "edit" and pair["chosen"] == "Sent reply, fixed by the agent."
    assert pair["rejected"] == "Model reply."  # normalized like the cleaned text
    assert pair["chosen_conversation_id"] == pair["rejected_conversation_id"] == "c1"
    assert pair["prompt"] == [{"role": "user", "content": PROMPT}]
    assert result.pair_counts["edit"] == 1 and result.conversations_accounted == 1


def test_edit_without_a_different_original_is_no_edit_pair():
    result = build(
        conv("c1", "Same text.", edited=True, original_content="Same text.", rating=5),
        conv("c2", edited=True, prompt="Other question?"),
    )
    assert result.pairs.empty
    assert list(result.kto["conversation_id"]) == ["c1"] and reasons(result) == {"c2": "no_signal"}


def test_edits_switched_off():
    result = build(conv("c1", "Sent.", edited=True, original_content="Original."), use_edits=False)
    assert result.pairs.empty and reasons(result) == {"c1": "no_signal"}


def test_regeneration_pair_chooses_the_reply_the_user_kept():
    result = build(conv("c1", "First answer.", regenerated=True), conv("c2", "Second answer."))
    pair = only_pair(result)
    assert (pair["rule"], pair["chosen_conversation_id"], pair["rejected_conversation_id"]) == (
        "regeneration",
        "c2",
        "c1",
    )
    assert (pair["chosen"], pair["rejected"]) == ("Second answer.", "First answer.")


def test_regeneration_wins_over_equal_ratings_and_ignored_when_switched_off():
    rows = (conv("c1", "First.", rating=4, regenerated=True), conv("c2", "Second.", rating=4))
    assert only_pair(build(*rows))["rule"] == "regeneration"
    result = build(*rows, use_regenerations=False)
    assert result.pairs.empty and set(reasons(result).values()) == {"tie"}


def test_rating_pair_needs_the_gap():
    rows = (conv("c1", "Good.", rating=5), conv("c2", "Poor.", rating=2, filter_reason="low_rating"))
    pair = only_pair(build(*rows))
    assert (pair["rule"], pair["chosen"], pair["rejected"]) == ("rating", "Good.", "Poor.")
    result = build(*rows, min_rating_gap=4)
    assert result.pairs.empty and reasons(result) == {"c1": "tie", "c2": "tie"}


def test_thumbs_pair_when_ratings_do_not_decide():
    pair = only_pair(build(conv("c1", "A.", thumbs="down"), conv("c2", "B.", thumbs="up")))
    assert (pair["rule"], pair["chosen_conversation_id"]) == ("thumbs", "c2")
    pair = only_pair(build(conv("c1", "A.", rating=4, thumbs=True), conv("c2", "B.", rating=4, thumbs=-1)))
    assert (pair["rule"], pair["chosen_conversation_id"]) == ("thumbs", "c1")
    result = build(conv("c1", "A.", thumbs="down"), conv("c2", "B.", thumbs="up"), use_thumbs=False)
    assert set(reasons(result).values()) == {"tie"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("up", 1), ("Down", -1), (True, 1), (False, -1), (1, 1), (-1, -1), ("sideways", 0), (None, 0), (0, 0)],
)
def test_thumbs_values(value, expected):
    assert parse_thumbs(value) == expected


def test_prompt_keeps_the_system_message_and_the_pair_records_hashes():
    rows = (conv("c1", "Good.", rating=5, system="Be brief."), conv("c2", "Bad.", rating=1, system="Be brief."))
    pair = only_pair(build(*rows))
    assert pair["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    assert pair["context_hash"] == context_hash(rows[0]["messages"])
    assert pair["first_turn_hash"] == text_hash(PROMPT.lower())
    assert pair["user_id"] == "u1" and pair["tags"] == ["support"]


# --- drop reasons ------------------------------------------------------------------------------


def test_every_drop_reason():
    result = build(
        conv("c1", filter_reason="system_not_first"),
        conv("c2", "Same.", prompt="Q2?", rating=5),
        conv("c3", "Same.", prompt="Q2?", filter_reason="duplicate_in_file"),
        conv("c4", "Same.", prompt="Q2?"),
        conv("c5", "A.", prompt="Q3?", rating=4),
        conv("c6", "B.", prompt="Q3?", rating=4),
        conv("c7", prompt="Q4?", rating=5, thumbs="down"),
        conv("c8", prompt="Q5?", rating=3),
        conv("c9", prompt="Q6?"),
    )
    assert reasons(result) == {
        "c1": "not_usable",
        "c3": "duplicate_reply",
        "c4": "duplicate_reply",
        "c5": "tie",
        "c6": "tie",
        "c7": "contradictory",
        "c8": "neutral_rating",
        "c9": "no_signal",
    }
    assert set(result.dropped_counts) == set(DROP_REASONS)
    assert result.dropped_counts["duplicate_reply"] == 2 and result.dropped_counts["tie"] == 2
    assert result.dropped.set_index("conversation_id").loc["c1", "detail"] == "system_not_first"
    # The copy with the rating is the one kept, and it is a desirable KTO example.
    assert list(result.kto["conversation_id"]) == ["c2"]


def test_quality_filtered_rows_are_used():
    result = build(
        conv("c1", prompt="A?", rating=1, filter_reason="low_rating"),
        conv("c2", prompt="B?", rating=5, filter_reason="slow_response"),
        conv("c3", prompt="C?", rating=5, filter_reason="roles_not_alternating"),
    )
    assert dict(zip(result.kto["conversation_id"], result.kto["label"])) == {"c1": False, "c2": True}
    assert reasons(result) == {"c3": "not_usable"}


def test_unrepaired_filtered_rows_get_the_role_rules_so_they_group_with_kept_rows():
    kept = conv("c1", "Good.", rating=5)
    filtered = conv("c2", "Bad.", rating=1, filter_reason="low_rating")
    # As the filtered file stores it: normalized, not repaired (an empty message, a leading greeting).
    filtered["messages"] = [
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": PROMPT},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "Bad."},
    ]
    pair = only_pair(build(kept, filtered))
    assert (pair["rule"], pair["chosen"], pair["rejected"]) == ("rating", "Good.", "Bad.")


def test_a_pair_ordered_both_ways_is_contradictory():
    result = build(conv("c1", "A.", rating=5, thumbs="down"), conv("c2", "B.", rating=2, thumbs="up"))
    assert result.pairs.empty and reasons(result) == {"c1": "contradictory", "c2": "contradictory"}
    result = build(conv("c1", "A.", rating=5, regenerated=True), conv("c2", "B.", rating=1))
    assert result.pairs.empty and set(reasons(result).values()) == {"contradictory"}


# --- groups of three, KTO ----------------------------------------------------------------------


def test_group_of_three_pairs_best_with_worst_and_the_middle_goes_to_kto():
    result = build(conv("c1", "Best.", rating=5), conv("c2", "Middle.", rating=4), conv("c3", "Worst.", rating=1))
    pair = only_pair(result)
    assert pair["rule"] == "rating"
    assert (pair["chosen_conversation_id"], pair["rejected_conversation_id"]) == ("c1", "c3")
    assert list(result.kto["conversation_id"]) == ["c2"] and bool(result.kto["label"].iloc[0])


def test_group_of_three_without_order_is_all_tie():
    result = build(conv("c1", "A.", rating=4), conv("c2", "B.", rating=4), conv("c3", "C."))
    assert reasons(result) == {"c1": "tie", "c2": "tie", "c3": "tie"}


def test_kto_labels():
    result = build(
        conv("c1", prompt="A?", rating=4),
        conv("c2", prompt="B?", rating=2),
        conv("c3", prompt="C?", thumbs="up"),
        conv("c4", prompt="D?", rating=3, thumbs="down"),
        conv("c5", prompt="E?", rating=5, thumbs="up"),
    )
    got = {
        c: (rule, bool(label))
        for c, rule, label in result.kto[["conversation_id", "rule", "label"]].itertuples(index=False)
    }
    assert got == {
        "c1": ("rating", True),
        "c2": ("rating", False),
        "c3": ("thumbs", True),
        "c4": ("thumbs", False),
        "c5": ("rating", True),
    }
    assert result.kto_counts == {"desirable": 3, "undesirable": 2}
    thresholds = build(conv("c1", prompt="A?", rating=4), kto_good_rating=5)
    assert reasons(thresholds) == {"c1": "neutral_rating"}


def test_ratings_switched_off():
    result = build(
        conv("c1", prompt="A?", rating=5), conv("c2", prompt="B?", rating=5, thumbs="down"), use_ratings=False
    )
    assert reasons(result) == {"c1": "no_signal"} and list(result.kto["rule"]) == ["thumbs"]


# --- accounting, ids, frames -------------------------------------------------------------------


def test_accounting_counts_an_edit_pair_once_and_other_pairs_twice():
    result = build(
        conv("c1", "Sent.", prompt="A?", edited=True, original_content="Original."),
        conv("c2", "Good.", prompt="B?", rating=5),
        conv("c3", "Bad.", prompt="B?", rating=1),
        conv("c4", prompt="C?", rating=5),
        conv("c5", prompt="D?"),
    )
    assert result.pair_counts == {"edit": 1, "regeneration": 0, "rating": 1, "thumbs": 0}
    assert set(result.pair_counts) == set(PAIR_RULES)
    assert result.conversations_accounted == 1 + 2 + 1 + 1 == result.n_in and result.counts_add_up


def test_the_builder_refuses_a_result_that_does_not_add_up(monkeypatch):
    monkeypatch.setattr(preferences, "_kto", lambda row, config, out: None)  # a bug: singletons vanish
    with pytest.raises(AssertionError, match="accounting"):
        build_preferences(pd.DataFrame([conv("c1", rating=5)], columns=INPUT_COLUMNS))


def test_ids_are_stable_and_do_not_depend_on_row_order():
    rows = [
        conv("c1", "Sent.", prompt="A?", edited=True, original_content="Original."),
        conv("c2", "Good.", prompt="B?", rating=5),
        conv("c3", "Bad.", prompt="B?", rating=1),
        conv("c4", prompt="C?", rating=5),
    ]
    first = build(*rows)
    again = build(*reversed(rows))
    assert list(first.pairs["pair_id"]) == list(again.pairs["pair_id"])
    assert list(first.kto["example_id"]) == list(again.kto["example_id"])
    assert first.pairs["pair_id"].is_unique and len(first.pairs["pair_id"].iloc[0]) == 16
    # The rule is part of the id: the same two conversations paired by another rule get another id.
    by_thumbs = build(conv("c2", "Good.", prompt="B?", thumbs="up"), conv("c3", "Bad.", prompt="B?", thumbs="down"))
    assert by_thumbs.pairs["pair_id"].iloc[0] != first.pairs.set_index("rule").loc["rating", "pair_id"]


def test_empty_input_gives_empty_frames_with_the_columns():
    for frame in (pd.DataFrame(columns=INPUT_COLUMNS), pd.DataFrame()):
        result = build_preferences(frame)
        assert list(result.pairs.columns) == PAIR_COLUMNS and result.pairs.empty
        assert list(result.kto.columns) == KTO_COLUMNS and result.kto.empty
        assert list(result.dropped.columns) == DROPPED_COLUMNS and result.dropped.empty
        assert result.n_in == result.conversations_accounted == 0
        assert result.kto_counts == {"desirable": 0, "undesirable": 0}
        assert set(result.pair_counts.values()) == {0} and set(result.dropped_counts.values()) == {0}


def test_frame_dtypes():
    result = build(conv("c1", "Good.", rating=5), conv("c2", "Bad.", rating=1), conv("c3", prompt="Z?", rating=5))
    assert str(result.pairs["context_hash"].dtype) == "int64" and str(result.pairs["first_turn_hash"].dtype) == "Int64"
    assert str(result.kto["label"].dtype) == "bool" and str(result.kto["context_hash"].dtype) == "int64"


# --- real cleaned partitions -------------------------------------------------------------------


def test_read_cleaned_partitions_of_the_sample(tmp_path):
    folders = {}
    n_parsed = 0
    for path in write_sample(tmp_path / "raw"):
        name = safe_name(path.name)
        quarantine = tmp_path / "quarantine" / f"{name}.parquet"
        ingested = ingest_log_file(path, path.name, tmp_path / "parsed" / name, quarantine)
        cleaned = clean_partition(tmp_path / "parsed" / name, tmp_path / "cleaned" / name)
        assert cleaned.counts_add_up
        n_parsed += len(ingested.records)
        folders[path.name] = tmp_path / "cleaned" / name
    folders["not-cleaned.jsonl"] = tmp_path / "cleaned" / "nothing"

    frame, missing = read_cleaned_for_preferences(folders)
    assert missing == ["not-cleaned.jsonl"]
    assert list(frame.columns) == INPUT_COLUMNS and len(frame) == n_parsed
    kept = frame["filter_reason"] == ""
    assert kept.sum() > 0 and (~kept).sum() > 0
    assert {"low_rating", "edited_reply"} <= set(frame.loc[~kept, "filter_reason"])

    result = build_preferences(frame)
    assert result.n_in == n_parsed == result.conversations_accounted
    assert sum(result.kto_counts.values()) > 0 and result.kto_counts["undesirable"] > 0
    assert result.dropped_counts["not_usable"] > 0
    # The sample's cross-file exact duplicates are used once.
    assert result.dropped_counts["duplicate_reply"] > 0
    assert result.pairs["pair_id"].is_unique and result.kto["example_id"].is_unique
    assert build_preferences(frame).kto["example_id"].tolist() == result.kto["example_id"].tolist()


def test_read_with_no_partitions_cleaned(tmp_path):
    frame, missing = read_cleaned_for_preferences({"a.jsonl": tmp_path / "a"})
    assert missing == ["a.jsonl"] and frame.empty and list(frame.columns) == INPUT_COLUMNS
