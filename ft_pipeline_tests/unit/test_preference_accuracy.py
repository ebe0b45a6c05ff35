"""Preference accuracy of a preference-trained candidate (lib/evaluation/preference_accuracy.py).

* the reply log-likelihood of the real local loading path (the tiny base through
  :class:`LocalGenerator`, batched and padded) equals a direct forward pass on each sequence alone;
* a synthetic model whose preferences are known by construction (it puts its probability mass on
  a chosen set of tokens) gives the known accuracies, CI and delta through a TRL DPO JSONL file;
* the CI is the paired bootstrap (and McNemar) of the existing statistics;
* no pairs and an OpenAI candidate give no number; the report line and the asset's metadata rows.
Nothing is downloaded; the tiny base has random weights.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from ft_pipeline.defs.evaluation import _preference_metadata
from ft_pipeline.lib.evaluation.generation import GenerationConfig, LocalGenerator
from ft_pipeline.lib.evaluation.preference_accuracy import (
    PreferencePair,
    chosen_preferred,
    evaluate_preference_accuracy,
    preference_accuracy,
    read_preference_pairs,
    reply_log_likelihoods,
)
from ft_pipeline.lib.evaluation.report import render_markdown
from ft_pipeline.lib.evaluation.statistics import mcnemar, paired_bootstrap
from ft_pipeline.lib.training.base_models import resolve_base_model

_TEXTS = [
    "My plug is offline. What should I do?",
    "Unplug the plug, wait ten seconds, plug it back in and open the app.",
    "The camera keeps blinking after the update.",
    "Hold the reset button for five seconds until the light turns blue.",
    "Thanks, it works now.",
    "Glad to help. Have a great day.",
    "You are Nimbus, a support assistant.",
]


@pytest.fixture(scope="module")
def base_gen(tmp_path_factory, one_torch_thread):
    base = resolve_base_model("tiny", _TEXTS * 3, tmp_path_factory.mktemp("tiny") / "cache").path
    return LocalGenerator(base, config=GenerationConfig(batch_size=3), device="cpu")


def _write_pairs(path, pairs: list[PreferencePair]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            record = {
                "prompt": p.prompt,
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}],
            }
            f.write(json.dumps(record) + "\n")


def test_reply_log_likelihood_equals_a_direct_forward_pass(base_gen):
    tok = base_gen.tokenizer
    prompts = [
        [{"role": "user", "content": _TEXTS[0]}],
        [{"role": "system", "content": _TEXTS[6]}, {"role": "user", "content": _TEXTS[2]}],
        [
            {"role": "user", "content": _TEXTS[0]},
            {"role": "assistant", "content": _TEXTS[1]},
            {"role": "user", "content": _TEXTS[4]},
        ],
        [{"role": "user", "content": _TEXTS[2]}],
    ]
    replies = [_TEXTS[1], _TEXTS[3], _TEXTS[5], "Thanks."]
    batched = reply_log_likelihoods(base_gen, prompts, replies)  # batch size 3: padded batches
    for prompt, reply, got in zip(prompts, replies, batched):
        prompt_ids = tok(tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))["input_ids"]
        full = prompt + [{"role": "assistant", "content": reply}]
        full_ids = tok(tok.apply_chat_template(full, tokenize=False))["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        reply_ids = full_ids[len(prompt_ids) :]
        assert tok.decode(reply_ids).startswith(reply)  # the reply, then the template's end of turn
        with torch.inference_mode():
            logits = base_gen.model(input_ids=torch.tensor([full_ids])).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        expected = [float(logprobs[t - 1, full_ids[t]]) for t in range(len(prompt_ids), len(full_ids))]
        assert got == pytest.approx(sum(expected) / len(expected), abs=1e-4)  # mean per reply token
    assert len(set(batched)) == len(batched)


class _Favours(torch.nn.Module):
    """A synthetic causal LM that gives every token in ``favoured`` a logit of 10 and every other
    token 0, at every position: a reply made of favoured tokens is more likely, per token."""

    def __init__(self, vocab_size: int, favoured: set[int]):
        super().__init__()
        self.logits = torch.zeros(vocab_size)
        self.logits[sorted(favoured)] = 10.0

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1).clone())


def _synthetic(tok, favoured: set[int]) -> SimpleNamespace:
    return SimpleNamespace(
        model=_Favours(len(tok), favoured), tokenizer=tok, device=torch.device("cpu"), config=GenerationConfig()
    )


def _ids(tok, text: str) -> set[int]:
    return set(tok(text, add_special_tokens=False)["input_ids"])


def test_known_preferences_give_known_accuracies(base_gen, tmp_path):
    tok = base_gen.tokenizer
    user = [{"role": "user", "content": _TEXTS[0]}]
    replies = ["camera blinking", "reset button", "plug offline", "great day"]
    pairs = [
        PreferencePair(user, replies[0], replies[1]),
        PreferencePair(user, replies[2], replies[3]),
        PreferencePair(user, replies[0], replies[3]),
    ]
    # No token shared between the replies: a model favouring one reply's tokens prefers that reply.
    token_sets = [_ids(tok, " " + r) | _ids(tok, r) for r in replies]
    assert all(not (a & b) for i, a in enumerate(token_sets) for b in token_sets[i + 1 :])
    path = tmp_path / "test.dpo.jsonl"
    _write_pairs(path, pairs)
    assert read_preference_pairs(path) == pairs

    # The candidate favours the chosen replies (0 and 2), the base the rejected ones (1 and 3).
    candidate = _synthetic(tok, token_sets[0] | token_sets[2])
    base = _synthetic(tok, token_sets[1] | token_sets[3])
    assert chosen_preferred(candidate, pairs).tolist() == [True, True, True]
    assert chosen_preferred(base, pairs).tolist() == [False, False, False]

    result = evaluate_preference_accuracy(
        "local_lora", path, {"candidate": candidate, "base": base}, n_resamples=500, seed=3
    )
    assert result.status == "measured" and result.n_pairs == 3
    assert (result.candidate, result.base, result.delta) == (1.0, 0.0, 1.0)
    assert (result.ci_low, result.ci_high) == (1.0, 1.0)  # every pair moved the same way
    # The base prefers what the candidate does (the same model): no difference at all.
    same = evaluate_preference_accuracy("local_lora", path, {"candidate": candidate, "base": candidate})
    assert (same.candidate, same.base, same.delta, same.ci_low, same.ci_high) == (1.0, 1.0, 0.0, 0.0, 0.0)
    assert same.p_value == 1.0


def test_ci_is_the_paired_bootstrap_and_mcnemar_of_the_pairs():
    rng = np.random.default_rng(0)
    cand = rng.random(60) < 0.7
    base = rng.random(60) < 0.4
    result = preference_accuracy(cand, base, n_resamples=1000, confidence=0.9, seed=5)
    boot = paired_bootstrap(cand, base, n_resamples=1000, confidence=0.9, seed=5)
    assert result.candidate == pytest.approx(cand.mean()) and result.base == pytest.approx(base.mean())
    assert result.delta == pytest.approx(cand.mean() - base.mean())
    assert (result.ci_low, result.ci_high, result.confidence) == (boot.ci_low, boot.ci_high, 0.9)
    assert result.ci_low < result.delta < result.ci_high
    assert result.p_value == mcnemar(cand, base).p_value


def test_no_pairs_and_openai_give_no_number(tmp_path):
    empty = tmp_path / "test.dpo.jsonl"
    empty.write_text("", encoding="utf-8")
    for path in (empty, tmp_path / "missing.dpo.jsonl"):
        result = evaluate_preference_accuracy("local_lora", path, {})  # no model is touched
        assert result.status == "no_pairs" and result.candidate is None and result.delta is None
        assert result.n_pairs == 0
    openai = evaluate_preference_accuracy("openai", empty, {})
    assert openai.status == "not_measured" and "local models only" in openai.reason
    assert openai.candidate is None and openai.base is None
    assert evaluate_preference_accuracy("local_lora", None, {}).status == "not_measured"


def _report(preference: dict) -> str:
    report = {
        "decision": {"passed": False, "rules": []},
        "summary": {"candidate": {}, "base": {}},
        "model_ids": {"candidate": "c", "base": "b"},
        "n_examples": 1,
        "metrics": [],
        "comparisons": {},
        "extra": {"preference_accuracy": preference},
    }
    return render_markdown(report)


def test_report_line_and_metadata_rows():
    measured = preference_accuracy(np.array([1, 1, 0, 1]), np.array([0, 1, 0, 0]), n_resamples=200).to_dict()
    text = _report(measured)
    assert "## Preference accuracy" in text
    assert "4 test pairs" in text and "candidate 0.7500 · base 0.2500 · delta +0.5000" in text
    rows = _preference_metadata(measured)
    assert rows["candidate_preference_accuracy"] == 0.75 and rows["base_preference_accuracy"] == 0.25
    assert rows["preference_accuracy_delta"] == 0.5 and rows["preference_pairs"] == 4
    assert rows["preference_accuracy_delta_ci_low"] <= 0.5 <= rows["preference_accuracy_delta_ci_high"]
    assert all(isinstance(v, float) for k, v in rows.items() if k != "preference_pairs")

    none = preference_accuracy(np.zeros(0), np.zeros(0)).to_dict()
    assert "No number: the preference test split has no pairs." in _report(none)
    assert _preference_metadata(none) == {"preference_accuracy": "no pairs: the preference test split has no pairs"}
    openai = evaluate_preference_accuracy("openai", None, {}).to_dict()
    assert "Not measured: the candidate's backend is openai" in _report(openai)
    assert "candidate_preference_accuracy" not in _preference_metadata(openai)
    assert _preference_metadata(None) == {}
    assert "Preference accuracy" not in _report({})


def test_candidate_evaluation_reads_the_test_pairs_of_the_records_preference_data(base_gen, tmp_path):
    from ft_pipeline.lib.evaluation.candidate import _add_preference_accuracy
    from ft_pipeline.lib.evaluation.runner import EvaluationConfig
    from ft_pipeline.lib.training.record import ModelRecord

    tok = base_gen.tokenizer
    (tmp_path / "preferences" / "v1").mkdir(parents=True)
    pair = PreferencePair([{"role": "user", "content": _TEXTS[2]}], "reset button", "great day")
    _write_pairs(tmp_path / "preferences" / "v1" / "test.dpo.jsonl", [pair])
    record = ModelRecord(
        version="k",
        path="models/k/model.json",
        backend="local_lora",
        run_key="k",
        base_model="tiny",
        data_version="v1",
        # Relative to the data directory (as a portable path): resolved against it.
        split_paths={"test": {"dpo": "preferences/v1/test.dpo.jsonl"}},
        config={"method": "dpo"},
        config_hash="h",
        metrics={},
    )
    result = SimpleNamespace(extra={})
    generators = {
        "candidate": _synthetic(tok, _ids(tok, " reset button") | _ids(tok, "reset button")),
        "base": _synthetic(tok, _ids(tok, " great day") | _ids(tok, "great day")),
    }
    _add_preference_accuracy(result, record, generators, EvaluationConfig(n_resamples=100), tmp_path, None)  # type: ignore[arg-type]
    preference = result.extra["preference_accuracy"]
    assert preference["status"] == "measured" and preference["n_pairs"] == 1
    assert (preference["candidate"], preference["base"], preference["delta"]) == (1.0, 0.0, 1.0)
    assert "preference_accuracy_vs_production" not in result.extra
    # With a (local) production model evaluated too, the candidate is also compared with it.
    generators["production"] = generators["candidate"]
    production = SimpleNamespace(backend="local_lora")
    _add_preference_accuracy(result, record, generators, EvaluationConfig(n_resamples=100), tmp_path, production)  # type: ignore[arg-type]
    versus = result.extra["preference_accuracy_vs_production"]
    assert versus["status"] == "measured" and (versus["candidate"], versus["base"], versus["delta"]) == (1.0, 1.0, 0.0)
    # An OpenAI production model has no log-probabilities here: not measured, with the reason.
    _add_preference_accuracy(
        result,
        record,
        generators,
        EvaluationConfig(n_resamples=100),
        tmp_path,
        SimpleNamespace(backend="openai"),  # type: ignore[arg-type]
    )
    assert result.extra["preference_accuracy_vs_production"]["status"] == "not_measured"
