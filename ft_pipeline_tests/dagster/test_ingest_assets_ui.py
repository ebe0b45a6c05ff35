"""What the per-file assets show in the UI (issue 16): plain numbers and tables instead of JSON,
a scrubbed quarantine sample, the column schema of the Parquet file each writes, the per-partition
checks (counts add up, blocking; quarantine rate under a ceiling, a warning), owners, tags and
kinds, and one version per artifact (the DataVersion is the version in the file name)."""

import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from ft_pipeline.definitions import PER_FILE_ASSETS
from ft_pipeline.defs.cleaning import cleaned_conversations
from ft_pipeline.defs.metadata import ASSET_OWNERS, CONVERSATION_DATA_TAGS
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.defs.records import raw_conversation_logs
from ft_pipeline.defs.resources import PiiPolicy
from ft_pipeline.lib.manifests import CleanedManifest, read_manifest
from ft_pipeline.lib.records import IngestCheckConfig
from ft_pipeline.lib.storage import safe_name

NAME = "ui_probe.jsonl"
EMAIL = "jane.doe@example.com"
PHONE = "(415) 867-5309"
RAW, CLEANED = "raw_conversation_logs", "cleaned_conversations"


def _good(i: int) -> dict:
    return {
        "conversation_id": f"c-{i}",
        "rating": 5,
        "messages": [
            {"role": "user", "content": f"My plug will not pair after the update, write me at {EMAIL} ({i})."},
            {
                "role": "assistant",
                "content": f"Hold the Link button for ten seconds until the light turns white, then pair again ({i}).",
            },
        ],
    }


def _probe_lines() -> list[str]:
    """Six good records (with PII) and two bad ones that carry PII in their raw text: 2 of 8
    quarantined, 25%, over the default ceiling of 5%."""
    good = [json.dumps(_good(i)) for i in range(6)]
    broken_json = '{"conversation_id": "c-bad", "messages": [{"role": "user", "content": "mail ' + EMAIL
    bad_role = json.dumps(
        {"conversation_id": "c-role", "messages": [{"role": "customer", "content": f"call me on {PHONE}"}]}
    )
    return [*good[:3], broken_json, *good[3:], bad_role]


@pytest.fixture
def probe(instance, resources, data_dir):
    (data_dir / "raw" / NAME).write_text("\n".join(_probe_lines()) + "\n", encoding="utf-8")
    instance.add_dynamic_partitions(log_files_partitions.name, [NAME])
    return instance, resources, data_dir


def _materialize(instance, resources, run_config=None, raise_on_error=True):
    return dg.materialize(
        PER_FILE_ASSETS,
        partition_key=NAME,
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def _events(result) -> dict[str, dg.AssetMaterialization]:
    return {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}


def _checks(result) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}


def _rows(value: dg.MetadataValue) -> list[dict]:
    assert isinstance(value, dg.TableMetadataValue), type(value)
    return [record.data for record in value.records]


def test_checks_per_partition_on_a_file_with_bad_records(probe):
    instance, resources, _ = probe
    result = _materialize(instance, resources)
    assert result.success  # a quarantine rate over the ceiling warns; it fails nothing
    checks = _checks(result)
    assert set(checks) == {(RAW, "counts_add_up"), (RAW, "quarantine_rate"), (CLEANED, "counts_add_up")}

    counts = checks[(RAW, "counts_add_up")]
    assert counts.passed and counts.severity == dg.AssetCheckSeverity.ERROR
    assert {k: v.value for k, v in counts.metadata.items()} == {"records_in": 8, "parsed": 6, "quarantined": 2}

    rate = checks[(RAW, "quarantine_rate")]
    assert not rate.passed
    assert rate.severity == dg.AssetCheckSeverity.WARN
    assert rate.metadata["quarantine_rate"].value == 0.25
    assert rate.metadata["max_quarantine_rate"].value == IngestCheckConfig().max_quarantine_rate == 0.05
    assert "25.0%" in rate.description and "5.0%" in rate.description and "over" in rate.description

    cleaned = checks[(CLEANED, "counts_add_up")]
    assert cleaned.passed and cleaned.severity == dg.AssetCheckSeverity.ERROR
    figures = {k: v.value for k, v in cleaned.metadata.items()}
    assert figures["conversations_in"] == figures["parsed"] == 6
    assert figures["kept"] + figures["filtered"] == 6

    # Every check evaluation belongs to this partition's materialization.
    for check in checks.values():
        assert check.target_materialization_data.run_id == result.run_id

    # The ceiling is a run config field: at 50% the same file passes.
    relaxed = _materialize(instance, resources, {"ops": {RAW: {"config": {"max_quarantine_rate": 0.5}}}})
    rate = _checks(relaxed)[(RAW, "quarantine_rate")]
    assert rate.passed and "within the ceiling of 50.0%" in rate.description


