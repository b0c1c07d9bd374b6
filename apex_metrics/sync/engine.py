"""Run N workers in one process: a shared pool, one listener, one pacer.

Safe with any number of processes on any number of machines against one database: all
coordination is in PostgreSQL (``SKIP LOCKED`` claims, leases, fenced acknowledgements), and so
is the Dataverse budget: the pacer's slots and the pause after a 429 live in ``sync_slots`` and
``sync_pacing`` (``slots.py``), so N processes together hold the ceiling, not N times it.
SIGINT/SIGTERM set ``stop``: each worker finishes the batch in hand, then every lease and slot
still held by this process is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from dataclasses import dataclass, field

from psycopg import conninfo

from apex_metrics import db
from apex_metrics.aio import cancel_and_wait, wait_event
from apex_metrics.dataverse.pacing import Pacer
from apex_metrics.dataverse.retry import ROW_RETRY, RetryPolicy
from apex_metrics.sync import doorbell
from apex_metrics.sync.listener import listen
from apex_metrics.sync.metrics import SyncMetrics
from apex_metrics.sync.queue import Queue
from apex_metrics.sync.sink import Sink
from apex_metrics.sync.slots import PgSlots
from apex_metrics.sync.worker import DB_ERRORS, EngineStats, Worker, WorkerConfig

log = logging.getLogger("apex_metrics.sync")
APPLICATION_NAME = "apex-metrics-sync"


# Workers beyond x-ms-dop-hint: one claims or settles while the others send.
SPARE_WORKERS = 2
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class EngineConfig:
    database_url: str
    workers: int | None = None  # None: as many as the pacer has slots, plus spares
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    retry: RetryPolicy = ROW_RETRY
    retention_days: int = 30
    stats_interval: float = 5.0
    listen: bool = True
    shared_budget: bool = True  # slots in PostgreSQL (False: in this process only)


def worker_count(config: EngineConfig, pacer: Pacer) -> int:
    """``--workers``, or enough to keep every slot busy (x-ms-dop-hint, plus spares)."""
    if config.workers is not None:
        return max(1, config.workers)
    return min(MAX_WORKERS, pacer.concurrency + SPARE_WORKERS)


def engine_conninfo(database_url: str) -> str:
    """The engine's connection string: its application name, and JIT compilation off.

    Every statement of the engine is small and frequent; PostgreSQL's JIT (on by default where
    the server has LLVM) compiles any statement whose estimated cost passes ``jit_above_cost``,
    which costs far more than it saves here. Options already in the URL are kept.
    """
    options = conninfo.conninfo_to_dict(database_url).get("options")
    jit_off = "-c jit=off"
    return conninfo.make_conninfo(
        database_url,
        application_name=APPLICATION_NAME,
        options=f"{options} {jit_off}" if options else jit_off,
    )


def process_id() -> str:
    """A lease-owner prefix unique to this process (host, pid, random)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Engine:
    """``await Engine(config, sink).run()`` drains (``once``) or runs until ``request_stop``."""

    def __init__(
        self,
        config: EngineConfig,
        sink: Sink,
        pacer: Pacer,
        *,
        metrics: SyncMetrics | None = None,
    ):
        """``pacer``: the one that paces the sink's requests (the client's flow's); the engine
        moves its slots into PostgreSQL when ``config.shared_budget``."""
        self.config = config
        self.sink = sink
        self.pacer = pacer
        self.metrics = metrics or SyncMetrics()
        self.stats = EngineStats()
        self.stop = asyncio.Event()
        self.id = process_id()
        self.listening = asyncio.Event()
        self._wakes: list[asyncio.Event] = []
        self._workers: list[Worker] = []

    def request_stop(self) -> None:
        self.stop.set()
        self.wake_all()

    def wake_all(self) -> None:
        for event in self._wakes:
            event.set()

    def wake_one(self) -> None:
        """Wake one idle worker; when none is idle, flag every worker so that none goes to
        sleep right after an empty claim that raced with the new rows."""
        for worker in self._workers:
            if worker.idle:
                worker.wake.set()
                return
        self.wake_all()

    async def run(self, *, handle_signals: bool = False) -> EngineStats:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            url = engine_conninfo(self.config.database_url)
            workers = worker_count(self.config, self.pacer)
            async with db.open_pool(url, min_size=1, max_size=workers + 2) as pool:
                queue = Queue(pool)
                slots = PgSlots(pool, self.id) if self.config.shared_budget else None
                own_slots = self.pacer.slots
                if slots is not None:
                    self.pacer.slots = slots  # until the pool closes (given back below)
                # a slot is held through claim and send: at most the send's time-out; a
                # request should take well under that time-out
                timeout = self.config.worker.send_timeout
                self.pacer.hold_seconds = timeout + 30.0
                self.pacer.target_request_seconds = min(
                    self.pacer.target_request_seconds, timeout / 3
                )
                try:
                    await self._prune(queue)
                    await self._work(queue, workers)
                finally:
                    with contextlib.suppress(*DB_ERRORS):
                        await queue.goodbye(self.id)
                    with contextlib.suppress(*DB_ERRORS):
                        released = await queue.release_prefix(self.id + "/")
                        if released:
                            log.info("released %d lease(s)", released, extra={"event": "released"})
                    if slots is not None:
                        with contextlib.suppress(*DB_ERRORS):
                            await slots.give_back_all()
                        self.pacer.slots = own_slots
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        return self.stats

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info(
            "%s: finishing the batch in hand, then stopping",
            sig.name,
            extra={"event": "stopping", "signal": sig.name},
        )
        self.request_stop()

    async def _work(self, queue: Queue, n: int) -> None:
        workers = []
        # Writers NOTIFY only while a worker of a listening engine sleeps (0010_sync_doorbell).
        bell = None
        if self.config.listen and not self.config.worker.once:
            bell = doorbell.Doorbell(queue.pool, self.id)
            with contextlib.suppress(*DB_ERRORS):
                await queue.heartbeat(self.id, n)  # the row the doorbell is armed on
        for i in range(n):
            wake = asyncio.Event()
            self._wakes.append(wake)
            workers.append(
                Worker(
                    name=f"{self.id}/w{i}",
                    queue=queue,
                    sink=self.sink,
                    config=self.config.worker,
                    policy=self.config.retry,
                    pacer=self.pacer,
                    stop=self.stop,
                    wake=wake,
                    stats=self.stats,
                    metrics=self.metrics,
                    recruit=self.wake_one,
                    doorbell=bell,
                )
            )
        self._workers = workers
        side: list[asyncio.Task[None]] = []
        if self.config.listen and not self.config.worker.once:
            side.append(
                asyncio.create_task(
                    listen(
                        self.config.database_url,
                        self.wake_all,
                        self.stop,
                        wake_one=self.wake_one,
                        on_connect=self.listening.set,
                    ),
                    name="apex-sync-listener",
                )
            )
        side.append(asyncio.create_task(self._refresh_gauges(queue), name="apex-sync-gauges"))
        side.append(asyncio.create_task(self._heartbeat(queue), name="apex-sync-heartbeat"))
        tasks = [asyncio.create_task(w.run(), name=f"apex-sync-{w.name}") for w in workers]
        log.info(
            "sync started: %d worker(s), %d slot(s)%s",
            n,
            self.pacer.concurrency,
            " (drain once)" if self.config.worker.once else "",
            extra={"event": "started", "workers": n, "process_id": self.id},
        )
        try:
            await self._wait_workers(tasks)
        finally:
            self.stop.set()
            await cancel_and_wait(side)
        log.info("sync stopped", extra={"event": "stopped", "stats": self.stats.as_dict()})

    async def _wait_workers(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for every worker; the first one to fail stops the others, then re-raises."""
        pending = set(tasks)
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if not t.cancelled() and t.exception() is not None and error is None:
                    error = t.exception()
                    self.request_stop()
        if error is not None:
            raise error

    async def _refresh_gauges(self, queue: Queue) -> None:
        tick = 0
        while not self.stop.is_set():
            with contextlib.suppress(*DB_ERRORS):
                health = await queue.health()
                self.metrics.pending.set(health.pending)
                self.metrics.in_flight.set(health.in_flight)
                self.metrics.dead.set(health.dead)
                self.metrics.lag.set(health.lag_seconds)
            tick += 1
            if tick % 720 == 0:  # about hourly at the default interval
                await self._prune(queue)
            with contextlib.suppress(TimeoutError):
                await wait_event(self.stop, self.config.stats_interval)

    async def _heartbeat(self, queue: Queue) -> None:
        """Say "alive" every poll interval (the polls' own pace: a long interval lets an idle
        database rest between beats)."""
        every = max(self.config.worker.poll_interval, 0.1)
        while not self.stop.is_set():
            with contextlib.suppress(*DB_ERRORS):
                await queue.heartbeat(self.id, len(self._workers))
            with contextlib.suppress(TimeoutError):
                await wait_event(self.stop, every)

    async def _prune(self, queue: Queue) -> None:
        with contextlib.suppress(*DB_ERRORS):
            await queue.prune_runs(self.config.retention_days)
        with contextlib.suppress(*DB_ERRORS):
            await doorbell.prune(queue.pool)
