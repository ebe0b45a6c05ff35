"""evaluation_report (with the blocking promotion gate) and promoted_model."""

import json
import math
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
from pydantic import Field

from ft_pipeline.defs.metadata import png_markdown
from ft_pipeline.defs.resources import ModelRegistryResource, OpenAIFineTuningResource, PipelineStorage
from ft_pipeline.lib.quiet_logs import quiet_third_party_logs
from ft_pipeline.lib.evaluation.candidate import CandidateEvaluationConfig
from ft_pipeline.lib.evaluation.gate import PromotionGate
from ft_pipeline.lib.evaluation.generation import GenerationConfig, LocalGenerator, OpenAIChatGenerator
from ft_pipeline.lib.evaluation.report import write_report
from ft_pipeline.lib.evaluation.runner import EvaluationConfig, run_evaluation
from ft_pipeline.lib.publish import publish_model_dir
from ft_pipeline.lib.registry import ModelVersion, StaleBaseline, local_artifact_exists
from ft_pipeline.lib.storage import content_version, file_sha256, read_latest, resolve_portable_path, write_latest

EVALUATION_CODE_VERSION = "2"
_GATE = PromotionGate()
_EVAL = EvaluationConfig()
_GEN = GenerationConfig()
_CANDIDATE = CandidateEvaluationConfig()


