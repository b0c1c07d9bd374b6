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

Recording never raises into application code, and never replaces the application's own
exception: when PostgreSQL is away (down, unreachable, database missing, even at open) runs go
to a durable local spool (:mod:`apex_metrics.spool`) and the problem is logged once; the
recorder reconnects with back-off and delivers the spool in order (an upsert by run_id, so
nothing is doubled). ``strict=True`` (``Recorder``, ``SyncRecorder``, ``record``) raises instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from apex_metrics import bulk
from apex_metrics.aio import wait_event
from apex_metrics.bulk import prepare_stage
from apex_metrics.db import Q, database_url, describe, open_pool, wrap_query_error
from apex_metrics.exceptions import (
    ApexMetricsError,
    ConfigError,
    FieldError,
    MetricValidationError,
)
from apex_metrics.metric import FIELD_NAMES, Metric, parse_metric
from apex_metrics.problems import ProblemLog, one_line
from apex_metrics.run_lines import RunLines
from apex_metrics.spool import DEFAULT_MAX_BYTES, REJECTED, Spool, default_spool_dir
from apex_metrics.spool_delivery import flush, is_refusal
from apex_metrics.tracker import P95, AgentCall, RunTracker, mean_rounded, percentile_cont

__all__ = [
    "P95",
    "AgentCall",
    "BulkResult",
    "RecordResult",
    "Recorder",
    "RecorderStats",
    "RunTracker",
    "SyncRecorder",
    "SyncRunTracker",
    "mean_rounded",
    "metric_params",
    "percentile_cont",
    "prepare_stage",
    "record",
    "to_metric",
    "upsert_stage",
    "validate_many",
    "write_metrics",
]

T = TypeVar("T")
STREAM_ROWS = 2_000  # record_many: lines per COPY write (checked while the last one loads)
MetricInput = Metric | Mapping[str, Any]
RunStatus = Literal["recorded", "spooled", "refused", "rejected"]
log = logging.getLogger("apex_metrics.recorder")


