"""ft_pipeline/lib is pure: nothing below it imports dagster (defs -> lib, never back)."""

import ast
from pathlib import Path

import ft_pipeline.lib

LIB = Path(ft_pipeline.lib.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_lib_never_imports_dagster_or_defs():
    files = sorted(LIB.rglob("*.py"))
    assert len(files) >= 8, "the lib package should be found"
    offenders = {}
    for path in files:
        # dagster_pipes (the dependency-free protocol package used by the trainer process) is
        # allowed; dagster itself is not.
        bad = {m for m in _imported_modules(path) if m.split(".")[0] == "dagster" or m.startswith("ft_pipeline.defs")}
        if bad:
            offenders[str(path.relative_to(LIB))] = sorted(bad)
    assert offenders == {}


def test_the_check_would_catch_an_offender(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom dagster import asset\n")
    assert "dagster" in _imported_modules(bad)


DEFS = LIB.parent / "defs"
# GpuPodTrainer is a Pipes client (a launcher, not a setting) that needs the optional deploy extra;
# it stays beside its pod-spec code (README, "Code layout").
RESOURCES_OUTSIDE_RESOURCES_MODULE = {("k8s_trainer.py", "GpuPodTrainer")}


def _resource_classes(path: Path) -> set[str]:
    """Names of the classes in ``path`` that derive from ConfigurableResource (by base name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {ast.unparse(base).split(".")[-1].split("[")[0] for base in node.bases}
            if bases & {"ConfigurableResource", "ConfigurableIOManager"}:
                found.add(node.name)
    return found


def test_every_resource_lives_in_defs_resources():
    elsewhere = {
        (path.name, name)
        for path in sorted(DEFS.glob("*.py"))
        if path.name != "resources.py"
        for name in _resource_classes(path)
    }
    assert elsewhere == RESOURCES_OUTSIDE_RESOURCES_MODULE
    assert "PipelineStorage" in _resource_classes(DEFS / "resources.py")
