"""The ft-pipeline command line: sample-data, validate, run, partitions; and `dg check defs`."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import PARTITION_NAME_TAG, REPOSITORY_LABEL_TAG

from ft_pipeline.cli import main
from ft_pipeline.lib.sample_data import build_sample

REPO = Path(__file__).resolve().parents[2]


def test_sample_data_is_deterministic(tmp_path, capsys):
    assert main(["sample-data", str(tmp_path / "a")]) == 0
    assert main(["sample-data", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(build_sample())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_validate_reports_errors_with_nonzero_exit(tmp_path, capsys):
    main(["sample-data", str(tmp_path)])
    code = main(["validate", str(tmp_path / "support_2024-05-01.jsonl")])
    out = capsys.readouterr().out
    assert code == 1
    assert "invalid_json" in out and "lines" in out and "low_rating" in out and "EMAIL" in out
    assert "result: FAILED" in out


def test_validate_clean_openai_file_passes(tmp_path, capsys):
    lines = [
        {
            "messages": [
                {"role": "system", "content": "Be helpful."},
                {"role": "user", "content": f"Question number {i} about the hub?"},
                {
                    "role": "assistant",
                    "content": f"Here is a complete and helpful answer to question {i} about resetting the hub.",
                },
            ]
        }
        for i in range(12)
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code = main(["validate", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "result: OK" in out


def test_validate_too_few_examples_fails(tmp_path, capsys):
    path = tmp_path / "tiny.jsonl"
    path.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi there"},
                    {"role": "assistant", "content": "A sufficiently long helpful answer to the greeting, thanks."},
                ]
            }
        )
        + "\n"
    )
    assert main(["validate", str(path)]) == 1
    # Finding 7 (issue 15): it said "FAILED (0 error(s))" without saying why.
    assert (
        "result: FAILED (0 error(s); 1 example(s); an OpenAI fine-tuning job needs at least 10)"
        in capsys.readouterr().out
    )


@pytest.fixture
def sample_data_dir(tmp_path, capsys, monkeypatch):
    """A data directory with the sample logs in raw/, and an empty Dagster instance."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    data = tmp_path / "data"
    main(["sample-data", str(data / "raw")])
    capsys.readouterr()
    return data


@pytest.mark.slow  # the whole graph through the CLI, training included (about 30 s)
def test_run_materializes_the_graph_and_prints_split_paths(sample_data_dir, capsys):
    data = sample_data_dir
    # The whole graph, kept cheap: a few training steps cannot beat the base, so the gate rejects
    # the candidate; that is a decision, printed with its reasons, not a failed command.
    quick = [
        "--set",
        "fine_tuned_model.base_model=tiny",
        "--set",
        "fine_tuned_model.max_steps=3",
        "--set",
        "fine_tuned_model.max_length=256",
        "--set",
        "evaluation_report.max_new_tokens=8",
        "--set",
        "evaluation_report.n_resamples=200",
        "--set",
        "evaluation_report.robustness_examples=4",
    ]
    assert main(["run", "--data-dir", str(data), *quick]) == 0
    out = capsys.readouterr().out
    for split in ("train", "validation", "test"):
        assert f"{split}.jsonl" in out
    assert "check train_split.no_leakage: passed" in out
    assert "model " in out and "/adapter" in out
    assert "report.md" in out and "decision: " in out and "beats_base" in out
    pointer = json.loads((data / "splits" / "latest.json").read_text())
    assert Path(pointer["paths"]["train"]["parquet"]).exists()
    # The named jobs ran (not __ephemeral_asset_job__), so the UI's job pages show them: one
    # ingest_log_file run per landed file, then one train_model run of the whole job.
    runs = _cli_runs()
    assert Counter(run.job_name for run in runs) == {"ingest_log_file": len(build_sample()), "train_model": 1}
    assert Counter(run.tags.get(PARTITION_NAME_TAG) for run in runs if run.job_name == "ingest_log_file") == {
        name: 1 for name in build_sample()
    }
    train = next(run for run in runs if run.job_name == "train_model")
    assert not train.asset_selection and PARTITION_NAME_TAG not in train.tags
    # A second run registers nothing new and succeeds again (same versions).
    assert main(["run", "--data-dir", str(data), "--until", "splits"]) == 0
    assert "(0 newly registered)" in capsys.readouterr().out
    assert Counter(run.job_name for run in _cli_runs()) == {
        "ingest_log_file": 2 * len(build_sample()),
        "train_model": 1,
        "build_dataset": 1,
    }


def _cli_runs() -> list[dg.DagsterRun]:
    """The runs in the test's instance, each checked for what the UI's job pages need: the
    repository tag of the code location, and (ingest_log_file) the partition it ingested."""
    with dg.DagsterInstance.get() as instance:
        runs = [record.dagster_run for record in instance.get_run_records()]
    for run in runs:
        assert run.tags[REPOSITORY_LABEL_TAG] == "__repository__@ft_pipeline", run.job_name
        assert run.tags["ft_pipeline/cli"] == "run"
        if run.job_name == "ingest_log_file":
            assert run.tags[PARTITION_NAME_TAG] in build_sample()
    return runs


