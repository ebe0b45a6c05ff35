"""Automation: the new-log-files sensor, the nightly retraining schedule, the run-failure sensor."""

import json
import os
from datetime import UTC, datetime

import dagster as dg

# define_asset_job's return type; Dagster exports the class only from this private module.
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from ft_pipeline.defs.partitions import LOG_FILES_PARTITION, log_files_partitions
from ft_pipeline.defs.resources import FailureNotifier, PipelineStorage, RawLogStore
from ft_pipeline.lib.landing import LandingState, scan_landing


def _ingested_sha256(instance: dg.DagsterInstance, partition: str) -> str | None:
    """The source file hash of the latest raw_conversation_logs materialization of a partition."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_conversation_logs"), asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("source_sha256")
    return str(value.value) if value is not None else None


def make_new_log_files_sensor(job: UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name="new_log_files",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Adds a log_files partition per new landed file and requests one ingest run per file "
        "(raw_conversation_logs + cleaned_conversations). A file is picked up once it stopped changing between "
        "two ticks; the same content never runs twice (cursor + run keys). Retraining is left to nightly_retrain, "
        "so a burst of files never starts a burst of trainings.",
    )
    def new_log_files(context: dg.SensorEvaluationContext, raw_log_store: RawLogStore) -> dg.SensorResult:
        folder = raw_log_store.folder()
        ready, state = scan_landing(folder.stats(), LandingState.from_json(context.cursor), folder.sha256)
        known = set(context.instance.get_dynamic_partitions(LOG_FILES_PARTITION))
        new = [f.name for f in ready if f.name not in known]
        # A file ingested before the sensor was turned on (by hand, a backfill, `ft-pipeline run`)
        # with this very content needs no second run.
        todo = [f for f in ready if f.name in new or _ingested_sha256(context.instance, f.name) != f.sha256]
        run_requests = [
            dg.RunRequest(
                run_key=f"{f.name}@{f.sha256[:16]}", partition_key=f.name, tags={"ft_pipeline/source_sha256": f.sha256}
            )
            for f in todo
        ]
        if not run_requests:
            waiting = sorted(state.pending)
            reason = "no new or changed log files"
            if len(ready) > len(todo):
                reason += f" ({len(ready) - len(todo)} already ingested with the same content)"
            if waiting:
                reason += f" ({len(waiting)} still settling: {waiting[:5]})"
            return dg.SensorResult(skip_reason=reason, cursor=state.to_json())
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[log_files_partitions.build_add_request(new)] if new else [],
            cursor=state.to_json(),
        )

    return new_log_files


#: Training methods the nightly schedule may use (``FT_PIPELINE_RETRAIN_METHOD``).
RETRAIN_METHODS = ("sft", "dpo", "kto", "sft_then_dpo")


def make_nightly_retrain_schedule(job: UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    """Curated dataset -> splits -> model -> evaluation -> promotion, once a night (STOPPED until
    someone turns it on). Cron and timezone come from FT_PIPELINE_RETRAIN_CRON / _TIMEZONE, the
    training method (``fine_tuned_model.method``) from FT_PIPELINE_RETRAIN_METHOD (default sft)."""
    method = os.environ.get("FT_PIPELINE_RETRAIN_METHOD", "sft").strip() or "sft"
    if method not in RETRAIN_METHODS:
        raise ValueError(f"FT_PIPELINE_RETRAIN_METHOD must be one of {', '.join(RETRAIN_METHODS)}, not {method!r}")
    return dg.ScheduleDefinition(
        name="nightly_retrain",
        job=job,
        cron_schedule=os.environ.get("FT_PIPELINE_RETRAIN_CRON", "0 2 * * *"),
        execution_timezone=os.environ.get("FT_PIPELINE_RETRAIN_TIMEZONE", "UTC"),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        # Only a non-default method is set, so the default schedule's runs carry no run config.
        run_config={"ops": {"fine_tuned_model": {"config": {"method": method}}}} if method != "sft" else None,
        description=f"Retrain ({method}), evaluate and (if the gate passes) promote on all ingested data.",
    )


@dg.run_failure_sensor(name="record_run_failures", default_status=dg.DefaultSensorStatus.STOPPED)
def record_run_failures(
    context: dg.RunFailureSensorContext, storage: PipelineStorage, failure_notifier: FailureNotifier
) -> None:
    """Records every failed run (job, run id, failed steps, error) in ``run_failures.jsonl`` in the
    data directory and passes a one-line message to the configured notifier."""
    run = context.dagster_run
    error = context.failure_event.message or ""
    record = {
        "at": datetime.now(UTC).isoformat(),
        "job": run.job_name,
        "run_id": run.run_id,
        "partition": run.tags.get("dagster/partition"),
        "error": error[:2000],
    }
    path = storage.root() / "run_failures.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    context.log.error(f"run {run.run_id} of {run.job_name} failed: {error[:300]}")
    failure_notifier.notify(f"ft-pipeline: {run.job_name} run {run.run_id} failed: {error[:300]}")
