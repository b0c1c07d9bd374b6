"""Packaging: a slim core with extras. The core imports nothing an extra brings; every import of
the package is declared in pyproject.toml; a command whose extra is missing says which one."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from apex_metrics.extras import OPTIONAL_MODULES, extra_for, missing_extra

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "apex_metrics"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# A meta-path finder that makes every module an extra installs missing, as in a core install.
BLOCKER = f"""
import importlib.abc, sys
BLOCKED = {sorted(OPTIONAL_MODULES)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    """(core distributions, distributions of any extra), normalised names."""
    project = PYPROJECT["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return core, extras - {"apex-metrics"}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in the package -> the files importing them."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "apex_metrics":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_of_the_package_is_declared() -> None:
    core, extras = _declared()
    distributions = packages_distributions()
    undeclared = {}
    for module, files in _third_party_imports().items():
        provided = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        if not provided & (core | extras):
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_core_leaves_out_what_only_some_hosts_need() -> None:
    core, _ = _declared()
    assert not core & {"plotly", "pgserver", "trustme", "fastapi", "httpx", "msal"}, core
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"sync", "panel", "emulator", "collect", "demo", "all"} <= set(extras)


def _run(code: str, *argv: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "APEX_SPOOL_DIR": str(tmp_path / "spool")},
    )


CLI = (
    "import sys; from apex_metrics.ops.cli import main; "
    "sys.argv = ['apex-metrics', *sys.argv[1:]]; main()"
)


def test_the_core_runs_without_any_extra(tmp_path: Path) -> None:
    imported = _run(
        "import apex_metrics.recorder, apex_metrics.spool, apex_metrics.metric, "
        "apex_metrics.importer, apex_metrics.db, apex_metrics.ops.cli; print('ok')",
        tmp_path=tmp_path,
    )
    assert imported.returncode == 0 and "ok" in imported.stdout, imported.stderr
    for argv in (["--help"], ["record", "--help"], ["import", "--help"], ["spool", "status"]):
        done = _run(CLI, *argv, tmp_path=tmp_path)
        assert done.returncode == 0, (argv, done.stderr)


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["panel"], "panel"),
        (["emulator"], "emulator"),
        (["collect"], "collect"),
        (["--debug", "demo"], "demo"),
    ],
)
def test_a_command_without_its_extra_names_the_extra(
    argv: list[str], extra: str, tmp_path: Path
) -> None:
    done = _run(CLI, *argv, tmp_path=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert f"needs the '{extra}' extra" in last and f"apex-metrics[{extra}]" in last, done.stderr


def test_extra_for_reads_the_command_and_keeps_bugs_as_bugs() -> None:
    assert extra_for(["--debug", "sync", "status"]) == "sync"
    assert extra_for(["dataverse", "whoami"]) == "sync"
    assert extra_for(["verify"]) == "demo"
    assert extra_for([]) == "all"
    error = missing_extra(ModuleNotFoundError("x", name="fastapi.responses"), ["panel"])
    assert error is not None and error.hint == "pip install 'apex-metrics[panel]'"
    assert missing_extra(ModuleNotFoundError("x", name="apex_metrics.nope"), ["panel"]) is None
