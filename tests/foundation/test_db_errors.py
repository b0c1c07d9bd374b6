"""Connection failures read as one line naming the host and what to check."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from apex_metrics import db
from apex_metrics.exceptions import (
    ConfigError,
    DatabaseAuthFailed,
    DatabaseError,
    DatabaseMissing,
    DatabaseUnreachable,
    SchemaNotMigrated,
)
from apex_metrics.testing import free_port


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a filtering middlebox)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    server.close()


@pytest.fixture
def resetting_server() -> Iterator[int]:
    """A TCP port that accepts, then drops every connection at once (an allow list refusing)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    server.close()


def one_line(exc: DatabaseError) -> str:
    text = exc.one_line()
    assert "\n" not in text
    return text


async def test_nothing_listening(admin_url: str) -> None:
    port = free_port()
    with pytest.raises(DatabaseUnreachable) as info:
        await db.connect(f"postgresql://postgres@127.0.0.1:{port}/x")
    text = one_line(info.value)
    assert f"127.0.0.1:{port}" in text and "connection refused" in text and "running" in text


async def test_silent_firewall_times_out(silent_server: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{silent_server}/x?connect_timeout=1"
    with pytest.raises(db.DatabaseRefused) as info:
        await db.connect(url)
    text = one_line(info.value)
    assert f"127.0.0.1:{silent_server}" in text and "timed out" in text
    assert "allow list" in text


async def test_reset_connection_points_at_allow_list(resetting_server: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{resetting_server}/x?connect_timeout=3"
    with pytest.raises(db.DatabaseRefused) as info:
        await db.connect(url)
    text = one_line(info.value)
    assert f"127.0.0.1:{resetting_server}" in text and "allow list" in text


async def test_unknown_host_is_named() -> None:
    with pytest.raises(DatabaseUnreachable, match=r"no-such-host\.invalid"):
        await db.connect("postgresql://postgres@no-such-host.invalid:5432/x?connect_timeout=3")


async def test_missing_database(admin_url: str) -> None:
    url = admin_url.rsplit("/", 1)[0] + "/apex_no_such_database"
    with pytest.raises(DatabaseMissing) as info:
        await db.connect(url)
    text = one_line(info.value)
    assert "'apex_no_such_database'" in text and "127.0.0.1:5432" in text


async def test_unknown_user(admin_url: str) -> None:
    url = admin_url.replace("postgres@", "apex_no_such_role@", 1)
    with pytest.raises(DatabaseAuthFailed) as info:
        await db.connect(url)
    assert "127.0.0.1:5432" in one_line(info.value)


async def test_wrapped_error_keeps_the_cause(admin_url: str) -> None:
    with pytest.raises(DatabaseMissing) as info:
        await db.connect(admin_url.rsplit("/", 1)[0] + "/apex_no_such_database")
    assert info.value.__cause__ is not None


async def test_invalid_url() -> None:
    with pytest.raises(DatabaseError, match="not valid"):
        await db.connect("postgresql://[broken")


async def test_missing_setting_names_the_env_var() -> None:
    with pytest.raises(ConfigError, match="APEX_DATABASE_URL"):
        await db.connect()


async def test_url_comes_from_the_environment(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APEX_DATABASE_URL", database_url)
    async with await db.connect() as conn:
        await db.ensure_migrated(conn)
        assert await db.schema_version(conn) == db.latest_version()


async def test_pool_checks_the_schema(empty_database_url: str) -> None:
    with pytest.raises(SchemaNotMigrated):
        async with db.open_pool(empty_database_url):
            pass


async def test_wrapping_pool_raises_driver_errors(database_url: str) -> None:
    async with db.open_pool(database_url, wrap_errors=True) as pool:
        with pytest.raises(db.DriverError, match="apex_no_such_table") as info:
            async with pool.connection() as conn:
                await conn.execute("SELECT * FROM apex_no_such_table")
        assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)
        async with pool.connection() as conn:  # the connection went back to the pool, usable
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


async def test_create_database_once_then_finds_it(admin_url: str) -> None:
    name = f"apex_t{os.getpid()}_{uuid.uuid4().hex[:8]}"  # dropped by conftest if left behind
    try:
        url = await db.create_database(admin_url, name, connect_timeout=3)
        assert url == admin_url.rsplit("/", 1)[0] + "/" + name
        assert await db.create_database(admin_url, name) == url
        async with await db.connect(url):
            pass
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    with pytest.raises(DatabaseUnreachable):
        await db.create_database(f"postgresql://postgres@127.0.0.1:{free_port()}/x", name)


def test_describe_hides_the_password() -> None:
    assert db.describe("postgresql://u:secret@db.example:6543/metrics") == "db.example:6543/metrics"
