"""OpenAI chat fine-tuning JSONL: export, cookbook format checks (+ our fixes), reports."""

import dataclasses
import json

import numpy as np
import pytest

from ft_pipeline.lib import openai_format
from ft_pipeline.lib.openai_format import (
    DEFAULT_TOKEN_LIMIT,
    FORMAT_ERROR_KEYS,
    INVALID_JSON_KEY,
    MIN_TRAINING_EXAMPLES,
    MODEL_TOKEN_LIMITS,
    estimate_training_cost_tokens,
    to_openai_record,
    token_limit_for_model,
    validate_examples,
    validate_jsonl_file,
    write_openai_jsonl,
)
from ft_pipeline.lib.tokens import TokenCounter


def _conv(i: int = 0) -> list[dict]:
    return [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": f"Where is order {i}?"},
        {"role": "assistant", "content": f"Order {i} ships tomorrow."},
    ]


def _good(n: int = MIN_TRAINING_EXAMPLES) -> list[dict]:
    return [{"messages": _conv(i)} for i in range(n)]


def _errors(report) -> dict[str, int]:
    return {k: v for k, v in report.format_errors.items() if v}


def test_error_keys_are_the_cookbooks_seven():
    assert FORMAT_ERROR_KEYS == (
        "data_type",
        "missing_messages_list",
        "message_missing_key",
        "message_unrecognized_key",
        "unrecognized_role",
        "missing_content",
        "example_missing_assistant_message",
    )


ASSISTANT = {"role": "assistant", "content": "ok"}
USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("bad_example", "key"),
    [
        (["not", "a", "dict"], "data_type"),
        ("a string", "data_type"),
        ({"messages": []}, "missing_messages_list"),
        ({"prompt": "x"}, "missing_messages_list"),
        ({"messages": "hi"}, "missing_messages_list"),
        ({"messages": [{"content": "hi"}, ASSISTANT]}, "message_missing_key"),
        ({"messages": [{"role": "user"}, ASSISTANT]}, "message_missing_key"),
        ({"messages": ["just text", USER, ASSISTANT]}, "message_missing_key"),
        ({"messages": [{**USER, "timestamp": 1}, ASSISTANT]}, "message_unrecognized_key"),
        ({"messages": [USER, {**ASSISTANT, "weight": 2}]}, "message_unrecognized_key"),
        ({"messages": [USER, {**ASSISTANT, "weight": True}]}, "message_unrecognized_key"),
        ({"messages": [{**USER, "weight": 1}, ASSISTANT]}, "message_unrecognized_key"),
        ({"messages": [{"role": "robot", "content": "beep"}, ASSISTANT]}, "unrecognized_role"),
        ({"messages": [{"role": "developer", "content": "x"}, USER, ASSISTANT]}, "unrecognized_role"),
        ({"messages": [{"role": "user", "content": ""}, ASSISTANT]}, "missing_content"),
        ({"messages": [{"role": "user", "content": ["parts"]}, ASSISTANT]}, "missing_content"),
        ({"messages": [USER, {"role": "assistant", "content": 42}]}, "missing_content"),
        ({"messages": [USER, {"role": "assistant", "content": None}]}, "missing_content"),
        ({"messages": [USER]}, "example_missing_assistant_message"),
    ],
)
def test_each_error_key_alone(bad_example, key):
    report = validate_examples(_good() + [bad_example])
    assert _errors(report) == {key: 1}
    assert report.error_examples[key] == [MIN_TRAINING_EXAMPLES + 1]  # 1-based position
    assert not report.ok
    assert set(FORMAT_ERROR_KEYS) <= set(report.format_errors)


def test_clean_data_with_allowed_extensions_is_ok():
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "track", "arguments": "{}"}}
    examples = _good() + [
        {
            "messages": [
                {"role": "user", "content": "track it", "name": "alice"},
                {"role": "assistant", "content": None, "tool_calls": [tool_call]},
                {"role": "tool", "content": "in transit", "tool_call_id": "call_1"},
                {"role": "assistant", "content": "It is in transit.", "weight": 1},
            ]
        },
        {
            "messages": [
                USER,
                {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "done"},
                {**ASSISTANT, "weight": 0},
                ASSISTANT,
            ]
        },
    ]
    report = validate_examples(examples)
    assert _errors(report) == {}
    assert report.ok


def test_message_level_errors_count_per_message_like_the_cookbook():
    ex = {"messages": [{"role": "user", "content": "", "x": 1}, {"role": "user", "content": "", "y": 2}, ASSISTANT]}
    report = validate_examples([ex, ex])
    assert _errors(report) == {"missing_content": 4, "message_unrecognized_key": 4}
    assert report.error_examples["missing_content"] == [1, 2]


