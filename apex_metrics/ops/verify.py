"""``apex-metrics verify``: the quality gates, each with the figure that decides it.

    1 postgres     reachable, migrated: table, the three named indexes, the pending view
    2 token        a Dataverse token is acquired (and how long it took)
    3 contract     the Dataverse table matches the contract: 13 columns, types, precision,
                   lengths, ranges, no double prefix
    4 key          the alternate key on apex_runid is Active
    5 flags        change tracking, auditing and duplicate detection are on
    6 sync         the sync engine is alive (a heartbeat within twice the poll interval) and its
                   recent runs succeeded
    7 backlog      the oldest pending row is younger than the threshold (default 5 minutes);
                   dead and in-flight rows are not pending (gate 11 judges dead rows)
    8 reconcile    delivered-row count equals Dataverse's count, and a sample of rows is identical
    9 panel        the panel answers and shows the newest delivered run
   10 secrets      secrets come only from the environment or .env.local (mode 600), and none
                   appears in a file tracked by git or in the given logs
   11 dead         no row is dead-lettered (at its current version)

Gates 7 and 11 read the sync health figures through the sync engine's one reader
(:func:`apex_metrics.sync.status.read_health`): the figures ``sync status`` and the panel show.

A gate that cannot run because an earlier one failed (no database, no token) fails with the
reason, so the exit status is 1 whenever anything is wrong.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from psycopg.rows import dict_row

from apex_metrics import db, metric
from apex_metrics.exceptions import ApexMetricsError
from apex_metrics.settings import Settings, env_name
from apex_metrics.sync.status import Health, read_health

INDEXES = (
    "idx_campaign_metrics_run_id",
    "idx_campaign_metrics_exported_at",
    "idx_campaign_metrics_created_at",
)
SECRET_FIELDS = ("client_secret", "panel_token")
MAX_SCAN_BYTES = 5_000_000  # larger tracked files are not scanned (binary or data)


@dataclass(slots=True)
class Gate:
    number: int
    name: str
    ok: bool
    figure: str
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class VerifyOptions:
    panel_url: str = "http://127.0.0.1:8000"
    backlog_threshold: float = 300.0
    sample: int = 100
    log_files: list[Path] = field(default_factory=list)
    project_dir: Path = field(default_factory=Path.cwd)
    timeout: float = 20.0


class _Failed(Exception):
    def __init__(self, figure: str, hint: str | None = None) -> None:
        super().__init__(figure)
        self.figure = figure
        self.hint = hint


async def run_verify(settings: Settings, options: VerifyOptions) -> list[Gate]:
    """Run every gate; never raises for a failing gate."""
    ctx = _Context(settings, options)
    gates: list[Gate] = []
    checks: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("postgres", ctx.postgres),
        ("token", ctx.token),
        ("contract", ctx.contract),
        ("key", ctx.key),
        ("flags", ctx.flags),
        ("sync", ctx.sync),
        ("backlog", ctx.backlog),
        ("reconcile", ctx.reconcile),
        ("panel", ctx.panel),
        ("secrets", ctx.secrets),
        ("dead", ctx.dead),
    ]
    try:
        for number, (name, check) in enumerate(checks, start=1):
            try:
                with db.driver_errors():  # the gates' own statements
                    figure = await asyncio.wait_for(check(), timeout=options.timeout)
                gates.append(Gate(number, name, True, figure))
            except _Failed as failed:
                gates.append(Gate(number, name, False, failed.figure, failed.hint))
            except db.DriverError as exc:
                gates.append(Gate(number, name, False, f"PostgreSQL: {exc.message}"))
            except ApexMetricsError as exc:
                gates.append(Gate(number, name, False, exc.message, exc.hint))
            except TimeoutError:
                gates.append(Gate(number, name, False, f"no answer in {options.timeout:g} s"))
    finally:
        await ctx.close()
    return gates


class _Context:
    """Shared state between gates (the database URL, one Dataverse client, the dry-run plan)."""

    def __init__(self, settings: Settings, options: VerifyOptions) -> None:
        self.settings = settings
        self.options = options
        self.db_ok = False
        self._client: Any = None
        self._client_cm: Any = None
        self._plan: Any = None

    async def close(self) -> None:
        if self._client_cm is not None:
            cm, self._client_cm = self._client_cm, None
            await cm.__aexit__(None, None, None)

    def _need_db(self) -> str:
        if not self.db_ok:
            raise _Failed("skipped: PostgreSQL is not ready (gate 1)")
        return self.settings.require("database_url")

    async def _dataverse(self) -> Any:
        if self._client is None:
            from apex_metrics.dataverse.connect import open_dataverse

            self._client_cm = open_dataverse(self.settings)
            self._client = await self._client_cm.__aenter__()
        return self._client

    async def _dry_run(self) -> Any:
        if self._plan is None:
            from apex_metrics.dataverse.provision import provision

            self._plan = await provision(await self._dataverse(), dry_run=True)
        return self._plan

    # -- 1 ------------------------------------------------------------------------------------
    async def postgres(self) -> str:
        url = self.settings.require("database_url")
        async with await db.connect(url) as conn:
            cur = await conn.execute(
                "SELECT to_regclass('campaign_metrics') IS NOT NULL, "
                "to_regclass('v_campaign_metrics_pending') IS NOT NULL, "
                "(SELECT array_agg(indexname::text) FROM pg_indexes "
                " WHERE tablename = 'campaign_metrics')"
            )
            row = await cur.fetchone()
            assert row is not None
            table, view, indexes = bool(row[0]), bool(row[1]), set(row[2] or [])
            found = [i for i in INDEXES if i in indexes]
            if not table or not view or len(found) < len(INDEXES):
                missing = [n for n in INDEXES if n not in indexes]
                parts = ([] if table else ["table campaign_metrics"]) + (
                    [] if view else ["view v_campaign_metrics_pending"]
                )
                raise _Failed(
                    f"{db.describe(url)}: missing {', '.join(parts + missing)}",
                    "run `apex-metrics db migrate`",
                )
            version = await db.schema_version(conn)
            latest = db.latest_version()
            if version < latest:
                raise _Failed(
                    f"schema at version {version}, code expects {latest}",
                    "run `apex-metrics db migrate`",
                )
            rows = await (await conn.execute("SELECT count(*) FROM campaign_metrics")).fetchone()
        self.db_ok = True
        count = rows[0] if rows else 0
        return f"{db.describe(url)}: {count} rows, 3/3 indexes, view, schema v{version}"

    # -- 2 ------------------------------------------------------------------------------------
    async def token(self) -> str:
        client = await self._dataverse()
        started = time.perf_counter()
        await client.tokens.token()
        ms = (time.perf_counter() - started) * 1000
        return f"token acquired from {_authority(self.settings)} in {ms:.0f} ms"

    # -- 3 ------------------------------------------------------------------------------------
    async def contract(self) -> str:
        plan = await self._dry_run()
        creates = [s for s in plan.steps if s.action in ("create table", "create column")]
        problems = [p for p in plan.problems if p.target != metric.ALTERNATE_KEY_SCHEMA_NAME]
        if creates or problems:
            lines = [f"{s.action} {s.target}" for s in creates] + [str(p) for p in problems]
            raise _Failed(
                f"{len(creates) + len(problems)} difference(s): " + "; ".join(lines[:5]),
                "run `apex-metrics dataverse provision` (it explains any manual fix)",
            )
        return f"{metric.TABLE_LOGICAL_NAME}: 13/13 columns match, no double prefix"

    # -- 4 ------------------------------------------------------------------------------------
    async def key(self) -> str:
        plan = await self._dry_run()
        status = plan.key_status or "missing"
        if status != "Active":
            raise _Failed(
                f"key {metric.ALTERNATE_KEY_SCHEMA_NAME} on apex_runid is {status}",
                "run `apex-metrics dataverse provision`; it waits until the key is Active",
            )
        return f"key {metric.ALTERNATE_KEY_SCHEMA_NAME} on apex_runid is Active"

    # -- 5 ------------------------------------------------------------------------------------
    async def flags(self) -> str:
        plan = await self._dry_run()
        if any(s.action == "create table" for s in plan.steps):
            raise _Failed("the table does not exist", "run `apex-metrics dataverse provision`")
        missing = [s.detail for s in plan.steps if s.action == "enable"]
        if missing:
            raise _Failed(f"off: {', '.join(missing)}", "run `apex-metrics dataverse provision`")
        return "change tracking, auditing and duplicate detection are on"

    # -- 6 ------------------------------------------------------------------------------------
    async def sync(self) -> str:
        url = self._need_db()
        limit = 2 * self.settings.sync_poll_interval
        async with await db.connect(url) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT extract(epoch FROM clock_timestamp() - max(heartbeat_at))::float8 AS age,"
                " count(*) AS processes FROM sync_processes"
                " WHERE heartbeat_at > clock_timestamp() - interval '1 day'"
            )
            beat = await cur.fetchone()
            await cur.execute(
                "SELECT count(*) AS runs, count(*) FILTER (WHERE error IS NOT NULL) AS failed"
                " FROM (SELECT error FROM sync_runs WHERE ended_at IS NOT NULL"
                " ORDER BY id DESC LIMIT 20) AS recent"
            )
            runs = await cur.fetchone()
        assert beat is not None and runs is not None
        age = beat["age"]
        if age is None or age > limit:
            seen = "never" if age is None else f"{age:.1f} s ago"
            raise _Failed(
                f"no sync heartbeat within {limit:g} s (last: {seen})",
                "start `apex-metrics sync` (or its service) against this database",
            )
        if runs["failed"]:
            raise _Failed(
                f"{runs['failed']} of the last {runs['runs']} sync runs failed",
                "see `apex-metrics sync status` for the errors",
            )
        return (
            f"heartbeat {age:.1f} s ago ({beat['processes']} process(es)); "
            f"last {runs['runs']} runs succeeded"
        )

    # -- 7 ------------------------------------------------------------------------------------
    async def backlog(self) -> str:
        """The sync lag (age of the oldest pending row) against the threshold. Dead rows are
        not pending: they never fail this gate (gate 11 does)."""
        health = await self._health()
        figure = backlog_figure(health)
        threshold = self.options.backlog_threshold
        if health.lag_seconds > threshold:
            raise _Failed(
                f"{figure}; the oldest pending waits {health.lag_seconds:.0f} s "
                f"(threshold {threshold:g} s)",
                "check `apex-metrics sync status` for errors, throttling or a stopped engine",
            )
        return f"{figure}; oldest pending {health.lag_seconds:.1f} s (threshold {threshold:g} s)"

    async def _health(self) -> Health:
        async with await db.connect(self._need_db()) as conn:
            return await read_health(conn)

    # -- 8 ------------------------------------------------------------------------------------
    async def reconcile(self) -> str:
        """Counts on both sides, then a sample field by field. While the engine delivers, a
        count can move between the reads: Dataverse passes when it holds at least the rows
        PostgreSQL had delivered before and at most those delivered (or in flight) after;
        a mismatch is looked at again twice, a second apart, before it fails."""
        from apex_metrics.sync.checks import same

        url = self._need_db()
        client = await self._dataverse()
        for attempt in range(3):
            before = await self._delivered(url)
            remote = await _dataverse_count(client, before["first"], before["last"])
            after = await self._delivered(url)
            low, high = before["delivered"], after["delivered"] + after["attempted"]
            if low <= remote <= high:
                break
            if attempt < 2:
                await asyncio.sleep(1.0)
        else:
            if remote > high:
                raise _Failed(
                    f"Dataverse holds {remote} rows, PostgreSQL has delivered {high}: "
                    f"{remote - high} extra row(s) in Dataverse",
                    "`apex-metrics reconcile` lists them; `apex-metrics reconcile --repair "
                    "--delete-extra` deletes them (it asks first)",
                )
            raise _Failed(
                f"PostgreSQL has delivered {low} rows, Dataverse holds {remote}",
                "run `apex-metrics reconcile --repair`, then let the sync engine deliver",
            )
        async with await db.connect(url) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT * FROM campaign_metrics WHERE exported_version = version"
                " ORDER BY random() LIMIT %(n)s",
                {"n": self.options.sample},
            )
            sample = await cur.fetchall()
        from apex_metrics.sync.sink import dataverse_body

        differ = []
        for row in sample:
            got = await client.get_by_key(
                metric.ENTITY_SET, {metric.ALTERNATE_KEY_COLUMN: row["run_id"]}
            )
            if got is None or not same(dataverse_body(row), got):
                differ.append(row["run_id"])
        if differ:
            raise _Failed(
                f"{len(differ)} of {len(sample)} sampled rows differ (e.g. {differ[0]})",
                "run `apex-metrics reconcile --repair`",
            )
        return f"{remote} rows on both sides; {len(sample)} sampled rows identical"

    async def _delivered(self, url: str) -> dict[str, Any]:
        """Rows delivered at least once; rows never delivered but sent at least once (a lease
        row: in flight, or failed and retrying or dead, so maybe in Dataverse all the same); the
        range of created_at. Bounds for the count only: not the sync health figures."""
        async with await db.connect(url) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT count(*) FILTER (WHERE c.exported_version > 0) AS delivered,"
                " count(*) FILTER (WHERE c.exported_version = 0 AND EXISTS"
                " (SELECT 1 FROM sync_leases AS l WHERE l.id = c.id)) AS attempted,"
                " min(c.created_at) AS first, max(c.created_at) AS last"
                " FROM campaign_metrics AS c"
            )
            row = await cur.fetchone()
        assert row is not None
        return dict(row)

    # -- 9 ------------------------------------------------------------------------------------
    async def panel(self) -> str:
        base = self.options.panel_url.rstrip("/")
        newest = await self._newest_delivered()  # before the panel answers: it may only be newer
        headers = {}
        if self.settings.panel_token is not None:
            headers["Authorization"] = f"Bearer {self.settings.panel_token.get_secret_value()}"
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            try:
                health = await http.get(f"{base}/healthz")
                answer = await http.get(f"{base}/api/sync", headers=headers)
            except httpx.HTTPError as exc:
                raise _Failed(
                    f"{base} does not answer ({type(exc).__name__})",
                    "start `apex-metrics panel`, or pass --panel-url",
                ) from None
        if health.status_code != 200 or answer.status_code != 200:
            raise _Failed(
                f"{base}: /healthz {health.status_code}, /api/sync {answer.status_code}",
                "check the panel's log; with APEX_PANEL_TOKEN set, verify sends it",
            )
        shown = answer.json().get("last_run_at")
        if newest is not None:
            seen = datetime.fromisoformat(shown) if shown else None
            if seen is None or seen < newest - timedelta(seconds=1):
                raise _Failed(
                    f"the panel shows runs up to {shown}, the newest delivered run is "
                    f"{newest.isoformat()}",
                    "the panel's source lags: check its source setting and the sync engine",
                )
        ago = answer.json().get("last_run_seconds_ago")
        return f"{base} answers; newest run shown {ago} s ago"

    async def _newest_delivered(self) -> datetime | None:
        if not self.db_ok:
            return None
        async with await db.connect(self.settings.require("database_url")) as conn:
            cur = await conn.execute(
                "SELECT max(created_at) FROM campaign_metrics WHERE exported_version > 0"
            )
            row = await cur.fetchone()
        value = row[0] if row else None
        return value.astimezone(UTC).replace(microsecond=0) if value else None

    # -- 10 -----------------------------------------------------------------------------------
    async def secrets(self) -> str:
        return await asyncio.to_thread(check_secrets, self.settings, self.options)

    # -- 11 -----------------------------------------------------------------------------------
    async def dead(self) -> str:
        """No dead-lettered row: each waits for a fix and ``sync retry-dead``."""
        health = await self._health()
        if health.dead:
            raise _Failed(
                f"{health.dead} row(s) dead-lettered",
                "`apex-metrics sync status` shows their errors; fix the cause, then run "
                "`apex-metrics sync retry-dead`",
            )
        return "0 rows dead-lettered"


def backlog_figure(health: Health) -> str:
    """The queue as gate 7 shows it: pending (retrying among them), in flight and dead."""
    return (
        f"{health.pending} pending ({health.retrying} retrying), {health.in_flight} in flight, "
        f"{health.dead} dead"
    )


async def _dataverse_count(client: Any, first: datetime | None, last: datetime | None) -> int:
    """Rows in the Dataverse table, exactly: inside PostgreSQL's time range the aggregate is
    split past the 50,000-record limit; rows outside it (extras) are counted in one more call."""
    from apex_metrics.dataverse.aggregate import odata_datetime

    column = metric.BY_NAME["created_at"].dataverse
    count = "aggregate($count as n)"
    if first is None or last is None:
        rows = await client.aggregate(metric.ENTITY_SET, count)
        return int(sum(int(r.get("n", 0)) for r in rows))
    start = first.astimezone(UTC).replace(microsecond=0)
    end = last.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    inside = await client.aggregate(
        metric.ENTITY_SET, count, time_column=column, start=start, end=end
    )
    outside = await client.aggregate(
        metric.ENTITY_SET,
        f"filter({column} lt {odata_datetime(start)} or {column} ge {odata_datetime(end)})/{count}",
    )
    return int(sum(int(r.get("n", 0)) for r in [*inside, *outside]))


def _authority(settings: Settings) -> str:
    from apex_metrics.dataverse.connect import authority_for

    return authority_for(settings, settings.require("dataverse_url"))


def check_secrets(settings: Settings, options: VerifyOptions) -> str:
    """Gate 10: where secrets come from, and that none leaked into tracked files or logs."""
    values = {
        env_name(name): value.get_secret_value()
        for name in SECRET_FIELDS
        if (value := getattr(settings, name)) is not None and value.get_secret_value()
    }
    problems: list[str] = []
    sources: list[str] = []
    env_file = options.project_dir / ".env"
    local_file = options.project_dir / ".env.local"
    for var in values:
        if os.environ.get(var):
            sources.append(f"{var} from the environment")
        elif var in _env_keys(local_file):
            sources.append(f"{var} from .env.local")
        elif var in _env_keys(env_file):
            problems.append(f"{var} is in .env (move it to .env.local or the environment)")
    if local_file.exists() and stat.S_IMODE(local_file.stat().st_mode) & 0o077:
        mode = oct(stat.S_IMODE(local_file.stat().st_mode))
        problems.append(f".env.local has mode {mode} (run `chmod 600 .env.local`)")
    tracked = _tracked_files(options.project_dir)
    needles = {v: k for k, v in values.items() if len(v) >= 6}
    for path in tracked:
        found = _scan(path, needles)
        if found:
            problems.append(f"{found} appears in the tracked file {path.name}")
    for log in options.log_files:
        found = _scan(log, needles)
        if found:
            problems.append(f"{found} appears in the log {log}")
    if problems:
        raise _Failed("; ".join(problems[:5]), "remove the secret, rotate it, and re-check")
    where = ", ".join(sources) if sources else "no secrets configured"
    return f"{where}; {len(tracked)} tracked file(s) and {len(options.log_files)} log(s) clean"


def _env_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text(errors="replace").splitlines():
        name, sep, _ = line.strip().removeprefix("export ").partition("=")
        if sep and not name.startswith("#"):
            keys.add(name.strip().upper())
    return keys


def _tracked_files(directory: Path) -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "ls-files", "-z"],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [directory / name for name in out.decode().split("\0") if name]


def _scan(path: Path, needles: dict[str, str]) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_SCAN_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    for value, var in needles.items():
        if value.encode() in data:
            return var
    return None
