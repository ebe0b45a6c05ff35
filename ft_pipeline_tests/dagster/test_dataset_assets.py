"""In-process materializations of the dataset assets and their checks on the sample logs."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from ft_pipeline.definitions import ALL_ASSETS, DATASET_ASSETS, PER_FILE_ASSETS, defs
from ft_pipeline.defs.partitions import log_files_partitions
from ft_pipeline.lib.sample_data import build_sample
from ft_pipeline_tests.conftest import resources_for


def _ingest(instance, resources, names):
    instance.add_dynamic_partitions(
        log_files_partitions.name,
        [n for n in names if n not in instance.get_dynamic_partitions(log_files_partitions.name)],
    )
    results = {}
    for name in names:
        result = dg.materialize(PER_FILE_ASSETS, partition_key=name, instance=instance, resources=resources)
        assert result.success
        results[name] = {
            e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
        }
    return results


def _build(instance, resources, run_config=None):
    return dg.materialize(
        ALL_ASSETS,
        selection=DATASET_ASSETS,
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=False,
    )


def _meta(result, key):
    return next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == key
    )


def test_definitions_load_and_every_asset_documented():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys >= {
        "raw_conversation_logs",
        "cleaned_conversations",
        "curated_dataset",
        "train_split",
        "validation_split",
        "test_split",
        "fine_tuned_model",
    }
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, f"{key} has no docstring"


def test_full_dataset_graph_on_the_sample(instance, resources, data_dir):
    names = sorted(build_sample())
    per_file = _ingest(instance, resources, names)

    # Counts add up per file: records in = parsed + quarantined; parsed = kept + filtered.
    total_in = total_quarantined = total_filtered = total_kept = 0
    for metadata in per_file.values():
        raw, cleaned = metadata["raw_conversation_logs"], metadata["cleaned_conversations"]
        assert raw["records_in"].value == raw["parsed"].value + raw["quarantined"].value
        assert cleaned["conversations_in"].value == raw["parsed"].value
        assert cleaned["conversations_in"].value == cleaned["kept"].value + cleaned["filtered"].value
        total_in += raw["records_in"].value
        total_quarantined += raw["quarantined"].value
        total_filtered += cleaned["filtered"].value
        total_kept += cleaned["kept"].value
    assert total_quarantined >= 13  # every bad-input kind is planted in the sample
    quarantine = pd.concat(pd.read_parquet(p) for p in (data_dir / "quarantine").glob("*.parquet"))
    assert set(quarantine["reason"]) >= {
        "invalid_json",
        "invalid_utf8",
        "not_an_object",
        "messages_missing",
        "messages_not_a_list",
        "message_not_an_object",
        "unknown_role",
        "content_missing",
        "content_not_a_string",
        "wrong_field_type",
        "empty_conversation",
        "oversize_record",
        "unreadable_file",
    }
    assert not quarantine["raw_text"].str.contains("jane.doe@example.com").any()

    result = _build(instance, resources)
    assert result.success
    curated = _meta(result, "curated_dataset")
    assert curated["conversations_in"].value == total_kept
    assert curated["conversations_in"].value == curated["kept"].value + curated["removed"].value
    removed = pd.read_parquet(data_dir / curated["removed_path"].value)
    assert set(removed["reason"]) >= {
        "exact_duplicate",
        "near_duplicate",
        "prefix_duplicate",
        "branch_duplicate",
        "too_many_tokens",
    }
    checks = {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}
    assert {k for k, c in checks.items() if not c.passed} == set()
    assert set(checks) == {
        ("curated_dataset", "no_pii_left"),
        ("curated_dataset", "no_duplicates_left"),
        ("train_split", "no_leakage"),
        ("test_split", "no_leakage"),
        ("train_split", "minimum_size"),
        ("validation_split", "minimum_size"),
        ("test_split", "minimum_size"),
        ("train_split", "openai_format"),
        ("validation_split", "openai_format"),
    }

    sizes = {k: _meta(result, k)["dagster/row_count"].value for k in ("train_split", "validation_split", "test_split")}
    assert sum(sizes.values()) == curated["kept"].value
    train = pd.read_parquet(data_dir / _meta(result, "train_split")["path"].value)
    assert len(train) == sizes["train_split"]
    with open(data_dir / _meta(result, "train_split")["jsonl_path"].value) as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == len(train) and set(lines[0]) == {"messages"}
    # No PII survives anywhere in the curated output.
    text = " ".join(m["content"] for ms in train["messages"] for m in ms)
    assert "jane.doe@example.com" not in text and "4111 1111 1111 1111" not in text
    # One version per artifact: the DataVersion Dagster shows is the folder's name, and the
    # splits record the curated dataset's DataVersion as their input.
    versions = {
        e.asset_key.to_user_string(): e.materialization.tags["dagster/data_version"]
        for e in result.get_asset_materialization_events()
    }
    # Paths relative to the data directory (an absolute one widens the UI's metadata pane).
    assert curated["path"].value == f"curated/{versions['curated_dataset']}/conversations.parquet"
    assert "version" not in curated
    for split in ("train_split", "validation_split", "test_split"):
        meta = _meta(result, split)
        assert Path(meta["path"].value).parent.name == versions[split]
        assert meta["curated_version"].value == versions["curated_dataset"]
        columns = {c.name: c for c in meta["dagster/column_schema"].schema.columns}
        assert {"messages", "split", "split_group"} <= set(columns) and columns["messages"].description
    assert {c.name for c in curated["dagster/column_schema"].schema.columns} >= {"messages", "n_tokens"}
    # Headlines are plain values and tables, never JSON dumps behind a click.
    for event in result.get_asset_materialization_events():
        for key, value in event.materialization.metadata.items():
            assert not isinstance(value, dg.JsonMetadataValue), (event.asset_key, key)


def test_one_more_file_keeps_every_old_example_in_its_split(instance, resources, data_dir, tmp_path):
    names = sorted(build_sample())
    _ingest(instance, resources, names)
    first = _build(instance, resources)
    assert first.success
    before = {}
    for key, split in (("train_split", "train"), ("validation_split", "validation"), ("test_split", "test")):
        for cid in pd.read_parquet(data_dir / _meta(first, key)["path"].value)["conversation_id"]:
            before[cid] = split

    import random

    from ft_pipeline.lib.sample_data import _conversation

    rng = random.Random(99)
    extra = [_conversation(rng, 90_000 + i) for i in range(60)]
    new_file = data_dir / "raw" / "support_2024-05-09.jsonl"
    new_file.write_text("".join(json.dumps(r) + "\n" for r in extra))
    _ingest(instance, resources, ["support_2024-05-09.jsonl"])
    second = _build(instance, resources)
    assert second.success
    after = {}
    for key, split in (("train_split", "train"), ("validation_split", "validation"), ("test_split", "test")):
        for cid in pd.read_parquet(data_dir / _meta(second, key)["path"].value)["conversation_id"]:
            after[cid] = split
    assert len(after) > len(before)
    # A new conversation may legitimately replace an old one as the better copy of a duplicate;
    # every old example still present must be in the split it was in.
    still_present = [cid for cid in before if cid in after]
    assert len(still_present) >= len(before) - 3
    moved = {cid: (before[cid], after[cid]) for cid in still_present if after[cid] != before[cid]}
    assert moved == {}


def test_minimum_sizes_check_reports_numbers(instance, resources, data_dir):
    _ingest(instance, resources, sorted(build_sample()))
    run_config = {"ops": {"train_validation_test_split": {"config": {"min_train_examples": 100_000}}}}
    result = _build(instance, resources, run_config)
    checks = {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}
    failed = checks[("train_split", "minimum_size")]
    assert not failed.passed and "fewer than the minimum 100000" in failed.description
    assert failed.metadata["minimum"].value == 100_000
    assert checks[("test_split", "minimum_size")].passed


def _planted_near_duplicate_pairs(tmp_path):
    """150 pairs of conversations that differ in two words (true Jaccard mostly 0.8 to 0.9)."""
    import random

    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(3000)]
    records = []
    for i in range(150):
        question = " ".join(rng.choice(vocab) for _ in range(40))
        answer = " ".join(rng.choice(vocab) for _ in range(120))
        for copy in range(2):
            q = question.split()
            a = answer.split()
            if copy:
                q[20] = "changed"
                a[60] = "changed"
            records.append(
                {
                    "conversation_id": f"p{i}-{copy}",
                    "messages": [
                        {"role": "user", "content": " ".join(q)},
                        {"role": "assistant", "content": " ".join(a)},
                    ],
                }
            )
    root = tmp_path / "planted"
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _checks(result):
    return {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}


def test_leakage_check_uses_the_threshold_curated_ran_with(instance, tmp_path):
    """The splits' leakage check reads curated_dataset's near-duplicate parameters from its manifest:
    pairs the curated dedup was told to keep (threshold 0.99) are not leaks, and the default
    threshold both removes them and is what the check reports."""
    resources = resources_for(_planted_near_duplicate_pairs(tmp_path))
    _ingest(instance, resources, ["pairs.jsonl"])

    permissive = _build(instance, resources, {"ops": {"curated_dataset": {"config": {"near_dup_threshold": 0.99}}}})
    leakage = _checks(permissive)[("train_split", "no_leakage")]
    assert leakage.metadata["near_dup_threshold"].value == 0.99
    assert leakage.metadata["near_duplicates_across_splits"].value == 0 and leakage.passed
    assert _meta(permissive, "curated_dataset")["kept"].value == 300

    default = _build(instance, resources)
    leakage = _checks(default)[("train_split", "no_leakage")]
    assert leakage.metadata["near_dup_threshold"].value == 0.8 and leakage.passed
    assert _meta(default, "curated_dataset")["kept"].value < 300  # most planted pairs are near duplicates at 0.8


def test_leakage_check_fails_on_planted_near_duplicates(instance, tmp_path):
    """Near duplicates across splits, at the threshold the curated manifest names, fail the
    blocking check: here the manifest is rewritten to a lower threshold than the dedup ran with."""
    import dataclasses

    from ft_pipeline.lib.manifests import CuratedManifest, read_manifest, write_manifest

    root = _planted_near_duplicate_pairs(tmp_path)
    resources = resources_for(root)
    _ingest(instance, resources, ["pairs.jsonl"])
    assert _build(instance, resources, {"ops": {"curated_dataset": {"config": {"near_dup_threshold": 0.99}}}}).success
    manifest = read_manifest(root / "curated", CuratedManifest)
    write_manifest(root / "curated", dataclasses.replace(manifest, near_dup_threshold=0.85))

    result = dg.materialize(
        ALL_ASSETS,
        selection=["train_split", "validation_split", "test_split"],
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    leakage = _checks(result)[("train_split", "no_leakage")]
    assert not leakage.passed
    assert leakage.metadata["near_dup_threshold"].value == 0.85
    assert leakage.metadata["near_duplicates_across_splits"].value > 0
    spec = next(s for s in defs.get_assets_def("train_split").check_specs if s.name == "no_leakage")
    assert spec.blocking


def test_cleaned_partitions_with_different_signature_parameters_fail_curated_clearly(instance, resources, data_dir):
    names = sorted(build_sample())[:2]
    instance.add_dynamic_partitions(log_files_partitions.name, names)
    for name, num_perm in zip(names, (128, 64)):
        run_config = {"ops": {"cleaned_conversations": {"config": {"minhash_num_perm": num_perm}}}}
        result = dg.materialize(
            PER_FILE_ASSETS, partition_key=name, instance=instance, resources=resources, run_config=run_config
        )
        assert result.success
    result = _build(instance, resources)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "num_perm=64" in message and "num_perm=128" in message and names[0] in message and names[1] in message


def test_missing_landed_file_fails_clearly(instance, resources, data_dir):
    instance.add_dynamic_partitions(log_files_partitions.name, ["gone.jsonl"])
    result = dg.materialize(
        PER_FILE_ASSETS, partition_key="gone.jsonl", instance=instance, resources=resources, raise_on_error=False
    )
    assert not result.success