def test_warnings_and_statistics():
    examples = _good(12) + [
        {"messages": [USER, ASSISTANT]},  # no system
        {"messages": [{"role": "system", "content": "s"}, ASSISTANT]},  # no user
        {"messages": [USER, ASSISTANT, USER]},  # ends with user; no system
        {"messages": [USER, {**ASSISTANT, "weight": 0}]},  # nothing to train on; no system
    ]
    report = validate_examples(examples)
    assert report.ok  # warnings do not fail validation
    assert report.n_examples == 16
    assert report.n_missing_system == 3
    assert report.n_missing_user == 1
    assert report.n_last_not_assistant == 1
    assert report.n_no_trainable_assistant == 1
    text = "\n".join(report.warnings)
    assert "3 examples are missing a system message" in text
    assert "1 examples are missing a user message" in text
    assert "do not end with an assistant message" in text
    assert "weight 0 on every assistant message" in text
    dist = report.distributions["num_messages_per_example"]
    assert set(dist) == {"min", "max", "mean", "median", "p10", "p90"}  # honest p10/p90, no "p5/p95"
    assert (dist["min"], dist["max"], dist["median"]) == (2, 3, 3.0)
    assert set(report.distributions) == {
        "num_messages_per_example",
        "num_total_tokens_per_example",
        "num_assistant_tokens_per_example",
    }
    assert report.token_counter == "estimate:chars/4" and report.token_counter_is_estimate


def test_too_long_examples_with_a_fake_counter():
    # 1000 tokens per text containing LONG, 1 otherwise; overhead 0 makes totals exact.
    counter = TokenCounter(
        "fake", lambda texts: np.array([1000 if "LONG" in t else 1 for t in texts]), per_message_overhead=0
    )
    long_ex = {"messages": [{"role": "user", "content": "LONG " * 3}] * 5 + [ASSISTANT]}  # 5000 + 6 role/content + 3
    examples = _good(10) + [long_ex, long_ex]
    report = validate_examples(examples, model="gpt-3.5-turbo-0613", token_counter=counter)
    assert report.token_limit == 4096
    assert report.n_too_long == 2
    assert report.too_long_examples == [11, 12]
    assert report.ok  # truncation is a warning, as in the cookbook
    assert any("2 examples may be over the 4,096 token limit" in w for w in report.warnings)
    assert not any("estimated" in w for w in report.warnings)
    dist = report.distributions["num_total_tokens_per_example"]
    assert dist["max"] == 5000 + 5 + 2 + 3  # 5 user roles + assistant role + content "ok" + priming
    # Billing counts min(limit, tokens): 10 short examples + 2 x 4096.
    short_total = 3 * (1 + 1) + 3
    assert report.n_billing_tokens_per_epoch == 10 * short_total + 2 * 4096

    same = validate_examples(examples, model="gpt-4o-mini-2024-07-18", token_counter=counter)
    assert same.token_limit == 65536 and same.n_too_long == 0


def test_model_limits():
    assert MODEL_TOKEN_LIMITS["gpt-3.5-turbo-0613"] == 4096
    assert MODEL_TOKEN_LIMITS["gpt-3.5-turbo-0125"] == 16385
    assert MODEL_TOKEN_LIMITS["gpt-4.1-mini-2025-04-14"] == 65536
    assert token_limit_for_model("ft:gpt-4o-mini-2024-07-18:acme::abc123") == 65536
    assert token_limit_for_model("llama-3") is None
    report = validate_examples(_good(), model="llama-3")
    assert report.token_limit == DEFAULT_TOKEN_LIMIT == 16385
    assert any("Unknown model 'llama-3'" in w for w in report.warnings)


def test_fewer_than_minimum_examples():
    report = validate_examples(_good(MIN_TRAINING_EXAMPLES - 1))
    assert _errors(report) == {}
    assert not report.ok
    assert any("at least 10" in w for w in report.warnings)
    relaxed = validate_examples(_good(3), require_min_examples=False)  # e.g. a validation split
    assert relaxed.ok and not any("at least" in w for w in relaxed.warnings)