def test_run_rejects_a_malformed_set(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    main(["sample-data", str(tmp_path / "data" / "raw")])
    with pytest.raises(SystemExit, match="ASSET.FIELD=VALUE"):
        main(["run", "--data-dir", str(tmp_path / "data"), "--set", "learning_rate=0.1"])


def test_run_rejects_a_set_of_an_unknown_asset(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    main(["sample-data", str(tmp_path / "data" / "raw")])
    with pytest.raises(SystemExit, match="'fine_tune' is not an asset of the pipeline"):
        main(["run", "--data-dir", str(tmp_path / "data"), "--set", "fine_tune.learning_rate=0.1"])
    assert not (tmp_path / "data" / "parsed").exists()


def test_run_without_dagster_home_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["run", "--data-dir", str(tmp_path)]) == 2
    assert "DAGSTER_HOME" in capsys.readouterr().err


@pytest.mark.slow  # `dg check defs` in a subprocess loads the whole project (about 5 s)
def test_dg_check_defs(tmp_path):
    dg = Path(sys.executable).parent / "dg"
    if not dg.exists():
        pytest.skip("dg is not installed in this environment")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run([str(dg), "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def _table(out: str) -> list[list[str]]:
    """The rows of a table the CLI printed, header first (cells split on runs of spaces)."""
    return [line.split() for line in out.strip().splitlines()]


def test_partitions_list_and_delete_with_purge(sample_data_dir, capsys):
    data = sample_data_dir
    # --set reaches the per-file runs too (their steps' part of the run config only).
    limit = [
        "--set",
        "raw_conversation_logs.max_record_bytes=200000",
        "--set",
        "curated_dataset.near_dup_threshold=0.9",
    ]
    assert main(["run", "--data-dir", str(data), "--until", "cleaned_conversations", *limit]) == 0
    capsys.readouterr()
    runs = _cli_runs()
    assert {run.job_name for run in runs} == {"ingest_log_file"} and not any(run.asset_selection for run in runs)
    assert sorted(run.tags[PARTITION_NAME_TAG] for run in runs) == sorted(build_sample())
    for run in runs:
        assert run.run_config == {"ops": {"raw_conversation_logs": {"config": {"max_record_bytes": 200000}}}}
    # The options of `partitions` are accepted after the subcommand too.
    assert main(["partitions", "list", "--data-dir", str(data)]) == 0
    header, *rows = _table(capsys.readouterr().out)
    assert header == ["PARTITION", "LANDED", "PARSED", "CLEANED"]
    assert sorted(row[0] for row in rows) == sorted(build_sample())
    assert all(row[1:] == ["yes", "yes", "yes"] for row in rows)
    gone = "support_2024-05-01.jsonl"

    assert main(["partitions", "--data-dir", str(data), "delete", "no-such.jsonl"]) == 1
    assert "not a partition" in capsys.readouterr().err
    assert main(["partitions", "--data-dir", str(data), "delete", gone, "--purge"]) == 0
    out = capsys.readouterr().out
    assert f"deleted partition {gone!r}" in out and "still in the landing folder" in out
    from ft_pipeline.lib.storage import safe_name

    for folder in ("parsed", "cleaned"):
        assert (
            not (data / folder / safe_name(gone)).exists()
            and (data / folder / safe_name("support_2024-05-02.jsonl.gz")).exists()
        )
    assert not (data / "quarantine" / f"{safe_name(gone)}.parquet").exists()
    assert (data / "quarantine" / f"{safe_name('support_2024-05-02.jsonl.gz')}.parquet").exists()

    # With the file gone from the landing folder, the next dataset build leaves it out.
    (data / "raw" / gone).unlink()
    assert main(["run", "--data-dir", str(data), "--until", "curated_dataset"]) == 0
    assert "4 log file(s)" in capsys.readouterr().out
    # Only curated_dataset of the build_dataset job: a subset run of the named job.
    (dataset_run,) = [run for run in _cli_runs() if run.job_name == "build_dataset"]
    assert dataset_run.asset_selection == {dg.AssetKey("curated_dataset")}
    assert main(["partitions", "--data-dir", str(data), "list"]) == 0
    assert gone not in capsys.readouterr().out.split()


def test_partitions_list_marks_what_is_not_landed_or_ingested(sample_data_dir, capsys):
    data = sample_data_dir
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("log_files", ["gone.jsonl", "support_2024-05-01.jsonl"])
    assert main(["partitions", "--data-dir", str(data), "list", "--landing-dir", str(data / "raw")]) == 0
    assert _table(capsys.readouterr().out) == [
        ["PARTITION", "LANDED", "PARSED", "CLEANED"],
        ["gone.jsonl", "no", "no", "no"],
        ["support_2024-05-01.jsonl", "yes", "no", "no"],
    ]


def test_partitions_with_a_missing_data_dir_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    missing = tmp_path / "nowhere"
    assert main(["partitions", "list", "--data-dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"data directory {missing} does not exist (from --data-dir)" in err and "FT_PIPELINE_DATA_DIR" in err
    assert not missing.exists()
