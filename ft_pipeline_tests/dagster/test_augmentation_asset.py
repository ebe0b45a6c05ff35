"""augmented_train_split materialized in process (on splits made by the lib, to keep it quick): off
by default (counts only, nothing written, training cannot ask for it), then on (files, counts,
checks, a new version)."""

import json

import dagster as dg
import pyarrow.parquet as pq

from ft_pipeline.definitions import ALL_ASSETS, AUGMENTATION_ASSETS, TRAINING_ASSETS, default_resources
from ft_pipeline_tests.unit.test_augmentation import build_splits


def _meta(result, key):
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return event.materialization


def test_augmented_train_split_is_off_by_default_then_adds_grouped_copies(instance, resources, data_dir):
    splits = build_splits(data_dir)
    splits_version = splits.version
    train_rows = pq.ParquetFile(splits.parquet("train")).metadata.num_rows
    built = dg.materialize(ALL_ASSETS, selection=AUGMENTATION_ASSETS, instance=instance, resources=resources)
    assert built.success
    off = _meta(built, "augmented_train_split")
    assert off.metadata["enabled"].value is False
    assert off.metadata["source_examples"].value == off.metadata["dagster/row_count"].value == train_rows
    assert off.metadata["augmented_copies"].value == 0
    assert off.metadata["splits_version"].value == splits_version
    assert not (data_dir / "splits" / splits_version / "augmented").exists()

    # Training that asks for the augmented split before there is one fails, saying what to do.
    train = dg.materialize(
        ALL_ASSETS,
        selection=TRAINING_ASSETS,
        instance=instance,
        resources={**default_resources(), **resources},
        run_config={"ops": {"fine_tuned_model": {"config": {"base_model": "tiny", "train_on_augmented": True}}}},
        raise_on_error=False,
    )
    assert not train.success
    failure = train.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "materialize augmented_train_split with enabled=true" in failure

    on = dg.materialize(
        ALL_ASSETS,
        selection=AUGMENTATION_ASSETS,
        instance=instance,
        resources=resources,
        run_config={"ops": {"augmented_train_split": {"config": {"enabled": True, "copies_per_example": 2}}}},
    )
    assert on.success
    event = _meta(on, "augmented_train_split")
    metadata = event.metadata
    copies = metadata["augmented_copies"].value
    assert metadata["enabled"].value is True and copies > 0
    assert metadata["dagster/row_count"].value == train_rows + copies
    assert sum(r.data["count"] for r in metadata["copies_per_kind"].value.records) == copies
    assert 2 * metadata["selected_examples"].value == copies + metadata["unchanged_copies"].value
    assert event.tags["dagster/data_version"] != off.tags["dagster/data_version"]
    path = data_dir / metadata["path"].value
    assert path.parent.parent.name == "augmented" and path.parent.parent.parent.name == splits_version
    with open(data_dir / metadata["jsonl_path"].value) as f:
        assert sum(1 for _ in f) == metadata["dagster/row_count"].value
    assert {"augmented_from", "augmentation"} <= {c.name for c in metadata["dagster/column_schema"].schema.columns}
    # The sample shows copies (ids name their source), scrubbed; no JSON dumps.
    sample = metadata["sample_copies"].value.records
    assert sample and all("#aug" in r.data["conversation_id"] for r in sample)
    assert not [k for k, v in metadata.items() if isinstance(v, dg.JsonMetadataValue)]
    checks = {c.check_name: c for c in on.get_asset_check_evaluations()}
    assert set(checks) == {"no_leakage", "openai_format"}
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    manifest = json.loads((path.parent.parent / "latest.json").read_text())
    assert manifest["version"] == event.tags["dagster/data_version"] and manifest["splits_version"] == splits_version