def test_the_checks_are_declared_blocking_where_records_could_be_lost():
    specs = {
        (spec.asset_key.to_user_string(), spec.name): spec
        for asset in (raw_conversation_logs, cleaned_conversations)
        for spec in asset.check_specs
    }
    assert specs[(RAW, "counts_add_up")].blocking and specs[(CLEANED, "counts_add_up")].blocking
    assert not specs[(RAW, "quarantine_rate")].blocking


@pytest.mark.parametrize(
    "module, folder, asset",
    [("ft_pipeline.lib.records", "parsed", RAW), ("ft_pipeline.lib.cleaning", "cleaned", CLEANED)],
)
def test_a_lost_record_fails_counts_add_up_and_blocks_downstream(probe, monkeypatch, module, folder, asset):
    import importlib

    lib = importlib.import_module(module)
    real_write = lib.write_parquet

    def lossy_write(frame, path):  # a write that drops a row of the stage's main output
        if Path(path).parent.parent.name == folder and not str(path).endswith(".filtered.parquet"):
            frame = frame.iloc[:-1]
        return real_write(frame, path)

    monkeypatch.setattr(lib, "write_parquet", lossy_write)
    instance, resources, _ = probe
    result = _materialize(instance, resources, raise_on_error=False)
    assert not result.success
    check = _checks(result)[(asset, "counts_add_up")]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "lost" in check.description
    if asset == RAW:  # blocking: the cleaning step does not run on a file that lost records
        assert CLEANED not in _events(result)


def test_metadata_readable_without_a_click(probe):
    instance, resources, data_dir = probe
    events = _events(_materialize(instance, resources))
    raw, cleaned = events[RAW].metadata, events[CLEANED].metadata

    # No JSON dumps left; headline figures are plain ints and floats (the UI plots them).
    for key, metadata in (("raw", raw), ("cleaned", cleaned)):
        json_rows = [name for name, value in metadata.items() if isinstance(value, dg.JsonMetadataValue)]
        assert json_rows == [], f"{key}: JSON metadata {json_rows}"
    for name in ("records_in", "parsed", "quarantined", "blank_lines", "pii_total", "dagster/row_count"):
        assert isinstance(raw[name], dg.IntMetadataValue), name
    assert isinstance(raw["quarantine_rate"], dg.FloatMetadataValue) and raw["quarantine_rate"].value == 0.25
    for name in ("conversations_in", "kept", "filtered", "pii_total", "repairs_total", "dagster/row_count"):
        assert isinstance(cleaned[name], dg.IntMetadataValue), name
    assert isinstance(cleaned["kept_share"], dg.FloatMetadataValue)
    # Every existing number is still there.
    assert raw["records_in"].value == 8 and raw["parsed"].value == 6 and raw["quarantined"].value == 2

    formats = {r["reason"]: r["count"] for r in _rows(raw["source_formats"])}
    assert formats == {"raw": 6}
    raw_pii = {r["reason"]: r["count"] for r in _rows(raw["pii_found"])}
    assert raw_pii["EMAIL"] == 6 and raw_pii["PHONE"] == 0  # every type is listed, zeros too
    assert raw["pii_total"].value == sum(raw_pii.values())
    assert {r["reason"] for r in _rows(cleaned["pii_found"])} >= {"EMAIL", "PHONE"}
    repairs = _rows(cleaned["repairs"])
    assert {r["reason"] for r in repairs} >= {"merged_consecutive_turns", "dropped_empty_message"}
    assert all(r["meaning"] for r in repairs)
    assert cleaned["repairs_total"].value == sum(r["count"] for r in repairs)

    # The quarantine sample: a table of the two bad records, scrubbed with the pipeline's policy.
    sample = _rows(raw["quarantine_sample"])
    assert [(r["source_line"], r["reason"]) for r in sample] == [(4, "invalid_json"), (8, "unknown_role")]
    text = json.dumps(sample)
    assert "<EMAIL>" in text
    for value in (EMAIL, PHONE):
        assert value not in text
    # Nowhere in the metadata either.
    everything = json.dumps(
        {k: str(getattr(v, "value", v)) for meta in (raw, cleaned) for k, v in meta.items()}, ensure_ascii=False
    )
    assert EMAIL not in everything and PHONE not in everything


