"""The ft-pipeline command line: sample-data, validate, run; and `dg check defs`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    # A second run registers nothing new and succeeds again (same versions).
    assert main(["run", "--data-dir", str(data), "--until", "splits"]) == 0
    assert "(0 newly registered)" in capsys.readouterr().out


def test_run_rejects_a_malformed_set(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    main(["sample-data", str(tmp_path / "data" / "raw")])
    with pytest.raises(SystemExit, match="ASSET.FIELD=VALUE"):
        main(["run", "--data-dir", str(tmp_path / "data"), "--set", "learning_rate=0.1"])


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


def test_partitions_list_and_delete_with_purge(sample_data_dir, capsys):
    data = sample_data_dir
    assert main(["run", "--data-dir", str(data), "--until", "cleaned_conversations"]) == 0
    capsys.readouterr()
    assert main(["partitions", "--data-dir", str(data), "list"]) == 0
    listed = capsys.readouterr().out.split()
    gone = "support_2024-05-01.jsonl"
    assert gone in listed and len(listed) == 5

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
    assert main(["partitions", "--data-dir", str(data), "list"]) == 0
    assert gone not in capsys.readouterr().out.split()
