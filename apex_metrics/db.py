"""PostgreSQL access: connections and pools whose failures read as one clear line, and migrations.

Every psycopg connection error is wrapped here, at one boundary, into the ``DatabaseError`` tree
of :mod:`apex_metrics.exceptions` (the psycopg error stays as ``__cause__``)::

    DatabaseUnreachable   nothing answers at host:port (down, wrong host or port)
    └── DatabaseRefused   something drops or resets the connection: a firewall or an IP allow list
    DatabaseAuthFailed    wrong user or password, or no pg_hba.conf entry for this client
    DatabaseMissing       the database named in the URL does not exist
    SchemaNotMigrated     ``apex-metrics db migrate`` has not been run (or not since an upgrade)
    DriverError           any other psycopg error (a failed statement, a pool timeout), passed on
                          as ours by :func:`driver_errors` or a pool opened with ``wrap_errors``

Code above this module (ops, the panel, collect) never names psycopg's exception classes: it
catches these (``tests/foundation/test_error_boundaries.py`` checks). Modules that run their own
statements handle psycopg's errors at their own boundary: the sync engine's worker and listener
retry them; the recorder, importer, rollup and spool delivery raise :func:`wrap_query_error`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg import AsyncConnection, conninfo, sql
from psycopg.errors import Diagnostic, UndefinedColumn, UndefinedFunction, UndefinedTable
from psycopg_pool import AsyncConnectionPool

from apex_metrics.exceptions import (
    DatabaseAuthFailed,
    DatabaseError,
    DatabaseMissing,
    DatabaseUnreachable,
    SchemaNotMigrated,
    first_line,
)
from apex_metrics.settings import get_settings
from apex_metrics.sql import load_migrations, load_queries

DEFAULT_CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise (?connect_timeout=N)

Q = load_queries("queries.sql")


class DatabaseRefused(DatabaseUnreachable):
    """PostgreSQL's address answered, then the connection was dropped or reset."""


class DriverError(DatabaseError):
    """PostgreSQL failed."""


@contextmanager
def driver_errors() -> Iterator[None]:
    """Raise any psycopg error leaving the block as a :class:`DriverError` whose message is the
    driver's first line (the psycopg error stays as ``__cause__``): for code above this module
    that runs statements on connections it got from here (``verify``'s gates, collect's writer)."""
    try:
        yield
    except psycopg.Error as exc:
        raise DriverError(first_line(exc)) from exc


class WrappingPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """A pool whose ``connection()`` blocks raise :class:`DriverError` instead of psycopg's
    errors (a pool timeout, or a statement failing in the block): ``open_pool(wrap_errors=True)``,
    for callers that hand the pool to code they do not wrap themselves (the panel's sources)."""

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[AsyncConnection[Any]]:
        with driver_errors():
            async with super().connection(timeout) as conn:
                yield conn


# ------------------------------------------------------------------------------------------------
# Where we connect, and what went wrong


def database_url(url: str | None = None) -> str:
    """The given URL, else ``APEX_DATABASE_URL`` (failing with one line naming it)."""
    return url if url else get_settings().require("database_url")


def describe(url: str) -> str:
    """``host:port/dbname`` of a connection string, for messages (never the password)."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "?"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "")
    return f"{host}:{port}/{dbname}"


_URI_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)@")
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (and any password= value) replaced by ``****``,
    even when ``url`` is too malformed to parse (psycopg quotes such URLs in its errors)."""
    secrets: set[str] = set()
    userinfo = _URI_USERINFO.match(url)
    if userinfo and ":" in userinfo.group(1):
        secrets.add(userinfo.group(1).split(":", 1)[1])
    for found in _KEYWORD_PASSWORD.findall(url):
        secrets.add(found.strip("'"))
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "****").replace(unquote(secret), "****")
    return _KEYWORD_PASSWORD.sub("password=****", text)


def redacted_cause(exc: Exception, url: str) -> Exception:
    """``exc``, or a copy of it without the password (the ``__cause__`` that ``--debug``
    prints along with the traceback)."""
    text = str(exc)
    clean = redact(text, url)
    if clean == text:
        return exc
    try:
        copy = type(exc)(clean)
    except Exception:
        copy = psycopg.Error(clean)
    copy.__suppress_context__ = True
    return copy.with_traceback(exc.__traceback__)


