"""Cost and ROI of one evaluation: what training the candidate cost, what 1,000 requests cost with
the candidate and with the model it would replace, and when the training pays for itself.

Every price is configuration (:class:`CostConfig`) and defaults to 0: nothing here guesses a
price. With every price at 0 the figures are 0 and the report says "prices not configured".
Prices are in one currency of your choice (no symbol is printed).

* **Training cost.** A local run: its ``train_runtime_s`` (the trainer's wall time, as the
  ModelRecord's metrics hold it; for a resumed run only the last session's share) in hours times
  ``gpu_hour_price`` when it trained on a GPU (``device == "cuda"``) or ``cpu_hour_price`` on a
  CPU. A hosted (OpenAI) job: its ``trained_tokens`` (both jobs for sft_then_dpo) times
  ``hosted_training_price_per_1m_tokens`` per million.
* **Inference cost per 1k requests**, for the candidate and for the reference (the production
  model when one was evaluated, else the base): the mean input and output tokens per test request,
  measured on the evaluation's own prompts and answers, times the role's input/output price per
  million tokens, times 1,000. Tokens are counted with the model's own tokenizer for a local model
  (the prompt rendered with its chat template, the answer re-encoded), and estimated for anything
  else (prompts with the OpenAI cookbook's message accounting on ``max(chars / 4, words)`` per text,
  answers with ``max(chars / 4, words)``, lib/tokens); the row's ``token_counter`` says which.
* **Payback.** The design sources ask for cost/ROI figures but define no formula beyond
  "training cost against what the candidate saves", so the estimate is exactly that: the monthly
  saving is ``(reference cost per request - candidate cost per request) * requests_per_month`` and
  the payback is ``training cost / monthly saving`` months; "never" when the candidate is not
  cheaper per request; not estimated when the inference prices or ``requests_per_month`` are not
  configured or the training cost is unknown. Quality gains are not priced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ft_pipeline.lib.evaluation.generation import Generator, LocalGenerator
from ft_pipeline.lib.tokens import estimate_token_counts, make_token_counter
from ft_pipeline.lib.training.record import HOSTED_BACKENDS

__all__ = [
    "COST_COLUMNS",
    "CostConfig",
    "add_cost",
    "inference_cost_per_1k",
    "payback",
    "request_tokens",
    "training_cost",
]

#: The figures of one inference row, in the order reports show them.
COST_COLUMNS = (
    "mean_input_tokens",
    "mean_output_tokens",
    "input_price_per_1m_tokens",
    "output_price_per_1m_tokens",
    "cost_per_1k_requests",
)


@dataclass(frozen=True)
class CostConfig:
    """Prices behind the cost and ROI figures. Every default is 0 (not configured): no guessing."""

    gpu_hour_price: float = 0.0
    """Price of one hour of the GPU a local run trained on (its train_runtime_s on device cuda)."""
    cpu_hour_price: float = 0.0
    """Price of one hour of the machine a local run trained on without a GPU."""
    hosted_training_price_per_1m_tokens: float = 0.0
    """Price of one million trained tokens of a hosted (OpenAI) fine-tuning job."""
    candidate_input_price_per_1m_tokens: float = 0.0
    """Price of one million input (prompt) tokens sent to the candidate."""
    candidate_output_price_per_1m_tokens: float = 0.0
    """Price of one million output (generated) tokens of the candidate."""
    reference_input_price_per_1m_tokens: float = 0.0
    """Price of one million input tokens sent to the reference (production, else the base model)."""
    reference_output_price_per_1m_tokens: float = 0.0
    """Price of one million output tokens of the reference (production, else the base model)."""
    requests_per_month: float = 0.0
    """Expected requests per month, for the payback estimate; 0 = no payback estimate."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {value}")

    @property
    def prices_configured(self) -> bool:
        """Some price is not 0."""
        return any(value > 0 for name, value in asdict(self).items() if name != "requests_per_month")

    @property
    def inference_prices_configured(self) -> bool:
        return any(
            value > 0
            for value in (
                self.candidate_input_price_per_1m_tokens,
                self.candidate_output_price_per_1m_tokens,
                self.reference_input_price_per_1m_tokens,
                self.reference_output_price_per_1m_tokens,
            )
        )


def training_cost(
    backend: str, metrics: dict[str, Any] | None, trained_tokens: int | None, config: CostConfig
) -> dict[str, Any]:
    """What training the candidate cost: ``basis`` (``gpu_hours``, ``cpu_hours``,
    ``hosted_tokens``), ``quantity`` (hours or tokens; ``None`` when the record lacks it),
    ``price`` (per hour or per million tokens), ``cost`` (``None`` when the quantity is unknown)
    and ``detail`` (one line saying how)."""
    metrics = metrics or {}
    if backend in HOSTED_BACKENDS:
        price = config.hosted_training_price_per_1m_tokens
        if trained_tokens is None:
            return _training("hosted_tokens", None, price, "the hosted job reported no trained_tokens")
        tokens = int(trained_tokens)
        return _training(
            "hosted_tokens",
            float(tokens),
            price,
            f"{tokens} trained tokens x {price:g} per 1M tokens",
            cost=tokens / 1e6 * price,
        )
    gpu = metrics.get("device") == "cuda"
    basis, price = ("gpu_hours", config.gpu_hour_price) if gpu else ("cpu_hours", config.cpu_hour_price)
    runtime = metrics.get("train_runtime_s")
    if runtime is None:
        return _training(basis, None, price, "the training run recorded no train_runtime_s")
    hours = float(runtime) / 3600
    return _training(
        basis,
        hours,
        price,
        f"{hours:.4f} {'GPU' if gpu else 'CPU'}-hours (train_runtime_s {float(runtime):.1f}) x {price:g} per hour",
        cost=hours * price,
    )


