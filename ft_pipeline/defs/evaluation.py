"""evaluation_report (with the blocking promotion gate) and promoted_model."""

import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import (
    ASSET_OWNERS,
    MODEL_TAGS,
    data_path,
    png_markdown,
    svg_markdown,
    table,
    within_data_dir,
)
from ft_pipeline.defs.provider_exit import replacement_metadata, replacement_plan, replacing_hosted_model
from ft_pipeline.defs.resources import (
    AzureOpenAIResource,
    ModelRegistryResource,
    OpenAIFineTuningResource,
    PiiPolicy,
    PipelineStorage,
    TogetherResource,
)
from ft_pipeline.defs.training import model_kinds
from ft_pipeline.lib.evaluation.candidate import CandidateEvaluation, CandidateEvaluationConfig, evaluate_candidate
from ft_pipeline.lib.evaluation.cost import COST_COLUMNS, CostConfig
from ft_pipeline.lib.evaluation.gate import PromotionGate
from ft_pipeline.lib.evaluation.generation import GenerationConfig
from ft_pipeline.lib.evaluation.latency import LATENCY_COLUMNS, LatencyConfig
from ft_pipeline.lib.evaluation.promotion import NotPromoted, promote_candidate
from ft_pipeline.lib.evaluation.prompted_baseline import DEFAULT_SYSTEM_PROMPT, PromptedBaselineConfig
from ft_pipeline.lib.evaluation.report import EXAMPLE_TEXT_CHARS, EXAMPLES_SHOWN, example_rows
from ft_pipeline.lib.evaluation.review import ReviewConfig
from ft_pipeline.lib.evaluation.robustness import ROBUSTNESS_COLUMNS, RobustnessConfig
from ft_pipeline.lib.evaluation.runner import EvaluationConfig, EvaluationResult
from ft_pipeline.lib.evaluation.summary import EvaluationSummary, read_evaluation_summary
from ft_pipeline.lib.inline_charts import metric_means_svg
from ft_pipeline.lib.pii import PiiConfig
from ft_pipeline.lib.provider_exit import ReplacementRefused, check_replacement_candidate, replacement_reason
from ft_pipeline.lib.serving.snippets import curl_snippet, openai_snippet
from ft_pipeline.lib.training.fine_tune import read_splits
from ft_pipeline.lib.training.openai_job import FineTuneError
from ft_pipeline.lib.training.record import ModelRecord, read_model_record

# 3: preference primary metrics, latency; 4: cost and ROI; 5: robustness, prompted baseline, review
# sample, hosted backends
EVALUATION_CODE_VERSION = "5"
_GATE = PromotionGate()
_EVAL = EvaluationConfig()
_GEN = GenerationConfig()
_CANDIDATE = CandidateEvaluationConfig()
_LATENCY = LatencyConfig()
_COST = CostConfig()
_REVIEW = ReviewConfig()
_PROMPTED = PromptedBaselineConfig()
_ROBUSTNESS = RobustnessConfig()