def test_invalid_json_lines_are_reported_with_line_numbers(tmp_path):
    path = tmp_path / "train.jsonl"
    good = [json.dumps(ex) for ex in _good(10)]
    lines = [
        good[0].encode(),
        b"{bad json",
        good[1].encode(),
        b"   ",
        b"not json at all",
        b'{"messages": "\xff\xfe"}',
    ] + [g.encode() for g in good[2:]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = validate_jsonl_file(path)
    assert report.format_errors[INVALID_JSON_KEY] == 3
    assert report.error_examples[INVALID_JSON_KEY] == [2, 5, 6]
    assert _errors(report) == {INVALID_JSON_KEY: 3}
    assert report.n_examples == 13  # blank line skipped, invalid lines still count
    assert report.n_blank_lines == 1
    assert any("1 blank lines were skipped" in w for w in report.warnings)
    assert not report.ok
    assert report.file_bytes == path.stat().st_size


def test_file_error_line_numbers_are_physical_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [json.dumps(ex) for ex in _good(10)]
    rows.insert(3, "")
    rows.insert(6, json.dumps({"messages": [USER]}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = validate_jsonl_file(path)
    assert report.error_examples == {"example_missing_assistant_message": [7]}


def test_file_over_size_limit(tmp_path, monkeypatch):
    path = tmp_path / "train.jsonl"
    assert write_openai_jsonl([_conv(i) for i in range(10)], path) == 10
    monkeypatch.setattr(openai_format, "MAX_FILE_BYTES", 100)
    report = validate_jsonl_file(path)
    assert _errors(report) == {}
    assert not report.ok
    assert any("upload limit" in w for w in report.warnings)


def test_round_trip_write_then_validate(tmp_path):
    convs = [_conv(i) for i in range(11)]
    convs[0] = [{**m, "timestamp": "2024-01-01", "rating": 5} for m in convs[0]]  # metadata is dropped
    convs[1] = [*convs[1][:2], {"role": "assistant", "content": "Ça arrive — 明日 📦", "weight": 0}, USER, ASSISTANT]
    records = [{"messages": _conv(99), "tools": [{"type": "function"}]}]
    path = tmp_path / "out" / "train.jsonl"
    assert write_openai_jsonl(convs + records, path) == 12
    raw = path.read_text(encoding="utf-8")
    assert "明日 📦" in raw  # ensure_ascii=False
    lines = raw.split("\n")
    assert len(lines) == 13 and lines[-1] == ""
    first = json.loads(lines[0])
    assert first == {"messages": [{"role": m["role"], "content": m["content"]} for m in _conv(0)]}
    assert json.loads(lines[1])["messages"][2]["weight"] == 0
    assert json.loads(lines[11])["tools"] == [{"type": "function"}]
    assert not path.with_name("train.jsonl.tmp").exists()

    report = validate_jsonl_file(path)
    assert report.ok, report.to_markdown()
    assert report.n_examples == 12
    assert report.format_errors[INVALID_JSON_KEY] == 0


def test_to_openai_record():
    msgs = [{**USER, "id": 7}, {**ASSISTANT, "name": "agent"}, ASSISTANT]
    assert to_openai_record(msgs, weights=[None, 0, 1]) == {
        "messages": [USER, {**ASSISTANT, "name": "agent", "weight": 0}, {**ASSISTANT, "weight": 1}]
    }
    assert to_openai_record([USER, {**ASSISTANT, "weight": np.int64(1)}])["messages"][1]["weight"] == 1
    with pytest.raises(ValueError, match="only allowed on assistant"):
        to_openai_record(msgs, weights=[1, None, None])
    with pytest.raises(ValueError, match="0 or 1"):
        to_openai_record(msgs, weights=[None, 2, None])
    with pytest.raises(ValueError, match="entries"):
        to_openai_record(msgs, weights=[1])


def test_write_accepts_numpy_object_arrays(tmp_path):
    # pandas/pyarrow hand list columns over as numpy object arrays.
    convs = [np.array(_conv(i), dtype=object) for i in range(10)]
    path = tmp_path / "train.jsonl"
    assert write_openai_jsonl(convs, path) == 10
    assert validate_jsonl_file(path).ok
    assert validate_examples([{"messages": c} for c in convs]).ok


def test_markdown_and_dict_report():
    report = validate_examples(_good(10) + [{"messages": [USER]}, "oops"])
    md = report.to_markdown()
    assert "FAIL" in md
    assert "| examples | 12 |" in md
    assert "`example_missing_assistant_message` | 1 | 11" in md
    assert "`data_type` | 1 | 12" in md
    assert "estimate:chars/4" in md and "(estimate)" in md
    assert "p10" in md and "p90" in md and "p95" not in md
    d = report.to_dict()
    json.dumps(d)  # plain JSON
    assert d["ok"] is False and d["n_format_errors"] == 2
    assert "PASS" in validate_examples(_good()).to_markdown()


def test_training_cost_heuristic():
    report = validate_examples(_good(12))
    cost = estimate_training_cost_tokens(report)
    assert cost["epochs_source"] == "heuristic"
    assert cost["n_epochs"] == 8  # 12 * 3 < 100 -> min(25, 100 // 12)
    assert cost["n_billing_tokens"] == 8 * report.n_billing_tokens_per_epoch > 0
    assert cost["is_estimate"] is True

    def with_n(n):
        return dataclasses.replace(report, n_examples=n, n_billing_tokens_per_epoch=1000)

    assert estimate_training_cost_tokens(with_n(2))["n_epochs"] == 25  # min(25, 100 // 2 = 50)
    assert estimate_training_cost_tokens(with_n(1000))["n_epochs"] == 3
    assert estimate_training_cost_tokens(with_n(10_000))["n_epochs"] == 2  # max(1, 25000 // 10000)
    assert estimate_training_cost_tokens(with_n(100_000))["n_epochs"] == 1
    given = estimate_training_cost_tokens(with_n(10_000), n_epochs=4)
    assert (given["n_epochs"], given["n_billing_tokens"], given["epochs_source"]) == (4, 4000, "given")
    with pytest.raises(ValueError):
        estimate_training_cost_tokens(report, n_epochs=0)
