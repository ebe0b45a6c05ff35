"""Optional LLM-as-judge: pairwise preference between the candidate's and a baseline's answers.

Each example is judged twice, with the answers in both orders, because judges favour a position.
A win counts only when both orders agree; anything else is a tie. The judge is any
OpenAI-compatible chat model, called through the real client with bounded concurrency.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ft_pipeline.lib.evaluation.statistics import paired_bootstrap

JUDGE_PROMPT = """You compare two answers of an assistant to the same conversation.

Conversation:
{conversation}

Answer A:
{answer_a}

Answer B:
{answer_b}

Which answer is more helpful, correct and appropriate for the last user message? Reply with exactly one of: A, B, TIE."""  # noqa: E501 (the prompt's own line)

_VERDICT = re.compile(r"\b(A|B|TIE)\b")


def parse_verdict(text: str) -> str:
    """'A', 'B' or 'TIE' from the judge's reply (the first standalone token); unparsable -> 'TIE'."""
    match = _VERDICT.search((text or "").strip().upper())
    return match.group(1) if match else "TIE"


def _render(prompt: Sequence[dict[str, Any]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


@dataclass
class JudgeResult:
    wins: int
    losses: int
    ties: int
    per_example: list[str]
    """'win' / 'loss' / 'tie' of the candidate per example."""
    judge_model: str

    @property
    def win_rate(self) -> float:
        return self.wins / len(self.per_example) if self.per_example else 0.0

    def net_win(self, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
        """The net win rate, (wins − losses) / n, with a bootstrap CI over the prompts: each prompt
        scores +1 (win), 0 (tie) or −1 (loss) against a baseline scoring 0. Above 0 at the lower bound
        means the judge prefers the candidate more often than not, beyond chance."""
        if not self.per_example:
            return {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0}
        outcome = {"win": 1.0, "tie": 0.0, "loss": -1.0}
        scores = np.asarray([outcome[o] for o in self.per_example])
        boot = paired_bootstrap(
            scores, np.zeros_like(scores), n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        return {"delta": boot.delta, "ci_low": boot.ci_low, "ci_high": boot.ci_high}

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge_model": self.judge_model,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "win_rate": self.win_rate,
            "n": len(self.per_example),
        }


def pairwise_judge(
    client: Any,
    judge_model: str,
    prompts: Sequence[Sequence[dict[str, Any]]],
    candidate_answers: Sequence[str],
    baseline_answers: Sequence[str],
    *,
    concurrency: int = 8,
    seed: int = 0,
) -> JudgeResult:
    """Judge candidate vs baseline on every prompt, in both orders."""
    if not (len(prompts) == len(candidate_answers) == len(baseline_answers)):
        raise ValueError("prompts and answers must have the same length")

    def ask(conversation: str, answer_a: str, answer_b: str) -> str:
        response = client.chat.completions.create(
            model=judge_model,
            messages=[
                {
                    "role": "user",
                    "content": JUDGE_PROMPT.format(conversation=conversation, answer_a=answer_a, answer_b=answer_b),
                }
            ],
            temperature=0,
            seed=seed,
            max_completion_tokens=4,
        )
        return parse_verdict(response.choices[0].message.content or "")

    jobs = []
    for prompt, candidate, baseline in zip(prompts, candidate_answers, baseline_answers):
        conversation = _render(prompt)
        jobs.append((conversation, candidate, baseline))  # candidate is A
        jobs.append((conversation, baseline, candidate))  # candidate is B
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        verdicts = list(pool.map(lambda job: ask(*job), jobs))
    outcomes = []
    for first, swapped in zip(verdicts[0::2], verdicts[1::2]):
        if first == "A" and swapped == "B":
            outcomes.append("win")
        elif first == "B" and swapped == "A":
            outcomes.append("loss")
        else:
            outcomes.append("tie")
    return JudgeResult(outcomes.count("win"), outcomes.count("loss"), outcomes.count("tie"), outcomes, judge_model)
