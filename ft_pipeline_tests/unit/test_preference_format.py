"""Preference JSONL: OpenAI DPO / TRL DPO / TRL KTO records, writers, and the OpenAI DPO validator."""

import json

import numpy as np
import pandas as pd
import pytest

from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL, MIN_TRAINING_EXAMPLES
from ft_pipeline.lib.preference_format import (
    PREFERENCE_FORMAT_ERROR_KEYS,
    to_openai_preference_record,
    to_trl_dpo_record,
    to_trl_kto_record,
    validate_preference_jsonl,
    write_kto_jsonl,
    write_preference_jsonl,
)
from ft_pipeline.lib.tokens import TokenCounter

PROMPT = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Where is my order?"},
]


def _pairs(n: int = MIN_TRAINING_EXAMPLES) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(n)],
            "rule": ["edit"] * n,
            "prompt": [
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Where is order {i}? ü"}]
                for i in range(n)
            ],
            "chosen": [f"Order {i} ships tomorrow." for i in range(n)],
            "rejected": [f"I don't know about order {i}." for i in range(n)],
        }
    )


def _kto() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "example_id": ["k0", "k1", "k2"],
            "rule": ["rating", "thumbs", "rating"],
            "prompt": [[{"role": "user", "content": f"Question {i}"}] for i in range(3)],
            "completion": ["Good answer.", "Bad answer.", "Another good one."],
            "label": [True, False, True],
        }
    )


def _good_line(i: int = 0) -> dict:
    return to_openai_preference_record(
        [{"role": "user", "content": f"Question {i}"}], f"Right answer {i}.", f"Wrong answer {i}."
    )


def _write_lines(path, lines) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def _errors(report) -> dict[str, int]:
    return {k: v for k, v in report.format_errors.items() if v}


# --------------------------------------------------------------------------- records


