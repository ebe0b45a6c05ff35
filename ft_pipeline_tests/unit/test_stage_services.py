"""The dataset stage services (the code the assets and the benchmark run), end to end in lib, and
the typed manifests they hand each other."""

import json

import pytest

from ft_pipeline.lib.cleaning import CleaningConfig, PartitionNotParsed, clean_partition
from ft_pipeline.lib.curation import CurationConfig, NothingToCurate, curate
from ft_pipeline.lib.dedup import DedupConfig
from ft_pipeline.lib.manifests import (
    CleanedManifest,
    CuratedManifest,
    ManifestError,
    ParsedManifest,
    SplitsManifest,
    read_manifest,
)
from ft_pipeline.lib.openai_format import DEFAULT_OPENAI_FINE_TUNING_MODEL
from ft_pipeline.lib.records import ingest_log_file
from ft_pipeline.lib.sample_data import write_sample
from ft_pipeline.lib.splits import make_splits
from ft_pipeline.lib.storage import safe_name


def test_the_dataset_stages_in_lib(tmp_path):
    files = write_sample(tmp_path / "raw")
    cleaned_folders = {}
    for path in files:
        name = path.name
        quarantine = tmp_path / "quarantine" / f"{safe_name(name)}.parquet"
        ingested = ingest_log_file(path, name, tmp_path / "parsed" / safe_name(name), quarantine)
        assert ingested.n_records == len(ingested.records) + len(ingested.quarantine)
        assert read_manifest(tmp_path / "parsed" / safe_name(name), ParsedManifest).version == ingested.version
        cleaned = clean_partition(tmp_path / "parsed" / safe_name(name), tmp_path / "cleaned" / safe_name(name))
        assert cleaned.n_in == len(ingested.records) == len(cleaned.cleaned.kept) + len(cleaned.cleaned.filtered)
        assert read_manifest(tmp_path / "cleaned" / safe_name(name), CleanedManifest) == cleaned.manifest
        cleaned_folders[name] = tmp_path / "cleaned" / safe_name(name)

    config = CurationConfig(dedup=DedupConfig(threshold=0.9))
    folders = {**cleaned_folders, "not-cleaned.jsonl": tmp_path / "cleaned" / "nothing"}
    curated = curate(folders, tmp_path / "curated", config)
    assert curated.missing == ["not-cleaned.jsonl"]
    assert curated.pii_scan.total == 0 and curated.duplicates_left == {}
    manifest = read_manifest(tmp_path / "curated", CuratedManifest)
    assert manifest == curated.manifest and manifest.near_dup_threshold == 0.9

    splits = make_splits(manifest, tmp_path / "splits", openai_model=DEFAULT_OPENAI_FINE_TUNING_MODEL)
    assert splits.leakage_dedup.threshold == 0.9 and not splits.leakage.leaked
    assert sum(splits.sizes.values()) == curated.curation.n_kept and not splits.size_failures
    assert all(report.ok for report in splits.formats.values())
    assert read_manifest(tmp_path / "splits", SplitsManifest).parquet("train") == splits.splits["train"].parquet_path


def test_services_fail_clearly_without_inputs(tmp_path):
    with pytest.raises(PartitionNotParsed):
        clean_partition(tmp_path / "parsed" / "x", tmp_path / "cleaned" / "x", CleaningConfig())
    with pytest.raises(NothingToCurate):
        curate({"x.jsonl": tmp_path / "cleaned" / "x"}, tmp_path / "curated")
    # A pointer written before the manifests (no kind, no schema) names the asset to run again.
    (tmp_path / "parsed" / "x").mkdir(parents=True)
    (tmp_path / "parsed" / "x" / "latest.json").write_text(json.dumps({"version": "v", "path": "p"}))
    with pytest.raises(ManifestError, match="raw_conversation_logs"):
        clean_partition(tmp_path / "parsed" / "x", tmp_path / "cleaned" / "x")


def test_curate_names_partitions_cleaned_with_different_signature_parameters(tmp_path):
    files = write_sample(tmp_path / "raw")[:2]
    folders = {}
    for path, num_perm in zip(files, (128, 64)):
        parsed, cleaned = tmp_path / "parsed" / path.name, tmp_path / "cleaned" / path.name
        ingest_log_file(path, path.name, parsed, tmp_path / "quarantine" / f"{path.name}.parquet")
        clean_partition(parsed, cleaned, CleaningConfig(dedup=DedupConfig(num_perm=num_perm)))
        folders[path.name] = cleaned
    with pytest.raises(ValueError, match="num_perm=64") as error:
        curate(folders, tmp_path / "curated")
    assert files[0].name in str(error.value) and files[1].name in str(error.value)


def test_a_column_null_in_one_file_and_text_in_another_curates(tmp_path):
    """A file whose records carry extra keys (kept as ``metadata`` text) beside files whose
    records carry none (an all-null ``metadata`` column): the curated file takes the text type
    instead of failing to cast text to null."""
    (tmp_path / "raw").mkdir()
    folders = {}
    for name, extra in (("a.jsonl", {}), ("b.jsonl", {"thumbs": "up", "channel": "web"})):
        lines = []
        for i in range(6):
            # Distinct letter-only words per conversation, so dedup keeps every one.
            words = ["".join("abcdefghijklmnopqrstuvwxyz"[(7 * k + n) % 26] for n in range(5)) for k in range(12)]
            words = [w + "abcdefghijkl"[i] + name[0] for w in words]
            record = {
                "conversation_id": f"{name}-{i}",
                "messages": [
                    {"role": "user", "content": "Tell me about " + " ".join(words[:6]) + "?"},
                    {"role": "assistant", "content": "Here it is: " + " ".join(words[6:]) + "."},
                ],
                **extra,
            }
            lines.append(json.dumps(record))
        (tmp_path / "raw" / name).write_text("\n".join(lines) + "\n")
        ingest_log_file(tmp_path / "raw" / name, name, tmp_path / "parsed" / name, tmp_path / "q" / f"{name}.parquet")
        clean_partition(tmp_path / "parsed" / name, tmp_path / "cleaned" / name)
        folders[name] = tmp_path / "cleaned" / name
    curated = curate(folders, tmp_path / "curated")
    assert curated.curation.n_kept == 12
    import pandas as pd

    metadata = pd.read_parquet(curated.manifest.path)["metadata"].dropna().tolist()
    assert len(metadata) == 6 and all("thumbs" in m for m in metadata)
