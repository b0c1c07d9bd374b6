"""Fixtures shared by every test folder (owner: foundation).

PostgreSQL: ``admin_url`` points at the maintenance database of the test server (default
``postgresql://postgres@127.0.0.1:5432/postgres``; override with ``APEX_TEST_ADMIN_URL``, read once
at import, before the autouse fixture clears ``APEX_*``). ``database_url`` is a fresh database
cloned, per test, from a template migrated once per session; ``empty_database_url`` is a fresh
database with nothing in it. Both are dropped after the test, whatever happens.

Names carry this process's pid (``apex_t<pid>_<random>``), so parallel runs on one server never
collide, and databases left behind by a killed run are dropped by the next run on this machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import conninfo, sql

from apex_metrics import db
from apex_metrics.settings import get_settings

ADMIN_URL = os.environ.get("APEX_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_PREFIX = f"apex_t{os.getpid()}_"
_LEFTOVER = re.compile(r"^apex_t(\d+)_[0-9a-f]{8}$")


def url_for(dbname: str) -> str:
    """``ADMIN_URL`` with another database name."""
    params = conninfo.conninfo_to_dict(ADMIN_URL)
    params["dbname"] = dbname
    return conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10)


def _create_database(template: str = "template0") -> str:
    name = f"{_PREFIX}{uuid.uuid4().hex[:8]}"
    with _admin() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return name


def _drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_leftovers() -> None:
    """Drop test databases of runs on this machine whose process is gone."""
    with _admin() as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
    for name in names:
        match = _LEFTOVER.match(str(name))
        if match and not _pid_alive(int(match.group(1))):
            _drop_database(str(name))


@pytest.fixture(scope="session")
def admin_url() -> str:
    """URL of the test server's maintenance database (for CREATE/DROP DATABASE)."""
    return ADMIN_URL


@pytest.fixture(scope="session")
def _template_database() -> Iterator[str]:
    _drop_leftovers()
    name = _create_database()
    try:
        asyncio.run(db.migrate(url_for(name)))
        yield name
    finally:
        _drop_database(name)


@pytest.fixture
def database_url(_template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test (cloned from the session's template)."""
    name = _create_database(template=_template_database)
    try:
        yield url_for(name)
    finally:
        _drop_database(name)


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = _create_database()
    try:
        yield url_for(name)
    finally:
        _drop_database(name)


@pytest.fixture(autouse=True)
def _clean_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """No ``APEX_*`` variable leaks in, settings are re-read, and each test has its own cwd (and
    its own state directory, where the recorder spools by default)."""
    for key in list(os.environ):
        if key.upper().startswith("APEX_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    # the recorder's default spool lives in the user's state directory: keep it per test
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# --- tiers -------------------------------------------------------------------------------------
# unit: marked explicitly (logic alone); e2e: runs our commands or third-party servers as
# subprocesses, or drives the browser; integration: everything else (real PostgreSQL, the
# emulator over loopback HTTP, in this process). `pytest -m unit|integration|e2e` picks one.

# Modules whose tests run subprocesses (our CLI, the demo, the emulator, nginx/Caddy) or Chromium.
E2E_MODULES = frozenset(
    {
        "collect/test_collect_e2e.py",
        "dataverse/test_certificate_signin.py",
        "dataverse/test_emulator_http.py",
        "demo/test_cli_ux.py",
        "demo/test_demo.py",
        "demo/test_verify.py",
        "emulator/test_cli.py",
        "foundation/test_cli.py",
        "panel/test_browser.py",
        "panel/test_browser_layout.py",
        "panel/test_proxy_live.py",
        "sync/test_cli.py",
        "sync/test_reliability.py",
    }
)
_TESTS = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("unit") is not None:
            continue
        module = os.path.relpath(str(item.path), _TESTS).replace(os.sep, "/")
        if module in E2E_MODULES or item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.e2e)
        else:
            item.add_marker(pytest.mark.integration)


class NetworkInUnitTest(ConnectionError):
    """A unit test tried to reach a server: it belongs to the integration or e2e tier. (An
    OSError, so that code opening the socket closes it as after a refused connection.)"""


@pytest.fixture(autouse=True)
def _unit_tests_reach_no_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the unit marker, opening a socket connection or a PostgreSQL connection raises."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkInUnitTest(f"{request.node.nodeid} is a unit test: it reaches no server")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.setattr(psycopg.Connection, "connect", refuse)
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", refuse)
