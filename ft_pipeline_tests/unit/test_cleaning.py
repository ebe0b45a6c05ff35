"""Cleaning: normalization, role rules, quality filter with reason codes, scrubbing, in-file dedup."""

import pandas as pd
import pytest

from ft_pipeline.lib.cleaning import FILTER_REASONS, CleaningConfig, clean_conversations, normalize_text
from ft_pipeline.lib.records import CONVERSATION_COLUMNS

REPLY = "To reset the hub, hold the button on the back for ten seconds until the light turns white."


def _row(cid, messages=None, **fields):
    row = {c: None for c in CONVERSATION_COLUMNS}
    row.update(conversation_id=cid, tags=[], source_format="raw", source_file="f.jsonl", source_line=1)
    row["messages"] = messages or [
        {"role": "user", "content": f"How do I reset my hub {cid}?"},
        {"role": "assistant", "content": REPLY + f" ({cid})"},
    ]
    row.update(fields)
    return row


def _clean(rows, **config):
    return clean_conversations(pd.DataFrame(rows, columns=CONVERSATION_COLUMNS), CleaningConfig(**config))


def test_normalize_text_nfc_whitespace_invisible():
    assert normalize_text("  Cafe\u0301 \t is   open\r\n\n\n\nyes \u200b ") == "Caf\u00e9 is open\n\nyes"
    assert normalize_text("a\x00b\x07c") == "abc"
    clean = "Already clean text.\nTwo lines."
    assert normalize_text(clean) == clean


@pytest.mark.parametrize(
    "reason,row",
    [
        ("low_rating", _row("r", rating=3.0)),
        ("slow_response", _row("s", response_time_ms=5000)),
        ("edited_reply", _row("e", edited=True)),
        ("negative_feedback", _row("t", metadata='{"thumbs": "down"}')),
        ("negative_feedback", _row("g", metadata='{"regenerated": true}')),
        (
            "short_assistant_reply",
            _row("x", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure thing."}]),
        ),
        (
            "repetitive",
            _row("p", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "try again " * 30}]),
        ),
        (
            "system_not_first",
            _row(
                "y",
                [
                    {"role": "user", "content": "hi"},
                    {"role": "system", "content": "x"},
                    {"role": "assistant", "content": REPLY},
                ],
            ),
        ),
        (
            "missing_user_or_assistant",
            _row("m", [{"role": "system", "content": "x"}, {"role": "user", "content": "anyone?"}]),
        ),
    ],
)
def test_quality_rules_filter_with_reason(reason, row):
    result = _clean([_row("ok"), row])
    assert result.kept["conversation_id"].tolist() == ["ok"]
    assert result.filtered["filter_reason"].tolist() == [reason]
    assert reason in FILTER_REASONS and result.filter_counts == {reason: 1}


def test_positive_or_no_feedback_passes_and_the_feedback_filter_can_be_switched_off():
    rows = [
        _row("up", metadata='{"thumbs": "up"}'),
        _row("other", metadata='{"channel": "app"}'),
        _row("down", metadata='{"thumbs": "down"}'),
        _row("mixed", metadata='{"thumbs": "down", "accepted": true}'),  # contradictory: no signal
    ]
    assert sorted(_clean(rows).kept["conversation_id"]) == ["mixed", "other", "up"]
    assert sorted(_clean(rows, drop_negative_feedback=False).kept["conversation_id"]) == [
        "down",
        "mixed",
        "other",
        "up",
    ]


def test_thresholds_are_configurable_and_unrated_passes():
    rows = [_row("a", rating=3.0), _row("b", response_time_ms=6000), _row("c")]
    result = _clean(rows, min_rating=3.0, max_response_time_ms=10_000)
    assert sorted(result.kept["conversation_id"]) == ["a", "b", "c"]
    assert len(_clean([_row("d", rating=4.0, response_time_ms=4999)]).kept) == 1


def test_role_repairs():
    messages = [
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "My hub is offline."},
        {"role": "user", "content": "Since yesterday."},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": "Hello?"},
    ]
    result = _clean([_row("r", messages)])
    kept = result.kept["messages"].iloc[0]
    assert [m["role"] for m in kept] == ["user", "assistant"]
    assert kept[0]["content"] == "My hub is offline.\n\nSince yesterday."
    assert result.repairs == {"dropped_leading_assistant": 1, "merged_consecutive_turns": 1, "trimmed_trailing_user": 1}


def test_strict_role_switches_filter_instead_of_repairing():
    merged = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": REPLY},
    ]
    tail = [{"role": "user", "content": "a"}, {"role": "assistant", "content": REPLY}, {"role": "user", "content": "?"}]
    result = _clean([_row("m", merged), _row("t", tail)], merge_consecutive_turns=False, trim_trailing_user=False)
    assert result.filtered["filter_reason"].tolist() == ["roles_not_alternating", "last_message_not_assistant"]


def test_pii_is_scrubbed_in_kept_and_filtered_rows():
    pii = [
        {"role": "user", "content": "Mail me at jane.doe@example.com please"},
        {"role": "assistant", "content": REPLY},
    ]
    result = _clean([_row("k", pii), _row("f", pii, rating=1.0)])
    assert result.kept["messages"].iloc[0][0]["content"] == "Mail me at <EMAIL> please"
    assert result.filtered["messages"].iloc[0][0]["content"] == "Mail me at <EMAIL> please"
    assert result.pii_counts == {"EMAIL": 1}


def test_in_file_exact_duplicates_keep_best_copy():
    same = [{"role": "user", "content": "Where is my order?"}, {"role": "assistant", "content": REPLY}]
    rows = [_row("low", same, rating=4.0), _row("high", same, rating=5.0), _row("other")]
    result = _clean(rows)
    assert sorted(result.kept["conversation_id"]) == ["high", "other"]
    dup = result.filtered.iloc[0]
    assert (
        dup["conversation_id"] == "low"
        and dup["filter_reason"] == "duplicate_in_file"
        and "high" in dup["filter_detail"]
    )


def test_counts_add_up_and_signatures_present():
    rows = [_row(str(i), rating=[5.0, 1.0, None][i % 3]) for i in range(30)]
    result = _clean(rows)
    assert len(result.kept) + len(result.filtered) == 30
    assert len(result.kept) == 20
    for column in ("exact_hash", "context_hash", "prefix_hashes", "minhash"):
        assert column in result.kept and result.kept[column].notna().all()
    assert result.kept["exact_hash"].is_unique


def test_empty_input():
    result = _clean([])
    assert len(result.kept) == 0 and len(result.filtered) == 0 and result.filter_counts == {}
