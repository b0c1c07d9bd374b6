"""One worker: drain batches, then wait for a NOTIFY, the poll interval or stop.

A batch is: claim (commit) → one ``$batch`` of upserts → settle (commit). The claim holds a
lease, not a transaction, across the HTTP call, and the send is bounded by half the lease so
that a lease can only expire under a worker that has stopped sending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import psycopg_pool

from apex_metrics.dataverse.errors import DataverseError, Throttled
from apex_metrics.metric import ALTERNATE_KEY_COLUMN, ENTITY_SET
from apex_metrics.sync.errors import SinkFailed
from apex_metrics.sync.metrics import SyncMetrics
from apex_metrics.sync.policy import FlowControl, RetryPolicy
from apex_metrics.sync.queue import Claim, Failure, Queue, RunSummary
from apex_metrics.sync.sink import Outcome, Sink, dataverse_body

log = logging.getLogger("apex_metrics.sync")

DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)
MAX_MESSAGE = 2000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    batch_size: int = 1000
    poll_interval: float = 1.0
    lease_seconds: float = 60.0
    once: bool = False
    entity_set: str = ENTITY_SET
    key_column: str = ALTERNATE_KEY_COLUMN

    @property
    def send_timeout(self) -> float:
        return max(1.0, self.lease_seconds / 2)


@dataclass(slots=True)
class EngineStats:
    """What this process did (the report of ``sync --once``)."""

    batches: int = 0
    requests: int = 0
    claimed: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    throttled: int = 0
    lost_lease: int = 0
    db_errors: int = 0
    dead_keys: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> int:
        return self.created + self.updated

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "claimed": self.claimed,
            "delivered": self.delivered,
            "created": self.created,
            "updated": self.updated,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "requeued": self.requeued,
            "throttled": self.throttled,
            "lost_lease": self.lost_lease,
            "db_errors": self.db_errors,
            "dead_keys": self.dead_keys[:100],
        }


@dataclass(slots=True)
class Worker:
    name: str  # "<process id>/w<i>"; lease owner tokens are "<name>/<batch number>"
    queue: Queue
    sink: Sink
    config: WorkerConfig
    policy: RetryPolicy
    flow: FlowControl
    stop: asyncio.Event
    wake: asyncio.Event
    stats: EngineStats
    metrics: SyncMetrics
    recruit: Callable[[], None] | None = None  # wake another worker: this batch was full
    idle: bool = False  # waiting for a NOTIFY or the poll interval
    _seq: int = 0

    async def run(self) -> None:
        """Drain, wait, repeat until ``stop`` (or, with ``once``, until nothing is due)."""
        db_backoff = 0.1
        while not self.stop.is_set():
            await self.flow.wait_ready(self.stop)
            if self.stop.is_set():
                break
            self.wake.clear()
            try:
                claimed = await self.run_batch()
                if not claimed and self.config.once:
                    due = await self.queue.next_due()
                    if due is None:
                        return
                    await self._idle(min(max(due, 0.05), self.config.poll_interval))
                    continue
                db_backoff = 0.1
            except DB_ERRORS as exc:
                self.stats.db_errors += 1
                log.warning(
                    "database error, retrying in %.1fs: %s",
                    db_backoff,
                    _first_line(exc),
                    extra={"event": "db_error", "worker": self.name},
                )
                await self._idle(db_backoff, wakeable=False)
                db_backoff = min(db_backoff * 2, 5.0)
                continue
            if not claimed:
                await self._idle(self.config.poll_interval)

    async def _idle(self, seconds: float, *, wakeable: bool = True) -> None:
        event = self.wake if wakeable else self.stop
        self.idle = wakeable
        try:
            await asyncio.wait_for(event.wait(), timeout=seconds)
        except TimeoutError:
            pass
        finally:
            self.idle = False

    async def run_batch(self) -> int:
        """Claim one batch, send it, settle it. Returns the number of rows claimed."""
        self._seq += 1
        owner = f"{self.name}/{self._seq}"
        claim = await self.queue.claim(
            owner=owner,
            worker=self.name,
            limit=self.config.batch_size,
            lease_seconds=self.config.lease_seconds,
        )
        if claim is None:
            return 0
        if len(claim.rows) >= self.config.batch_size and self.recruit is not None:
            self.recruit()  # more is probably waiting: bring an idle worker in
        started = time.perf_counter()
        self.stats.batches += 1
        self.stats.claimed += len(claim.rows)
        try:
            await self._deliver(claim)
        except asyncio.CancelledError:
            await asyncio.shield(self._release_quietly(claim, "cancelled"))
            raise
        except DB_ERRORS:
            # Settling failed (e.g. the connection died): give the rows back now rather than
            # at lease expiry. Rows whose ack did commit are no longer ours and stay done.
            await self._release_quietly(claim, "database error while settling")
            raise
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return len(claim.rows)

    async def _release_quietly(self, claim: Claim, error: str) -> None:
        try:
            await self.queue.release(claim, error=error)
        except DB_ERRORS:
            pass  # the lease expires on its own

    async def _deliver(self, claim: Claim) -> None:
        rows = claim.rows
        items = [(str(r["run_id"]), dataverse_body(r)) for r in rows]
        summary = RunSummary()
        delivered: list[tuple[int, int]] = []
        failures: list[Failure] = []
        try:
            async with self.flow.slot():
                self.stats.requests += 1
                self.metrics.requests.inc()
                outcomes = await asyncio.wait_for(
                    self.sink.upsert_many(self.config.entity_set, self.config.key_column, items),
                    timeout=self.config.send_timeout,
                )
        except Throttled as exc:
            pause = self.flow.on_throttled(exc.retry_after)
            self._count_throttle(summary, len(rows))
            log.info(
                "throttled (429): pausing every worker for %.1fs",
                pause,
                extra={"event": "throttled", "worker": self.name, "pause": pause},
            )
            failures = [
                Failure(r["id"], r["version"], False, pause, False, exc.code or "429", str(exc))
                for r in rows
            ]
        except DataverseError as exc:
            if not exc.transient:
                await self.queue.release(claim, delay=0.0, error=_clip(str(exc)))
                raise SinkFailed(str(exc), hint=exc.hint) from exc
            failures = self._transient_all(rows, exc.code or str(exc.status or ""), str(exc))
        except (TimeoutError, httpx.HTTPError) as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            failures = self._transient_all(rows, "", text)
        else:
            delivered, failures = self._classify(rows, outcomes, summary)
        summary.failed = sum(1 for f in failures if f.counted)
        settled = await self.queue.settle(claim, delivered, failures, summary)
        self._account(summary, settled.acked, settled.requeued, settled.dead, settled.lost_lease)
        if settled.dead_keys:
            self.stats.dead_keys.extend(settled.dead_keys[:100])
            del self.stats.dead_keys[:-100]  # the latest 100: a daemon must not grow forever
            log.warning(
                "dead-lettered %d row(s): %s",
                settled.dead,
                ", ".join(settled.dead_keys[:10]),
                extra={"event": "dead_lettered", "worker": self.name, "keys": settled.dead_keys},
            )
        log.debug(
            "batch settled",
            extra={
                "event": "batch",
                "worker": self.name,
                "counts": {
                    "claimed": len(rows),
                    "created": summary.created,
                    "updated": summary.updated,
                    "failed": summary.failed,
                    "dead": settled.dead,
                    "requeued": settled.requeued,
                },
            },
        )

    def _classify(
        self, rows: list[dict[str, Any]], outcomes: Sequence[Outcome], summary: RunSummary
    ) -> tuple[list[tuple[int, int]], list[Failure]]:
        by_key = {o.key: o for o in outcomes}
        delivered: list[tuple[int, int]] = []
        failures: list[Failure] = []
        throttled = 0
        for r in rows:
            o = by_key.get(str(r["run_id"]))
            if o is None:
                d = self.policy.decide(transient=True, attempts=r["attempts"])
                failures.append(
                    Failure(r["id"], r["version"], d.dead, d.delay, True, "", "no answer for row")
                )
            elif o.outcome != "failed":  # created, updated, or upserted (204: either)
                delivered.append((r["id"], r["version"]))
                if o.outcome == "created":
                    summary.created += 1
                else:
                    summary.updated += 1
            elif o.status == 429:
                throttled += 1
                failures.append(
                    Failure(r["id"], r["version"], False, 1.0, False, o.code or "429", _msg(o))
                )
            else:
                d = self.policy.decide(transient=o.transient, attempts=r["attempts"])
                failures.append(
                    Failure(r["id"], r["version"], d.dead, d.delay, True, o.code or "", _msg(o))
                )
        if throttled:
            pause = self.flow.on_throttled(None)
            self._count_throttle(summary, throttled)
            failures = [
                Failure(f.id, f.version, f.dead, pause, f.counted, f.code, f.message)
                if not f.counted
                else f
                for f in failures
            ]
        elif delivered:
            self.flow.on_success()
        return delivered, failures

    def _transient_all(self, rows: list[dict[str, Any]], code: str, message: str) -> list[Failure]:
        out = []
        for r in rows:
            d = self.policy.decide(transient=True, attempts=r["attempts"])
            out.append(Failure(r["id"], r["version"], d.dead, d.delay, True, code, _clip(message)))
        return out

    def _count_throttle(self, summary: RunSummary, rows: int) -> None:
        summary.throttled += rows
        self.stats.throttled += 1
        self.metrics.throttled.inc()

    def _account(
        self, summary: RunSummary, acked: int, requeued: int, dead: int, lost: int
    ) -> None:
        s = self.stats
        s.created += summary.created
        s.updated += summary.updated
        s.failed += summary.failed
        s.dead_lettered += dead
        s.requeued += requeued
        s.lost_lease += lost
        if summary.created:
            self.metrics.delivered.labels("created").inc(summary.created)
        if summary.updated:
            self.metrics.delivered.labels("updated").inc(summary.updated)
        if summary.failed:
            self.metrics.failed.inc(summary.failed)
        if dead:
            self.metrics.dead_lettered.inc(dead)


def _msg(o: Outcome) -> str:
    return _clip(o.message or f"HTTP {o.status}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
