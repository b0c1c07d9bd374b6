"""Pacing of requests to Dataverse: stay under the service protection limits, not over them.

Dataverse limits each application user, per web server, over a sliding window of 300 s: 6,000
requests, 1,200 s of combined execution time, 52 concurrent requests (Microsoft, "Service
protection API limits"). ``x-ms-dop-hint`` answers the degree of parallelism the budget allows.

The budget is held by **slots**. There are ``x-ms-dop-hint`` of them (``concurrency``), and a
request runs only in a slot. A slot stands for one second of server execution per second, so
with every slot busy the user spends the whole execution budget; and since 1,200 s of execution
go with 6,000 requests, a slot may start at most one request per 0.2 s. After a request a slot
*rests* before anyone may take it again:

    cycle = max(execution / (utilization · pressure), requests · 0.2 s / pressure)

where ``execution`` is the request's measured duration (an upper bound of what the server
charges: its own time plus the network's), ``utilization`` (0.95 by default) keeps a margin below
the ceiling, and ``pressure`` (1 normally) halves on a 429 and grows back to 1 over the next
minute of successes, for when the real budget is smaller than the hint says (another client
spends the same user's budget, or fewer web servers answer). The recovery goes by time, not by
the number of requests, so that it takes as long with requests of ten seconds as of ten
milliseconds. Requests spread evenly over the web servers when no
affinity cookie pins them (``connect.py`` refuses cookies), so every server stays under its own
share.

Slots live in a :class:`SlotPool`: :class:`LocalSlots` in memory for one process, or the sync
engine's table in PostgreSQL (``sync/slots.py``), so that any number of engine processes, on any
hosts, share one budget. A 429 pauses every request for exactly ``Retry-After``; the pool shares
the pause too.

Starts are **spread**: two requests start at least ``mean duration / slots`` apart. Slots that
come free together (the first requests of a run, the end of a pause) would otherwise send in
lockstep, and lockstep requests of several seconds end together: a web server's sliding window
then holds a lump of them, over its budget, though the mean is under it. In a steady state the
slots' rests already space starts further apart than this, so the spread costs no throughput.

The batch size follows measured durations: as many rows as take about ``target_request_seconds``
at the measured cost per row (never more than the caller's maximum), so a slow table or a plug-in
does not make requests that outlive the time-out or a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from apex_metrics.aio import wait_event
from apex_metrics.dataverse.retry import RetryPolicy

# Microsoft's default limits per web server: 1,200 s of execution and 6,000 requests per 300 s.
SECONDS_PER_REQUEST = 1200 / 6000
UTILIZATION = 0.95
MIN_PRESSURE = 0.25
RECOVERY_SECONDS = 60.0  # after a 429 halved it, the pressure is back at 1 after this long
INITIAL_BATCH = 100  # rows per request until a cost per row has been measured
POLL_SECONDS = 0.05  # longest wait before asking a shared pool again


class SlotWaitStopped(Exception):
    """The event given to :meth:`Pacer.slot` was set while waiting for a slot."""


@dataclass(frozen=True, slots=True)
class Taken:
    """What a pool answered: a slot, or why not (a pause in force, a slot resting)."""

    slot: int | None
    paused: float = 0.0  # seconds of a pause in force (no slot is given meanwhile)
    next_free: float | None = None  # seconds until a resting slot is free, when one is


class SlotPool(Protocol):
    """Where the slots of one Dataverse user live (one process, or shared by many)."""

    async def take(self, size: int, hold: float) -> Taken:
        """A free slot among the first ``size``, held for at most ``hold`` seconds."""
        ...

    async def give_back(self, slot: int, rest: float) -> None:
        """Free ``slot``; nobody may take it for the next ``rest`` seconds."""
        ...

    async def pause(self, seconds: float) -> None:
        """Nobody takes a slot for the next ``seconds`` (a 429's Retry-After)."""
        ...


class LocalSlots:
    """Slots of one process, in memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._free_at: dict[int, float] = {}
        self._held: set[int] = set()
        self._paused_until = 0.0

    async def take(self, size: int, hold: float) -> Taken:
        now = self._clock()
        if self._paused_until > now:
            return Taken(None, paused=self._paused_until - now)
        best: int | None = None
        next_free: float | None = None
        for slot in range(size):
            if slot in self._held:
                continue
            free_at = self._free_at.get(slot, 0.0)
            if free_at > now:
                wait = free_at - now
                next_free = wait if next_free is None else min(next_free, wait)
            elif best is None or free_at < self._free_at.get(best, 0.0):
                best = slot  # the one that rested longest
        if best is None:
            return Taken(None, next_free=next_free)
        self._held.add(best)
        return Taken(best)

    async def give_back(self, slot: int, rest: float) -> None:
        self._held.discard(slot)
        self._free_at[slot] = self._clock() + max(0.0, rest)

    async def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)


@dataclass(slots=True)
class Ticket:
    """One slot held, and the requests sent in it."""

    slot: int
    taken_at: float
    first_sent: float | None = None
    requests: int = 0
    seconds: float = 0.0  # measured durations of those requests, summed


@dataclass(slots=True)
class PacerStats:
    """Counters for logs, ``sync status`` and benchmarks."""

    requests: int = 0
    throttled: int = 0
    retries: int = 0
    paused_seconds: float = 0.0
    waited_seconds: float = 0.0  # waiting for a slot
    in_flight: int = 0
    max_in_flight: int = 0
    retry_after: deque[float] = field(default_factory=lambda: deque(maxlen=100))  # latest


_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar(
    "apex_metrics_dataverse_ticket", default=None
)


class Pacer:
    """Slots, pauses and batch sizes of every request one client sends to one Dataverse user."""

    def __init__(
        self,
        slots: SlotPool | None = None,
        *,
        concurrency: int = 4,
        max_concurrency: int = 52,
        utilization: float = UTILIZATION,
        target_request_seconds: float = 10.0,
        hold_seconds: float = 180.0,
        seconds_per_request: float = SECONDS_PER_REQUEST,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if concurrency < 1 or max_concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0.0 < utilization <= 1.0:
            raise ValueError("utilization must be in (0, 1]")
        self.slots: SlotPool = slots or LocalSlots(clock)
        self.max_concurrency = max_concurrency
        self.concurrency = min(concurrency, max_concurrency)
        self.utilization = utilization
        self.target_request_seconds = target_request_seconds
        self.hold_seconds = hold_seconds
        self.seconds_per_request = seconds_per_request
        self.pressure = 1.0
        self._pressure_at = 0.0  # when the pressure last grew (or the pause after a 429 ends)
        self.paused_until = 0.0
        self.stats = PacerStats()
        self._clock = clock
        self._sleep = sleep
        self._gate = asyncio.Lock()  # one taker at a time asks the pool
        self._released = asyncio.Event()
        self._cost_seconds = 0.0  # decayed sums behind the cost per row
        self._cost_rows = 0.0
        self._request_seconds = 0.0  # decayed mean duration of a request
        self._next_start = 0.0  # no slot is taken before this (starts spread)

    # --- the budget ---------------------------------------------------------------------------

    def now(self) -> float:
        """The pacer's clock (what :meth:`record` takes its ``started`` from)."""
        return self._clock()

    def hint(self, dop: int) -> None:
        """Apply an ``x-ms-dop-hint``: that many slots."""
        if dop >= 1:
            self.concurrency = min(dop, self.max_concurrency)

    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when none)."""
        return max(0.0, self.paused_until - self._clock())

    async def throttled(self, retry_after: float | None) -> float:
        """A 429 arrived: pause every request for exactly ``Retry-After`` (shared with the
        pool), and halve the pressure once per pause. Returns the pause in seconds."""
        pause = RetryPolicy.pause_for(retry_after)
        now = self._clock()
        if now >= self.paused_until:  # several 429s of one burst lower the pressure once
            self.pressure = max(MIN_PRESSURE, self.pressure / 2)
        self.paused_until = max(self.paused_until, now + pause)
        self._pressure_at = self.paused_until  # it grows back from the end of the pause
        self.stats.throttled += 1
        self.stats.retry_after.append(pause)
        await self.slots.pause(pause)
        return pause

    def succeeded(self) -> None:
        """A request succeeded: the pressure grows back (by time since it last grew)."""
        now = self._clock()
        if self.pressure < 1.0 and now > self._pressure_at:
            grown = (now - self._pressure_at) / (2 * RECOVERY_SECONDS)
            self.pressure = min(1.0, self.pressure + grown)
        self._pressure_at = max(self._pressure_at, now)

    async def wait_pause(self, until: asyncio.Event | None = None) -> None:
        """Sleep until no pause is in force (a pause may grow meanwhile), or ``until`` is set
        (then :class:`SlotWaitStopped`)."""
        while (remaining := self.paused_until - self._clock()) > 0:
            self.stats.paused_seconds += remaining
            await self._wait(remaining, until)

    async def _wait(self, seconds: float, until: asyncio.Event | None) -> None:
        if until is None:
            await self._sleep(seconds)
        else:
            with contextlib.suppress(TimeoutError):
                await wait_event(until, seconds)
        if until is not None and until.is_set():
            raise SlotWaitStopped()

    # --- slots --------------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self, until: asyncio.Event | None = None) -> AsyncIterator[Ticket]:
        """Hold a slot for one or more requests (waits out any pause first). Re-entrant: a
        task that already holds one uses it. ``until`` set while waiting: raises
        :class:`SlotWaitStopped`."""
        held = _TICKET.get()
        if held is not None:
            await self.wait_pause(until)
            yield held
            return
        ticket = await self._take(until)
        token = _TICKET.set(ticket)
        try:
            yield ticket
        finally:
            _TICKET.reset(token)
            await self._give_back(ticket)

    async def _take(self, until: asyncio.Event | None) -> Ticket:
        started = self._clock()
        async with self._gate:
            while True:
                await self.wait_pause(until)
                if (spread := self._next_start - self._clock()) > 0:
                    await self._wait(spread, until)
                    continue  # a pause may have begun meanwhile
                self._released.clear()
                taken = await self.slots.take(self.concurrency, self.hold_seconds)
                if taken.slot is not None:
                    break
                if taken.paused > 0:  # another process was throttled: the same pause here
                    self.paused_until = max(self.paused_until, self._clock() + taken.paused)
                    continue
                wait = POLL_SECONDS if taken.next_free is None else taken.next_free
                with contextlib.suppress(TimeoutError):
                    await wait_event(self._released, min(max(wait, 0.001), 1.0))
                if until is not None and until.is_set():
                    raise SlotWaitStopped()
        now = self._clock()
        self._next_start = now + self.spacing()
        self.stats.waited_seconds += now - started
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        return Ticket(taken.slot, now)

    async def _give_back(self, ticket: Ticket) -> None:
        self.stats.in_flight -= 1
        try:
            await self.slots.give_back(ticket.slot, self.rest(ticket))
        finally:
            self._released.set()

    def rest(self, ticket: Ticket) -> float:
        """How long the slot rests after ``ticket`` (see the module's docstring)."""
        if ticket.requests == 0 or ticket.first_sent is None:
            return 0.0
        cycle = max(
            ticket.seconds / (self.utilization * self.pressure),
            ticket.requests * self.seconds_per_request / self.pressure,
        )
        return max(0.0, cycle - (self._clock() - ticket.first_sent))

    def record(self, ticket: Ticket, started: float, rows: int = 0) -> None:
        """A request sent in ``ticket`` from ``started`` (clock time) until now, for ``rows``."""
        seconds = max(0.0, self._clock() - started)
        if ticket.first_sent is None:
            ticket.first_sent = started
        ticket.requests += 1
        ticket.seconds += seconds
        self.stats.requests += 1
        self._request_seconds = (
            seconds if self.stats.requests == 1 else self._request_seconds * 0.8 + seconds * 0.2
        )
        if rows > 0:  # the cost per row, decayed so that it follows changes
            self._cost_seconds = self._cost_seconds * 0.8 + seconds
            self._cost_rows = self._cost_rows * 0.8 + rows

    def spacing(self) -> float:
        """Seconds between two starts: the mean request's duration shared by the slots."""
        return self._request_seconds / self.concurrency

    # --- batch size ---------------------------------------------------------------------------

    def row_seconds(self) -> float | None:
        """The measured cost of one row, request overhead included (None before any)."""
        return self._cost_seconds / self._cost_rows if self._cost_rows else None

    def batch_size(self, maximum: int) -> int:
        """Rows for the next request: about ``target_request_seconds`` of them."""
        per_row = self.row_seconds()
        if per_row is None:
            return max(1, min(maximum, INITIAL_BATCH))
        if per_row <= 0:
            return maximum
        return max(1, min(maximum, int(self.target_request_seconds / per_row)))
