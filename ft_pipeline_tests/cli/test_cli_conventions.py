"""The ft-pipeline command line as a command line: help, --version, where options go, tables with
headers, and clear errors (never a new empty registry) when the data or the registry is missing."""

import argparse
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from ft_pipeline.cli import CODE_LOCATION, build_parser, main
from ft_pipeline.lib.registry import ModelRegistry
from ft_pipeline_tests.conftest import register_evaluated_version

REPO = Path(__file__).resolve().parents[2]


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of ``parser`` (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _every_parser(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for name, sub in _commands(parser).items():
        yield from _every_parser(sub, (*path, name))


def test_help_lists_every_command_and_has_no_markup(capsys):
    parsers = list(_every_parser(build_parser()))
    assert {path for path, _ in parsers} >= {
        (),
        ("run",),
        ("validate",),
        ("sample-data",),
        ("partitions",),
        ("partitions", "list"),
        ("partitions", "delete"),
        ("registry",),
        ("registry", "history"),
    }
    for path, parser in parsers:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: {' '.join(('ft-pipeline', *path))}"), path
        # reStructuredText (``literal``, :role:`x`) or Markdown code spans are for docs, not a terminal.
        assert "`" not in text and ":func:" not in text and ":class:" not in text, (path, text)
        for name in _commands(parser):  # every subcommand is listed in its parent's help
            assert f"\n  {name} " in text or f"\n  {name}\n" in text, (path, name, text)


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ft-pipeline {version('ft-pipeline')}"


@pytest.mark.parametrize(
    "argv",
    [
        ["registry", "--data-dir", "X", "--url", "U", "history", "M"],
        ["registry", "history", "--data-dir", "X", "--url", "U", "M"],
        ["registry", "--data-dir", "X", "history", "M", "--url", "U"],
        ["registry", "history", "M", "--data-dir", "X", "--url", "U"],
    ],
)
def test_registry_options_are_accepted_before_and_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert (args.action, args.model, args.data_dir, args.url) == ("history", "M", "X", "U")


@pytest.mark.parametrize(
    "argv",
    [
        ["partitions", "--data-dir", "X", "--landing-dir", "L", "list"],
        ["partitions", "list", "--data-dir", "X", "--landing-dir", "L"],
        ["partitions", "--landing-dir", "L", "list", "--data-dir", "X"],
    ],
)
def test_partitions_options_are_accepted_before_and_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert (args.action, args.data_dir, args.landing_dir) == ("list", "X", "L")


def test_an_option_left_out_below_keeps_its_defaults():
    args = build_parser().parse_args(["registry", "list"])
    assert (args.data_dir, args.url, args.model) == (None, None, None)
    args = build_parser().parse_args(["partitions", "delete", "f.jsonl"])
    assert (args.data_dir, args.landing_dir, args.name, args.purge) == (None, None, "f.jsonl", False)


@pytest.fixture
def no_registry_env(monkeypatch, tmp_path):
    """No registry or data directory from the environment; the current directory is empty (as when
    the CLI is run outside the repo)."""
    monkeypatch.delenv("FT_PIPELINE_REGISTRY_URL", raising=False)
    monkeypatch.delenv("FT_PIPELINE_DATA_DIR", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return elsewhere


def test_registry_outside_the_repo_is_an_error_not_a_new_registry(no_registry_env, capsys):
    for argv in (["registry", "list"], ["registry", "history", "m"], ["registry", "show", "m"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        data_dir = no_registry_env / "data"
        assert f"data directory {data_dir} does not exist" in err and str(data_dir / "registry.db") in err
        for fix in ("--data-dir", "--url", "FT_PIPELINE_DATA_DIR", "FT_PIPELINE_REGISTRY_URL", "make demo"):
            assert fix in err, (fix, err)
    assert list(no_registry_env.iterdir()) == []


def test_registry_in_a_data_dir_without_one_is_an_error(no_registry_env, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("FT_PIPELINE_DATA_DIR", str(data))
    assert main(["registry", "list"]) == 2
    err = capsys.readouterr().err
    assert f"no registry at {data / 'registry.db'} (data directory from $FT_PIPELINE_DATA_DIR)" in err
    assert list(data.iterdir()) == []


def test_registry_sqlite_url_to_a_missing_file_is_an_error(no_registry_env, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope" / "registry.db"
    assert main(["registry", "list", "--url", f"sqlite:///{missing}"]) == 2
    assert f"no registry at {missing} (from --url sqlite:///{missing})" in capsys.readouterr().err
    monkeypatch.setenv("FT_PIPELINE_REGISTRY_URL", f"sqlite:///{missing}")
    assert main(["registry", "history", "m"]) == 2
    assert "from $FT_PIPELINE_REGISTRY_URL" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_registry_url_that_is_not_a_url_is_an_error(no_registry_env, capsys):
    assert main(["registry", "list", "--url", "registry.db"]) == 2
    assert "--url is not a SQLAlchemy URL" in capsys.readouterr().err


def test_registry_url_to_a_server_is_left_to_the_registry(no_registry_env, monkeypatch, capsys):
    # Existence of a database on a server is the registry's to find out (here: the driver is missing
    # or the server refuses); the CLI's own check only looks at files.
    from ft_pipeline import cli

    opened: list[str] = []

    class Opened(Exception):
        pass

    def fake_registry(url: str) -> ModelRegistry:
        opened.append(url)
        raise Opened

    monkeypatch.setattr("ft_pipeline.lib.registry.ModelRegistry", fake_registry)
    with pytest.raises(Opened):
        cli.main(["registry", "list", "--url", "postgresql+psycopg2://u@db.example/registry"])
    assert opened == ["postgresql+psycopg2://u@db.example/registry"]


@pytest.fixture
def registry_dir(tmp_path, monkeypatch):
    """A registry with two versions of one model: v1 promoted, then v2 (evaluated against v1) promoted."""
    monkeypatch.delenv("FT_PIPELINE_REGISTRY_URL", raising=False)
    data = tmp_path / "data"
    first_uri, second_uri = "ft:gpt-4o-mini:org::a", "ft:gpt-4o-mini:org::b"
    with ModelRegistry.for_data_dir(data) as registry:
        first = register_evaluated_version(
            registry, "assistant", model_uri=first_uri, backend="openai", base_model="b", eval_id="e1", run_key="r1"
        )
        registry.promote("assistant", first.version, evaluation_id="e1", reason="first one", actor="test")
        second = register_evaluated_version(
            registry, "assistant", model_uri=second_uri, backend="openai", base_model="b", eval_id="e0", run_key="r2"
        )
        registry.record_evaluation(
            "e2",
            "assistant",
            second.version,
            suite="test",
            eval_dataset_version_id=registry.record_dataset_version("manual", "train", "0" * 64, 1),
            baseline_model_uri=first_uri,
            base_model_uri="b",
            metrics={},
            per_example_uri="-",
            gate_config={},
            decision="pass",
            leakage_checked=True,
        )
        registry.promote("assistant", second.version, evaluation_id="e2", reason="better", actor="test")
    return data


def _lines(out: str) -> list[str]:
    return out.rstrip("\n").splitlines()


def _columns_aligned(lines: list[str], header: list[str]) -> None:
    """Every column of every line starts where its header starts."""
    starts = [lines[0].index(name) for name in header]
    assert starts == sorted(starts)
    for line in lines[1:]:
        for start in starts[1:]:
            assert line[start - 2 : start] == "  " and line[start] != " ", (line, start)


def test_registry_list_prints_a_table_with_a_header(registry_dir, capsys):
    assert main(["registry", "list", "--data-dir", str(registry_dir)]) == 0
    lines = _lines(capsys.readouterr().out)
    header = ["MODEL", "VERSION", "LIFECYCLE", "BACKEND", "CREATED", "EVALUATION", "LOCATION"]
    assert lines[0].split() == header and len(lines) == 3
    _columns_aligned(lines, header)
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[3], r[5], r[6]) for r in rows] == [
        ("assistant", "1", "archived", "openai", "e1", "ft:gpt-4o-mini:org::a"),
        ("assistant", "2", "production", "openai", "e2", "ft:gpt-4o-mini:org::b"),
    ]


def test_registry_history_prints_a_table_with_a_header(registry_dir, capsys):
    assert main(["registry", "history", "--data-dir", str(registry_dir), "assistant"]) == 0
    lines = _lines(capsys.readouterr().out)
    header = ["EVENT", "WHEN", "ACTION", "ALIAS", "CHANGE", "BY", "EVALUATION", "REASON"]
    assert lines[0].split() == header and len(lines) == 3
    _columns_aligned(lines, header)
    assert "promote" in lines[1] and "vNone -> v1" in lines[1] and lines[1].endswith("first one")
    assert "v1 -> v2" in lines[2] and lines[2].endswith("better")


def test_registry_empty_results_say_so(registry_dir, capsys):
    assert main(["registry", "--data-dir", str(registry_dir), "list", "someone-else"]) == 0
    assert capsys.readouterr().out == "no model versions registered for someone-else\n"
    assert main(["registry", "--data-dir", str(registry_dir), "history", "someone-else"]) == 0
    assert capsys.readouterr().out == "no alias moves recorded for someone-else\n"


def test_code_location_is_the_workspace_one():
    # Runs of `ft-pipeline run` carry this location in their repository tag: the UI's job pages
    # list a job's runs by it.
    (entry,) = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    assert entry["python_module"]["location_name"] == CODE_LOCATION
    assert entry["python_module"]["module_name"] == "ft_pipeline.definitions"


def test_another_code_location_name_for_the_repository_tag(monkeypatch):
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    from ft_pipeline.cli import CODE_LOCATION_ENV, _run_tags

    monkeypatch.delenv(CODE_LOCATION_ENV, raising=False)
    assert _run_tags()[REPOSITORY_LABEL_TAG] == "__repository__@ft_pipeline"
    # The Helm chart serves the same definitions as the location `ft-pipeline`.
    monkeypatch.setenv(CODE_LOCATION_ENV, "ft-pipeline")
    assert _run_tags()[REPOSITORY_LABEL_TAG] == "__repository__@ft-pipeline"


def test_set_names_an_asset_or_its_step():
    from ft_pipeline.cli import _run_config
    from ft_pipeline.defs.splits import SPLITS_STEP

    args = build_parser().parse_args(
        [
            "run",
            "--set",
            "splits.seed=3",
            "--set",
            "test_split.test_fraction=0.2",
            "--set",
            "fine_tuned_model.max_steps=5",
            "--set",
            "evaluation_report.judge=off",
        ]
    )
    assert _run_config(args, until=6) == {
        "ops": {
            "fine_tuned_model": {"config": {"backend": "local_lora", "max_steps": 5}},
            SPLITS_STEP: {"config": {"seed": 3, "test_fraction": 0.2}},
            "evaluation_report": {"config": {"judge": "off"}},
        }
    }
    assert _run_config(build_parser().parse_args(["run", "--set", f"{SPLITS_STEP}.seed=4"]), until=3) == {
        "ops": {SPLITS_STEP: {"config": {"seed": 4}}}
    }
