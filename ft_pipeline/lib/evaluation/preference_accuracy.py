"""Preference accuracy: on held-out preference pairs, does a model like the chosen reply better?

For a candidate trained on preferences (``method`` ``dpo`` or ``kto``), the evaluation adds this
to the report: for each pair of the preference data's *test* split (``<test>.dpo.jsonl``, TRL's
``prompt``/``chosen``/``rejected``), a model "prefers the chosen reply" when its **length-normalized
log-likelihood** of the chosen reply is strictly higher than that of the rejected one:

* the prompt is rendered with the tokenizer's chat template and ``add_generation_prompt=True``,
  ``prompt + [reply]`` without it (as TRL's ``DPOTrainer`` tokenizes conversational pairs); the
  reply's tokens are those after the longest common prefix of the two token sequences (the
  assistant text and the template's end-of-turn tokens);
* the score is the mean log-probability per reply token (one forward pass, right-padded batches
  with explicit position ids, exactly the loading of :class:`~.generation.LocalGenerator`).
  Mean rather than sum because chosen and rejected replies often differ in length (an edited
  reply) and a sum favours the shorter one whatever the model learnt; DPO's own implicit reward
  uses the sum, so the two can disagree on a pair whose replies differ much in length.

The candidate and the base are scored on the same pairs; the difference of their accuracies
comes with the paired bootstrap CI and McNemar's test used for every binary metric
(:func:`~.statistics.paired_bootstrap`, :func:`~.statistics.mcnemar`). Local models only: an
OpenAI candidate is reported as not measured (no logprob API calls). A test split without pairs
is reported as such, with no number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ft_pipeline.lib.evaluation.statistics import mcnemar, paired_bootstrap

__all__ = [
    "PreferenceAccuracy",
    "PreferencePair",
    "chosen_preferred",
    "evaluate_preference_accuracy",
    "not_measured",
    "preference_accuracy",
    "read_preference_pairs",
    "reply_log_likelihoods",
]

#: Training methods whose candidates get a preference accuracy.


@dataclass(frozen=True)
class PreferencePair:
    """One held-out pair: the conversation before the reply, and the two replies."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class PreferenceAccuracy:
    """What the evaluation found; the numbers are ``None`` unless ``status == "measured"``."""

    status: str
    """``measured``, ``no_pairs`` (the test split has no pairs) or ``not_measured``."""
    reason: str
    """One sentence for the report: what was measured, or why nothing was."""
    n_pairs: int = 0
    candidate: float | None = None
    """Share of pairs where the candidate prefers the chosen reply."""
    base: float | None = None
    delta: float | None = None
    """candidate - base."""
    ci_low: float | None = None
    ci_high: float | None = None
    """Paired bootstrap percentile CI of ``delta``."""
    confidence: float | None = None
    p_value: float | None = None
    """McNemar's two-sided p-value of the difference."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def not_measured(reason: str) -> PreferenceAccuracy:
    """A preference accuracy that could not be measured, with the reason."""
    return PreferenceAccuracy(status="not_measured", reason=reason)


def read_preference_pairs(path: str | Path) -> list[PreferencePair]:
    """The pairs of a TRL DPO JSONL file (``prompt``: messages; ``chosen``/``rejected``: one assistant
    message each). A missing file has no pairs."""
    path = Path(path)
    if not path.is_file():
        return []
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        pairs.append(
            PreferencePair(
                prompt=[{"role": m["role"], "content": m["content"]} for m in record["prompt"]],
                chosen=_reply_text(record["chosen"]),
                rejected=_reply_text(record["rejected"]),
            )
        )
    return pairs


def _reply_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return str(value[-1]["content"])


def _encode(tokenizer: Any, prompt: Sequence[Mapping[str, str]], reply: str) -> tuple[list[int], int]:
    """Token ids of prompt + reply, and where the reply's tokens start."""
    # Rendered to text, then tokenized without special tokens, as LocalGenerator renders prompts.
    prompt_text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": reply}], tokenize=False, add_generation_prompt=False
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = list(tokenizer(full_text, add_special_tokens=False)["input_ids"])
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    if start >= len(full_ids):
        raise ValueError("the reply adds no tokens to the rendered prompt")
    # Token t is predicted from position t-1: a reply at position 0 has no prediction.
    return full_ids, max(start, 1)


