"""Readers: every accepted format, and one test per bad-input kind (quarantine with reason+line)."""

import gzip
import json

import pandas as pd
import pytest

from ft_pipeline.lib.records import QUARANTINE_REASONS, ReadConfig, conversation_from_row, read_log_file

GOOD = {
    "conversation_id": "c1",
    "user_id": "u1",
    "created_at": "2024-05-01T10:00:00Z",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ],
    "rating": 5,
    "response_time_ms": 1200,
    "edited": False,
    "tags": ["greeting"],
    "channel": "web",
}


def _write(tmp_path, lines, name="logs.jsonl"):
    path = tmp_path / name
    data = b"".join(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode() for line in lines)
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def test_raw_record_parses_with_unknown_keys_in_metadata(tmp_path):
    result = read_log_file(_write(tmp_path, [GOOD]))
    assert result.n_records == 1 and len(result.quarantine) == 0
    row = result.conversations.iloc[0].to_dict()
    assert row["conversation_id"] == "c1" and row["source_format"] == "raw"
    assert row["source_file"] == "logs.jsonl" and row["source_line"] == 1
    assert json.loads(row["metadata"]) == {"channel": "web"}
    conversation = conversation_from_row(row)
    assert conversation.messages[2].content == "Hello!" and conversation.metadata == {"channel": "web"}


def test_openai_and_sharegpt_lines(tmp_path):
    lines = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {
            "id": "sg-1",
            "conversations": [
                {"from": "system", "value": "s"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "r"},
            ],
        },
    ]
    result = read_log_file(_write(tmp_path, lines, "mixed.jsonl.gz"))
    assert list(result.conversations["source_format"]) == ["openai", "sharegpt"]
    assert result.conversations["conversation_id"].tolist() == ["mixed.jsonl.gz#1", "sg-1"]
    assert [m["role"] for m in result.conversations["messages"].iloc[1]] == ["system", "user", "assistant"]


def test_parquet_file(tmp_path):
    path = tmp_path / "export.parquet"
    pd.DataFrame([GOOD, {**GOOD, "conversation_id": "c2", "rating": None}]).to_parquet(path)
    result = read_log_file(path)
    assert result.conversations["conversation_id"].tolist() == ["c1", "c2"]
    assert result.conversations["rating"].isna().tolist() == [False, True]


BAD_CASES = [
    ("invalid_json", b'{"messages": [\n'),
    ("invalid_utf8", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'),
    ("not_an_object", b"[1, 2, 3]\n"),
    ("messages_missing", {"conversation_id": "x", "text": "hi"}),
    ("messages_not_a_list", {"messages": "hi"}),
    ("message_not_an_object", {"messages": ["hi"]}),
    ("unknown_role", {"messages": [{"role": "customer", "content": "hi"}]}),
    ("content_missing", {"messages": [{"role": "user"}]}),
    ("content_missing", {"messages": [{"role": "user", "content": None}]}),
    ("content_not_a_string", {"messages": [{"role": "user", "content": 42}]}),
    ("wrong_field_type", {**GOOD, "rating": "five"}),
    ("wrong_field_type", {**GOOD, "rating": 9}),
    ("wrong_field_type", {**GOOD, "edited": "no"}),
    ("wrong_field_type", {**GOOD, "response_time_ms": -5}),
    ("wrong_field_type", {**GOOD, "tags": "a,b"}),
    ("wrong_field_type", {**GOOD, "created_at": "yesterday"}),
    ("wrong_field_type", {**GOOD, "user_id": {"id": 1}}),
    ("empty_conversation", {"messages": []}),
    ("oversize_record", {"messages": [{"role": "user", "content": "x" * 5000}]}),
]


@pytest.mark.parametrize("reason,line", BAD_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_CASES)])
def test_each_bad_input_is_quarantined_with_reason_and_line(tmp_path, reason, line):
    path = _write(tmp_path, [GOOD, line, {**GOOD, "conversation_id": "c3"}])
    result = read_log_file(path, ReadConfig(max_record_bytes=4096))
    assert reason in QUARANTINE_REASONS
    assert result.quarantine[["reason", "source_line", "source_file"]].values.tolist() == [[reason, 2, "logs.jsonl"]]
    assert result.conversations["conversation_id"].tolist() == ["c1", "c3"]
    assert result.n_records == 3
    assert result.quarantine["detail"].iloc[0]


def test_blank_lines_are_not_records(tmp_path):
    result = read_log_file(_write(tmp_path, [GOOD, b"\n", b"   \n", GOOD]))
    assert result.n_records == 2 and result.blank_lines == 2 and len(result.quarantine) == 0


def test_truncated_gzip_keeps_what_was_readable(tmp_path):
    data = b"".join((json.dumps({**GOOD, "conversation_id": f"c{i}"}) + "\n").encode() for i in range(200))
    blob = gzip.compress(data)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])
    result = read_log_file(path)
    assert 0 < len(result.conversations) < 200
    assert result.quarantine["reason"].tolist() == ["unreadable_file"]
    assert result.quarantine["source_line"].iloc[0] > len(result.conversations)


def test_corrupt_parquet_never_raises(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    result = read_log_file(path)
    assert len(result.conversations) == 0
    assert result.quarantine["reason"].tolist() == ["unreadable_file"]


def test_unsupported_file_type_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hi")
    with pytest.raises(ValueError, match="unsupported log file type"):
        read_log_file(path)