class EvaluationRunConfig(dg.Config):
    """How the candidate is evaluated and what the promotion gate requires (defaults documented)."""

    model_name: str = Field(default=_CANDIDATE.model_name, description="Registry name of the model line the candidate belongs to.")
    primary_metric: str = Field(default=_GATE.primary_metric, description="Metric whose CI lower bound must beat base and production.")
    margin: float = Field(default=_GATE.margin, description="The CI lower bound must be strictly above this.")
    guardrail_metrics: list[str] = Field(default=list(_GATE.guardrail_metrics), description="Metrics that must not regress.")
    guardrail_tolerance: float = Field(default=_GATE.guardrail_tolerance, description="Allowed drop of a guardrail mean.")
    regression_suite_min_ratio: float = Field(default=_GATE.regression_suite_min_ratio, description="Share of the base's regression-suite score the candidate must keep.")
    use_regression_suite: bool = Field(default=_EVAL.use_regression_suite, description="Run the shipped general prompts.")
    task: str = Field(default=_EVAL.task, description="auto | generation | json | classification")
    n_resamples: int = Field(default=_EVAL.n_resamples, description="Paired-bootstrap resamples.")
    seed: int = Field(default=_EVAL.seed, description="Bootstrap and generation seed.")
    max_new_tokens: int = Field(default=_GEN.max_new_tokens, description="Longest generated answer.")
    max_test_examples: int = Field(
        default=_CANDIDATE.max_test_examples,
        description="Evaluate a fixed subset of this many test examples (ordered by content hash; the same for every model); "
        "0 = the whole test split. For quick runs on a CPU.",
    )
    batch_size: int = Field(default=_GEN.batch_size, description="Local generation batch size.")
    concurrency: int = Field(default=_GEN.concurrency, description="OpenAI-compatible requests in flight.")
    compute_perplexity: bool = Field(default=_CANDIDATE.compute_perplexity, description="Validation perplexity for local models.")
    judge_model: str = Field(
        default=_CANDIDATE.judge_model,
        description="Optional LLM-as-judge: an OpenAI-compatible chat model (through the openai_fine_tuning resource) that "
        "compares candidate and baseline answers pairwise in both orders; empty = off. Informational, not part of the gate.",
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
        return GenerationConfig(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, seed=self.seed, concurrency=self.concurrency)


def _model_uri(record: dict) -> str:
    if record["backend"] == "openai":
        return record["remote_model_id"]
    return f"lora://{record['adapter_dir']}#{record['adapter_version']}"


def _generator_for(record_or_version, generation: GenerationConfig, openai_resource: OpenAIFineTuningResource, data_dir: Path, *,
                   base: bool = False, log=None):
    """A generator for a model record (model.json) or a registered ModelVersion. A base path
    recorded relative to the data directory is resolved against ``data_dir``; a local model
    reports each generated batch to ``log`` (the Dagster log)."""
    if isinstance(record_or_version, ModelVersion):
        version = record_or_version
        tags = version.tags or {}
        record = {
            "backend": version.backend,
            "base_model": version.base_model,
            "remote_model_id": version.remote_model_id,
            "adapter_dir": version.artifact_path,
            "base_model_path": tags.get("base_model_path"),
            "tokenizer_dir": tags.get("tokenizer_dir"),
        }
    else:
        record = record_or_version
    if record["backend"] == "openai":
        model = record["base_model"] if base else record["remote_model_id"]
        return OpenAIChatGenerator(openai_resource.get_client(), model, generation)
    base_path = resolve_portable_path(record["base_model_path"], data_dir)
    quiet_third_party_logs()  # before peft is imported: no bitsandbytes CPU-kernel warnings
    return LocalGenerator(base_path, None if base else record["adapter_dir"], record["tokenizer_dir"], generation,
                          on_progress=log.info if log is not None else None)


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
            description="The candidate beats base and production on the primary metric (CI lower bound above the margin), no "
            "guardrail regresses, the regression suite holds, and the test split shares nothing with training.",
        )
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationRunConfig,
    storage: PipelineStorage,
    model_registry: ModelRegistryResource,
    openai_fine_tuning: OpenAIFineTuningResource,
):
    """The candidate against the base model and the current production model on the frozen test
    split: greedy answers, exact match, ROUGE-1/2/L, token F1, length ratio (JSON and label
    metrics when the references are JSON or labels), paired-bootstrap CIs of the deltas (McNemar
    for binary metrics), per-tag slices, the regression suite, validation perplexity. Written to
    ``reports/<eval_id>/`` (report.json, report.md, examples.parquet, charts) and recorded in the
    registry. The blocking ``promotion_gate`` check decides whether ``promoted_model`` runs."""
    model_pointer = read_latest(storage.folder("models"))
    splits = read_latest(storage.folder("splits"))
    if model_pointer is None or splits is None:
        raise dg.Failure(description="fine_tuned_model and the splits must be materialized first")
    record = json.loads(Path(model_pointer["path"]).read_text())
    test_path = splits["paths"]["test"]["parquet"]
    test = pd.read_parquet(test_path, columns=["conversation_id", "messages", "tags", "exact_hash"])
    if 0 < config.max_test_examples < len(test):
        # A fixed subset: the same examples for every model and every run on this split (ordered by
        # content hash, so it is a spread of the split rather than its first file's rows).
        context.log.info(f"evaluating {config.max_test_examples} of the {len(test)} test examples (max_test_examples)")
        test = test.sort_values("exact_hash", kind="stable").head(config.max_test_examples).reset_index(drop=True)
    train_hashes = set(pq.read_table(splits["paths"]["train"]["parquet"], columns=["exact_hash"]).column("exact_hash").to_pylist())
    overlap = int(sum(1 for h in test["exact_hash"] if h in train_hashes))

    registry = model_registry.get()
    candidate_uri = _model_uri(record)
    train_ds = registry.record_dataset_version("curated", "train", file_sha256(splits["paths"]["train"]["parquet"]), int(splits["paths"]["train"]["rows"]))
    val_ds = registry.record_dataset_version("curated", "validation", file_sha256(splits["paths"]["validation"]["parquet"]), int(splits["paths"]["validation"]["rows"]))
    test_hash = file_sha256(test_path)
    test_ds = registry.record_dataset_version("curated", "eval", test_hash, len(test))
    run_id = registry.record_training_run(
        record["run_key"], record["backend"], record["base_model"], train_ds, val_ds, record.get("config", {}),
        record.get("config", {}).get("seed"), external_job_id=record.get("job_id"), trained_tokens=record.get("trained_tokens"),
        dagster_run_id=context.run_id,
    )
    version = registry.register_model_version(
        config.model_name,
        training_run_id=run_id,
        model_uri=candidate_uri,
        backend=record["backend"],
        base_model=record["base_model"],
        run_key=record["run_key"],
        dataset_version=record["data_version"],
        config_hash=record.get("config_hash") or content_version(record.get("config", {})),
        metrics=record.get("metrics") or record.get("result_metrics") or {},
        artifact_path=record.get("adapter_dir"),
        remote_model_id=record.get("remote_model_id"),
        tags={"base_model_path": record.get("base_model_path"), "tokenizer_dir": record.get("tokenizer_dir")},
    )
    production = registry.resolve(config.model_name, "production")
    already_production = production is not None and production.version == version.version

    generation = config.generation()
    generators = {
        "candidate": _generator_for(record, generation, openai_fine_tuning, storage.root(), log=context.log),
        "base": _generator_for(record, generation, openai_fine_tuning, storage.root(), base=True, log=context.log),
    }
    if production is not None and not already_production:
        generators["production"] = _generator_for(production, generation, openai_fine_tuning, storage.root(), log=context.log)
    for role, generator in generators.items():
        context.log.info(f"{role}: {generator.name}")

    gate = config.gate()
    eval_config = EvaluationConfig(task=config.task, n_resamples=config.n_resamples, seed=config.seed, use_regression_suite=config.use_regression_suite)
    no_production = f"the candidate is production already (v{version.version})" if already_production else "no production model yet"
    result = run_evaluation(test, generators, gate=gate, config=eval_config, train_test_overlap=overlap, no_production_reason=no_production)
    if config.compute_perplexity and record["backend"] == "local_lora":
        validation = pd.read_parquet(splits["paths"]["validation"]["parquet"], columns=["messages"])
        conversations = [list(m) for m in validation["messages"]]
        if conversations:
            result.extra["validation_perplexity"] = {
                role: math.exp(min(50.0, generators[role].mean_nll(conversations))) for role in ("candidate", "base")
            }

    if config.judge_model:
        from ft_pipeline.lib.evaluation.generation import split_prompt_reference
        from ft_pipeline.lib.evaluation.judge import pairwise_judge

        prompts = [split_prompt_reference(list(m))[0] for m in test["messages"]]
        answers = {role: result.examples.loc[result.examples["model"] == role, "prediction"].tolist() for role in generators}
        client = openai_fine_tuning.get_client()
        result.extra["judge"] = {
            baseline: pairwise_judge(client, config.judge_model, prompts, answers["candidate"], answers[baseline],
                                     concurrency=config.concurrency, seed=config.seed).to_dict()
            for baseline in ("base", "production")
            if baseline in answers
        }
        context.log.info(f"LLM judge {config.judge_model}: {result.extra['judge']}")

    eval_id = content_version(EVALUATION_CODE_VERSION, result.model_ids, test_hash, config.model_dump())
    folder = storage.folder("reports") / eval_id
    context_info = {
        "eval_id": eval_id,
        "model_name": config.model_name,
        "candidate_version": version.version,
        "candidate_uri": candidate_uri,
        "production_version": production.version if production else None,
        "production_uri": production.model_uri if production else None,
        "already_production": already_production,
        "dataset_version": record["data_version"],
        "test_split_hash": test_hash,
        "test_split_path": test_path,
        "train_test_overlap": overlap,
        "primary_metric": gate.primary_metric,
        "gate_config": gate.__dict__,
    }
    paths = write_report(result, folder, context_info)
    write_latest(storage.folder("reports"), eval_id, path=str(paths["json"]))

    passed = result.decision.passed or already_production
    registry.record_evaluation(
        eval_id,
        config.model_name,
        version.version,
        suite="test",
        eval_dataset_version_id=test_ds,
        baseline_model_uri=production.model_uri if production and not already_production else None,
        base_model_uri=result.model_ids["base"],
        metrics={"summary": result.summary, "comparisons": result.comparisons, **result.extra},
        per_example_uri=str(paths["examples"]),
        gate_config=gate.__dict__,
        decision="pass" if result.decision.passed else "fail",
        leakage_checked=overlap == 0,
        dagster_run_id=context.run_id,
    )
    if not result.decision.passed and not already_production:
        registry.reject(config.model_name, version.version, evaluation_id=eval_id, reason=result.decision.description(), actor=f"dagster:{context.run_id}")

    summary = result.summary
    primary = gate.primary_metric
    metadata = {
        "eval_id": eval_id,
        "decision": "promote" if result.decision.passed else ("already production" if already_production else "reject"),
        "candidate": result.model_ids["candidate"],
        "base": result.model_ids["base"],
        "production": result.model_ids.get("production", "none"),
        "candidate_version": version.version,
        "n_examples": len(test),
        f"candidate_{primary}": float(summary["candidate"][primary]),
        f"base_{primary}": float(summary["base"][primary]),
        f"delta_vs_base_{primary}": float(result.comparisons["base"][primary]["delta"]),
        "summary": dg.MetadataValue.md(paths["markdown"].read_text(encoding="utf-8")),
        "metrics_chart": png_markdown(paths["metrics"], "metric means per model"),
        "deltas_chart": png_markdown(paths["deltas"], "candidate minus baselines, 95% CI"),
        "report_path": dg.MetadataValue.path(str(paths["json"])),
        "examples_path": dg.MetadataValue.path(str(paths["examples"])),
        "dataset_version": record["data_version"],
        "test_split_hash": test_hash,
    }
    if "judge" in result.extra:
        metadata["llm_judge"] = dg.MetadataValue.json(result.extra["judge"])
    if "validation_perplexity" in result.extra:
        metadata["candidate_validation_perplexity"] = float(result.extra["validation_perplexity"]["candidate"])
    yield dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(eval_id))
    yield dg.AssetCheckResult(
        check_name="promotion_gate",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=("the candidate is already production" if already_production else result.decision.description()),
        metadata={"rules": dg.MetadataValue.json(result.decision.to_dict()["rules"])},
    )


