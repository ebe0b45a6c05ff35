"""Cost and ROI per evaluation (lib/evaluation/cost.py): the arithmetic on hand-checked numbers,
the zero-price default, and what report.md and the asset's metadata show."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ft_pipeline.lib.evaluation.cost import (
    CostConfig,
    add_cost,
    inference_cost_per_1k,
    payback,
    request_tokens,
    training_cost,
)
from ft_pipeline.lib.evaluation.generation import GenerationConfig, LocalGenerator, ScriptedGenerator
from ft_pipeline.lib.evaluation.report import write_report
from ft_pipeline.lib.evaluation.runner import EvaluationConfig, run_evaluation


def _prompt(i: int) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"}]


def test_training_cost_of_a_local_run_is_hours_times_the_device_price():
    config = CostConfig(gpu_hour_price=2.0, cpu_hour_price=0.5)
    gpu = training_cost("local_lora", {"train_runtime_s": 5400.0, "device": "cuda"}, None, config)
    assert gpu["basis"] == "gpu_hours" and gpu["quantity"] == pytest.approx(1.5)
    assert gpu["cost"] == pytest.approx(3.0)  # 1.5 h x 2.0
    cpu = training_cost("local_lora", {"train_runtime_s": 1800.0, "device": "cpu"}, None, config)
    assert cpu["basis"] == "cpu_hours" and cpu["cost"] == pytest.approx(0.25)  # 0.5 h x 0.5
    unknown = training_cost("local_lora", {"device": "cuda"}, None, config)
    assert unknown["cost"] is None and "train_runtime_s" in unknown["detail"]


def test_training_cost_of_a_hosted_job_is_trained_tokens_times_the_price():
    config = CostConfig(hosted_training_price_per_1m_tokens=8.0, gpu_hour_price=99.0)
    hosted = training_cost("openai", {"train_runtime_s": 3600.0, "device": "cuda"}, 2_500_000, config)
    assert hosted["basis"] == "hosted_tokens" and hosted["quantity"] == 2_500_000
    assert hosted["cost"] == pytest.approx(20.0)  # 2.5M tokens x 8.0 per 1M; the GPU price plays no part
    assert training_cost("openai", {}, None, config)["cost"] is None


def test_inference_cost_per_1k_requests():
    # 200 input tokens x 0.15/1M + 50 output tokens x 0.60/1M = 6e-5 per request -> 0.06 per 1k.
    assert inference_cost_per_1k(200, 50, 0.15, 0.60) == pytest.approx(0.06)
    assert inference_cost_per_1k(200, 50, 0.0, 0.0) == 0.0


def test_payback_months_never_and_not_estimated():
    config = CostConfig(reference_input_price_per_1m_tokens=1.0, requests_per_month=100_000)
    # Saving (0.5 - 0.06) / 1000 x 100,000 = 44 a month; 20 / 44 = 0.4545 months.
    paid = payback(20.0, 0.06, 0.5, "production", config)
    assert paid["status"] == "months"
    assert paid["monthly_saving"] == pytest.approx(44.0) and paid["months"] == pytest.approx(20 / 44)
    never = payback(20.0, 0.5, 0.06, "production", config)
    assert never["status"] == "never" and never["months"] is None and never["monthly_saving"] == pytest.approx(-44.0)
    assert "not cheaper" in never["detail"] and "production" in never["detail"]
    assert payback(20.0, 0.06, 0.06, "base", config)["status"] == "never"  # equal cost saves nothing
    assert payback(0.0, 0.06, 0.5, "base", config)["months"] == 0.0  # free training pays back at once
    assert payback(None, 0.06, 0.5, "base", config)["detail"] == "the training cost is unknown"
    no_volume = payback(20.0, 0.06, 0.5, "base", CostConfig(reference_input_price_per_1m_tokens=1.0))
    assert (no_volume["status"], no_volume["detail"]) == ("not_estimated", "requests_per_month not configured")
    no_prices = payback(0.0, 0.0, 0.0, "base", CostConfig(requests_per_month=100_000))
    assert (no_prices["status"], no_prices["detail"]) == ("not_estimated", "inference prices not configured")


def test_prices_default_to_zero_and_must_not_be_negative():
    config = CostConfig()
    assert not config.prices_configured and not config.inference_prices_configured
    assert CostConfig(gpu_hour_price=1.0).prices_configured
    assert not CostConfig(requests_per_month=10).prices_configured  # a volume is not a price
    with pytest.raises(ValueError, match="gpu_hour_price"):
        CostConfig(gpu_hour_price=-1.0)
    with pytest.raises(ValueError, match="requests_per_month"):
        CostConfig(requests_per_month=float("nan"))


def _evaluated(generators: dict) -> object:
    test = pd.DataFrame(
        {
            "conversation_id": [f"c{i}" for i in range(4)],
            "messages": [[*_prompt(i), {"role": "assistant", "content": f"answer {i}"}] for i in range(4)],
            "tags": [["billing"]] * 4,
        }
    )
    return run_evaluation(test, generators, config=EvaluationConfig(use_regression_suite=False, n_resamples=50))


PRICED = CostConfig(
    hosted_training_price_per_1m_tokens=10.0,
    candidate_input_price_per_1m_tokens=1.0,
    candidate_output_price_per_1m_tokens=2.0,
    reference_input_price_per_1m_tokens=3.0,
    reference_output_price_per_1m_tokens=6.0,
    requests_per_month=1_000_000,
)


def _with_cost(config: CostConfig, production: bool = False):
    generators = {
        "candidate": ScriptedGenerator(lambda p: f"answer {p[-1]['content'][1:]}", name="cand"),
        "base": ScriptedGenerator(lambda p: "no idea", name="base-model"),
    }
    if production:
        generators["production"] = ScriptedGenerator(lambda p: "no idea", name="prod-model")
    result = _evaluated(generators)
    examples = result.examples
    add_cost(
        result.extra,
        backend="openai",
        metrics={},
        trained_tokens=1_000_000,
        generators=generators,
        prompts=[_prompt(i) for i in range(4)],
        answers={r: examples.loc[examples["model"] == r, "prediction"].tolist() for r in generators},
        config=config,
    )
    return result


def test_add_cost_measures_tokens_and_prices_each_role():
    cost = _with_cost(PRICED).extra["cost"]
    # Each prompt by the cookbook accounting on the chars/4 estimate: 3 (reply priming) + system message
    # (3 + "system" 2 + "Be brief." 3) + user message (3 + "user" 1 + "q0" 1) = 16 tokens; every answer
    # ("answer 0", "no idea") is 2 tokens.
    candidate, reference = cost["inference"]
    assert cost["reference"] == "base" and reference["model"] == "base" and reference["model_id"] == "base-model"
    assert (candidate["requests"], candidate["mean_input_tokens"], candidate["mean_output_tokens"]) == (4, 16.0, 2.0)
    assert candidate["token_counter"] == "estimate:chars/4"
    assert candidate["cost_per_1k_requests"] == pytest.approx((16 * 1 + 2 * 2) / 1000)  # 0.02
    assert reference["cost_per_1k_requests"] == pytest.approx((16 * 3 + 2 * 6) / 1000)  # 0.06
    assert cost["training"]["cost"] == pytest.approx(10.0)  # 1M trained tokens x 10 per 1M
    # Saving (0.06 - 0.02) / 1000 x 1M = 40 a month; 10 / 40 = 0.25 months.
    assert cost["payback"]["monthly_saving"] == pytest.approx(40.0)
    assert cost["payback"]["months"] == pytest.approx(0.25)
    assert cost["prices_configured"] and cost["settings"]["requests_per_month"] == 1_000_000

    with_production = _with_cost(PRICED, production=True).extra["cost"]
    assert with_production["reference"] == "production"
    assert [r["model"] for r in with_production["inference"]] == ["candidate", "production"]


def test_cost_is_in_report_json_and_report_md(tmp_path):
    result = _with_cost(PRICED)
    paths = write_report(result, tmp_path / "priced", {"eval_id": "e1", "primary_metric": "rougeL"})
    assert json.loads(paths["json"].read_text())["extra"]["cost"]["payback"]["months"] == pytest.approx(0.25)
    section = paths["markdown"].read_text().split("## Cost", 1)[1].split("\n## ", 1)[0]
    assert "Prices not configured" not in section
    assert "Training: 10.0000 (1000000 trained tokens x 10 per 1M tokens)." in section
    assert "| candidate | 4 | 16.0 | 2.0 | 1 | 2 | 0.0200 | estimate:chars/4 |" in section
    assert "| base | 4 | 16.0 | 2.0 | 3 | 6 | 0.0600 | estimate:chars/4 |" in section
    assert "Payback: 0.25 months" in section

    unpriced = _with_cost(CostConfig())
    section = write_report(unpriced, tmp_path / "unpriced", {"eval_id": "e2", "primary_metric": "rougeL"})[
        "markdown"
    ].read_text()
    section = section.split("## Cost", 1)[1].split("\n## ", 1)[0]
    assert "Prices not configured" in section and "| candidate | 4 | 16.0 | 2.0 | 0 | 0 | 0.0000 |" in section
    assert "Payback: not estimated: inference prices not configured." in section

    result.extra.pop("cost")
    paths = write_report(result, tmp_path / "without", {"eval_id": "e3", "primary_metric": "rougeL"})
    assert "## Cost" not in paths["markdown"].read_text()


def test_asset_metadata_has_a_table_and_headline_floats():
    import dagster as dg

    from ft_pipeline.defs.evaluation import _cost_metadata

    metadata = _cost_metadata(_with_cost(PRICED).extra["cost"])
    assert isinstance(metadata["cost"], dg.TableMetadataValue)
    assert [r.data["model"] for r in metadata["cost"].records] == ["candidate", "base"]
    assert [c.name for c in metadata["cost"].schema.columns] == [
        "model",
        "requests",
        "mean_input_tokens",
        "mean_output_tokens",
        "input_price_per_1m_tokens",
        "output_price_per_1m_tokens",
        "cost_per_1k_requests",
    ]
    assert metadata["training_cost"] == pytest.approx(10.0)
    assert metadata["candidate_cost_per_1k_requests"] == pytest.approx(0.02)
    assert metadata["payback_months"] == pytest.approx(0.25)
    assert all(isinstance(metadata[k], float) for k in metadata if k != "cost")

    unpriced = _cost_metadata(_with_cost(CostConfig()).extra["cost"])
    assert unpriced["payback"] == "prices not configured" and unpriced["training_cost"] == 0.0
    never = _cost_metadata(_with_cost(CostConfig(candidate_output_price_per_1m_tokens=5.0)).extra["cost"])
    assert never["payback"] == "not estimated: requests_per_month not configured"
    costly = CostConfig(candidate_output_price_per_1m_tokens=5.0, requests_per_month=10)
    assert _cost_metadata(_with_cost(costly).extra["cost"])["payback"].startswith("never: ")
    assert _cost_metadata(None) == {}


def test_run_config_prices_reach_the_lib_config():
    from ft_pipeline.defs.evaluation import EvaluationRunConfig

    assert EvaluationRunConfig().to_lib().cost == CostConfig()
    lib = EvaluationRunConfig(gpu_hour_price=2.5, reference_output_price_per_1m_tokens=0.6, requests_per_month=5e4)
    assert lib.to_lib().cost == CostConfig(
        gpu_hour_price=2.5, reference_output_price_per_1m_tokens=0.6, requests_per_month=5e4
    )


def test_a_local_model_is_counted_with_its_tokenizer(tmp_path, one_torch_thread):
    from ft_pipeline.lib.training.base_models import resolve_base_model

    texts = ["How do I reset my password?", "Open settings and choose reset.", "Thanks!"] * 5
    base = resolve_base_model("tiny", texts, tmp_path / "cache").path
    generator = LocalGenerator(base, config=GenerationConfig(max_new_tokens=4), device="cpu")
    prompts = [_prompt(0), [{"role": "user", "content": "How do I reset my password? " * 3}]]
    inputs, outputs, counter = request_tokens(generator, prompts, ["Open settings and choose reset.", ""])
    assert counter == "tokenizer"
    tokenizer = generator.tokenizer
    expected = [
        len(
            tokenizer(
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True), add_special_tokens=False
            )["input_ids"]
        )
        for p in prompts
    ]
    # The chat template's markers are counted; the longer prompt has more tokens.
    assert inputs == expected and inputs[1] > inputs[0]
    assert outputs[0] > 0 and outputs[1] == 0