def wrap_connect_error(exc: Exception, url: str) -> DatabaseError:
    """Turn a psycopg connection failure into one line saying what, where, and what to check."""
    target = describe(url)
    host = target.split("/", 1)[0]
    dbname = target.split("/", 1)[1] if "/" in target else ""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, psycopg.ProgrammingError):
        return DatabaseError(
            "the PostgreSQL URL is not valid",
            hint="use postgresql://user[:password]@host:port/dbname in APEX_DATABASE_URL",
        )
    if "does not exist" in low and "database" in low:
        return DatabaseMissing(
            f"PostgreSQL at {host} has no database {dbname!r}",
            hint="create it (createdb) or fix the database name in APEX_DATABASE_URL",
        )
    if "no pg_hba.conf entry" in low:
        return DatabaseAuthFailed(
            f"PostgreSQL at {host} does not allow this client (no pg_hba.conf entry)",
            hint="add this machine's address to the server's allow list / pg_hba.conf",
        )
    if (
        "password authentication failed" in low
        or "no password supplied" in low
        or ("role" in low and "does not exist" in low)
    ):
        return DatabaseAuthFailed(
            f"PostgreSQL at {host} rejected the user name or password",
            hint="check the user and password in APEX_DATABASE_URL",
        )
    if "authentication" in low or "password" in low:
        return DatabaseAuthFailed(
            f"PostgreSQL at {host} refused the credentials",
            hint="check the user and password in APEX_DATABASE_URL",
        )
    if "timeout" in low or "timed out" in low:
        return DatabaseRefused(
            f"no answer from PostgreSQL at {host} (connection timed out)",
            hint="a firewall or the server's IP allow list may be dropping this client; "
            "check the host, port and the allowed addresses",
        )
    if "reset by peer" in low or "closed the connection unexpectedly" in low or "eof" in low:
        return DatabaseRefused(
            f"PostgreSQL at {host} dropped the connection",
            hint="a firewall or the server's IP allow list may be refusing this client, or this "
            "is not a PostgreSQL port",
        )
    if "translate host name" in low or "name or service not known" in low:
        return DatabaseUnreachable(
            f"cannot resolve the PostgreSQL host {host.rsplit(':', 1)[0]!r}",
            hint="check the host name in APEX_DATABASE_URL",
        )
    if "refused" in low or "no route to host" in low or "unreachable" in low:
        return DatabaseUnreachable(
            f"cannot reach PostgreSQL at {host} (connection refused)",
            hint="check that PostgreSQL is running and the host and port in APEX_DATABASE_URL",
        )
    return DatabaseUnreachable(
        f"cannot connect to PostgreSQL at {host}: {first_line(exc)}",
        hint="check APEX_DATABASE_URL and that the server is up",
    )


def wrap_query_error(exc: psycopg.Error, where: str) -> DatabaseError:
    """Turn a psycopg failure during a query into one of ours (one line, naming the database)."""
    first = first_line(exc)
    if isinstance(exc, UndefinedTable | UndefinedColumn | UndefinedFunction):
        return SchemaNotMigrated(f"the database {where} lacks part of the schema: {first}")
    if (exc.sqlstate or "").startswith("40"):  # deadlock, serialization failure: not the network
        return DatabaseError(
            f"PostgreSQL at {where} rolled the transaction back: {first}",
            hint="a concurrent writer conflicted with this one; nothing was written, retry",
        )
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnreachable(
            f"lost the connection to PostgreSQL at {where}: {first}",
            hint="check that the server is up and reachable, then retry",
        )
    return DatabaseError(f"PostgreSQL at {where} refused the statement: {first}")


async def connect(
    url: str | None = None, *, autocommit: bool = False, connect_timeout: int | None = None
) -> AsyncConnection[Any]:
    """Open one connection (autocommit off unless asked); failures raise a ``DatabaseError``.
    ``connect_timeout`` overrides the URL's (default: ``DEFAULT_CONNECT_TIMEOUT``)."""
    url = database_url(url)
    kwargs: dict[str, Any] = {"autocommit": autocommit}
    try:
        if connect_timeout is not None:
            kwargs["connect_timeout"] = connect_timeout
        elif "connect_timeout" not in conninfo.conninfo_to_dict(url):
            kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
        return await AsyncConnection.connect(url, **kwargs)
    except psycopg.Error as exc:
        raise wrap_connect_error(exc, url) from redacted_cause(exc, url)


@asynccontextmanager
async def open_pool(
    url: str | None = None,
    *,
    min_size: int = 1,
    max_size: int = 10,
    check_schema: bool = True,
    check_connections: bool = True,
    autocommit: bool = False,
    wrap_errors: bool = False,
) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[Any]]]:
    """An open pool for the block's duration. One trial connection first, so that a bad URL or a
    missing schema fails with one clear line instead of a pool timeout.

    ``check_connections`` pings each connection as it leaves the pool (one extra round trip);
    callers that retry on a broken connection themselves (the recorder) turn it off.
    ``autocommit`` connections run each statement in its own transaction unless the caller opens
    one (``conn.transaction()``). ``wrap_errors`` gives a :class:`WrappingPool`: psycopg errors
    leaving its ``connection()`` blocks are raised as :class:`DriverError`."""
    url = database_url(url)
    async with await connect(url) as conn:
        if check_schema:
            await ensure_migrated(conn)
    kwargs: dict[str, Any] = {"autocommit": True} if autocommit else {}
    if "connect_timeout" not in conninfo.conninfo_to_dict(url):
        kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    pool_class = WrappingPool if wrap_errors else AsyncConnectionPool
    pool: AsyncConnectionPool[AsyncConnection[Any]] = pool_class(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        open=False,
        check=AsyncConnectionPool.check_connection if check_connections else None,
        name="apex-metrics",
    )
    try:
        await pool.open(wait=True, timeout=DEFAULT_CONNECT_TIMEOUT + 5)
    except psycopg.Error as exc:
        raise wrap_connect_error(exc, url) from redacted_cause(exc, url)
    try:
        yield pool
    finally:
        await pool.close()


