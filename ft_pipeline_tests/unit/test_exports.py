"""Exports of the splits: Alpaca mapping, the datasets folder and the dataset card."""

import json
from pathlib import Path

import pandas as pd
import pytest

from ft_pipeline.lib.exports import (
    AlpacaSkip,
    alpaca_record,
    export_splits,
    removal_counts,
    write_alpaca_jsonl,
)


def _m(role, content):
    return {"role": role, "content": content}


def test_single_turn_has_empty_input_and_system():
    record = alpaca_record([_m("user", "Where is my order?"), _m("assistant", "It ships today.")])
    assert record == {"instruction": "Where is my order?", "input": "", "output": "It ships today.", "system": ""}


def test_multi_turn_puts_earlier_turns_in_input_and_system_prompt_apart():
    record = alpaca_record(
        [
            _m("system", "You are a support agent."),
            _m("user", "Hi"),
            _m("assistant", "Hello, how can I help?"),
            _m("user", "Reset my password"),
            _m("assistant", "Click 'Forgot password'."),
        ]
    )
    assert record["system"] == "You are a support agent."
    assert record["instruction"] == "Reset my password"
    assert record["input"] == "User: Hi\nAssistant: Hello, how can I help?"
    assert record["output"] == "Click 'Forgot password'."


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([_m("system", "s"), _m("assistant", "a")], "no_user_turn"),
        ([_m("user", "q")], "no_final_reply"),
        ([_m("user", "q"), _m("assistant", " ")], "no_final_reply"),
        ([_m("user", "q"), _m("assistant", "a"), _m("assistant", "b")], "turns_after_last_user"),
        ([], "no_final_reply"),
    ],
)
def test_conversations_alpaca_cannot_express_are_refused_with_a_reason(messages, reason):
    with pytest.raises(AlpacaSkip) as caught:
        alpaca_record(messages)
    assert caught.value.reason == reason


def _split_frame(conversations, source="logs/a.jsonl"):
    return pd.DataFrame(
        {
            "conversation_id": [f"c{i}" for i in range(len(conversations))],
            "messages": conversations,
            "tags": [["billing"] for _ in conversations],
            "source_file": [source] * len(conversations),
        }
    )


def _ok(i):
    return [_m("user", f"question {i}"), _m("assistant", f"answer {i}")]


def test_alpaca_file_counts_skipped_conversations(tmp_path):
    parquet = tmp_path / "train.parquet"
    _split_frame([_ok(0), [_m("system", "s"), _m("assistant", "a")], _ok(1)]).to_parquet(parquet)
    export = write_alpaca_jsonl(parquet, tmp_path / "alpaca" / "train.jsonl")
    lines = [json.loads(line) for line in Path(export.path).read_text(encoding="utf-8").splitlines()]
    assert [line["instruction"] for line in lines] == ["question 0", "question 1"]
    assert export.records == 2
    assert export.skipped == {"no_user_turn": 1}


def test_export_folder_loads_back_and_card_has_counts_and_license(tmp_path):
    datasets = pytest.importorskip("datasets")
    frames = {
        "train": _split_frame([_ok(i) for i in range(5)] + [[_m("user", "q")]]),
        "validation": _split_frame([_ok(10)], source="logs/b.jsonl"),
        "test": _split_frame([_ok(20), _ok(21)]),
    }
    paths = {}
    for name, frame in frames.items():
        paths[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(paths[name])
    removed = tmp_path / "removed.parquet"
    pd.DataFrame({"conversation_id": ["x", "y", "z"], "reason": ["exact", "exact", "near"]}).to_parquet(removed)

    result = export_splits(
        paths,
        tmp_path / "exports",
        version="abc123",
        pii_policy="scrubbed into typed placeholders",
        license="cc-by-4.0",
        filters={"curation": removal_counts(removed)},
    )

    loaded = datasets.load_from_disk(result.hf_folder)
    assert set(loaded) == {"train", "validation", "test"}
    for name, frame in frames.items():
        assert loaded[name]["conversation_id"] == frame["conversation_id"].tolist()
        assert loaded[name]["messages"] == frame["messages"].tolist()
    assert result.alpaca["train"].records == 5
    assert result.alpaca["train"].skipped == {"no_final_reply": 1}

    card = Path(result.card_path).read_text(encoding="utf-8")
    assert card.startswith('---\nlicense: "cc-by-4.0"\n')
    assert "| train | 6 | 5 | 1 |" in card
    assert "| validation | 1 | 1 | 0 |" in card
    assert "| total | 9 | 8 | 1 |" in card
    assert "| logs/a.jsonl | 6 | 0 | 2 |" in card
    assert "| logs/b.jsonl | 0 | 1 | 0 |" in card
    assert "| exact | 2 |" in card and "| near | 1 |" in card
    assert "scrubbed into typed placeholders" in card
