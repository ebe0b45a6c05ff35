"""The new-log-files sensor, the nightly schedule and the run-failure sensor."""

import json
from datetime import UTC

import dagster as dg
import pytest

from ft_pipeline.definitions import defs, new_log_files_sensor, nightly_retrain_schedule, record_run_failures
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.resources import FailureNotifier, PipelineStorage, RawLogStore


def _tick(instance, landing, cursor=None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"raw_log_store": RawLogStore(landing_dir=str(landing))}
    )
    return new_log_files_sensor(context)


def _apply_partitions(instance, result):
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def test_sensor_one_run_per_new_file_idempotent(instance, tmp_path):
    landing = tmp_path / "raw"
    landing.mkdir()
    (landing / "day1.jsonl").write_text('{"messages": []}\n')
    first = _tick(instance, landing)
    assert not first.run_requests  # seen once: it could still be being written
    second = _tick(instance, landing, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["day1.jsonl"]
    assert second.run_requests[0].run_key.startswith("day1.jsonl@")
    assert [list(r.partition_keys) for r in second.dynamic_partitions_requests] == [["day1.jsonl"]]
    _apply_partitions(instance, second)
    # The same file seen again: nothing. A touch without a content change: nothing.
    third = _tick(instance, landing, second.cursor)
    assert not third.run_requests
    import os

    os.utime(landing / "day1.jsonl", ns=(1, 1))
    cursor = third.cursor
    for _ in range(2):
        touched = _tick(instance, landing, cursor)
        cursor = touched.cursor
        assert not touched.run_requests
    # A burst of new files: one run each, all in one tick once settled, no training requested.
    for i in range(5):
        (landing / f"burst{i}.jsonl.gz").write_bytes(b"x" * (i + 1))
    settle = _tick(instance, landing, cursor)
    burst = _tick(instance, landing, settle.cursor)
    assert sorted(r.partition_key for r in burst.run_requests) == [f"burst{i}.jsonl.gz" for i in range(5)]
    assert {r.job_name for r in burst.run_requests} <= {None, "ingest_log_file"}
    # A file still growing between ticks is not picked up half-written.
    growing = landing / "growing.jsonl"
    growing.write_text("a")
    cursor = _tick(instance, landing, burst.cursor).cursor
    growing.write_text("ab")
    assert not [r for r in _tick(instance, landing, cursor).run_requests if r.partition_key == "growing.jsonl"]


def test_sensor_targets_only_the_ingest_job():
    assert new_log_files_sensor.job_name == "ingest_log_file"
    job = defs.resolve_job_def("ingest_log_file")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "raw_conversation_logs",
        "cleaned_conversations",
    }


def test_nightly_schedule_defaults_and_next_tick():
    assert nightly_retrain_schedule.cron_schedule == "0 2 * * *"
    assert nightly_retrain_schedule.execution_timezone == "UTC"
    assert nightly_retrain_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    job = defs.resolve_job_def(nightly_retrain_schedule.job_name)
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {"curated_dataset", "fine_tuned_model", "evaluation_report", "promoted_model"} <= keys
    assert "raw_conversation_logs" not in keys
    from datetime import datetime

    from dagster._utils.schedules import cron_string_iterator

    ticks = cron_string_iterator(
        datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp(), nightly_retrain_schedule.cron_schedule, "UTC"
    )
    assert next(ticks).isoformat().startswith("2026-01-02T02:00:00")
    # A tick evaluates to one run of the retraining job.
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 2, 2, 0, tzinfo=UTC))
    requests = nightly_retrain_schedule.evaluate_tick(context).run_requests
    assert len(requests) == 1


def test_nightly_schedule_method_comes_from_the_environment(monkeypatch):
    from datetime import datetime

    from ft_pipeline.defs.automation import make_nightly_retrain_schedule

    job = dg.define_asset_job("retrain_for_test", selection=["fine_tuned_model"])
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 2, 2, 0, tzinfo=UTC))
    monkeypatch.setenv("FT_PIPELINE_RETRAIN_METHOD", "sft_then_dpo")
    (request,) = make_nightly_retrain_schedule(job).evaluate_tick(context).run_requests
    assert request.run_config == {"ops": {"fine_tuned_model": {"config": {"method": "sft_then_dpo"}}}}
    monkeypatch.setenv("FT_PIPELINE_RETRAIN_METHOD", "sft")
    (request,) = make_nightly_retrain_schedule(job).evaluate_tick(context).run_requests
    assert not request.run_config  # the default: the asset's own default config
    monkeypatch.setenv("FT_PIPELINE_RETRAIN_METHOD", "ppo")
    with pytest.raises(ValueError, match="FT_PIPELINE_RETRAIN_METHOD must be one of sft, dpo, kto, sft_then_dpo"):
        make_nightly_retrain_schedule(job)