def reply_log_likelihoods(
    generator: Any, prompts: Sequence[Sequence[Mapping[str, str]]], replies: Sequence[str]
) -> list[float]:
    """Mean log-probability per reply token of each ``replies[i]`` after ``prompts[i]``, under a
    loaded :class:`~.generation.LocalGenerator` (its model, tokenizer, device and batch size)."""
    import torch

    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    encoded = [_encode(generator.tokenizer, p, r) for p, r in zip(prompts, replies)]
    scores: list[float] = [0.0] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    pad_id = generator.tokenizer.pad_token_id
    bs = max(1, int(generator.config.batch_size))
    with torch.inference_mode():
        for begin in range(0, len(order), bs):
            idx = order[begin : begin + bs]
            width = max(len(encoded[i][0]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            reply_mask = torch.zeros((len(idx), width), dtype=torch.bool)
            for row, i in enumerate(idx):
                ids, start = encoded[i]
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                reply_mask[row, start : len(ids)] = True
            # Right padding with explicit position ids, as LocalGenerator.mean_nll does.
            position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
            logits = generator.model(
                input_ids=input_ids.to(generator.device),
                attention_mask=attention.to(generator.device),
                position_ids=position_ids.to(generator.device),
            ).logits
            logprobs = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
            targets = input_ids[:, 1:].to(generator.device)
            token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            mask = reply_mask[:, 1:].to(generator.device)
            sums = (token_logprobs * mask).sum(-1)
            counts = mask.sum(-1)
            for row, i in enumerate(idx):
                scores[i] = float(sums[row].item() / counts[row].item())
    return scores


def chosen_preferred(generator: Any, pairs: Sequence[PreferencePair]) -> np.ndarray:
    """Per pair, whether ``generator``'s model gives the chosen reply a strictly higher
    length-normalized log-likelihood than the rejected one (a tie counts as not preferred)."""
    prompts = [p.prompt for p in pairs]
    chosen = reply_log_likelihoods(generator, prompts, [p.chosen for p in pairs])
    rejected = reply_log_likelihoods(generator, prompts, [p.rejected for p in pairs])
    return np.asarray(chosen) > np.asarray(rejected)


def preference_accuracy(
    candidate: np.ndarray,
    base: np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PreferenceAccuracy:
    """The accuracies of candidate and base from their per-pair outcomes (1 = chose the chosen
    reply), the paired bootstrap CI of the difference and McNemar's p. No pairs: ``no_pairs``."""
    cand = np.asarray(candidate, dtype=bool)
    ref = np.asarray(base, dtype=bool)
    if cand.size == 0:
        return PreferenceAccuracy(status="no_pairs", reason="the preference test split has no pairs")
    boot = paired_bootstrap(cand, ref, n_resamples=n_resamples, confidence=confidence, seed=seed)
    test = mcnemar(cand, ref)
    return PreferenceAccuracy(
        status="measured",
        reason=f"{cand.size} held-out pairs, length-normalized log-likelihood of chosen vs rejected reply",
        n_pairs=int(cand.size),
        candidate=float(cand.mean()),
        base=float(ref.mean()),
        delta=boot.delta,
        ci_low=boot.ci_low,
        ci_high=boot.ci_high,
        confidence=boot.confidence,
        p_value=test.p_value,
    )


def evaluate_preference_accuracy(
    backend: str,
    test_pairs_path: str | Path | None,
    generators: Mapping[str, Any],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PreferenceAccuracy:
    """Preference accuracy of ``generators["candidate"]`` and ``generators["base"]`` (local
    generators) on the pairs in ``test_pairs_path`` (TRL DPO JSONL of the preference test split).

    Not measured for a non-local ``backend`` (no logprob API calls) or without a path; ``no_pairs``
    when the file has none."""
    if backend != "local_lora":
        return not_measured(f"the candidate's backend is {backend}; log-likelihoods are computed for local models only")
    if not test_pairs_path:
        return not_measured("the model record names no preference test split")
    pairs = read_preference_pairs(test_pairs_path)
    if not pairs:
        return preference_accuracy(np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))
    return preference_accuracy(
        chosen_preferred(generators["candidate"], pairs),
        chosen_preferred(generators["base"], pairs),
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )
