"""What application code imports: record a run, record many, or track a run's agent calls.

Async API::

    async with Recorder(database_url) as recorder:
        await recorder.record({"campaign_id": "spring", "run_id": "r-1", "agents_total": 3})
        await recorder.record_many(rows)                  # all or nothing, through COPY
        async with recorder.track("spring", "r-2") as run:
            run.call(tokens_in=120, tokens_out=40, latency_ms=850, cost_usd="0.0021")

Synchronous facade (application code is often synchronous)::

    with SyncRecorder(database_url) as recorder:
        recorder.record(metric)
        with recorder.track("spring", "r-3") as run:
            run.call(latency_ms=12)
    record(metric)                                         # one-off, opens and closes

Recording a run id again updates its values and makes it pending again (re-exported).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from types import TracebackType
from typing import Any, Self, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from apex_metrics.db import Q, database_url, describe, open_pool, wrap_query_error
from apex_metrics.exceptions import ApexMetricsError, FieldError, MetricValidationError
from apex_metrics.metric import FIELD_NAMES, Metric, parse_metric

T = TypeVar("T")
MetricInput = Metric | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RecordResult:
    """Where a recorded run landed: row id, its version, and whether the row is new."""

    id: int
    version: int
    inserted: bool


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk write did."""

    inserted: int
    updated: int

    @property
    def written(self) -> int:
        return self.inserted + self.updated


def to_metric(item: MetricInput, *, line: int | None = None) -> Metric:
    return item if isinstance(item, Metric) else parse_metric(item, line=line)


def metric_params(metric: Metric) -> dict[str, Any]:
    return {name: getattr(metric, name) for name in FIELD_NAMES}


def validate_many(items: Iterable[MetricInput]) -> list[Metric]:
    """Validate every item (numbered from 1 as "line"); repeated run ids are errors too."""
    metrics: list[Metric] = []
    errors: list[FieldError] = []
    seen: dict[str, int] = {}
    for number, item in enumerate(items, start=1):
        try:
            metric = to_metric(item, line=number)
        except MetricValidationError as exc:
            errors.extend(exc.errors)
            continue
        first = seen.setdefault(metric.run_id, number)
        if first != number:
            errors.append(FieldError("run_id", f"repeats the run id of item {first}", number))
            continue
        metrics.append(metric)
    if errors:
        raise MetricValidationError(errors)
    return metrics


# ------------------------------------------------------------------------------------------------
# Bulk path shared with the importer: COPY into a session temp table, then one upsert.


async def prepare_stage(conn: AsyncConnection[Any]) -> None:
    """Create (once per session) the temp staging table; call inside a transaction."""
    await conn.execute(Q["create_stage"])
    await conn.execute("TRUNCATE apex_metrics_stage")


async def upsert_stage(conn: AsyncConnection[Any]) -> BulkResult:
    """Upsert every staged row into campaign_metrics (same transaction as the COPY)."""
    cur = await conn.execute(Q["upsert_from_stage"])
    row = await cur.fetchone()
    assert row is not None
    return BulkResult(inserted=int(row[0]), updated=int(row[1]))


async def write_metrics(conn: AsyncConnection[Any], metrics: Iterable[Metric]) -> BulkResult:
    """Write validated metrics in one transaction: all of them or, on any error, none."""
    async with conn.transaction():
        await prepare_stage(conn)
        async with conn.cursor().copy(Q["copy_stage"]) as copy:
            for metric in metrics:
                await copy.write_row(metric.pg_values())
        return await upsert_stage(conn)


# ------------------------------------------------------------------------------------------------
# Async recorder


class Recorder:
    """Records campaign runs in PostgreSQL. Open it with ``async with`` (or ``open``/``close``)."""

    def __init__(self, url: str | None = None, *, max_connections: int = 4) -> None:
        self._url = url
        self._max = max_connections
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._pool_cm: Any = None

    async def open(self) -> None:
        if self._pool is None:
            self._url = database_url(self._url)
            pool_cm = open_pool(self._url, min_size=1, max_size=self._max, check_connections=False)
            self._pool = await pool_cm.__aenter__()
            self._pool_cm = pool_cm

    async def close(self) -> None:
        if self._pool_cm is not None:
            cm, self._pool_cm, self._pool = self._pool_cm, None, None
            await cm.__aexit__(None, None, None)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        if self._pool is None:
            raise ApexMetricsError(
                "the recorder is not open", hint="use `async with Recorder(...)` or `await open()`"
            )
        return self._pool

    async def record(self, item: MetricInput) -> RecordResult:
        """Insert the run, or update it by run_id; either way it becomes pending."""
        params = metric_params(to_metric(item))
        # A pooled connection may have died while idle (server restart, idle timeout): such a
        # failure is retried on another connection. Re-running the upsert is harmless.
        for attempt in range(self._max + 1):
            broken = False
            try:
                async with self.pool.connection() as conn:
                    try:
                        cur = await conn.execute(Q["upsert_metric"], params)
                        row = await cur.fetchone()
                    except psycopg.OperationalError:
                        broken = conn.broken
                        raise
                assert row is not None
                return RecordResult(id=int(row[0]), version=int(row[1]), inserted=bool(row[2]))
            except psycopg.Error as exc:
                if broken and attempt < self._max:
                    continue
                raise wrap_query_error(exc, describe(self._url or "")) from exc
        raise AssertionError("unreachable")

    async def record_many(self, items: Iterable[MetricInput]) -> BulkResult:
        """Validate every item, then write them all through COPY in one transaction."""
        metrics = validate_many(items)
        if not metrics:
            return BulkResult(0, 0)
        try:
            async with self.pool.connection() as conn:
                return await write_metrics(conn, metrics)
        except psycopg.Error as exc:
            raise wrap_query_error(exc, describe(self._url or "")) from exc

    def track(self, campaign_id: str, run_id: str, **fields: Any) -> RunTracker:
        """A context manager collecting per-agent calls; the run is recorded on exit."""
        return RunTracker(self, campaign_id, run_id, **fields)