@dg.asset(deps=["evaluation_report"], group_name="evaluation", code_version=EVALUATION_CODE_VERSION)
def promoted_model(context: dg.AssetExecutionContext, storage: PipelineStorage, model_registry: ModelRegistryResource) -> dg.MaterializeResult:
    """Moves the registry's ``production`` alias to the candidate the gate passed: one transaction
    with compare-and-swap, the previous production version archived, the reason and evaluation
    stored in the append-only audit log. Fails clearly if production changed since the evaluation."""
    pointer = read_latest(storage.folder("reports"))
    if pointer is None:
        raise dg.Failure(description="evaluation_report has not been materialized yet")
    report = json.loads(Path(pointer["path"]).read_text())
    registry = model_registry.get()
    name, version = report["model_name"], int(report["candidate_version"])
    if report.get("already_production"):
        current = registry.resolve(name, "production")
        return dg.MaterializeResult(
            metadata={"decision": "already production", "production_version": current.version if current else version},
            data_version=dg.DataVersion(f"{name}:{current.version if current else version}"),
        )
    if not report["decision"]["passed"]:
        raise dg.Failure(description=f"evaluation {report['eval_id']} did not pass the promotion gate; production is unchanged")

    published = None
    candidate = registry.get_version(name, version)
    if model_registry.publish_url and candidate.artifact_path:
        # Published before the alias moves: production never points at files that are not there yet.
        run_dir = Path(candidate.artifact_path).parent
        published = publish_model_dir(run_dir, model_registry.publish_url, name, version)
        registry.update_tags(name, version, {"published_uri": published.uri, "published_manifest_sha256": published.manifest_sha256})
        context.log.info(f"published {published.files} files ({published.bytes} bytes) of {name} v{version} to {published.uri}")
    try:
        event = registry.promote(
            name,
            version,
            evaluation_id=report["eval_id"],
            expected_baseline_uri=report["production_uri"],
            reason="passed the promotion gate: " + "; ".join(r["detail"] for r in report["decision"]["rules"][:1]),
            actor=f"dagster:{context.run_id}",
            check_artifact=local_artifact_exists,
        )
    except StaleBaseline as err:
        raise dg.Failure(description=f"not promoted: {err}") from None
    promoted = registry.get_version(name, version)
    return dg.MaterializeResult(
        metadata={
            "decision": "promoted",
            "model_name": name,
            "production_version": version,
            "previous_version": event.from_version if event.from_version is not None else "none",
            "model_uri": promoted.model_uri,
            "evaluation_id": report["eval_id"],
            "audit_event_id": event.event_id,
            **(
                {"published_uri": dg.MetadataValue.url(published.uri), "published_files": published.files, "published_bytes": published.bytes}
                if published
                else {}
            ),
        },
        data_version=dg.DataVersion(f"{name}:{version}"),
    )