class EvaluationRunConfig(dg.Config):
    """How the candidate is evaluated and what the promotion gate requires (defaults documented)."""

    model_name: str = Field(
        default=_CANDIDATE.model_name, description="Registry name of the model line the candidate belongs to."
    )
    primary_metric: str = Field(
        default=_GATE.primary_metric,
        description="Metric whose CI lower bound must beat base and production: an answer metric (rougeL, "
        "token_f1, exact_match, ...), preference_accuracy (candidates trained with dpo, kto or sft_then_dpo: "
        "held-out preference pairs) or judge_win_rate (needs judge_model: the judge's net win rate).",
    )
    margin: float = Field(default=_GATE.margin, description="The CI lower bound must be strictly above this.")
    guardrail_metrics: list[str] = Field(
        default=list(_GATE.guardrail_metrics), description="Metrics that must not regress."
    )
    guardrail_tolerance: float = Field(
        default=_GATE.guardrail_tolerance, description="Allowed drop of a guardrail mean."
    )
    regression_suite_min_ratio: float = Field(
        default=_GATE.regression_suite_min_ratio,
        description="Share of the base's regression-suite score the candidate must keep.",
    )
    production_rule: Literal["superiority", "non_inferiority"] = Field(
        default=cast(Literal["superiority", "non_inferiority"], _GATE.production_rule),
        description="How the candidate must compare with production on the primary metric: superiority (its CI "
        "lower bound above margin: beats_production) or non_inferiority (above -non_inferiority_margin: "
        "non_inferior_to_production; the job replace_hosted_model uses it). The base must be beaten either way.",
    )
    non_inferiority_margin: float = Field(
        default=_GATE.non_inferiority_margin,
        description="With production_rule non_inferiority: how much worse than production (absolute, on the "
        "primary metric) the CI lower bound of (candidate - production) may go.",
    )
    replace_hosted_production: bool = Field(
        default=False,
        description="Provider exit (set by the job replace_hosted_model): evaluate on the splits the hosted "
        "production model was trained on, against that hosted model; fails when production is not hosted or the "
        "candidate was not trained on those splits.",
    )
    use_regression_suite: bool = Field(
        default=_EVAL.use_regression_suite, description="Run the shipped general prompts."
    )
    task: str = Field(default=_EVAL.task, description="auto | generation | json | classification")
    n_resamples: int = Field(default=_EVAL.n_resamples, description="Paired-bootstrap resamples.")
    seed: int = Field(default=_EVAL.seed, description="Bootstrap and generation seed.")
    max_new_tokens: int = Field(default=_GEN.max_new_tokens, description="Longest generated answer.")
    max_test_examples: int = Field(
        default=_CANDIDATE.max_test_examples,
        description="Evaluate a fixed subset of this many test examples (ordered by content hash; the same for "
        "every model); 0 = the whole test split. For quick runs on a CPU.",
    )
    batch_size: int = Field(default=_GEN.batch_size, description="Local generation batch size.")
    concurrency: int = Field(default=_GEN.concurrency, description="OpenAI-compatible requests in flight.")
    compute_perplexity: bool = Field(
        default=_CANDIDATE.compute_perplexity, description="Validation perplexity for local models."
    )
    examples_shown: int = Field(
        default=EXAMPLES_SHOWN,
        description="Test prompts shown in evaluation_report's `examples` table (the last user turn, the reference, "
        "the candidate's and the base's answers and their scores on the primary metric; PII scrubbed, shortened "
        f"to {EXAMPLE_TEXT_CHARS} characters); 0 = no table. Every answer is in examples.parquet either way.",
    )
    judge_model: str = Field(
        default=_CANDIDATE.judge_model,
        description="Optional LLM-as-judge: an OpenAI-compatible chat model (through the openai_fine_tuning "
        "resource) that compares candidate and baseline answers pairwise in both orders; empty = off. "
        "Part of the gate only with primary_metric judge_win_rate (and then only with enough agreement with "
        "human review: judge_min_kappa).",
    )
    measure_latency: bool = Field(
        default=_LATENCY.enabled,
        description="Measure the candidate's and the base's latency (p50/p95 per request) and throughput "
        "(requests/s, new tokens/s) at each of latency_batch_sizes through the evaluation's generators; shown in "
        "report.md and the asset's `latency` table. Informational, not part of the gate.",
    )
    latency_prompts: int = Field(
        default=_LATENCY.n_prompts,
        description="Test prompts (a seeded sample) for the latency runs; each batch size sends at least this many "
        "requests, a multiple of the batch size.",
    )
    latency_batch_sizes: list[int] = Field(
        default=list(_LATENCY.batch_sizes),
        description="Batch sizes of the latency runs (local models; requests in flight for OpenAI-compatible ones).",
    )
    latency_max_new_tokens: int = Field(
        default=_LATENCY.max_new_tokens,
        description="Longest answer in the latency runs (shorter than max_new_tokens, to keep their cost small).",
    )
    gpu_hour_price: float = Field(
        default=_COST.gpu_hour_price,
        description="Price of one GPU-hour: a local run that trained on a GPU costs its train_runtime_s in hours "
        "times this. 0 = not configured (every price defaults to 0; nothing is guessed). One currency for all prices.",
    )
    cpu_hour_price: float = Field(
        default=_COST.cpu_hour_price,
        description="Price of one hour of the machine a local run trained on without a GPU; 0 = not configured.",
    )
    hosted_training_price_per_1m_tokens: float = Field(
        default=_COST.hosted_training_price_per_1m_tokens,
        description="Price of one million trained tokens of a hosted (OpenAI) fine-tuning job (the job's "
        "trained_tokens); 0 = not configured.",
    )
    candidate_input_price_per_1m_tokens: float = Field(
        default=_COST.candidate_input_price_per_1m_tokens,
        description="Price of one million prompt tokens sent to the candidate, for its inference cost per 1k "
        "requests (measured mean tokens of the test requests); 0 = not configured.",
    )
    candidate_output_price_per_1m_tokens: float = Field(
        default=_COST.candidate_output_price_per_1m_tokens,
        description="Price of one million tokens the candidate generates; 0 = not configured.",
    )
    reference_input_price_per_1m_tokens: float = Field(
        default=_COST.reference_input_price_per_1m_tokens,
        description="Price of one million prompt tokens sent to the reference model (production, else the base); "
        "0 = not configured.",
    )
    reference_output_price_per_1m_tokens: float = Field(
        default=_COST.reference_output_price_per_1m_tokens,
        description="Price of one million tokens the reference model (production, else the base) generates; "
        "0 = not configured.",
    )
    requests_per_month: float = Field(
        default=_COST.requests_per_month,
        description="Expected requests a month, for the payback estimate (training cost / monthly saving of the "
        "candidate over the reference); 0 = no payback estimate. Informational, not part of the gate.",
    )
    review_sample_size: int = Field(
        default=_REVIEW.review_sample_size,
        description="Human review sample (reports/<eval_id>/review_sample.csv and .jsonl, blinded A/B): examples per "
        "tag, a seeded draw within each tag; 0 = none by tag.",
    )
    review_disagreements: int = Field(
        default=_REVIEW.review_disagreements,
        description="Plus this many examples of the largest candidate-vs-base difference on the answer metric; "
        "0 = none. With review_sample_size also 0 no review sample is written.",
    )
    judge_min_kappa: float = Field(
        default=_REVIEW.judge_min_kappa,
        description="With primary_metric judge_win_rate the judge may gate only when the lower bound of the 95% CI "
        "of its Cohen's kappa with human review verdicts (ft-pipeline review import) is at least this; 0.4 is "
        "where 'moderate' agreement begins (Landis & Koch). Otherwise the judge_agreement rule fails.",
    )
    judge_min_human_labels: int = Field(
        default=_REVIEW.judge_min_human_labels,
        description="Fewest human verdicts on examples the judge judged (earlier evaluations of the same model name "
        "and judge model) before the judge may gate; below ~30 a kappa's CI is too wide to say much.",
    )
    prompted_baseline: bool = Field(
        default=_PROMPTED.enabled,
        description="Answer the test prompts with the prompted baseline too (the base model with a system prompt "
        "and prompted_k few-shot examples from the training split, never from test) and compare the candidate with "
        "it: report.md's 'Fine-tuning vs prompting' section, the gate's beats_prompting rule, prompted_delta.",
    )
    prompted_k: int = Field(
        default=_PROMPTED.k,
        description="Few-shot (user, assistant) examples of the prompted baseline: a seeded draw (seed) of first "
        "exchanges of training conversations; 0 = the system prompt alone.",
    )
    prompted_system_prompt: str = Field(
        default=_PROMPTED.system_prompt,
        description="System prompt of the prompted baseline; empty = the system turn at least half of the training "
        f"conversations share, else: {DEFAULT_SYSTEM_PROMPT!r}",
    )
    prompted_max_example_chars: int = Field(
        default=_PROMPTED.max_example_chars,
        description="Longest few-shot example drawn (user turn + reply, characters; about 4 a token), so the "
        "examples fit the base's context.",
    )
    require_beats_prompting: bool = Field(
        default=_GATE.require_beats_prompting,
        description="Block promotion unless the candidate beats the prompted baseline (CI lower bound of candidate "
        "- prompted on the answer metric above margin). False = the beats_prompting rule is reported, not required.",
    )
    robustness: bool = Field(
        default=_ROBUSTNESS.enabled,
        description="Robustness suite: answer a seeded subset of the test prompts with the last user turn perturbed "
        "(robustness_perturbations) by candidate and base, and report each model's degradation of the answer metric "
        "(clean - perturbed, paired CI) and the gap (candidate's degradation - base's); shown in report.md and the "
        "asset's `robustness` table. The gate's `robustness` rule reads it (robustness_gate).",
    )
    robustness_perturbations: list[str] = Field(
        default=list(_ROBUSTNESS.perturbations),
        description="Perturbations of the last user turn: typos (QWERTY-neighbour substitutions, drops, swaps), "
        "case_whitespace (lower/upper case, doubled or dropped spaces), punctuation (all marks removed). "
        "Placeholders (<EMAIL>), URLs, e-mail addresses and numbers are never changed.",
    )
    robustness_typo_rate: float = Field(
        default=_ROBUSTNESS.typo_rate,
        description="Share of letters given a typo (typos) and of spaces doubled or dropped (case_whitespace).",
    )
    robustness_examples: int = Field(
        default=_ROBUSTNESS.max_examples,
        description="Test examples (a fixed subset, seeded by seed) answered under each perturbation; 0 = all "
        "evaluated ones. Each perturbation costs up to twice this many answers (candidate and base).",
    )
    robustness_tolerance: float = Field(
        default=_ROBUSTNESS.tolerance,
        description="The gate's robustness rule fails when, for any perturbation, the candidate's degradation exceeds "
        "the base's by more than this (point estimate; answer-metric units, 0.02 = two ROUGE-L points) and the "
        "gap's CI lies above 0.",
    )
    robustness_gate: bool = Field(
        default=_ROBUSTNESS.gate,
        description="Apply the gate's robustness rule; false = the robustness numbers are reported only.",
    )
    paraphrase_model: str = Field(
        default=_ROBUSTNESS.paraphrase_model,
        description="Optional OpenAI-compatible chat model (through the openai_fine_tuning resource) that rewrites "
        "each robustness prompt's last user turn: one more perturbation, `paraphrase`; empty = off.",
    )

    def gate(self) -> PromotionGate:
        return PromotionGate(
            primary_metric=self.primary_metric,
            margin=self.margin,
            guardrail_metrics=tuple(self.guardrail_metrics),
            guardrail_tolerance=self.guardrail_tolerance,
            regression_suite_min_ratio=self.regression_suite_min_ratio,
            require_beats_prompting=self.require_beats_prompting,
            production_rule=self.production_rule,
            non_inferiority_margin=self.non_inferiority_margin,
        )

    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, seed=self.seed, concurrency=self.concurrency
        )

    def to_lib(self) -> CandidateEvaluationConfig:
        return CandidateEvaluationConfig(
            model_name=self.model_name,
            max_test_examples=self.max_test_examples,
            compute_perplexity=self.compute_perplexity,
            judge_model=self.judge_model,
            gate=self.gate(),
            evaluation=EvaluationConfig(
                task=self.task,
                n_resamples=self.n_resamples,
                seed=self.seed,
                use_regression_suite=self.use_regression_suite,
            ),
            generation=self.generation(),
            latency=LatencyConfig(
                enabled=self.measure_latency,
                n_prompts=self.latency_prompts,
                batch_sizes=tuple(self.latency_batch_sizes),
                max_new_tokens=self.latency_max_new_tokens,
                seed=self.seed,
            ),
            cost=CostConfig(
                gpu_hour_price=self.gpu_hour_price,
                cpu_hour_price=self.cpu_hour_price,
                hosted_training_price_per_1m_tokens=self.hosted_training_price_per_1m_tokens,
                candidate_input_price_per_1m_tokens=self.candidate_input_price_per_1m_tokens,
                candidate_output_price_per_1m_tokens=self.candidate_output_price_per_1m_tokens,
                reference_input_price_per_1m_tokens=self.reference_input_price_per_1m_tokens,
                reference_output_price_per_1m_tokens=self.reference_output_price_per_1m_tokens,
                requests_per_month=self.requests_per_month,
            ),
            review=ReviewConfig(
                review_sample_size=self.review_sample_size,
                review_disagreements=self.review_disagreements,
                judge_min_kappa=self.judge_min_kappa,
                judge_min_human_labels=self.judge_min_human_labels,
            ),
            prompted=PromptedBaselineConfig(
                enabled=self.prompted_baseline,
                k=self.prompted_k,
                seed=self.seed,
                system_prompt=self.prompted_system_prompt,
                max_example_chars=self.prompted_max_example_chars,
            ),
            robustness=RobustnessConfig(
                enabled=self.robustness,
                perturbations=tuple(self.robustness_perturbations),
                typo_rate=self.robustness_typo_rate,
                max_examples=self.robustness_examples,
                seed=self.seed,
                paraphrase_model=self.paraphrase_model,
                tolerance=self.robustness_tolerance,
                gate=self.robustness_gate,
            ),
        )