# ------------------------------------------------------------------------------------------------
# Run tracker


def mean_rounded(values: list[Fraction]) -> int:
    """The exact mean, rounded half-even to a whole number."""
    return round(sum(values, Fraction(0)) / len(values))


def percentile_cont(values: list[Fraction], fraction: Fraction) -> Fraction:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the two nearest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)  # floor: position >= 0
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


P95 = Fraction(95, 100)


@dataclass
class AgentCall:
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: Fraction | None = None
    success: bool = True
    cost_usd: Decimal = Decimal(0)


@dataclass
class RunTracker:
    """Collects one run's agent calls; on exit records the run (also when the block raised, with
    that failure counted as one unsuccessful agent) and lets any exception propagate."""

    recorder: Recorder
    campaign_id: str
    run_id: str
    phase: str | None = None
    assets_generated: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    calls: list[AgentCall] = field(default_factory=list)
    result: RecordResult | None = None

    def call(
        self,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        latency_ms: float | int | Decimal | None = None,
        success: bool = True,
        cost_usd: Decimal | float | int | str = 0,
    ) -> None:
        """One agent call of this run."""
        latency = None if latency_ms is None else Fraction(Decimal(str(latency_ms)))
        cost = Decimal(str(cost_usd))
        self.calls.append(AgentCall(tokens_in, tokens_out, latency, success, cost))

    def add_assets(self, count: int = 1) -> None:
        self.assets_generated += count

    def failed(self) -> None:
        """Count one failed agent (what an exception escaping the block does)."""
        self.calls.append(AgentCall(success=False))

    def metric(self) -> Metric:
        """The run as it would be recorded now (validated)."""
        latencies = [c.latency_ms for c in self.calls if c.latency_ms is not None]
        values: dict[str, Any] = {
            "campaign_id": self.campaign_id,
            "run_id": self.run_id,
            "phase": self.phase,
            "agents_total": len(self.calls),
            "agents_successful": sum(1 for c in self.calls if c.success),
            "assets_generated": self.assets_generated,
            "tokens_in": sum(c.tokens_in for c in self.calls),
            "tokens_out": sum(c.tokens_out for c in self.calls),
            "cost_usd": sum((c.cost_usd for c in self.calls), Decimal(0)),
            "latency_avg_ms": mean_rounded(latencies) if latencies else None,
            "latency_p95_ms": round(percentile_cont(latencies, P95)) if latencies else None,
            "created_at": self.created_at,
        }
        return parse_metric(values)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is not None:
            self.failed()
        self.result = await self.recorder.record(self.metric())


# ------------------------------------------------------------------------------------------------
# Synchronous facade: the async recorder on an event loop in a background thread.


class SyncRecorder:
    """Synchronous face of :class:`Recorder`, safe to use from any thread (and from code that
    already runs an event loop)."""

    def __init__(self, url: str | None = None, *, timeout: float = 60.0) -> None:
        self._recorder = Recorder(url)
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise ApexMetricsError("the recorder is not open", hint="use `with SyncRecorder(...)`")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(self._timeout)

    def open(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="apex-recorder", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._run(self._recorder.open())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._recorder.close(), loop).result(self._timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self._timeout)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def record(self, item: MetricInput) -> RecordResult:
        return self._run(self._recorder.record(item))

    def record_many(self, items: Iterable[MetricInput]) -> BulkResult:
        return self._run(self._recorder.record_many(list(items)))

    def track(self, campaign_id: str, run_id: str, **fields: Any) -> SyncRunTracker:
        return SyncRunTracker(self, RunTracker(self._recorder, campaign_id, run_id, **fields))


class SyncRunTracker:
    """``with recorder.track(...) as run:`` for synchronous code (same rules as RunTracker)."""

    def __init__(self, owner: SyncRecorder, tracker: RunTracker) -> None:
        self._owner = owner
        self.tracker = tracker
        self.call = tracker.call
        self.add_assets = tracker.add_assets

    def __enter__(self) -> RunTracker:
        return self.tracker

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._run(self._exit(exc))

    async def _exit(self, exc: BaseException | None) -> None:
        await self.tracker.__aexit__(type(exc) if exc else None, exc, None)


def record(item: MetricInput, *, url: str | None = None) -> RecordResult:
    """Record one run from synchronous code (opens and closes its own connection pool)."""
    with SyncRecorder(url) as recorder:
        return recorder.record(item)
