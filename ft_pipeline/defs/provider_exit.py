"""The job replace_hosted_model: leave a hosted provider by replacing the hosted production model
with a local LoRA model proven no worse (lib: ft_pipeline/lib/provider_exit.py)."""

from typing import Any

import dagster as dg

from ft_pipeline.defs.resources import ModelRegistryResource, PipelineStorage
from ft_pipeline.lib.provider_exit import ReplacementPlan, ReplacementRefused, plan_replacement
from ft_pipeline.lib.training.fine_tune import read_splits

JOB_NAME = "replace_hosted_model"
#: What the job materializes, in order (the blocking promotion gate sits between the last two).
REPLACEMENT_ASSETS = ("fine_tuned_model", "evaluation_report", "promoted_model")
#: The job's run config: each step in replacement mode, the gate's production rule non-inferiority.
#: Anything else (training settings, the margin) is set on top, e.g. with `--set` in the CLI.
REPLACE_HOSTED_MODEL_CONFIG: dict[str, Any] = {
    "ops": {
        "fine_tuned_model": {"config": {"backend": "local_lora", "replace_hosted_production": True}},
        "evaluation_report": {"config": {"replace_hosted_production": True, "production_rule": "non_inferiority"}},
        "promoted_model": {"config": {"replace_hosted_production": True}},
    }
}


def replacement_run_config(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The job's run config with ``overrides`` (``{"ops": {step: {"config": {...}}}}``) merged in
    field by field (Dagster would replace a step's whole default config by the one given).

    Raises:
        ValueError: an override for a step the job does not run.
    """
    ops = {op: {"config": dict(entry["config"])} for op, entry in REPLACE_HOSTED_MODEL_CONFIG["ops"].items()}
    for op, entry in ((overrides or {}).get("ops") or {}).items():
        if op not in REPLACEMENT_ASSETS:
            raise ValueError(f"the job {JOB_NAME} runs {', '.join(REPLACEMENT_ASSETS)}; it has no step {op!r}")
        ops.setdefault(op, {"config": {}})["config"].update(entry.get("config") or {})
    return {"ops": ops}


def replacing_hosted_model(context: dg.AssetExecutionContext, flag: bool) -> bool:
    """Whether this step is part of a replacement: its ``replace_hosted_production`` config, or a
    run of the job replace_hosted_model (so run config given without the flag does not turn the
    job into an ordinary retrain)."""
    return flag or context.job_name == JOB_NAME


def replacement_plan(
    context: dg.AssetExecutionContext, storage: PipelineStorage, model_registry: ModelRegistryResource, model_name: str
) -> ReplacementPlan:
    """The plan of the replacement (which hosted model, which splits), logged; a clear Failure when
    there is nothing hosted to replace or its training data is gone."""
    try:
        plan = plan_replacement(
            model_registry.get(),
            model_name,
            current_splits=read_splits(storage.folder("splits")),
            data_dir=storage.root(),
        )
    except ReplacementRefused as err:
        raise dg.Failure(description=f"{JOB_NAME}: {err}") from None
    (context.log.info if plan.same_splits else context.log.warning)(plan.describe())
    return plan


def replacement_metadata(plan: ReplacementPlan) -> dict[str, Any]:
    """What the replacement's assets show: the hosted model being replaced and the splits used."""
    return {
        "replaces_model_id": plan.remote_model_id,
        "replaces_backend": plan.backend,
        "replaces_version": plan.production_version,
        "replacement_splits_version": plan.splits.version,
        "replacement_splits": plan.note,
    }


replace_hosted_model_job = dg.define_asset_job(
    name=JOB_NAME,
    selection=dg.AssetSelection.assets(*REPLACEMENT_ASSETS),
    config=REPLACE_HOSTED_MODEL_CONFIG,
    description="Provider exit: replace the hosted production model (an OpenAI fine-tune, or any hosted backend) "
    "with a local LoRA model proven no worse. Trains a local_lora candidate on the splits the hosted model was "
    "trained on (its split files when the splits have changed since; fails clearly when they are gone), evaluates "
    "it against base and the hosted model with the gate's non_inferiority production rule (the paired CI lower "
    "bound of candidate − hosted above −non_inferiority_margin), and promotes it only if the gate passes; the new "
    "version's tags and the audit log name the replaced model. Fails clearly when there is no production model or "
    "it is not hosted. CLI: ft-pipeline replace-hosted-model. See README 'Leaving a hosted provider'.",
)