def test_openai_record_shape():
    rec = to_openai_preference_record(PROMPT, "Tomorrow.", "No idea.")
    assert rec == {
        "input": {"messages": PROMPT},
        "preferred_output": [{"role": "assistant", "content": "Tomorrow."}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }


def test_trl_dpo_record_shape():
    rec = to_trl_dpo_record(PROMPT, "Tomorrow.", "No idea.")
    assert rec == {
        "prompt": PROMPT,
        "chosen": [{"role": "assistant", "content": "Tomorrow."}],
        "rejected": [{"role": "assistant", "content": "No idea."}],
    }


def test_trl_kto_record_shape():
    assert to_trl_kto_record(PROMPT, "Tomorrow.", np.bool_(False)) == {
        "prompt": PROMPT,
        "completion": [{"role": "assistant", "content": "Tomorrow."}],
        "label": False,
    }


def test_records_accept_parquet_shaped_prompts_and_keep_only_role_and_content():
    # parquet hands list<struct> columns back as object arrays of dicts; extra keys are not exported
    prompt = np.array([{"role": "user", "content": "Hi", "timestamp": "2024-01-01"}], dtype=object)
    rec = to_trl_dpo_record(prompt, "Hello!", "Go away.")
    assert rec["prompt"] == [{"role": "user", "content": "Hi"}]
    assert type(rec["prompt"]) is list


@pytest.mark.parametrize(
    ("prompt", "chosen", "rejected"),
    [
        ([], "a", "b"),
        ([{"role": "user"}], "a", "b"),
        (["hi"], "a", "b"),
        (PROMPT, "", "b"),
        (PROMPT, "a", "   "),
        (PROMPT, None, "b"),
        (PROMPT, "same", " same "),
    ],
)
def test_records_refuse_rows_the_trainers_reject(prompt, chosen, rejected):
    for build in (to_openai_preference_record, to_trl_dpo_record):
        with pytest.raises(ValueError):
            build(prompt, chosen, rejected)


def test_kto_record_refuses_non_boolean_label_and_empty_completion():
    with pytest.raises(ValueError, match="label"):
        to_trl_kto_record(PROMPT, "ok", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="completion"):
        to_trl_kto_record(PROMPT, "", True)


# --------------------------------------------------------------------------- writers


@pytest.mark.parametrize("fmt", ["openai", "trl_dpo"])
def test_write_preference_jsonl_one_line_per_pair(tmp_path, fmt):
    pairs = _pairs(3)
    path = tmp_path / "sub" / f"{fmt}.jsonl"
    assert write_preference_jsonl(pairs, path, fmt) == 3
    raw = path.read_text(encoding="utf-8")
    assert "ü" in raw  # readable UTF-8, not \\u escapes
    lines = [json.loads(line) for line in raw.splitlines()]
    build = to_openai_preference_record if fmt == "openai" else to_trl_dpo_record
    assert lines == [build(p, c, r) for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_writers_leave_no_file_when_a_row_is_bad(tmp_path):
    pairs = _pairs(3)
    pairs.loc[2, "rejected"] = pairs.loc[2, "chosen"]
    path = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="same text"):
        write_preference_jsonl(pairs, path, "openai")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_unknown_format_and_missing_columns(tmp_path):
    with pytest.raises(ValueError, match="unknown preference format"):
        write_preference_jsonl(_pairs(1), tmp_path / "x.jsonl", "anthropic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rejected"):
        write_preference_jsonl(_pairs(1).drop(columns="rejected"), tmp_path / "x.jsonl", "trl_dpo")
    with pytest.raises(ValueError, match="label"):
        write_kto_jsonl(_kto().drop(columns="label"), tmp_path / "k.jsonl")


def test_empty_frames_write_empty_files(tmp_path):
    assert write_preference_jsonl(_pairs(0), tmp_path / "p.jsonl", "trl_dpo") == 0
    assert (tmp_path / "p.jsonl").read_bytes() == b""


def test_written_openai_file_round_trips_from_parquet_and_passes_validation(tmp_path):
    parquet = tmp_path / "pairs.parquet"
    _pairs().to_parquet(parquet, index=False)
    path = tmp_path / "dpo.jsonl"
    assert write_preference_jsonl(pd.read_parquet(parquet), path, "openai") == MIN_TRAINING_EXAMPLES
    report = validate_preference_jsonl(path)
    assert report.ok, report.to_markdown()
    assert report.n_examples == MIN_TRAINING_EXAMPLES
    assert report.n_format_errors == 0
    assert report.n_with_system == MIN_TRAINING_EXAMPLES
    assert report.model == DEFAULT_OPENAI_FINE_TUNING_MODEL
    assert 0 < report.max_tokens_per_example < report.token_limit
    assert "PASS" in report.to_markdown()


# --------------------------------------------------------------------------- TRL loading


def test_trl_dpo_jsonl_loads_with_datasets_in_dpotrainer_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    from trl.data_utils import is_conversational

    path = tmp_path / "dpo.jsonl"
    write_preference_jsonl(_pairs(4), path, "trl_dpo")
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 4
    assert set(ds.column_names) == {"prompt", "chosen", "rejected"}
    row = ds[1]
    assert row["prompt"][-1] == {"role": "user", "content": "Where is order 1? ü"}
    assert row["chosen"] == [{"role": "assistant", "content": "Order 1 ships tomorrow."}]
    assert row["rejected"] == [{"role": "assistant", "content": "I don't know about order 1."}]
    assert is_conversational(row)  # DPOTrainer applies the chat template to prompt + chosen/rejected


def test_trl_kto_jsonl_loads_with_datasets_in_ktotrainer_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    from trl.data_utils import is_conversational

    path = tmp_path / "kto.jsonl"
    assert write_kto_jsonl(_kto(), path) == 3
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert set(ds.column_names) == {"prompt", "completion", "label"}
    assert ds.features["label"].dtype == "bool"
    assert ds["label"] == [True, False, True]
    assert ds[1]["completion"] == [{"role": "assistant", "content": "Bad answer."}]
    assert is_conversational(ds[0])


# --------------------------------------------------------------------------- validation


def test_report_has_every_error_key_even_when_clean(tmp_path):
    path = tmp_path / "ok.jsonl"
    _write_lines(path, [_good_line(i) for i in range(MIN_TRAINING_EXAMPLES)])
    report = validate_preference_jsonl(path)
    assert set(report.format_errors) == set(PREFERENCE_FORMAT_ERROR_KEYS)
    assert report.ok and report.warnings == []
    assert report.to_dict()["ok"] is True


def _broken(code: str):
    """One line that breaks exactly the rule named ``code``."""
    good = _good_line(99)
    msgs = good["input"]["messages"]
    if code == "invalid_json":
        return '{"input": '
    if code == "data_type":
        return [good]
    if code == "missing_key":
        return {k: v for k, v in good.items() if k != "non_preferred_output"}
    if code == "unrecognized_key":
        return {**good, "messages": msgs}
    if code == "missing_messages_list":
        return {**good, "input": {"messages": []}}
    if code == "message_missing_key":
        return {**good, "input": {"messages": [{"role": "system"}, *msgs]}}
    if code == "message_unrecognized_key":
        return {**good, "input": {"messages": [{**msgs[0], "weight": 1}]}}
    if code == "unrecognized_role":
        return {**good, "input": {"messages": [{"role": "robot", "content": "beep"}, *msgs]}}
    if code == "missing_content":
        return {**good, "input": {"messages": [{"role": "system", "content": " "}, *msgs]}}
    if code == "input_not_ending_with_user":
        return {**good, "input": {"messages": [*msgs, {"role": "assistant", "content": "Hm?"}]}}
    if code == "invalid_output":
        return {**good, "preferred_output": [{"role": "user", "content": "Right answer 99."}]}
    if code == "empty_output":
        return {**good, "non_preferred_output": [{"role": "assistant", "content": "  "}]}
    if code == "identical_outputs":
        return {**good, "non_preferred_output": good["preferred_output"]}
    if code == "example_too_long":
        return {**good, "non_preferred_output": [{"role": "assistant", "content": "word " * 70_000}]}
    raise AssertionError(code)


@pytest.mark.parametrize("code", PREFERENCE_FORMAT_ERROR_KEYS)
def test_one_broken_line_per_error_code(tmp_path, code):
    path = tmp_path / "bad.jsonl"
    good = [_good_line(i) for i in range(MIN_TRAINING_EXAMPLES)]
    _write_lines(path, [*good[:3], _broken(code), *good[3:]])
    report = validate_preference_jsonl(path)
    assert _errors(report) == {code: 1}
    assert report.error_examples[code] == [4]
    assert not report.ok
    assert report.n_examples == MIN_TRAINING_EXAMPLES + 1
    md = report.to_markdown()
    assert "FAIL" in md and f"`{code}`" in md


def test_tool_keys_inside_input_are_allowed(tmp_path):
    path = tmp_path / "tools.jsonl"
    lines = [_good_line(i) for i in range(MIN_TRAINING_EXAMPLES)]
    lines[0]["input"].update(tools=[], parallel_tool_calls=True)
    _write_lines(path, lines)
    assert validate_preference_jsonl(path).ok


def test_token_limit_follows_the_model_and_the_counter(tmp_path):
    path = tmp_path / "dpo.jsonl"
    _write_lines(path, [_good_line(i) for i in range(MIN_TRAINING_EXAMPLES)])
    # A counter charging 5,000 tokens per text: input (one user message) + one output is over
    # 10,000 tokens, above gpt-3.5-turbo-0613's 4,096 and below gpt-4.1's 65,536.
    counter = TokenCounter("fake:5000", lambda texts: [5000] * len(texts))
    report = validate_preference_jsonl(path, model="gpt-3.5-turbo-0613", token_counter=counter)
    assert report.token_limit == 4096
    assert report.format_errors["example_too_long"] == MIN_TRAINING_EXAMPLES
    assert report.too_long_examples == [1, 2, 3, 4, 5]
    assert report.token_counter == "fake:5000" and not report.token_counter_is_estimate
    assert validate_preference_jsonl(path, model="gpt-4.1", token_counter=counter).ok


def test_unknown_model_warns_and_uses_default_limit(tmp_path):
    path = tmp_path / "dpo.jsonl"
    _write_lines(path, [_good_line(i) for i in range(MIN_TRAINING_EXAMPLES)])
    report = validate_preference_jsonl(path, model="my-model")
    assert report.ok
    assert any("Unknown model" in w for w in report.warnings)


def test_too_few_examples_fail_unless_not_required_and_blank_lines_warn(tmp_path):
    path = tmp_path / "val.jsonl"
    _write_lines(path, [_good_line(0), "   ", _good_line(1)])
    report = validate_preference_jsonl(path)
    assert report.n_format_errors == 0 and not report.ok
    assert report.n_blank_lines == 1
    assert any("at least" in w for w in report.warnings)
    assert validate_preference_jsonl(path, require_min_examples=False).ok