async def create_database(admin_url: str, name: str, *, connect_timeout: int | None = None) -> str:
    """Create the database ``name`` on ``admin_url``'s server unless it exists; return its URL
    (``admin_url`` with the database name replaced). Connecting fails as :func:`connect` does;
    a failed statement raises :func:`wrap_query_error`'s error."""
    async with await connect(admin_url, autocommit=True, connect_timeout=connect_timeout) as conn:
        try:
            cur = await conn.execute(Q["database_exists"], {"name": name})
            if await cur.fetchone() is None:
                await conn.execute(sql.SQL(Q["create_database"]).format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise wrap_query_error(exc, describe(admin_url)) from exc
    return admin_url.rsplit("/", 1)[0] + "/" + name


# ------------------------------------------------------------------------------------------------
# Migrations


def latest_version() -> int:
    migrations = load_migrations()
    return migrations[-1].version if migrations else 0


async def schema_version(conn: AsyncConnection[Any]) -> int:
    """The highest applied migration (0 when the database was never migrated)."""
    try:
        async with conn.transaction():
            cur = await conn.execute(Q["schema_version"])
            row = await cur.fetchone()
    except UndefinedTable:
        return 0
    return int(row[0]) if row else 0


async def ensure_migrated(conn: AsyncConnection[Any], needed: int | None = None) -> None:
    """Raise ``SchemaNotMigrated`` unless every migration this code knows has been applied."""
    needed = latest_version() if needed is None else needed
    have = await schema_version(conn)
    if have < needed:
        where = describe_conn(conn)
        state = "has no apex-metrics schema" if have == 0 else f"is at schema version {have}"
        raise SchemaNotMigrated(f"the database {where} {state}; this apex-metrics needs {needed}")


def describe_conn(conn: AsyncConnection[Any]) -> str:
    info = conn.info
    return f"{info.host}:{info.port}/{info.dbname}"


@dataclass
class MigrationReport:
    """What ``migrate`` did: files applied now, files found already applied, server notices."""

    database: str
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def version(self) -> int:
        names = self.applied + self.already_applied
        return max((int(n[:4]) for n in names), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "version": self.version,
            "applied": self.applied,
            "already_applied": self.already_applied,
            "notices": self.notices,
        }

    def lines(self) -> list[str]:
        out = [f"apply {name}" for name in self.applied]
        out += [f"  {notice}" for notice in self.notices]
        if self.applied:
            out.append(f"{self.database}: schema now at version {self.version}")
        else:
            out.append(
                f"{self.database}: schema up to date (version {self.version}), nothing to do"
            )
        return out


def checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


async def migrate(url: str | None = None) -> MigrationReport:
    """Apply every migration not yet recorded, in order, each in its own transaction, under an
    advisory lock (so two migrators at once are safe: the second finds nothing to do)."""
    url = database_url(url)
    report = MigrationReport(database=describe(url))

    def on_notice(diag: Diagnostic) -> None:
        message = diag.message_primary or ""
        if message and not message.endswith(", skipping"):
            report.notices.append(message)

    async with await connect(url, autocommit=True) as conn:
        await conn.execute(Q["migrate_lock"])
        try:
            await conn.execute(Q["create_migrations_table"])
            cur = await conn.execute(Q["applied_migrations"])
            done = {int(row[0]): str(row[2]) for row in await cur.fetchall()}
            conn.add_notice_handler(on_notice)
            for migration in load_migrations():
                if migration.version in done:
                    report.already_applied.append(migration.name)
                    if done[migration.version] != checksum(migration.sql):
                        report.notices.append(
                            f"warning: {migration.name} changed since it was applied "
                            "(applied migrations are never re-run)"
                        )
                    continue
                try:
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute(
                            Q["record_migration"],
                            {
                                "version": migration.version,
                                "name": migration.name,
                                "checksum": checksum(migration.sql),
                            },
                        )
                except psycopg.Error as exc:
                    raise DatabaseError(
                        f"migration {migration.name} failed on {report.database}: "
                        f"{first_line(exc)}",
                        hint="nothing of this migration was applied; fix the cause and re-run",
                    ) from exc
                report.applied.append(migration.name)
        finally:
            if not conn.closed:
                await conn.execute(Q["migrate_unlock"])
    return report