@dataclass(frozen=True, slots=True)
class RecordResult:
    """Where a run landed. ``status``: ``recorded`` (row ``id`` at ``version``; ``inserted`` when
    new), ``spooled`` (kept in the local spool, delivered once PostgreSQL answers), ``refused``
    (the spool is full or unwritable: the run is lost, logged as an error) or ``rejected``
    (invalid, or refused by the database: logged)."""

    id: int | None
    version: int | None
    inserted: bool
    status: RunStatus = "recorded"

    @classmethod
    def not_recorded(cls, status: RunStatus) -> RecordResult:
        return cls(None, None, False, status)


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk write did (``spooled``, ``refused``, ``rejected``: as in RecordResult)."""

    inserted: int
    updated: int
    spooled: int = 0
    refused: int = 0
    rejected: int = 0

    @property
    def written(self) -> int:
        return self.inserted + self.updated


def to_metric(item: MetricInput, *, line: int | None = None) -> Metric:
    return item if isinstance(item, Metric) else parse_metric(item, line=line)


def metric_params(metric: Metric) -> dict[str, Any]:
    return {name: getattr(metric, name) for name in FIELD_NAMES}


def _checked(
    items: Iterable[MetricInput],
    parse: Callable[[MetricInput, int], tuple[str, T]],
    errors: list[FieldError],
) -> Iterator[tuple[str, T]]:
    """``(run_id, parse(item))`` of each valid item (numbered from 1 as "line"); the errors of
    the others, and a repeated run id, go to ``errors``."""
    seen: dict[str, int] = {}
    for number, item in enumerate(items, start=1):
        try:
            run_id, value = parse(item, number)
        except MetricValidationError as exc:
            errors.extend(exc.errors)
            continue
        first = seen.setdefault(run_id, number)
        if first != number:
            errors.append(FieldError("run_id", f"repeats the run id of item {first}", number))
            continue
        yield run_id, value


def _metric(item: MetricInput, number: int) -> tuple[str, Metric]:
    metric = to_metric(item, line=number)
    return metric.run_id, metric


def validate_many(items: Iterable[MetricInput]) -> list[Metric]:
    """Validate every item (numbered from 1 as "line"); repeated run ids are errors too."""
    errors: list[FieldError] = []
    metrics = [metric for _, metric in _checked(items, _metric, errors)]
    if errors:
        raise MetricValidationError(errors)
    return metrics


# ------------------------------------------------------------------------------------------------
# Bulk path shared with the importer and the collector (apex_metrics/bulk.py): COPY straight
# into the table when every run is new, else a session staging table and one ordered upsert.


async def upsert_stage(conn: AsyncConnection[Any]) -> BulkResult:
    """Upsert every staged row into campaign_metrics (same transaction as the COPY)."""
    inserted, updated = await bulk.upsert_stage(conn)
    return BulkResult(inserted=inserted, updated=updated)


async def write_metrics(conn: AsyncConnection[Any], metrics: Iterable[Metric]) -> BulkResult:
    """Write validated metrics in one transaction: all of them or, on any error, none."""
    inserted, updated = await bulk.write_metrics(conn, list(metrics))
    return BulkResult(inserted=inserted, updated=updated)


@dataclass
class RecorderStats:
    """Runs this recorder wrote, spooled, delivered from the spool, refused (spool full: lost)
    and rejected (invalid, or refused by the database)."""

    recorded: int = 0
    spooled: int = 0
    delivered: int = 0
    refused: int = 0
    rejected: int = 0


# ------------------------------------------------------------------------------------------------
# Async recorder


class Recorder:
    """Records campaign runs in PostgreSQL. Open it with ``async with`` (or ``open``/``close``).

    Unless ``strict``, nothing here raises into the caller: when PostgreSQL does not answer (at
    open or later), runs go to the durable local spool (``spool``, default ``APEX_SPOOL_DIR``),
    the problem is logged once, and a background task reconnects with back-off and delivers the
    spool, in order, before new runs go straight to the database again. ``strict=True`` raises
    instead (and never spools).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        max_connections: int = 4,
        strict: bool = False,
        spool: Spool | Path | str | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        acquire_timeout: float = 5.0,
        close_timeout: float = 10.0,
    ) -> None:
        self._url = url
        self._max = max_connections
        self.strict = strict
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._pool_cm: Any = None
        self._stale: list[Any] = []  # pools of a lost database, closed by the worker
        self._spool_path = None if isinstance(spool, Spool) else spool
        self._spool: Spool | None = spool if isinstance(spool, Spool) else None
        self._opened = False
        self._backlog = False  # spooled runs go first: new runs queue behind them
        self._worker: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._retry = (retry_initial, retry_max)
        self._acquire_timeout = acquire_timeout
        self._close_timeout = close_timeout
        self.problems = ProblemLog(log)
        self.stats = RecorderStats()

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            try:
                self._spool = Spool(self._spool_path)
            except ApexMetricsError as exc:  # invalid APEX_SPOOL_* settings
                self._spool = Spool(default_spool_dir(), max_bytes=DEFAULT_MAX_BYTES)
                log.error("apex-metrics recorder: %s; spooling to %s", one_line(exc), self._spool)
        return self._spool

    async def _open_pool(self) -> None:
        url = database_url(self._url)
        self._url = url
        # Autocommit: record() is one statement (no BEGIN and COMMIT round trips); bulk writes
        # open their transactions explicitly.
        pool_cm = open_pool(
            url, min_size=1, max_size=self._max, check_connections=False, autocommit=True
        )
        self._pool = await pool_cm.__aenter__()
        self._pool_cm = pool_cm

    async def open(self) -> None:
        if self._opened:
            return
        if self.strict:
            await self._open_pool()
            self._opened = True
            return
        self._opened = True
        self._closing = asyncio.Event()
        try:
            await self._open_pool()
        except Exception as exc:
            self._offline(exc)
            return
        self._check_spool()

    async def close(self) -> None:
        self._opened = False
        self._closing.set()
        worker, self._worker = self._worker, None
        if worker is not None:
            # let a delivery under way finish (bounded); a cut one is simply delivered again
            await asyncio.wait({worker}, timeout=self._close_timeout)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        await self._close_stale()
        if self._pool_cm is not None:
            cm, self._pool_cm, self._pool = self._pool_cm, None, None
            try:
                await cm.__aexit__(None, None, None)
            except Exception as exc:
                if self.strict:
                    raise
                log.debug("apex-metrics recorder: closing the pool: %s", one_line(exc))

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def backlog(self) -> bool:
        """Whether runs wait in the spool (new runs queue behind them until they are delivered)."""
        return self._backlog

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        if self._pool is None:
            raise ApexMetricsError(
                "the recorder is not open", hint="use `async with Recorder(...)` or `await open()`"
            )
        return self._pool

    # --- recording ----------------------------------------------------------------------------

    async def record(self, item: MetricInput) -> RecordResult:
        """Insert the run, or update it by run_id; either way it becomes pending. Unless strict,
        a run that cannot be written now is spooled (``status="spooled"``)."""
        if self.strict:
            return await self._upsert(to_metric(item))
        try:
            metric = to_metric(item)
        except Exception as exc:
            self.report_invalid(exc, 1)
            return RecordResult.not_recorded("rejected")
        if self._pool is not None and not self._backlog:
            try:
                result = await self._upsert(metric)
            except Exception as exc:
                if is_refusal(exc):
                    await self._refused_by_database([metric], exc)
                    return RecordResult.not_recorded("rejected")
                self._offline(exc)
            else:
                self.stats.recorded += 1
                self._check_spool()
                return result
        return RecordResult.not_recorded(await self._spool_runs([metric]))

    async def _upsert(self, metric: Metric) -> RecordResult:
        params = metric_params(metric)
        timeout = None if self.strict else self._acquire_timeout
        # A pooled connection may have died while idle (server restart, idle timeout): such a
        # failure is retried on another connection. Re-running the upsert is harmless.
        for attempt in range(self._max + 1):
            broken = False
            try:
                async with self.pool.connection(timeout=timeout) as conn:
                    try:
                        # A new run (the usual case) is a plain insert; a run recorded before
                        # is upserted (insert_metric says why two statements beat one).
                        cur = await conn.execute(Q["insert_metric"], params)
                        row = await cur.fetchone()
                        if row is not None:
                            return RecordResult(id=int(row[0]), version=int(row[1]), inserted=True)
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
        """Write every item through COPY in one transaction, all or nothing: the items are
        validated while the COPY streams, and any invalid one rolls it all back. Unless strict,
        invalid input is logged (nothing written) and an unreachable database spools."""
        items = list(items)
        if self.strict:
            return await self._load_many(items)
        if not items:
            return BulkResult(0, 0)
        if self._pool is not None and not self._backlog:
            try:
                result = await self._load_many(items)
            except MetricValidationError as exc:
                self.report_invalid(exc, len(items))
                return BulkResult(0, 0, rejected=len(items))
            except Exception as exc:
                try:
                    metrics = validate_many(items)
                except MetricValidationError as invalid:
                    self.report_invalid(invalid, len(items))
                    return BulkResult(0, 0, rejected=len(items))
                if is_refusal(exc):
                    await self._refused_by_database(metrics, exc)
                    return BulkResult(0, 0, rejected=len(metrics))
                self._offline(exc)
            else:
                self.stats.recorded += result.written
                self._check_spool()
                return result
        try:
            metrics = validate_many(items)
        except Exception as exc:
            self.report_invalid(exc, len(items))
            return BulkResult(0, 0, rejected=len(items))
        status = await self._spool_runs(metrics)
        spooled = len(metrics) if status == "spooled" else 0
        return BulkResult(0, 0, spooled=spooled, refused=len(metrics) - spooled)

    async def _load_many(self, items: list[MetricInput]) -> BulkResult:
        """Validate and COPY in one transaction, the server loading one batch of lines while the
        next is checked (:func:`bulk.load`). Raises ``MetricValidationError`` listing every
        invalid item (repeated run ids too), with nothing written."""
        if not items:
            return BulkResult(0, 0)
        errors: list[FieldError] = []
        run_ids: list[str] = []  # of the lines yielded so far

        def batches() -> Iterator[str]:
            batch: list[str] = []
            for run_id, line in _checked(items, RunLines().parse, errors):
                if errors:  # after an error nothing is written: only look for more
                    continue
                run_ids.append(run_id)
                batch.append(line)
                if len(batch) >= STREAM_ROWS:
                    yield "".join(batch)
                    batch.clear()
            if batch and not errors:
                yield "".join(batch)

        def check() -> None:
            if errors:
                raise MetricValidationError(errors)

        timeout = None if self.strict else self._acquire_timeout
        try:
            async with self.pool.connection(timeout=timeout) as conn, conn.transaction():
                inserted, updated = await bulk.load(
                    conn, batches(), lambda: bulk.sample(run_ids), check
                )
        except psycopg.Error as exc:
            raise wrap_query_error(exc, describe(self._url or "")) from exc
        return BulkResult(inserted=inserted, updated=updated)

    def track(self, campaign_id: str, run_id: str, **fields: Any) -> RunTracker:
        """A context manager collecting per-agent calls; the run is recorded on exit."""
        return RunTracker(self, campaign_id, run_id, **fields)

    # --- what happens instead of raising ------------------------------------------------------

    def report_invalid(self, exc: Exception, count: int) -> None:
        self.stats.rejected += count
        self.problems.report(
            "invalid", logging.ERROR, f"apex-metrics recorder: {count} run(s) not recorded: {exc}"
        )

    async def _refused_by_database(self, metrics: list[Metric], exc: Exception) -> None:
        self.stats.rejected += len(metrics)
        reason = f"refused by the database: {one_line(exc)}"
        try:
            await asyncio.to_thread(self.spool.reject_runs, [(m, reason) for m in metrics])
            kept = f"; kept in {self.spool.path / REJECTED}"
        except Exception as err:
            kept = f"; and could not be kept aside: {one_line(err)}"
        self.problems.report(
            "refused", logging.ERROR, f"apex-metrics recorder: {len(metrics)} run(s) {reason}{kept}"
        )

    def spool_now(self, metrics: list[Metric], *, why: str | None = None) -> RunStatus:
        """Append runs to the spool (blocking; any thread). Returns "spooled", or "refused" when
        they could not be kept (spool full or unwritable: logged as an error)."""
        try:
            self.spool.append(metrics)
        except Exception as exc:
            self.stats.refused += len(metrics)
            ids = ", ".join(m.run_id for m in metrics[:5]) + (", …" if len(metrics) > 5 else "")
            self.problems.report(
                "spool",
                logging.ERROR,
                f"apex-metrics recorder: {len(metrics)} run(s) LOST ({ids}): {one_line(exc)}",
                interval=10.0,
            )
            return "refused"
        self.stats.spooled += len(metrics)
        if self.problems.clear("spool"):
            log.warning("apex-metrics recorder: the spool takes runs again (%s)", self.spool.path)
        if why is not None:
            self.problems.report(
                "facade", logging.WARNING, f"apex-metrics recorder: {why}; run(s) spooled to "
                f"{self.spool.path} (`apex-metrics spool flush` delivers them)",
            )  # fmt: skip
        return "spooled"

    async def _spool_runs(self, metrics: list[Metric]) -> RunStatus:
        why = None if self._opened else "the recorder is not open"
        status = await asyncio.to_thread(self.spool_now, metrics, why=why)
        if status == "spooled":
            self.note_backlog()
        return status

    def note_backlog(self) -> None:
        """Runs are waiting in the spool: queue new runs behind them and deliver them soon."""
        self._backlog = True
        if self._opened and (self._worker is None or self._worker.done()):
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="apex-recorder-spool"
            )

    def _check_spool(self) -> None:
        try:
            waiting = self.spool.has_runs()
        except OSError:
            return
        if waiting:
            self.note_backlog()

    def _offline(self, exc: Exception) -> None:
        if self._pool_cm is not None:
            self._stale.append(self._pool_cm)
        self._pool = self._pool_cm = None
        self.problems.report(
            "database", logging.WARNING, f"apex-metrics recorder: PostgreSQL is unavailable "
            f"({one_line(exc)}); runs go to the spool {self.spool.path} until it answers",
        )  # fmt: skip
        if isinstance(exc, ConfigError):
            return  # no database to wait for: `apex-metrics spool flush` delivers later
        self.note_backlog()

    async def _close_stale(self) -> None:
        while self._stale:
            cm = self._stale.pop()
            try:
                await cm.__aexit__(None, None, None)
            except Exception as exc:
                log.debug("apex-metrics recorder: closing a lost pool: %s", one_line(exc))

    async def _work(self) -> None:
        """Reconnect with back-off, deliver the spool, then let runs go straight through again."""
        delay = self._retry[0]
        while self._opened:
            await self._close_stale()
            try:
                if self._pool is None:
                    await self._open_pool()
                async with self.pool.connection(timeout=self._acquire_timeout) as conn:
                    report = await flush(self.spool, conn)
            except Exception as exc:
                self._offline(exc)
                if isinstance(exc, ConfigError):
                    return
                pause = delay * random.uniform(0.5, 1.0)
                delay = min(delay * 2, self._retry[1])
                with contextlib.suppress(TimeoutError):
                    await wait_event(self._closing, pause)
                continue
            delay = self._retry[0]
            self.stats.delivered += report.delivered
            self.stats.rejected += report.rejected
            back = self.problems.clear("database")
            if back or report.delivered:
                log.log(
                    logging.WARNING if back else logging.INFO,
                    "apex-metrics recorder: PostgreSQL answers%s; delivered %d spooled run(s)",
                    " again" if back else "",
                    report.delivered,
                )
            if report.busy:  # another process is flushing (our runs too): look again shortly
                with contextlib.suppress(TimeoutError):
                    await wait_event(self._closing, 0.2)
                continue
            if self.spool.has_runs():  # spooled while we flushed
                continue
            self._backlog = False  # no await between the check above and this line
            return