def test_run_failure_sensor_records_the_failure(instance, tmp_path):
    @dg.asset
    def broken():
        raise RuntimeError("boom: transient network error")

    result = dg.materialize([broken], instance=instance, raise_on_error=False)
    assert not result.success
    failure_event = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    context = dg.build_run_status_sensor_context(
        sensor_name="record_run_failures",
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        dagster_event=failure_event,
        resources={"storage": PipelineStorage(data_dir=str(tmp_path)), "failure_notifier": FailureNotifier()},
    ).for_run_failure()
    record_run_failures(context)
    lines = [json.loads(line) for line in (tmp_path / "run_failures.jsonl").read_text().splitlines()]
    assert lines[0]["run_id"] == result.run_id
    assert "broken" in lines[0]["error"]


def test_sensor_and_ingest_from_object_storage(instance, tmp_path):
    """The landing folder as an fsspec URL (memory:// here; s3:// in production): the sensor sees
    the file once it settled, and raw_conversation_logs parses a downloaded copy."""
    import uuid

    import fsspec

    from ft_pipeline.defs.records import raw_conversation_logs
    from ft_pipeline.lib.sample_data import build_sample
    from ft_pipeline_tests.conftest import resources_for

    url = f"memory://bucket-{uuid.uuid4().hex}/landing"
    name = "support_2024-05-01.jsonl"
    with fsspec.open(f"{url}/{name}", "wb") as f:
        f.write(build_sample()[name])
    store = RawLogStore(landing_dir=url)

    def tick(cursor=None):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"raw_log_store": store})
        return new_log_files_sensor(context)

    first = tick()
    assert not first.run_requests
    second = tick(first.cursor)
    assert [r.partition_key for r in second.run_requests] == [name]
    _apply_partitions(instance, second)
    assert not tick(second.cursor).run_requests

    resources = {**resources_for(tmp_path / "data"), "raw_log_store": store}
    result = dg.materialize([raw_conversation_logs], partition_key=name, resources=resources, instance=instance)
    metadata = result.asset_materializations_for_node("raw_conversation_logs")[0].metadata
    assert metadata["parsed"].value > 0
    assert metadata["records_in"].value == metadata["parsed"].value + metadata["quarantined"].value
    # The downloaded copy is gone once parsed; the object stays where it landed.
    assert not [p for p in (tmp_path / "data" / "landing_cache").rglob("*") if p.is_file()]
    assert fsspec.filesystem("memory").exists(f"{url}/{name}".removeprefix("memory://"))


def test_sensor_skips_files_already_ingested_with_the_same_content(instance, tmp_path):
    """Files ingested before the sensor was turned on (by hand, a backfill, `ft-pipeline run`) get
    no second run; the same name with new content does."""
    from ft_pipeline.defs.records import raw_conversation_logs
    from ft_pipeline.lib.sample_data import build_sample
    from ft_pipeline_tests.conftest import resources_for

    data = tmp_path / "data"
    landing = data / "raw"
    landing.mkdir(parents=True)
    name = "support_2024-05-01.jsonl"
    (landing / name).write_bytes(build_sample()[name])
    instance.add_dynamic_partitions(log_files_partitions.name, [name])
    assert dg.materialize(
        [raw_conversation_logs], partition_key=name, resources=resources_for(data), instance=instance
    ).success

    first = _tick(instance, landing)
    second = _tick(instance, landing, first.cursor)
    assert not second.run_requests
    assert "1 already ingested with the same content" in second.skip_reason.skip_message

    (landing / name).write_bytes(build_sample(seed=11)[name])
    third = _tick(instance, landing, second.cursor)
    fourth = _tick(instance, landing, third.cursor)
    assert [r.partition_key for r in fourth.run_requests] == [name]
    assert not fourth.dynamic_partitions_requests  # the partition exists already