class PromotionRunConfig(dg.Config):
    """How promoted_model promotes (defaults documented)."""

    replace_hosted_production: bool = Field(
        default=False,
        description="Provider exit (set by the job replace_hosted_model): the candidate replaces the hosted "
        "production model its evaluation compared it with; the new version's tags (replaced_model_id, "
        "replaced_backend, replaced_version) and the audit log's reason name that model.",
    )


def registry_kinds(environ: Mapping[str, str] = os.environ) -> set[str]:
    """The registry's store as a Dagster kind: ``sqlite`` by default, ``postgres`` when
    ``FT_PIPELINE_REGISTRY_URL`` is a PostgreSQL URL (else the URL's SQLAlchemy dialect). Kinds
    belong to the definitions, so they follow the deployment's environment (as its resources do)."""
    url = environ.get("FT_PIPELINE_REGISTRY_URL", "")
    dialect = url.split(":", 1)[0].split("+", 1)[0].lower() if url else "sqlite"
    return {"postgres" if dialect in ("postgresql", "postgres") else dialect}


def _hosted_chat_clients(
    openai_fine_tuning: OpenAIFineTuningResource,
    azure_openai: AzureOpenAIResource | None = None,
    together: TogetherResource | None = None,
) -> Callable[[str], Any]:
    """Backend name -> the OpenAI-compatible chat client its models answer through (each hosted
    backend's resource makes its own; keys and endpoints come from their environment variables)."""
    clients: dict[str, Callable[[], Any]] = {"openai": openai_fine_tuning.get_client}
    if azure_openai is not None:
        clients["azure"] = azure_openai.chat_client
    if together is not None:
        clients["together"] = together.chat_client

    def client_for(backend: str) -> Any:
        if backend not in clients:
            raise dg.Failure(description=f"no chat client for {backend!r} models: one of {sorted(clients)}")
        return clients[backend]()

    return client_for


