"""evaluate_candidate: the evaluation stage as one call (the ``evaluation_report`` asset's service).

The candidate a training run produced (its :class:`ModelRecord`) is registered as a new version,
answered against the base model and the current production model on the frozen test split,
scored and compared; the report is written, the evaluation recorded in the registry, and a
candidate that fails the promotion gate is rejected there. What the next stage needs is written
as the :class:`EvaluationSummary` manifest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from ft_pipeline.lib.evaluation.cost import CostConfig, add_cost
from ft_pipeline.lib.evaluation.gate import (
    PREFERENCE_PRIMARY_METRICS,
    PromotionGate,
    evaluate_gate,
    robustness_rule,
    with_rule,
)
from ft_pipeline.lib.evaluation.generation import (
    GenerationConfig,
    Generator,
    LocalGenerator,
    OpenAIChatGenerator,
    split_prompt_reference,
)
from ft_pipeline.lib.evaluation.latency import LatencyConfig, add_latency
from ft_pipeline.lib.evaluation.preference_accuracy import evaluate_preference_accuracy
from ft_pipeline.lib.evaluation.prompted_baseline import (
    PromptedBaselineConfig,
    PromptedGenerator,
    prompted_baseline_from_splits,
)
from ft_pipeline.lib.evaluation.report import write_report
from ft_pipeline.lib.evaluation.review import (
    JUDGE_COLUMN,
    ReviewConfig,
    agreement_rule,
    judge_agreement,
    sample_summary,
    select_review_sample,
    write_review_sample,
)
from ft_pipeline.lib.evaluation.robustness import RobustnessConfig, add_robustness
from ft_pipeline.lib.evaluation.runner import EvaluationConfig, EvaluationResult, run_evaluation
from ft_pipeline.lib.evaluation.summary import EvaluationSummary, write_evaluation_summary
from ft_pipeline.lib.manifests import SplitsManifest
from ft_pipeline.lib.quiet_logs import quiet_third_party_logs
from ft_pipeline.lib.registry import ModelRegistry, ModelVersion
from ft_pipeline.lib.storage import content_version, file_sha256, resolve_portable_path
from ft_pipeline.lib.training.config import PREFERENCE_METHODS
from ft_pipeline.lib.training.record import HOSTED_BACKENDS, ModelRecord

__all__ = ["DEFAULT_MODEL_NAME", "CandidateEvaluation", "CandidateEvaluationConfig", "evaluate_candidate"]

#: Registry name of the model line the pipeline trains.
DEFAULT_MODEL_NAME = "ft-pipeline-assistant"
TEST_COLUMNS = ["conversation_id", "messages", "tags", "exact_hash"]


@dataclass(frozen=True)
class CandidateEvaluationConfig:
    """Everything one evaluation of a candidate needs to know. Every default is the documented one."""

    model_name: str = DEFAULT_MODEL_NAME
    """Registry name of the model line the candidate belongs to."""
    max_test_examples: int = 0
    """Evaluate a fixed subset of this many test examples (ordered by content hash, the same for
    every model); 0 = the whole test split."""
    compute_perplexity: bool = True
    """Validation perplexity of candidate and base (local models only)."""
    judge_model: str = ""
    """Optional OpenAI-compatible chat model that compares answers pairwise; empty = off."""
    gate: PromotionGate = field(default_factory=PromotionGate)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    """Latency and throughput of candidate and base (lib/evaluation/latency.py)."""
    cost: CostConfig = field(default_factory=CostConfig)
    """Prices behind the training cost, inference cost per 1k requests and payback (lib/evaluation/cost.py)."""
    review: ReviewConfig = field(default_factory=ReviewConfig)
    """The human review sample, and when the judge may gate (lib/evaluation/review.py)."""
    prompted: PromptedBaselineConfig = field(default_factory=PromptedBaselineConfig)
    """The prompted baseline: the base with a system prompt and few-shot examples from the training
    split, compared with the candidate (lib/evaluation/prompted_baseline.py)."""
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    """Degradation of candidate and base under perturbed prompts, and its gate rule (lib/evaluation/robustness.py)."""


@dataclass(frozen=True)
class CandidateEvaluation:
    """What one evaluation did: the decision, what was written, and the numbers behind it."""

    summary: EvaluationSummary
    """The manifest handed to promoted_model (also ``reports/latest.json``)."""
    result: EvaluationResult
    report_paths: dict[str, Path]
    """``json``, ``markdown``, ``examples``, the charts (``metrics``, ``deltas``) and the review
    sample (``review_sample``, ``review_sample_jsonl``; absent when it is configured off)."""
    n_examples: int
    test_split_hash: str
    dataset_version: str

    @property
    def gate_passed(self) -> bool:
        """The blocking check passes: the gate passed, or the candidate is production already."""
        return self.summary.passed or self.summary.already_production

    @property
    def gate_description(self) -> str:
        if self.summary.already_production:
            return "the candidate is already production"
        return self.result.decision.description()


def evaluate_candidate(
    record: ModelRecord,
    splits: SplitsManifest,
    registry: ModelRegistry,
    config: CandidateEvaluationConfig,
    *,
    reports_folder: Path,
    data_dir: Path,
    openai_client: Callable[[], Any],
    hosted_client: Callable[[str], Any] | None = None,
    code_version: str,
    settings: dict[str, Any],
    actor: str,
    run_id: str | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> CandidateEvaluation:
    """Evaluate ``record``'s model against base and production on ``splits``' test split.

    Args:
        openai_client: called (once per OpenAI model or judge) for an OpenAI-compatible client.
        hosted_client: backend name (``openai``, ``azure``, ``together``) -> an OpenAI-compatible
            chat client for that provider's models; ``None`` = ``openai_client`` for all of them.
        code_version, settings: go into the evaluation id with the model ids and the test split's
            hash (``settings``: the run's configuration as given).
        actor, run_id: who rejects a failing candidate in the audit log, and the Dagster run.
        log: progress lines (which generator, how far generation got, the judge's verdict).
    """
    test = _test_examples(splits, config.max_test_examples, log)
    test_path = splits.parquet("test")
    train_hashes = set(pq.read_table(splits.parquet("train"), columns=["exact_hash"]).column("exact_hash").to_pylist())
    overlap = int(sum(1 for h in test["exact_hash"] if h in train_hashes))
    test_hash = file_sha256(test_path)

    version, test_dataset_id = _register_candidate(
        registry, record, splits, config.model_name, test_hash, len(test), run_id
    )
    production = registry.resolve(config.model_name, "production")
    already_production = production is not None and production.version == version.version

    client_for = hosted_client or (lambda backend: openai_client())
    generators = {
        "candidate": _generator_for(record, config.generation, client_for, data_dir, log=log),
        "base": _generator_for(record, config.generation, client_for, data_dir, base=True, log=log),
    }
    if production is not None and not already_production:
        generators["production"] = _generator_for(production, config.generation, client_for, data_dir, log=log)
    no_prompted = "the prompted baseline is off (prompted_baseline: false)"
    prompted = None
    if config.prompted.enabled:
        prompted = prompted_baseline_from_splits(splits.parquet("train"), test_path, config.prompted)
        generators["prompted"] = PromptedGenerator(generators["base"], prompted)
        log(
            f"prompted baseline: {len(prompted.examples)} of {prompted.k_requested} few-shot examples "
            f"({', '.join(prompted.example_ids) or 'none'}), system prompt from {prompted.system_prompt_source}"
        )
    for role, generator in generators.items():
        log(f"{role}: {generator.name}")

    no_production = (
        f"the candidate is production already (v{version.version})" if already_production else "no production model yet"
    )
    result = run_evaluation(
        test,
        generators,
        gate=config.gate,
        config=config.evaluation,
        train_test_overlap=overlap,
        no_production_reason=no_production,
        no_prompted_reason=no_prompted,
    )
    if prompted is not None:
        result.extra["prompted"] = prompted.to_dict()
    add_robustness(
        result.extra,
        result.examples,
        generators,
        [split_prompt_reference(list(m))[0] for m in test["messages"]],
        config.gate.answer_metric,
        config.robustness,
        task=config.evaluation.task,
        n_resamples=config.evaluation.n_resamples,
        confidence=config.evaluation.confidence,
        openai_client=openai_client,
        concurrency=config.generation.concurrency,
        log=log,
    )
    add_latency(
        result.extra,
        generators,
        [split_prompt_reference(list(m))[0] for m in test["messages"]],
        config.latency,
        log=log,
    )
    _add_cost(result, record, generators, test, config.cost)
    if config.compute_perplexity and record.backend == "local_lora":
        _add_validation_perplexity(result, generators, splits)
    if str(record.config.get("method", "sft")) in PREFERENCE_METHODS:
        _add_preference_accuracy(result, record, generators, config.evaluation, data_dir, production)
        preference = result.extra["preference_accuracy"]
        log(f"preference accuracy: {preference['status']}: {preference['reason']}")
    if config.judge_model:
        _add_judge_verdicts(result, test, generators, config, openai_client())
        log(f"LLM judge {config.judge_model}: {result.extra['judge']}")
    agreement = _add_judge_agreement(result, registry, config)
    result.extra["primary"] = primary_view(result, config.gate)
    if config.gate.primary_metric in PREFERENCE_PRIMARY_METRICS:
        # The gate's first decision (in run_evaluation) could not see a preference metric: it is
        # measured after the answers. Decide again with it.
        primary = result.extra["primary"]
        result.decision = evaluate_gate(
            config.gate,
            versus_base=result.comparisons["base"],
            versus_production=result.comparisons.get("production"),
            regression_scores=result.regression,
            train_test_overlap=overlap,
            no_production_reason=no_production,
            primary=primary["comparisons"],
            primary_missing_reason=primary["missing_reason"],
            versus_prompted=result.comparisons.get("prompted"),
            no_prompted_reason=no_prompted,
        )
        if config.gate.primary_metric == "judge_win_rate":
            # The judge may gate only as far as people agree with it (lib/evaluation/review.py).
            result.decision = with_rule(result.decision, agreement_rule(agreement))
    # Measured after the answers, like a preference metric: the rule joins whichever decision stands.
    result.decision = with_rule(result.decision, robustness_rule(result.extra.get("robustness")))

    # The human verdicts behind the judge's agreement are an input too: after an import the
    # next evaluation is a new one (a new report), not a re-run of the last.
    review_state = [agreement["fingerprint"]] if agreement and agreement["n"] else []
    eval_id = content_version(code_version, result.model_ids, test_hash, settings, *review_state)
    review_items = select_review_sample(
        result.examples, config.gate.answer_metric, config.review, seed=config.evaluation.seed
    )
    review_paths: dict[str, Path] = {}
    if review_items:
        review_paths = write_review_sample(review_items, eval_id, reports_folder / eval_id)
        result.extra["review_sample"] = sample_summary(review_items, review_paths, config.review)
    context_info = {
        "eval_id": eval_id,
        "model_name": config.model_name,
        "candidate_version": version.version,
        "candidate_uri": record.model_uri,
        "production_version": production.version if production else None,
        "production_uri": production.model_uri if production else None,
        "already_production": already_production,
        "dataset_version": record.data_version,
        "test_split_hash": test_hash,
        "test_split_path": test_path,
        "train_test_overlap": overlap,
        "primary_metric": config.gate.primary_metric,
        "answer_metric": config.gate.answer_metric,
        "gate_config": config.gate.__dict__,
        "generation": dict(config.generation.__dict__),
    }
    paths = write_report(result, reports_folder / eval_id, context_info)
    paths.update(review_paths)
    summary = EvaluationSummary(
        version=eval_id,
        path=str(paths["json"]),
        model_name=config.model_name,
        candidate_version=version.version,
        candidate_uri=record.model_uri,
        production_version=production.version if production else None,
        production_uri=production.model_uri if production else None,
        already_production=already_production,
        passed=result.decision.passed,
        rules=result.decision.to_dict()["rules"],
    )
    write_evaluation_summary(reports_folder, summary)

    registry.record_evaluation(
        eval_id,
        config.model_name,
        version.version,
        suite="test",
        eval_dataset_version_id=test_dataset_id,
        baseline_model_uri=production.model_uri if production and not already_production else None,
        base_model_uri=result.model_ids["base"],
        metrics={"summary": result.summary, "comparisons": result.comparisons, **result.extra},
        per_example_uri=str(paths["examples"]),
        gate_config=config.gate.__dict__,
        decision="pass" if result.decision.passed else "fail",
        leakage_checked=overlap == 0,
        dagster_run_id=run_id,
    )
    if review_items:
        registry.record_review_sample(eval_id, [item.registry_row(config.judge_model) for item in review_items])
    if not result.decision.passed and not already_production:
        registry.reject(
            config.model_name, version.version, evaluation_id=eval_id, reason=result.decision.description(), actor=actor
        )
    return CandidateEvaluation(
        summary=summary,
        result=result,
        report_paths=paths,
        n_examples=len(test),
        test_split_hash=test_hash,
        dataset_version=record.data_version,
    )


def _test_examples(splits: SplitsManifest, max_examples: int, log: Callable[[str], None]) -> pd.DataFrame:
    test = pd.read_parquet(splits.parquet("test"), columns=TEST_COLUMNS)
    if 0 < max_examples < len(test):
        # A fixed subset: the same examples for every model and every run on this split (ordered by
        # content hash, so it is a spread of the split rather than its first file's rows).
        log(f"evaluating {max_examples} of the {len(test)} test examples (max_test_examples)")
        test = test.sort_values("exact_hash", kind="stable").head(max_examples).reset_index(drop=True)
    return test


def _register_candidate(
    registry: ModelRegistry,
    record: ModelRecord,
    splits: SplitsManifest,
    model_name: str,
    test_hash: str,
    n_test: int,
    run_id: str | None,
) -> tuple[ModelVersion, str]:
    """The candidate's lineage rows and its new (or existing, same run key) version; and the id of
    the evaluated test set."""

    def dataset(split: str, registry_split: str) -> str:
        path = splits.parquet(split)
        rows = pq.ParquetFile(path).metadata.num_rows
        return registry.record_dataset_version("curated", registry_split, file_sha256(path), rows)

    train_ds, val_ds = dataset("train", "train"), dataset("validation", "validation")
    test_ds = registry.record_dataset_version("curated", "eval", test_hash, n_test)
    run_id_in_registry = registry.record_training_run(
        record.run_key,
        record.backend,
        record.base_model,
        train_ds,
        val_ds,
        record.config,
        record.seed,
        external_job_id=record.job_id,
        trained_tokens=record.trained_tokens,
        dagster_run_id=run_id,
    )
    version = registry.register_model_version(
        model_name,
        training_run_id=run_id_in_registry,
        model_uri=record.model_uri,
        backend=record.backend,
        base_model=record.base_model,
        run_key=record.run_key,
        dataset_version=record.data_version,
        config_hash=record.config_hash,
        metrics=record.metrics,
        artifact_path=record.adapter_dir,
        remote_model_id=record.remote_model_id,
        tags={"base_model_path": record.base_model_path, "tokenizer_dir": record.tokenizer_dir},
    )
    return version, test_ds


def _generator_for(
    model: ModelRecord | ModelVersion,
    generation: GenerationConfig,
    hosted_client: Callable[[str], Any],
    data_dir: Path,
    *,
    base: bool = False,
    log: Callable[[str], None] | None = None,
) -> Generator:
    """A generator for a training run's record or a registered version (or, ``base``, for the
    base model under it). A base path recorded relative to the data directory is resolved
    against ``data_dir``; a local model reports each generated batch to ``log``."""
    if isinstance(model, ModelVersion):
        tags = model.tags or {}
        backend, base_model, remote_model_id = model.backend, model.base_model, model.remote_model_id
        adapter_dir, tokenizer_dir = model.artifact_path, tags.get("tokenizer_dir")
        base_model_path = tags.get("base_model_path")
    else:
        backend, base_model, remote_model_id = model.backend, model.base_model, model.remote_model_id
        adapter_dir, base_model_path, tokenizer_dir = model.adapter_dir, model.base_model_path, model.tokenizer_dir
    if backend in HOSTED_BACKENDS:
        model_id = base_model if base else remote_model_id
        if not model_id:
            raise ValueError(f"a {backend} {'base' if base else 'fine-tuned'} model without a model id: {model!r}")
        return OpenAIChatGenerator(hosted_client(backend), model_id, generation)
    if not base_model_path:
        raise ValueError(f"a local model without a base model path cannot be loaded: {model!r}")
    quiet_third_party_logs()  # before peft is imported: no bitsandbytes CPU-kernel warnings
    base_path = resolve_portable_path(base_model_path, data_dir)
    return LocalGenerator(base_path, None if base else adapter_dir, tokenizer_dir, generation, on_progress=log)


def _add_cost(
    result: EvaluationResult,
    record: ModelRecord,
    generators: dict[str, Generator],
    test: pd.DataFrame,
    config: CostConfig,
) -> None:
    """``result.extra["cost"]`` from the test prompts and each model's answers to them."""
    prompts = [split_prompt_reference(list(m))[0] for m in test["messages"]]
    examples = result.examples
    answers = {role: examples.loc[examples["model"] == role, "prediction"].tolist() for role in generators}
    add_cost(
        result.extra,
        backend=record.backend,
        metrics=record.metrics,
        trained_tokens=record.trained_tokens,
        generators=generators,
        prompts=prompts,
        answers=answers,
        config=config,
    )


def _add_validation_perplexity(result: EvaluationResult, generators: dict[str, Any], splits: SplitsManifest) -> None:
    validation = pd.read_parquet(splits.parquet("validation"), columns=["messages"])
    conversations = [list(m) for m in validation["messages"]]
    if conversations:
        result.extra["validation_perplexity"] = {
            role: math.exp(min(50.0, generators[role].mean_nll(conversations))) for role in ("candidate", "base")
        }


def _add_preference_accuracy(
    result: EvaluationResult,
    record: ModelRecord,
    generators: dict[str, Any],
    evaluation: EvaluationConfig,
    data_dir: Path,
    production: ModelVersion | None,
) -> None:
    """Preference accuracy of candidate and base on the held-out pairs of the preference data the
    candidate was trained on (its record's ``split_paths``: that version's ``test.dpo.jsonl``), and
    of candidate and production on the same pairs when a production model is evaluated too."""
    path = (record.split_paths.get("test") or {}).get("dpo")
    pairs_path = resolve_portable_path(str(path), data_dir) if path else None
    settings: dict[str, Any] = {
        "n_resamples": evaluation.n_resamples,
        "confidence": evaluation.confidence,
        "seed": evaluation.seed,
    }
    accuracy = evaluate_preference_accuracy(record.backend, pairs_path, generators, **settings)
    result.extra["preference_accuracy"] = accuracy.to_dict()
    if "production" in generators and production is not None:
        versus_production = evaluate_preference_accuracy(
            production.backend if record.backend == "local_lora" else record.backend,
            pairs_path,
            {"candidate": generators["candidate"], "base": generators["production"]},
            **settings,
        )
        result.extra["preference_accuracy_vs_production"] = versus_production.to_dict()


def primary_view(result: EvaluationResult, gate: PromotionGate) -> dict[str, Any]:
    """The gate's primary metric as one record: ``metric``, ``means`` (model role -> value),
    ``comparisons`` (baseline -> ``delta``, ``ci_low``, ``ci_high``) and ``missing_reason`` (why a
    preference metric has no comparison). The report, the asset's headline numbers and the gate all
    read it, whichever kind of metric is primary."""
    metric = gate.primary_metric
    means: dict[str, float] = {}
    comparisons: dict[str, dict[str, Any]] = {}
    missing = ""
    if metric == "preference_accuracy":
        sources = {
            "base": result.extra.get("preference_accuracy"),
            "production": result.extra.get("preference_accuracy_vs_production"),
        }
        for baseline, accuracy in sources.items():
            if not accuracy:
                continue
            if accuracy.get("status") != "measured":
                missing = missing or str(accuracy.get("reason", ""))
                continue
            means["candidate"] = float(accuracy["candidate"])
            means[baseline] = float(accuracy["base"])
            comparisons[baseline] = {k: float(accuracy[k]) for k in ("delta", "ci_low", "ci_high")}
        if not sources["base"]:
            missing = "preference accuracy is measured for candidates trained with dpo, kto or sft_then_dpo only"
    elif metric == "judge_win_rate":
        judge = result.extra.get("judge") or {}
        for baseline, verdicts in judge.items():
            means[f"candidate_vs_{baseline}"] = float(verdicts["win_rate"])
            comparisons[baseline] = dict(verdicts["net_win"])
        if not judge:
            missing = "no judge_model is configured"
    else:
        means = {role: float(values[metric]) for role, values in result.summary.items() if metric in values}
        comparisons = {
            baseline: dict(values[metric]) for baseline, values in result.comparisons.items() if metric in values
        }
    return {"metric": metric, "means": means, "comparisons": comparisons, "missing_reason": missing}


def _add_judge_verdicts(
    result: EvaluationResult,
    test: pd.DataFrame,
    generators: dict[str, Any],
    config: CandidateEvaluationConfig,
    client: Any,
) -> None:
    from ft_pipeline.lib.evaluation.judge import pairwise_judge

    prompts = [split_prompt_reference(list(m))[0] for m in test["messages"]]
    examples = result.examples
    answers = {role: examples.loc[examples["model"] == role, "prediction"].tolist() for role in generators}
    evaluation = config.evaluation
    result.extra["judge"] = {}
    for baseline in ("base", "production"):
        if baseline not in answers:
            continue
        verdicts = pairwise_judge(
            client,
            config.judge_model,
            prompts,
            answers["candidate"],
            answers[baseline],
            concurrency=config.generation.concurrency,
            seed=evaluation.seed,
        )
        if baseline == "base":  # per example, for the human review sample (lib/evaluation/review.py)
            result.examples.loc[result.examples["model"] == "candidate", JUDGE_COLUMN] = verdicts.per_example
        net_win = verdicts.net_win(
            n_resamples=evaluation.n_resamples, confidence=evaluation.confidence, seed=evaluation.seed
        )
        result.extra["judge"][baseline] = {**verdicts.to_dict(), "net_win": net_win}


def _add_judge_agreement(
    result: EvaluationResult, registry: ModelRegistry, config: CandidateEvaluationConfig
) -> dict[str, Any] | None:
    """``result.extra["judge_agreement"]``: the judge's agreement with the human verdicts recorded
    for earlier evaluations of this model name judged by the same judge model (None without a judge)."""
    if not config.judge_model:
        return None
    evaluation = config.evaluation
    agreement = judge_agreement(
        registry.review_verdicts(model_name=config.model_name, judge_model=config.judge_model),
        config.review,
        judge_model=config.judge_model,
        n_resamples=evaluation.n_resamples,
        confidence=evaluation.confidence,
        seed=evaluation.seed,
    )
    result.extra["judge_agreement"] = agreement
    return agreement
