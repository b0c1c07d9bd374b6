"""Driver errors are wrapped where the driver is owned: ``db.py`` for psycopg, ``dataverse/`` for
httpx. Above them (``ops/``, ``panel/``, ``collect/``) no code names a psycopg or httpx exception
class (issue 17): they catch ``DriverError``, ``DataverseError`` and the rest of our tree."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from apex_metrics import db
from apex_metrics.exceptions import DatabaseError

pytestmark = pytest.mark.unit

PACKAGE = Path(db.__file__).parent
ABOVE_THE_DRIVERS = ("ops", "panel", "collect")
DRIVERS = ("psycopg", "psycopg_pool", "httpx")

# (file, enclosing function, class named) -> why it stays
ALLOWED: dict[tuple[str, str, str], str] = {
    ("ops/verify.py", "_Context.panel", "httpx.HTTPError"): (
        "gate 9 probes the panel with an httpx client it opens two lines above (not Dataverse): "
        "it owns that client, and a panel that does not answer is the gate's finding"
    ),
}


def _resolve(dotted: str) -> Any:
    """The object a dotted name of a driver refers to (None when there is no such thing)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj
    return None


def _is_exception_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


class _Finder(ast.NodeVisitor):
    """Every place a module names a driver's exception class: an ``except`` clause, an
    exception handler, ``suppress(...)``, ``isinstance``, a tuple constant, an import."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # local name -> dotted name in a driver
        self.scope: list[str] = []
        self.found: list[tuple[int, str, str]] = []  # (line, function, dotted)

    def _note(self, node: ast.AST, dotted: str) -> None:
        if _is_exception_class(_resolve(dotted)):
            self.found.append((getattr(node, "lineno", 0), ".".join(self.scope), dotted))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in DRIVERS:
                self.aliases[(alias.asname or alias.name).split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.module.split(".")[0] in DRIVERS:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                self.aliases[alias.asname or alias.name] = dotted
                self._note(node, dotted)

    def _scoped(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:  # e.g. @app.exception_handler(...): outside
            self.visit(decorator)
        self.scope.append(node.name)
        for child in ast.iter_child_nodes(node):
            if child not in node.decorator_list:
                self.visit(child)
        self.scope.pop()

    visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _scoped

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain: list[str] = [node.attr]
        value: ast.expr = node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in self.aliases:
            self._note(node, ".".join([self.aliases[value.id], *reversed(chain)]))
            return  # the whole chain is judged once
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.aliases:
            self._note(node, self.aliases[node.id])


def driver_exceptions_named(path: Path) -> list[tuple[int, str, str]]:
    finder = _Finder()
    finder.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return finder.found


def scanned_files() -> list[Path]:
    return sorted(p for part in ABOVE_THE_DRIVERS for p in (PACKAGE / part).rglob("*.py"))


def test_no_driver_exception_is_named_above_its_owner() -> None:
    files = scanned_files()
    assert len(files) > 20  # the scan sees the three folders
    offenders, used = [], set()
    for path in files:
        rel = path.relative_to(PACKAGE).as_posix()
        for line, function, dotted in driver_exceptions_named(path):
            key = (rel, function, dotted)
            if key in ALLOWED:
                used.add(key)
                continue
            offenders.append(f"apex_metrics/{rel}:{line} ({function or 'module'}) names {dotted}")
    assert not offenders, (
        "catch our errors instead (db.DriverError / db.driver_errors(), DataverseError, ...); "
        "wrap the driver's error where it is owned:\n  " + "\n  ".join(offenders)
    )
    assert used == set(ALLOWED), f"stale allow-list entries: {set(ALLOWED) - used}"


def test_the_scan_sees_every_way_of_naming_one() -> None:
    source = (
        "import contextlib\n"
        "import httpx\n"
        "import psycopg as pg\n"
        "from psycopg import errors, rows\n"
        "from psycopg_pool import PoolTimeout\n"
        "ERRORS = (pg.OperationalError, PoolTimeout)\n"
        "def f(app, exc):\n"
        "    try:\n"
        "        pass\n"
        "    except httpx.TransportError:\n"
        "        pass\n"
        "    with contextlib.suppress(errors.UndefinedTable):\n"
        "        pass\n"
        "    return isinstance(exc, httpx.HTTPError), rows.dict_row, httpx.AsyncClient\n"
        "def make(app):\n"
        "    @app.exception_handler(pg.Error)\n"
        "    async def handler(request, exc): ...\n"
    )
    finder = _Finder()
    finder.visit(ast.parse(source))
    assert {(fn, dotted) for _, fn, dotted in finder.found} == {
        ("", "psycopg_pool.PoolTimeout"),  # the import, then its use
        ("", "psycopg.OperationalError"),
        ("f", "httpx.TransportError"),
        ("f", "psycopg.errors.UndefinedTable"),
        ("f", "httpx.HTTPError"),
        ("make", "psycopg.Error"),  # a decorator belongs to the enclosing scope
    }


def test_driver_errors_wraps_with_the_first_line_and_keeps_the_cause() -> None:
    cause = psycopg.OperationalError("server closed the connection\nDETAIL: more")
    with pytest.raises(db.DriverError) as caught:
        with db.driver_errors():
            raise cause
    assert isinstance(caught.value, DatabaseError)
    assert caught.value.message == "server closed the connection"
    assert caught.value.__cause__ is cause
    with pytest.raises(ValueError), db.driver_errors():  # not a driver error: untouched
        raise ValueError("x")
