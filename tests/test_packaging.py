"""The install commands in README.md give the tests everything they import.

A green suite on a machine that happened to have a package (scikit-image, once) hid a missing
install step. This test reads what tests/ imports and what pyproject.toml declares, so a test
import that no dependency or `test` extra names fails here, whatever this machine has installed.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return {_canonical(re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0]) for r in reqs}


def _imported_top_level(folder: Path) -> set[str]:
    names: set[str] = set()
    for f in folder.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(str(node.args[0].value).split(".")[0])
    return names


def test_every_test_import_is_declared():
    local = {"unlearnable", "conftest"} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    third_party = {n for n in _imported_top_level(ROOT / "tests")
                   if n not in local and n not in sys.stdlib_module_names and n != "__future__"}
    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for name in sorted(third_party):
        owners = {_canonical(d) for d in dists.get(name, [name])}
        if not owners & declared:
            missing[name] = sorted(owners)
    assert not missing, f"imported by tests/ but not in pyproject's dependencies or the `test` extra: {missing}"


def test_readme_test_command_installs_the_test_extra():
    readme = (ROOT / "README.md").read_text()
    assert 'python3 -m pip install -e ".[test]" && python3 -m pytest -q' in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python3 -m pip install -e ".[test]" && python3 -m pytest -q' in ci
    assert "python3 -m venv" in ci