# ------------------------------------------------------------------------------------------------
# Synchronous facade: the async recorder on an event loop in a background thread.


class SyncRecorder:
    """Synchronous face of :class:`Recorder`, safe to use from any thread (and from code that
    already runs an event loop). Unless ``strict``, it never raises either: a run it cannot hand
    to the recorder (not open, closed, timed out) is spooled from the calling thread."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 60.0,
        strict: bool = False,
        spool: Spool | Path | str | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        acquire_timeout: float = 5.0,
    ) -> None:
        self._recorder = Recorder(
            url,
            strict=strict,
            spool=spool,
            retry_initial=retry_initial,
            retry_max=retry_max,
            acquire_timeout=acquire_timeout,
        )
        self.strict = strict
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    @property
    def stats(self) -> RecorderStats:
        return self._recorder.stats

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise ApexMetricsError("the recorder is not open", hint="use `with SyncRecorder(...)`")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

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
            if self.strict:
                self.close()
                raise
            log.exception("apex-metrics recorder: opening failed; runs will be spooled")

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._recorder.close(), loop).result(self._timeout)
        except Exception:
            if self.strict:
                raise
            log.exception("apex-metrics recorder: closing failed")
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

    def _spool_here(self, items: list[MetricInput], exc: Exception) -> RunStatus:
        """Spool from the calling thread (the recorder's loop cannot take the runs)."""
        try:
            metrics = validate_many(items)
        except Exception as err:
            self._recorder.report_invalid(err, len(items))
            return "rejected"
        status = self._recorder.spool_now(metrics, why=one_line(exc))
        loop = self._loop
        if status == "spooled" and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._recorder.note_backlog)
        return status

    def record(self, item: MetricInput) -> RecordResult:
        if self.strict:
            return self._run(self._recorder.record(item))
        try:
            return self._run(self._recorder.record(item))
        except Exception as exc:
            return RecordResult.not_recorded(self._spool_here([item], exc))

    def record_many(self, items: Iterable[MetricInput]) -> BulkResult:
        items = list(items)
        if self.strict:
            return self._run(self._recorder.record_many(items))
        try:
            return self._run(self._recorder.record_many(items))
        except Exception as exc:
            status = self._spool_here(items, exc)
            count = len(items)
            return BulkResult(
                0,
                0,
                spooled=count if status == "spooled" else 0,
                refused=count if status == "refused" else 0,
                rejected=count if status == "rejected" else 0,
            )

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
        if exc is not None:
            self.tracker.failed()
        try:
            self._owner._run(self.tracker.finish(exc))
        except Exception as err:
            if self._owner.strict:
                if exc is None:
                    raise
                log.error(
                    "apex-metrics recorder: run %s not recorded (%s); the block's exception "
                    "follows",
                    self.tracker.run_id,
                    one_line(err),
                )
                return
            try:
                metric: MetricInput = self.tracker.metric()
            except MetricValidationError as invalid:
                self._owner._recorder.report_invalid(invalid, 1)
                return
            self._owner._spool_here([metric], err)


def record(item: MetricInput, *, url: str | None = None, strict: bool = False) -> RecordResult:
    """Record one run from synchronous code (opens and closes its own connection pool)."""
    with SyncRecorder(url, strict=strict) as recorder:
        return recorder.record(item)
