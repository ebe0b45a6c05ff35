"""LLM-as-judge through the real openai client against the fake server: both orders must agree."""

import re

import pytest

from ft_pipeline.lib.evaluation.judge import pairwise_judge, parse_verdict
from ft_pipeline_tests.fakes.openai_server import FakeOpenAI

PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]


def _answer_after(label, content):
    return re.search(rf"Answer {label}:\n(.*?)\n\n", content, re.S).group(1)


def test_parse_verdict():
    assert parse_verdict("A") == "A" and parse_verdict(" b.") == "B" and parse_verdict("tie") == "TIE"
    assert parse_verdict("no idea") == "TIE" and parse_verdict("") == "TIE"


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def _client(fake):
    return fake.client()


def test_consistent_preference_counts_as_a_win(fake):
    def judge(messages, body):
        content = messages[-1]["content"]
        return "A" if "GOOD" in _answer_after("A", content) else "B"

    fake.register_model("judge-1")
    fake.set_responder("judge-1", judge)
    candidate = ["GOOD answer"] * 4 + ["meh", "meh"]
    baseline = ["meh"] * 4 + ["GOOD answer", "meh"]
    result = pairwise_judge(_client(fake), "judge-1", PROMPTS, candidate, baseline, concurrency=4)
    assert result.per_example == ["win"] * 4 + ["loss", "tie"]
    assert (result.wins, result.losses, result.ties) == (4, 1, 1)


def test_a_position_biased_judge_produces_only_ties(fake):
    fake.register_model("judge-2")
    fake.set_responder("judge-2", lambda messages, body: "A")
    result = pairwise_judge(_client(fake), "judge-2", PROMPTS, ["x"] * 6, ["y"] * 6)
    assert result.per_example == ["tie"] * 6 and result.win_rate == 0.0


def test_net_win_rate_has_a_bootstrap_ci():
    from ft_pipeline.lib.evaluation.judge import JudgeResult

    clear = JudgeResult(18, 1, 1, ["win"] * 18 + ["loss"] + ["tie"], "judge")
    net = clear.net_win(n_resamples=500, seed=1)
    assert net["delta"] == pytest.approx(17 / 20) and 0 < net["ci_low"] < net["delta"] < net["ci_high"] <= 1
    even = JudgeResult(5, 5, 0, ["win", "loss"] * 5, "judge").net_win(n_resamples=500, seed=1)
    assert even["delta"] == 0 and even["ci_low"] < 0 < even["ci_high"]
    assert JudgeResult(0, 0, 0, [], "judge").net_win() == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0}