def test_samples_are_scrubbed_even_where_storage_is_not(probe):
    # With scrubbing of the stored data switched off, the quarantine holds the raw text; the
    # metadata, which lands in the event log, must still never hold it.
    instance, resources, data_dir = probe
    result = _materialize(instance, {**resources, "pii_policy": PiiPolicy(scrub=False)})
    stored = pq.read_table(data_dir / "quarantine" / f"{safe_name(NAME)}.parquet").to_pandas()
    assert stored["raw_text"].str.contains(EMAIL, regex=False).any()  # the test stores raw PII
    events = _events(result)
    for asset, keys in ((RAW, ("quarantine_sample", "sample")), (CLEANED, ("sample", "filtered_sample"))):
        for key in keys:
            text = json.dumps(_rows(events[asset].metadata[key]))
            assert EMAIL not in text and PHONE not in text, (asset, key)
    assert "<EMAIL>" in json.dumps(_rows(events[RAW].metadata["quarantine_sample"]))


def test_column_schema_of_the_written_files(probe):
    instance, resources, data_dir = probe
    events = _events(_materialize(instance, resources))
    for asset in (RAW, CLEANED):
        metadata = events[asset].metadata
        schema = metadata["dagster/column_schema"].value
        assert isinstance(schema, dg.TableSchema)
        written = pq.read_schema(data_dir / metadata["path"].value)
        assert [c.name for c in schema.columns] == written.names
        undocumented = [c.name for c in schema.columns if not c.description]
        assert undocumented == [], f"{asset}: columns without a description {undocumented}"
    assert "exact_hash" in [c.name for c in events[CLEANED].metadata["dagster/column_schema"].value.columns]


def test_owners_tags_and_kinds():
    for asset in (raw_conversation_logs, cleaned_conversations):
        spec = next(iter(asset.specs))
        assert list(spec.owners) == ASSET_OWNERS
        assert CONVERSATION_DATA_TAGS.items() <= dict(spec.tags).items()
        assert {"parquet", "pandas"} <= set(spec.kinds)


def test_one_version_per_artifact(probe):
    instance, resources, data_dir = probe
    result = _materialize(instance, resources)
    events = _events(result)
    versions = {asset: events[asset].tags["dagster/data_version"] for asset in (RAW, CLEANED)}
    for asset, version in versions.items():
        metadata = events[asset].metadata
        assert Path(metadata["path"].value).name == f"{version}.parquet", asset
        assert "version" not in metadata  # no second version string beside the DataVersion
    assert Path(events[CLEANED].metadata["filtered_path"].value).name == f"{versions[CLEANED]}.filtered.parquet"
    # The manifest curated_dataset reads names the same versions as Dagster shows.
    manifest = read_manifest(data_dir / "cleaned" / safe_name(NAME), CleanedManifest)
    assert manifest.version == versions[CLEANED]
    assert manifest.parsed_version == versions[RAW]
    # What Dagster shows as the partition's latest data version is the same string.
    for asset, version in versions.items():
        record = instance.get_latest_data_version_record(dg.AssetKey(asset), partition_key=NAME)
        assert record is not None
        assert record.asset_materialization.tags["dagster/data_version"] == version
