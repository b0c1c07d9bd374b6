"""One worker: drain batches, then wait for a NOTIFY, the poll interval or stop.

A batch is: take a pacer slot → claim (commit) → one write request (``UpsertMultiple``, or a
``$batch``) → give the slot back → settle (commit). The slot comes first, so no row is leased
while its worker waits for Dataverse's budget, and the batch is sized when it can be sent (as
many rows as about ten seconds of requests, at the measured cost per row). The claim holds a
lease, not a transaction, across the HTTP call, and the send is bounded by half the lease so
that a lease can only expire under a worker that has stopped sending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
import psycopg_pool

from apex_metrics.aio import wait_event
from apex_metrics.dataverse.errors import DataverseError, Throttled
from apex_metrics.dataverse.pacing import Pacer, SlotWaitStopped
from apex_metrics.dataverse.retry import RetryPolicy
from apex_metrics.exceptions import first_line
from apex_metrics.metric import dataverse_body
from apex_metrics.sync.doorbell import Doorbell
from apex_metrics.sync.errors import SinkFailed
from apex_metrics.sync.metrics import SyncMetrics
from apex_metrics.sync.queue import Claim, Failure, Queue, RunSummary, Settled
from apex_metrics.sync.sink import Outcome, Sink

log = logging.getLogger("apex_metrics.sync")

DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout)
MAX_MESSAGE = 2000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    batch_size: int = 1000  # the most rows per claim; the pacer may choose fewer
    poll_interval: float = 1.0
    lease_seconds: float = 60.0
    once: bool = False

    @property
    def send_timeout(self) -> float:
        return max(1.0, self.lease_seconds / 2)


@dataclass(slots=True)
class EngineStats:
    """What this process did (the report of ``sync --once``): ``rows``, the sum of its batches'
    ``RunSummary`` (one type for what became of rows, per batch or per process), plus what is
    the process's alone: batches, requests, rows claimed, 429 answers (``throttled``; a run's
    ``throttled`` counts the rows it gave back), lost leases, database errors, the latest dead
    keys."""

    batches: int = 0
    requests: int = 0
    claimed: int = 0
    rows: RunSummary = field(default_factory=RunSummary)
    throttled: int = 0  # 429 answers
    lost_lease: int = 0
    db_errors: int = 0
    dead_keys: list[str] = field(default_factory=list)

    @property
    def created(self) -> int:
        return self.rows.created

    @property
    def updated(self) -> int:
        return self.rows.updated

    @property
    def upserted(self) -> int:
        return self.rows.upserted

    @property
    def failed(self) -> int:
        return self.rows.failed

    @property
    def dead_lettered(self) -> int:
        return self.rows.dead_lettered

    @property
    def requeued(self) -> int:
        return self.rows.requeued

    @property
    def delivered(self) -> int:
        return self.created + self.updated + self.upserted

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "claimed": self.claimed,
            "delivered": self.delivered,
            "created": self.created,
            "updated": self.updated,
            "upserted": self.upserted,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "requeued": self.requeued,
            "throttled": self.throttled,
            "lost_lease": self.lost_lease,
            "db_errors": self.db_errors,
            "dead_keys": self.dead_keys[:100],
        }


@dataclass(slots=True)
class _Sent:
    """What came of one write request: per-row outcomes, or a failure of the whole request."""

    outcomes: Sequence[Outcome] | None = None
    throttled: Throttled | None = None
    transient: tuple[str, str] | None = None  # (code, message) of a transient failure
    fatal: DataverseError | None = None


@dataclass(slots=True)
class Worker:
    name: str  # "<process id>/w<i>"; lease owner tokens are "<name>/<batch number>"
    queue: Queue
    sink: Sink
    config: WorkerConfig
    policy: RetryPolicy
    pacer: Pacer
    stop: asyncio.Event
    wake: asyncio.Event
    stats: EngineStats
    metrics: SyncMetrics
    recruit: Callable[[], None] | None = None  # wake another worker: this batch was full
    doorbell: Doorbell | None = None  # armed before sleeping (writers NOTIFY only then)
    idle: bool = False  # waiting for a NOTIFY or the poll interval
    _limit: int = 0  # the rows the last claim asked for
    _seq: int = 0

    async def run(self) -> None:
        """Drain, wait, repeat until ``stop`` (or, with ``once``, until nothing is due)."""
        db_backoff = 0.1
        while not self.stop.is_set():
            self.wake.clear()
            try:
                claimed = await self.run_batch()
                if self.doorbell is not None and not self.stop.is_set():
                    if not claimed and await self.doorbell.arm():
                        continue  # armed just now: claim once more, then sleep
                    if claimed and claimed >= self._limit:
                        await self.doorbell.disarm()  # rows come faster than a batch
                if not claimed and self.config.once and not self.stop.is_set():
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
                    first_line(exc),
                    extra={"event": "db_error", "worker": self.name},
                )
                await self._idle(db_backoff, wakeable=False)
                db_backoff = min(db_backoff * 2, 5.0)
                continue
            if not claimed and not self.stop.is_set():
                await self._idle(self.config.poll_interval)

    async def _idle(self, seconds: float, *, wakeable: bool = True) -> None:
        event = self.wake if wakeable else self.stop
        self.idle = wakeable
        try:
            await wait_event(event, seconds)
        except TimeoutError:
            pass
        finally:
            self.idle = False

    async def run_batch(self) -> int:
        """Take a slot, claim one batch, send it, settle it. Returns the rows claimed."""
        self._seq += 1
        owner = f"{self.name}/{self._seq}"
        claim: Claim | None = None
        try:
            async with self.pacer.slot(until=self.stop):
                self._limit = self.pacer.batch_size(self.config.batch_size)
                claim = await self.queue.claim(
                    owner=owner,
                    worker=self.name,
                    limit=self._limit,
                    lease_seconds=self.config.lease_seconds,
                )
                if claim is None:
                    return 0
                if len(claim.rows) >= self.config.batch_size and self.recruit is not None:
                    self.recruit()  # more is probably waiting: bring an idle worker in
                started = time.perf_counter()
                self.stats.batches += 1
                self.stats.claimed += len(claim.rows)
                sent = await self._send(claim)
            await self._settle(claim, sent)
        except SlotWaitStopped:
            return 0
        except asyncio.CancelledError:
            if claim is not None:
                await asyncio.shield(self._release_quietly(claim, "cancelled"))
            raise
        except DB_ERRORS:
            # Settling failed (e.g. the connection died): give the rows back now rather than
            # at lease expiry. Rows whose ack did commit are no longer ours and stay done.
            if claim is not None:
                await self._release_quietly(claim, "database error while settling")
            raise
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return len(claim.rows)

    async def _release_quietly(self, claim: Claim, error: str) -> None:
        try:
            await self.queue.release(claim, error=error)
        except DB_ERRORS:
            pass  # the lease expires on its own

    async def _send(self, claim: Claim) -> _Sent:
        """The write request for the claim's rows (in the slot taken for it)."""
        items = [(str(r["run_id"]), dataverse_body(r)) for r in claim.rows]
        self.stats.requests += 1
        self.metrics.requests.inc()
        try:
            outcomes = await asyncio.wait_for(
                self.sink.upsert(items), timeout=self.config.send_timeout
            )
        except Throttled as exc:  # the flow has paused every request already
            return _Sent(throttled=exc)
        except DataverseError as exc:
            if not exc.transient:
                return _Sent(fatal=exc)
            return _Sent(transient=(exc.code or str(exc.status or ""), str(exc)))
        except TimeoutError as exc:  # send_timeout (the client raises httpx failures as ours)
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return _Sent(transient=("", text))
        return _Sent(outcomes=outcomes)

    async def _settle(self, claim: Claim, sent: _Sent) -> None:
        rows = claim.rows
        delivered: list[tuple[int, int]] = []
        failures: list[Failure] = []
        outcomes: Counter[str] = Counter()
        if sent.fatal is not None:
            exc = sent.fatal
            await self.queue.release(claim, delay=0.0, error=_clip(str(exc)))
            raise SinkFailed(str(exc), hint=exc.hint) from exc
        if sent.throttled is not None:
            pause = RetryPolicy.pause_for(sent.throttled.retry_after)
            self._count_throttle()
            log.info(
                "throttled (429): every worker waits %.1fs",
                pause,
                extra={"event": "throttled", "worker": self.name, "pause": pause},
            )
            code = sent.throttled.code or "429"
            failures = [
                Failure(
                    id=r["id"], version=r["version"], dead=False, delay=pause, counted=False,
                    code=code, message=_clip(str(sent.throttled)),
                )
                for r in rows
            ]  # fmt: skip
        elif sent.transient is not None:
            code, message = sent.transient
            failures = self._transient_all(rows, code, message)
        else:
            assert sent.outcomes is not None
            delivered, failures, outcomes = await self._classify(rows, sent.outcomes)
        summary = RunSummary(
            created=outcomes["created"],
            updated=outcomes["updated"],
            upserted=outcomes["upserted"],
            failed=sum(1 for f in failures if f.counted),
            throttled=sum(1 for f in failures if not f.counted),  # given back: a 429
        )
        settled = await self.queue.settle(claim, delivered, failures, summary)
        self._account(settled)
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
                    "created": settled.run.created,
                    "updated": settled.run.updated,
                    "upserted": settled.run.upserted,
                    "failed": settled.run.failed,
                    "dead": settled.dead,
                    "requeued": settled.requeued,
                },
            },
        )

    async def _classify(
        self, rows: list[dict[str, Any]], outcomes: Sequence[Outcome]
    ) -> tuple[list[tuple[int, int]], list[Failure], Counter[str]]:
        """Rows delivered, failures, and the delivered rows by outcome (created, updated,
        upserted)."""
        by_key = {o.key: o for o in outcomes}
        delivered: list[tuple[int, int]] = []
        failures: list[Failure] = []
        counts: Counter[str] = Counter()
        retry_after: float | None = None
        for r in rows:
            o = by_key.get(str(r["run_id"]))
            if o is None:
                d = self.policy.decide(transient=True, attempts=r["attempts"])
                failures.append(
                    Failure(
                        id=r["id"], version=r["version"], dead=d.dead, delay=d.delay,
                        counted=True, code="", message="no answer for row",
                    )
                )  # fmt: skip
            elif o.outcome != "failed":
                delivered.append((r["id"], r["version"]))
                counts[o.outcome if o.outcome in ("created", "updated") else "upserted"] += 1
            elif o.status == 429:  # one part of a $batch throttled: not the row's fault
                retry_after = max(retry_after or 0.0, o.retry_after)
                failures.append(
                    Failure(
                        id=r["id"], version=r["version"], dead=False, delay=0.0, counted=False,
                        code=o.code or "429", message=_msg(o),
                    )
                )  # fmt: skip
            else:
                d = self.policy.decide(transient=o.transient, attempts=r["attempts"])
                failures.append(
                    Failure(
                        id=r["id"], version=r["version"], dead=d.dead, delay=d.delay,
                        counted=True, code=o.code or "", message=_msg(o),
                    )
                )  # fmt: skip
        if retry_after is not None:
            pause = await self.pacer.throttled(retry_after)
            self._count_throttle()
            failures = [f if f.counted else replace(f, delay=pause) for f in failures]
        return delivered, failures, counts

    def _transient_all(self, rows: list[dict[str, Any]], code: str, message: str) -> list[Failure]:
        out = []
        for r in rows:
            d = self.policy.decide(transient=True, attempts=r["attempts"])
            out.append(
                Failure(
                    id=r["id"], version=r["version"], dead=d.dead, delay=d.delay, counted=True,
                    code=code, message=_clip(message),
                )
            )  # fmt: skip
        return out

    def _count_throttle(self) -> None:
        """One 429 answer (this process's count; the run counts the rows it gave back)."""
        self.stats.throttled += 1
        self.metrics.throttled.inc()

    def _account(self, settled: Settled) -> None:
        """Add a settled batch to this process's totals and to the metrics."""
        run, s = settled.run, self.stats
        s.rows = s.rows + run
        s.lost_lease += settled.lost_lease
        for outcome, count in (
            ("created", run.created),
            ("updated", run.updated),
            ("upserted", run.upserted),
        ):
            if count:
                self.metrics.delivered.labels(outcome).inc(count)
        if run.failed:
            self.metrics.failed.inc(run.failed)
        if settled.dead:
            self.metrics.dead_lettered.inc(settled.dead)


def _msg(o: Outcome) -> str:
    return _clip(o.message or f"HTTP {o.status}")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
