"""evaluation_report (with the blocking promotion gate) and promoted_model."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field

from ft_pipeline.defs.metadata import png_markdown
from ft_pipeline.defs.resources import ModelRegistryResource, OpenAIFineTuningResource, PipelineStorage
from ft_pipeline.lib.evaluation.candidate import CandidateEvaluationConfig, evaluate_candidate
from ft_pipeline.lib.evaluation.gate import PromotionGate
from ft_pipeline.lib.evaluation.generation import GenerationConfig
from ft_pipeline.lib.evaluation.promotion import NotPromoted, promote_candidate
from ft_pipeline.lib.evaluation.runner import EvaluationConfig
from ft_pipeline.lib.evaluation.summary import read_evaluation_summary
from ft_pipeline.lib.training.fine_tune import read_splits
from ft_pipeline.lib.training.record import read_model_record

EVALUATION_CODE_VERSION = "2"
_GATE = PromotionGate()
_EVAL = EvaluationConfig()
_GEN = GenerationConfig()
_CANDIDATE = CandidateEvaluationConfig()


class EvaluationRunConfig(dg.Config):
    """How the candidate is evaluated and what the promotion gate requires (defaults documented)."""

    model_name: str = Field(
        default=_CANDIDATE.model_name, description="Registry name of the model line the candidate belongs to."
    )
    primary_metric: str = Field(
        default=_GATE.primary_metric, description="Metric whose CI lower bound must beat base and production."
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
    judge_model: str = Field(
        default=_CANDIDATE.judge_model,
        description="Optional LLM-as-judge: an OpenAI-compatible chat model (through the openai_fine_tuning "
        "resource) that compares candidate and baseline answers pairwise in both orders; empty = off. "
        "Informational, not part of the gate.",
    )

    def gate(self) -> PromotionGate:
        return PromotionGate(
            primary_metric=self.primary_metric,
            margin=self.margin,
            guardrail_metrics=tuple(self.guardrail_metrics),
            guardrail_tolerance=self.guardrail_tolerance,
            regression_suite_min_ratio=self.regression_suite_min_ratio,
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
        )


@dg.asset(
    deps=["fine_tuned_model", "test_split"],
    group_name="evaluation",
    code_version=EVALUATION_CODE_VERSION,
    kinds={"pytorch"},
    check_specs=[
        dg.AssetCheckSpec(
            "promotion_gate",
            asset="evaluation_report",
            blocking=True,
            description="The candidate beats base and production on the primary metric (CI lower bound above the "
            "margin), no guardrail regresses, the regression suite holds, and the test split shares nothing with "
            "training.",
        )
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationRunConfig,
    storage: PipelineStorage,
    model_registry: ModelRegistryResource,
    openai_fine_tuning: OpenAIFineTuningResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The candidate against the base model and the current production model on the frozen test
    split: greedy answers, exact match, ROUGE-1/2/L, token F1, length ratio (JSON and label
    metrics when the references are JSON or labels), paired-bootstrap CIs of the deltas (McNemar
    for binary metrics), per-tag slices, the regression suite, validation perplexity. Written to
    ``reports/<eval_id>/`` (report.json, report.md, examples.parquet, charts) and recorded in the
    registry; ``reports/latest.json`` (an EvaluationSummary) hands the decision to ``promoted_model``.
    The blocking ``promotion_gate`` check decides whether ``promoted_model`` runs."""
    record = read_model_record(storage.folder("models"))
    splits = read_splits(storage.folder("splits"))
    if record is None or splits is None:
        raise dg.Failure(description="fine_tuned_model and the splits must be materialized first")
    evaluation = evaluate_candidate(
        record,
        splits,
        model_registry.get(),
        config.to_lib(),
        reports_folder=storage.folder("reports"),
        data_dir=storage.root(),
        openai_client=openai_fine_tuning.get_client,
        code_version=EVALUATION_CODE_VERSION,
        settings=config.model_dump(),
        actor=f"dagster:{context.run_id}",
        run_id=context.run_id,
        log=context.log.info,
    )
    result, summary, paths = evaluation.result, evaluation.summary, evaluation.report_paths
    primary = config.primary_metric
    metadata: dict[str, Any] = {
        "eval_id": summary.eval_id,
        "decision": summary.decision,
        "candidate": result.model_ids["candidate"],
        "base": result.model_ids["base"],
        "production": result.model_ids.get("production", "none"),
        "candidate_version": summary.candidate_version,
        "n_examples": evaluation.n_examples,
        f"candidate_{primary}": float(result.summary["candidate"][primary]),
        f"base_{primary}": float(result.summary["base"][primary]),
        f"delta_vs_base_{primary}": float(result.comparisons["base"][primary]["delta"]),
        "summary": dg.MetadataValue.md(paths["markdown"].read_text(encoding="utf-8")),
        "metrics_chart": png_markdown(paths["metrics"], "metric means per model"),
        "deltas_chart": png_markdown(paths["deltas"], "candidate minus baselines, 95% CI"),
        "report_path": dg.MetadataValue.path(str(paths["json"])),
        "examples_path": dg.MetadataValue.path(str(paths["examples"])),
        "dataset_version": evaluation.dataset_version,
        "test_split_hash": evaluation.test_split_hash,
    }
    if "judge" in result.extra:
        metadata["llm_judge"] = dg.MetadataValue.json(result.extra["judge"])
    if "validation_perplexity" in result.extra:
        metadata["candidate_validation_perplexity"] = float(result.extra["validation_perplexity"]["candidate"])
    yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(summary.eval_id))
    yield dg.AssetCheckResult(
        check_name="promotion_gate",
        passed=evaluation.gate_passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=evaluation.gate_description,
        metadata={"rules": dg.MetadataValue.json(summary.rules)},
    )


@dg.asset(deps=["evaluation_report"], group_name="evaluation", code_version=EVALUATION_CODE_VERSION)
def promoted_model(
    context: dg.AssetExecutionContext, storage: PipelineStorage, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """Moves the registry's ``production`` alias to the candidate the gate passed: one transaction
    with compare-and-swap, the previous production version archived, the reason and evaluation
    stored in the append-only audit log. Fails clearly if production changed since the evaluation."""
    summary = read_evaluation_summary(storage.folder("reports"))
    if summary is None:
        raise dg.Failure(description="evaluation_report has not been materialized yet")
    try:
        promotion = promote_candidate(
            summary,
            model_registry.get(),
            publish_url=model_registry.publish_url,
            actor=f"dagster:{context.run_id}",
            log=context.log.info,
        )
    except NotPromoted as err:
        raise dg.Failure(description=str(err)) from None
    data_version = dg.DataVersion(f"{promotion.model_name}:{promotion.production_version}")
    if promotion.decision == "already production":
        return dg.MaterializeResult(
            metadata={"decision": promotion.decision, "production_version": promotion.production_version},
            data_version=data_version,
        )
    published = promotion.published
    return dg.MaterializeResult(
        metadata={
            "decision": promotion.decision,
            "model_name": promotion.model_name,
            "production_version": promotion.production_version,
            "previous_version": promotion.previous_version if promotion.previous_version is not None else "none",
            "model_uri": promotion.model_uri,
            "evaluation_id": promotion.evaluation_id,
            "audit_event_id": promotion.audit_event_id,
            **(
                {
                    "published_uri": dg.MetadataValue.url(published.uri),
                    "published_files": published.files,
                    "published_bytes": published.bytes,
                }
                if published
                else {}
            ),
        },
        data_version=data_version,
    )