def _training(basis: str, quantity: float | None, price: float, detail: str, cost: float | None = None) -> dict:
    return {"basis": basis, "quantity": quantity, "price": float(price), "cost": cost, "detail": detail}


def inference_cost_per_1k(
    mean_input_tokens: float, mean_output_tokens: float, input_price_per_1m: float, output_price_per_1m: float
) -> float:
    """Cost of 1,000 requests of the given mean size: tokens x price per million x 1,000."""
    per_request = (mean_input_tokens * input_price_per_1m + mean_output_tokens * output_price_per_1m) / 1e6
    return per_request * 1000


def payback(
    training: float | None,
    candidate_per_1k: float,
    reference_per_1k: float,
    reference: str,
    config: CostConfig,
) -> dict[str, Any]:
    """When the training cost is paid back by the candidate's cheaper requests: ``status``
    (``months``, ``never`` or ``not_estimated``), ``months`` (or ``None``), ``monthly_saving``
    (reference minus candidate cost of a month's requests; negative when the candidate costs more)
    and ``detail``."""
    saving = (reference_per_1k - candidate_per_1k) / 1000 * config.requests_per_month

    def result(status: str, months: float | None, detail: str) -> dict[str, Any]:
        return {"status": status, "months": months, "monthly_saving": saving, "detail": detail}

    if not config.inference_prices_configured:
        return result("not_estimated", None, "inference prices not configured")
    if config.requests_per_month <= 0:
        return result("not_estimated", None, "requests_per_month not configured")
    if training is None:
        return result("not_estimated", None, "the training cost is unknown")
    if saving <= 0:
        return result("never", None, f"the candidate is not cheaper per request than the {reference}")
    months = training / saving
    return result(
        "months",
        months,
        f"training cost {training:.4g} / monthly saving {saving:.4g} "
        f"({config.requests_per_month:g} requests a month) = {months:.3g} months",
    )


def request_tokens(
    generator: Generator, prompts: Sequence[list[dict]], answers: Sequence[str]
) -> tuple[list[int], list[int], str]:
    """Input tokens of each prompt and output tokens of each answer as ``generator``'s model sees
    them, and how they were counted (``tokenizer`` or ``estimate:chars/4``)."""
    if isinstance(generator, LocalGenerator):
        tokenizer = generator.tokenizer
        rendered = generator._render(prompts) if prompts else []
        inputs = [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]] if rendered else []
        texts = [str(a) for a in answers]
        outputs = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        return inputs, outputs, "tokenizer"
    total, _ = make_token_counter().count_conversations(list(prompts))
    return (
        [int(n) for n in total],
        [int(n) for n in estimate_token_counts([str(a) for a in answers])],
        "estimate:chars/4",
    )


def _mean(values: Sequence[int]) -> float:
    return float(sum(values)) / len(values) if values else 0.0


def add_cost(
    extra: dict[str, Any],
    *,
    backend: str,
    metrics: dict[str, Any] | None,
    trained_tokens: int | None,
    generators: dict[str, Generator],
    prompts: Sequence[list[dict]],
    answers: dict[str, Sequence[str]],
    config: CostConfig,
) -> None:
    """``extra["cost"]``: the training cost, the inference cost per 1k requests of the candidate
    and of the reference (``production`` in ``generators``, else ``base``) on ``prompts`` and the
    role's ``answers`` to them, and the payback (what ``evaluate_candidate`` records in report.json
    and the registry)."""
    reference = "production" if "production" in generators else "base"
    training = training_cost(backend, metrics, trained_tokens, config)
    prices = {
        "candidate": (config.candidate_input_price_per_1m_tokens, config.candidate_output_price_per_1m_tokens),
        reference: (config.reference_input_price_per_1m_tokens, config.reference_output_price_per_1m_tokens),
    }
    rows: list[dict[str, Any]] = []
    for role, (input_price, output_price) in prices.items():
        inputs, outputs, counter = request_tokens(generators[role], prompts, answers[role])
        mean_in, mean_out = _mean(inputs), _mean(outputs)
        rows.append(
            {
                "model": role,
                "model_id": generators[role].name,
                "requests": len(inputs),
                "mean_input_tokens": mean_in,
                "mean_output_tokens": mean_out,
                "input_price_per_1m_tokens": float(input_price),
                "output_price_per_1m_tokens": float(output_price),
                "cost_per_1k_requests": inference_cost_per_1k(mean_in, mean_out, input_price, output_price),
                "token_counter": counter,
            }
        )
    extra["cost"] = {
        "prices_configured": config.prices_configured,
        "settings": asdict(config),
        "reference": reference,
        "training": training,
        "inference": rows,
        "payback": payback(
            training["cost"], rows[0]["cost_per_1k_requests"], rows[1]["cost_per_1k_requests"], reference, config
        ),
    }
