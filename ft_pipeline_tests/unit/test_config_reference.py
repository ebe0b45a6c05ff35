"""The README's configuration reference is the one the Config and resource classes render."""

from pathlib import Path

from ft_pipeline import config_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_reference_matches_the_config_classes(capsys):
    # `make docs` rewrites it; this fails when a field, default or description changed without it.
    assert config_reference.main(["--check", str(README)]) == 0, capsys.readouterr().err


def test_every_config_field_is_documented_with_a_description():
    text = config_reference.render()
    from ft_pipeline.definitions import ALL_ASSETS

    for asset in ALL_ASSETS:
        cls = config_reference._config_class(asset)
        if cls is None:
            continue
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description (the Launchpad and the README show it)"
            assert f"| `{name}` |" in text


def test_an_out_of_date_reference_is_reported(tmp_path, capsys):
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n\n{config_reference.START}\n| old |\n{config_reference.END}\n", encoding="utf-8")
    assert config_reference.main(["--check", str(stale)]) == 1
    assert "make docs" in capsys.readouterr().err
    assert config_reference.main(["--write", str(stale)]) == 0
    assert config_reference.main(["--check", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8").startswith("# x\n\n")


def test_run_config_classes_follow_one_naming_rule():
    # Dagster run config (the Launchpad) is <Stage>RunConfig; lib settings are <Thing>Config.
    from ft_pipeline.definitions import ALL_ASSETS

    names = [cls.__name__ for cls in map(config_reference._config_class, ALL_ASSETS) if cls is not None]
    assert names and all(name.endswith("RunConfig") for name in names), names