@dg.asset(
    deps=["fine_tuned_model", "test_split"],
    group_name="evaluation",
    code_version=EVALUATION_CODE_VERSION,
    kinds=model_kinds(),
    owners=ASSET_OWNERS,
    tags=MODEL_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            "promotion_gate",
            asset="evaluation_report",
            blocking=True,
            description="The candidate beats base and production on the primary metric (CI lower bound above the "
            "margin), no guardrail regresses, the regression suite holds, and the test split shares nothing with "
            "training; beats_prompting (candidate vs the prompted base) is reported, and required when "
            "require_beats_prompting.",
        )
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationRunConfig,
    storage: PipelineStorage,
    model_registry: ModelRegistryResource,
    openai_fine_tuning: OpenAIFineTuningResource,
    pii_policy: PiiPolicy,
    azure_openai: AzureOpenAIResource,
    together: TogetherResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The candidate against the base model and the current production model on the frozen test
    split: greedy answers, exact match, ROUGE-1/2/L, token F1, length ratio (JSON and label
    metrics when the references are JSON or labels), paired-bootstrap CIs of the deltas (McNemar
    for binary metrics), per-tag slices, the regression suite, validation perplexity, and for a
    candidate trained with dpo/kto the preference accuracy of candidate and base on the held-out
    preference pairs (local models; a paired-bootstrap CI of the difference), and the latency
    (p50/p95) and throughput of candidate and base at several batch sizes, and the cost (training,
    inference per 1k requests of candidate and reference, payback; configured prices), and the
    candidate against the prompted baseline (the base with a system prompt and few-shot examples
    from the training split: ``prompted_delta`` and its CI; gated when require_beats_prompting). Written to
    ``reports/<eval_id>/`` (report.json, report.md, examples.parquet, charts) and recorded in the
    registry; ``reports/latest.json`` (an EvaluationSummary) hands the decision to ``promoted_model``.
    The blocking ``promotion_gate`` check decides whether ``promoted_model`` runs. A rejected azure
    candidate's deployment is deleted (the ``azure_openai`` resource's ``delete_rejected``).

    On the asset's page, without a click: the decision, the primary metric's means and deltas
    with their 95% CI bounds, a chart of them, the first test prompts with the reference and both
    answers (``examples``, PII scrubbed) and the gate's rules; the full report and charts open
    with one click."""
    record = read_model_record(storage.folder("models"))
    splits = read_splits(storage.folder("splits"))
    plan = None
    if replacing_hosted_model(context, config.replace_hosted_production):
        # Provider exit: the hosted production model's splits, and a candidate trained for it.
        plan = replacement_plan(context, storage, model_registry, config.model_name)
        try:
            check_replacement_candidate(plan, record)
        except ReplacementRefused as err:
            raise dg.Failure(description=str(err)) from None
        splits = plan.splits
    if record is None or splits is None:
        raise dg.Failure(description="fine_tuned_model and the splits must be materialized first")
    pii = pii_policy.pii_config()  # before the evaluation: a bad policy fails in seconds, not after generation
    evaluation = evaluate_candidate(
        record,
        splits,
        model_registry.get(),
        config.to_lib(),
        reports_folder=storage.folder("reports"),
        data_dir=storage.root(),
        openai_client=openai_fine_tuning.get_client,
        hosted_client=_hosted_chat_clients(openai_fine_tuning, azure_openai, together),
        code_version=EVALUATION_CODE_VERSION,
        settings=config.model_dump(),
        actor=f"dagster:{context.run_id}",
        run_id=context.run_id,
        log=context.log.info,
    )
    summary = evaluation.summary
    metadata = _report_metadata(evaluation, config, pii, storage.root())
    if not evaluation.gate_passed:
        metadata.update(_clean_up_rejected(record, summary, azure_openai, context))
    if plan is not None:
        metadata.update(replacement_metadata(plan))
    yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(summary.eval_id))
    primary = evaluation.result.extra["primary"]
    versus_base = primary["comparisons"].get("base") or {}
    yield dg.AssetCheckResult(
        check_name="promotion_gate",
        passed=evaluation.gate_passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=evaluation.gate_description,
        metadata={
            "decision": summary.decision,
            **(
                {f"delta_vs_base_{primary['metric']}_ci_low": float(versus_base["ci_low"])}
                if versus_base.get("ci_low") is not None
                else {}
            ),
            "gate_rules": _gate_rules(summary),
        },
    )


def _clean_up_rejected(
    record: ModelRecord,
    summary: EvaluationSummary,
    azure_openai: AzureOpenAIResource,
    context: dg.AssetExecutionContext,
) -> dict[str, Any]:
    """A rejected hosted candidate that bills while it exists (an azure deployment) is deleted
    when its resource says so; ``rejected_deployment`` on the page says what happened. A failed
    deletion is logged and shown, never fails the evaluation (its decision stands)."""
    try:
        outcome = azure_openai.delete_rejected_deployment(record, summary.production_uri, context.log.info)
    except (FineTuneError, dg.Failure) as err:
        text = getattr(err, "description", None) or str(err)
        outcome = f"could not delete the rejected candidate's deployment ({text}): delete it by hand"
        context.log.error(outcome)
    return {"rejected_deployment": outcome} if outcome else {}


def _report_metadata(
    evaluation: CandidateEvaluation, config: EvaluationRunConfig, pii: PiiConfig, data_dir: Path
) -> dict[str, Any]:
    """What the asset's page shows: headline numbers as floats (plotted across evaluations),
    tables for the examples, the rules and the judge, a chart small enough to show inline; the
    full report and the PNG charts (too large to inline) open with one click."""
    result, summary, paths = evaluation.result, evaluation.summary, evaluation.report_paths
    # The gate's primary metric, whichever kind it is (an answer metric, preference accuracy or the
    # judge's net win rate): evaluate_candidate puts it in one record.
    view = result.extra["primary"]
    primary, means = view["metric"], view["means"]
    metadata: dict[str, Any] = {"decision": summary.decision, "primary_metric": primary}
    # Four decimals: readable at a glance, and far finer than any CI this evaluates.
    for role, mean in means.items():
        metadata[f"{role}_{primary}"] = round(float(mean), 4)
    for baseline, comparison in view["comparisons"].items():
        metadata[f"delta_vs_{baseline}_{primary}"] = round(float(comparison["delta"]), 4)
        metadata[f"delta_vs_{baseline}_{primary}_ci_low"] = round(float(comparison["ci_low"]), 4)
        metadata[f"delta_vs_{baseline}_{primary}_ci_high"] = round(float(comparison["ci_high"]), 4)
    if view["missing_reason"]:
        metadata["primary_metric_not_measured"] = view["missing_reason"]
    if "candidate" in means:
        metadata["chart"] = svg_markdown(
            metric_means_svg(primary, means, view["comparisons"].get("base"), view["comparisons"].get("production")),
            "primary metric by model",
        )
    metadata["gate_rules"] = _gate_rules(summary)
    if config.examples_shown > 0:
        metadata["examples"] = _examples_table(evaluation, config, pii)
    if "judge" in result.extra:
        metadata["llm_judge"] = _judge_table(result.extra["judge"])
    metadata["n_examples"] = evaluation.n_examples
    perplexity = result.extra.get("validation_perplexity") or {}
    for role, value in perplexity.items():
        metadata[f"{role}_validation_perplexity"] = float(value)
    metadata.update(_preference_metadata(result.extra.get("preference_accuracy")))
    metadata.update(_latency_metadata(result.extra.get("latency")))
    metadata.update(_cost_metadata(result.extra.get("cost")))
    metadata.update(_review_metadata(result.extra, paths, data_dir))
    metadata.update(_prompted_metadata(result, config.to_lib().gate.answer_metric))
    metadata.update(_robustness_metadata(result.extra.get("robustness")))
    metadata.update(
        {
            "eval_id": summary.eval_id,
            "candidate": within_data_dir(result.model_ids["candidate"], data_dir),
            "base": within_data_dir(result.model_ids["base"], data_dir),
            "production": within_data_dir(result.model_ids.get("production", "none"), data_dir),
            "candidate_version": summary.candidate_version,
            "summary": dg.MetadataValue.md(paths["markdown"].read_text(encoding="utf-8")),
            "metrics_chart": png_markdown(paths["metrics"], "metric means per model"),
            "deltas_chart": png_markdown(paths["deltas"], "candidate minus baselines, 95% CI"),
            "report_path": data_path(paths["json"], data_dir),
            "examples_path": data_path(paths["examples"], data_dir),
            "dataset_version": evaluation.dataset_version,
            # A fingerprint: its first 16 hex digits (the full hash is in report.json and the registry).
            "test_split_hash": evaluation.test_split_hash[:16],
        }
    )
    return metadata


def _preference_metadata(preference: Mapping[str, Any] | None) -> dict[str, Any]:
    """Preference accuracy (a candidate trained with dpo/kto) as plain floats when measured, else
    one short line saying why there is no number; nothing for an SFT candidate."""
    if not preference:
        return {}
    if preference["status"] != "measured":
        return {"preference_accuracy": f"{preference['status'].replace('_', ' ')}: {preference['reason']}"}
    return {
        "candidate_preference_accuracy": round(float(preference["candidate"]), 4),
        "base_preference_accuracy": round(float(preference["base"]), 4),
        "preference_accuracy_delta": round(float(preference["delta"]), 4),
        "preference_accuracy_delta_ci_low": round(float(preference["ci_low"]), 4),
        "preference_accuracy_delta_ci_high": round(float(preference["ci_high"]), 4),
        "preference_pairs": int(preference["n_pairs"]),
    }


def _prompted_metadata(result: EvaluationResult, metric: str) -> dict[str, Any]:
    """The prompted baseline's headline floats (plotted across evaluations): candidate − prompted
    on the answer metric with its CI bounds and the prompted mean, and the few-shot examples'
    conversation ids (ids only: their texts stay in the training split); nothing when it is off."""
    comparison = result.comparisons.get("prompted", {}).get(metric)
    if not comparison:
        return {}
    prompted = result.extra.get("prompted") or {}
    return {
        f"prompted_{metric}": round(float(result.summary["prompted"][metric]), 4),
        "prompted_delta": round(float(comparison["delta"]), 4),
        "prompted_ci_low": round(float(comparison["ci_low"]), 4),
        "prompted_ci_high": round(float(comparison["ci_high"]), 4),
        "fine_tuning_beat_prompting": bool(float(comparison["ci_low"]) > 0),
        "prompted_few_shot_ids": ", ".join(prompted.get("example_ids") or []) or "none",
    }


def _latency_metadata(latency: Mapping[str, Any] | None) -> dict[str, Any]:
    """The latency runs as a table (one row per model and batch size), and two headline floats
    plotted across evaluations: the candidate's p50 latency at the smallest batch and its
    requests/s at the largest."""
    if not latency or not latency.get("rows"):
        return {}
    rows = latency["rows"]
    candidate = sorted((r for r in rows if r["model"] == "candidate"), key=lambda r: r["batch_size"])
    metadata: dict[str, Any] = {
        "latency": table(
            [
                {
                    "model": r["model"],
                    "batch_size": int(r["batch_size"]),
                    "requests": int(r["requests"]),
                    **{c: round(float(r[c]), 4) for c in LATENCY_COLUMNS},
                }
                for r in rows
            ],
            [
                dg.TableColumn("model", "string"),
                dg.TableColumn(
                    "batch_size", "int", description="Prompts per batch (local) or requests in flight (OpenAI)."
                ),
                dg.TableColumn("requests", "int"),
                dg.TableColumn("p50_latency_s", "float", description="Median seconds per request."),
                dg.TableColumn("p95_latency_s", "float"),
                dg.TableColumn("requests_per_s", "float"),
                dg.TableColumn("new_tokens_per_s", "float", description="Generated tokens per second."),
            ],
        )
    }
    if candidate:
        first, last = candidate[0], candidate[-1]
        metadata[f"candidate_p50_latency_s_batch_{first['batch_size']}"] = round(float(first["p50_latency_s"]), 4)
        metadata[f"candidate_requests_per_s_batch_{last['batch_size']}"] = round(float(last["requests_per_s"]), 4)
    return metadata


def _cost_metadata(cost: Mapping[str, Any] | None) -> dict[str, Any]:
    """The cost as a table (one row per model: mean tokens, prices, cost per 1k requests), the
    training cost and the candidate's cost per 1k requests as headline floats (plotted across
    evaluations), and the payback as a short line ("prices not configured" when every price is 0)."""
    if not cost:
        return {}
    training, payback = cost["training"], cost["payback"]
    candidate = next(r for r in cost["inference"] if r["model"] == "candidate")
    metadata: dict[str, Any] = {
        "cost": table(
            [
                {
                    "model": r["model"],
                    "requests": int(r["requests"]),
                    **{c: round(float(r[c]), 6) for c in COST_COLUMNS},
                }
                for r in cost["inference"]
            ],
            [
                dg.TableColumn("model", "string", description="The candidate and the reference it would replace."),
                dg.TableColumn("requests", "int", description="Test requests the mean tokens are taken over."),
                *(dg.TableColumn(c, "float") for c in COST_COLUMNS),
            ],
        ),
        "candidate_cost_per_1k_requests": round(float(candidate["cost_per_1k_requests"]), 6),
    }
    if training["cost"] is not None:
        metadata["training_cost"] = round(float(training["cost"]), 6)
    if not cost.get("prices_configured"):
        metadata["payback"] = "prices not configured"
    elif payback["status"] == "months":
        metadata["payback_months"] = round(float(payback["months"]), 4)
    else:
        status = "never" if payback["status"] == "never" else "not estimated"
        metadata["payback"] = f"{status}: {payback['detail']}"
    return metadata


def _review_metadata(extra: Mapping[str, Any], paths: Mapping[str, Path], data_dir: Path) -> dict[str, Any]:
    """The review sample's path (``review_sample``) and size, and the judge's agreement with human
    review as plain numbers (plotted across evaluations) once people have reviewed: Cohen's kappa
    with its CI bounds, the raw agreement and how many verdicts it rests on."""
    metadata: dict[str, Any] = {}
    if "review_sample" in paths:
        metadata["review_sample"] = data_path(paths["review_sample"], data_dir)
        metadata["review_sample_examples"] = int(extra["review_sample"]["n"])
    agreement = extra.get("judge_agreement")
    if agreement:
        metadata["judge_human_labels"] = int(agreement["n"])
        names = {
            "kappa": "judge_human_kappa",
            "ci_low": "judge_human_kappa_ci_low",
            "ci_high": "judge_human_kappa_ci_high",
            "raw_agreement": "judge_human_agreement",
        }
        for key, name in names.items():
            value = agreement.get(key)
            if value is not None and math.isfinite(value):  # kappa is undefined (NaN) without variation
                metadata[name] = round(float(value), 4)
    return metadata


def _robustness_metadata(robustness: Mapping[str, Any] | None) -> dict[str, Any]:
    """The robustness suite as a table (one row per perturbation: each model's clean and perturbed
    means and degradation, the gap with its CI) and the worst gap as a headline float (plotted
    across evaluations); one short line saying why when it was skipped."""
    if not robustness:
        return {}
    if robustness["status"] != "measured":
        return {"robustness_not_measured": str(robustness["reason"])}
    rows = [
        {
            "perturbation": r["perturbation"],
            "changed": int(r["changed"]),
            "n": int(r["n"]),
            **{c: round(float(r[c]), 4) for c in ROBUSTNESS_COLUMNS},
        }
        for r in robustness["rows"]
    ]
    metric = robustness["settings"]["metric"]
    return {
        "robustness": table(
            rows,
            [
                dg.TableColumn("perturbation", "string", description="What was done to the last user turn."),
                dg.TableColumn("changed", "int", description="Prompts it changed (the rest keep their clean answer)."),
                dg.TableColumn("n", "int", description="Test examples in the robustness subset."),
                *(
                    dg.TableColumn(c, "float", description=f"{metric}; degradation = clean - perturbed.")
                    for c in ROBUSTNESS_COLUMNS
                ),
            ],
        ),
        "robustness_worst_degradation_gap": round(float(robustness["worst"]["gap"]), 4),
    }


def _examples_table(evaluation: CandidateEvaluation, config: EvaluationRunConfig, pii: PiiConfig) -> dg.MetadataValue:
    """One row per text: the prompt, the reference, then each model's answer with its score. Long
    rather than wide, so the text column gets the width of the metadata pane and reads like the
    CLI's side-by-side printout."""
    # Answers are scored per example on the answer metric (the primary one, unless that is a
    # preference metric, which has no per-answer score).
    primary = config.to_lib().gate.answer_metric
    rows = []
    for number, example in enumerate(example_rows(evaluation.result.examples, config.examples_shown, primary, pii=pii)):
        for part in ("prompt", "reference", "candidate", "base"):
            score = example.get(f"{part}_{primary}")
            shown = None if score is None else round(score, 4)
            rows.append({"example": number + 1, "part": part, primary: shown, "text": example[part]})
    return table(
        rows,
        [
            dg.TableColumn("example", "int", description="Test prompt number."),
            dg.TableColumn(
                "part",
                "string",
                description="prompt (the last user turn), reference (the test split's answer), or the candidate's or "
                "the base's answer.",
            ),
            dg.TableColumn(primary, "float", description="The answer's score on this example."),
            dg.TableColumn(
                "text", "string", description=f"PII scrubbed, shortened to {EXAMPLE_TEXT_CHARS} characters."
            ),
        ],
    )


