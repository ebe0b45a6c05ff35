"""ModelRecord and EvaluationSummary: what the model stages hand to each other, typed and versioned."""

import json

import pytest

from ft_pipeline.lib.evaluation.summary import EvaluationSummary, read_evaluation_summary, write_evaluation_summary
from ft_pipeline.lib.manifests import ManifestError, SplitsManifest, write_manifest
from ft_pipeline.lib.storage import write_latest
from ft_pipeline.lib.training.fine_tune import read_splits
from ft_pipeline.lib.training.record import ModelRecord, read_model_record, record_path, write_model_record


def _record(models, backend="local_lora"):
    return ModelRecord(
        version="abc",
        path=record_path(models, "abc"),
        backend=backend,
        run_key="abc",
        base_model="tiny",
        data_version="d1",
        split_paths={"train": {"parquet": "t.parquet", "jsonl": "t.jsonl"}},
        config={"seed": 7},
        config_hash="h",
        metrics={"train_loss": 1.0},
        adapter_dir=str(models / "abc" / "adapter"),
        adapter_version="v9",
        remote_model_id="ft:x" if backend == "openai" else None,
    )


def test_model_record_round_trips_and_is_copied_into_the_run_folder(tmp_path):
    record = _record(tmp_path)
    run_copy = write_model_record(tmp_path, record)
    assert run_copy == tmp_path / "abc" / "model.json"
    assert read_model_record(tmp_path) == record
    # The run folder's copy is the same manifest (it is published with the adapter).
    assert json.loads(run_copy.read_text())["kind"] == "model_record"
    # The CLI and people find the record through latest.json's path.
    assert json.loads((tmp_path / "latest.json").read_text())["path"] == str(run_copy)
    assert record.model_uri == f"lora://{record.adapter_dir}#v9" and record.seed == 7
    assert _record(tmp_path, "openai").model_uri == "ft:x"


def test_a_model_pointer_of_an_older_pipeline_is_a_clear_error(tmp_path):
    write_latest(tmp_path, "abc", path=str(tmp_path / "abc" / "model.json"), backend="local_lora")
    with pytest.raises(ManifestError, match="materialize fine_tuned_model again"):
        read_model_record(tmp_path)
    assert read_model_record(tmp_path / "none") is None


def test_evaluation_summary_round_trips(tmp_path):
    summary = EvaluationSummary(
        version="e1",
        path=str(tmp_path / "e1" / "report.json"),
        model_name="m",
        candidate_version=2,
        candidate_uri="lora://x#1",
        production_version=1,
        production_uri="lora://y#1",
        already_production=False,
        passed=False,
        rules=[{"rule": "primary", "passed": False, "detail": "worse"}],
    )
    write_evaluation_summary(tmp_path, summary)
    again = read_evaluation_summary(tmp_path)
    assert again == summary and again.eval_id == "e1" and again.decision == "reject"
    write_latest(tmp_path, "e1", path="report.json")
    with pytest.raises(ManifestError, match="materialize evaluation_report again"):
        read_evaluation_summary(tmp_path)


def test_the_model_stages_read_the_splits_manifest(tmp_path):
    paths = {s: {"parquet": f"{s}.parquet", "jsonl": f"{s}.jsonl"} for s in ("train", "validation", "test")}
    write_manifest(tmp_path, SplitsManifest(version="s1", curated_version="c1", paths=paths))
    splits = read_splits(tmp_path)
    assert splits.version == "s1" and splits.parquet("test") == "test.parquet"
    assert splits.jsonl("train") == "train.jsonl"
    assert read_splits(tmp_path / "none") is None