def _gate_rules(summary: EvaluationSummary) -> dg.MetadataValue:
    return table(
        summary.rules,
        [
            dg.TableColumn("rule", "string"),
            dg.TableColumn("passed", "bool"),
            dg.TableColumn("detail", "string", description="The numbers the rule compared."),
        ],
    )


def _judge_table(judge: Mapping[str, Mapping[str, Any]]) -> dg.MetadataValue:
    return table(
        [{"versus": baseline, **verdict} for baseline, verdict in judge.items()],
        [
            dg.TableColumn("versus", "string", description="The baseline the candidate was compared with."),
            dg.TableColumn("judge_model", "string"),
            dg.TableColumn("wins", "int", description="Examples where the candidate won in both orders."),
            dg.TableColumn("losses", "int"),
            dg.TableColumn("ties", "int", description="Ties and order-dependent verdicts."),
            dg.TableColumn("n", "int"),
            dg.TableColumn("win_rate", "float"),
        ],
    )


@dg.asset(
    deps=["evaluation_report"],
    group_name="evaluation",
    code_version=EVALUATION_CODE_VERSION,
    kinds=registry_kinds(),
    owners=ASSET_OWNERS,
    tags=MODEL_TAGS,
)
def promoted_model(
    context: dg.AssetExecutionContext,
    config: PromotionRunConfig,
    storage: PipelineStorage,
    model_registry: ModelRegistryResource,
) -> dg.MaterializeResult:
    """Moves the registry's ``production`` alias to the candidate the gate passed: one transaction
    with compare-and-swap, the previous production version archived, the reason and evaluation
    stored in the append-only audit log. Fails clearly if production changed since the evaluation.
    In the job replace_hosted_model, the new version's tags and the audit log's reason name the
    hosted model it replaced."""
    summary = read_evaluation_summary(storage.folder("reports"))
    if summary is None:
        raise dg.Failure(description="evaluation_report has not been materialized yet")
    plan = (
        replacement_plan(context, storage, model_registry, summary.model_name)
        if replacing_hosted_model(context, config.replace_hosted_production)
        else None
    )
    replacing: dict[str, Any] = {}
    if plan is not None:
        try:
            replacing = {"reason": replacement_reason(plan, summary), "tags_on_success": plan.tags()}
        except ReplacementRefused as err:
            raise dg.Failure(description=str(err)) from None
    try:
        promotion = promote_candidate(
            summary,
            model_registry.get(),
            publish_url=model_registry.publish_url,
            actor=f"dagster:{context.run_id}",
            log=context.log.info,
            **replacing,
        )
    except NotPromoted as err:
        raise dg.Failure(description=str(err)) from None
    data_version = dg.DataVersion(f"{promotion.model_name}:{promotion.production_version}")
    metadata: dict[str, Any] = {
        "decision": promotion.decision,
        "model_name": promotion.model_name,
        "production_version": promotion.production_version,
        "evaluation_id": promotion.evaluation_id,
        # How to call it once `make serve` runs (ft-pipeline serve on its default address).
        "call_with_curl": dg.MetadataValue.md(curl_snippet(promotion.model_name)),
        "call_with_openai": dg.MetadataValue.md(openai_snippet(promotion.model_name)),
    }
    if promotion.decision == "already production":
        return dg.MaterializeResult(metadata=metadata, data_version=data_version)
    published = promotion.published
    metadata["previous_version"] = promotion.previous_version if promotion.previous_version is not None else "none"
    metadata["model_uri"] = within_data_dir(promotion.model_uri or "", storage.root())
    if promotion.audit_event_id is not None:
        metadata["audit_event_id"] = promotion.audit_event_id
    if plan is not None:
        metadata.update(plan.tags())
    if published:
        metadata.update(
            {
                "published_uri": dg.MetadataValue.url(published.uri),
                "published_files": published.files,
                "published_bytes": published.bytes,
            }
        )
    return dg.MaterializeResult(metadata=metadata, data_version=data_version)
