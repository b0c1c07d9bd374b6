"""Flow control for one Dataverse client: throttling pause, concurrency limit, retry decisions.

What Microsoft asks of clients (api-limits, send-parallel-requests):

- on 429 wait exactly ``Retry-After`` seconds. The wait here is **global**: every request of the
  client, not only the throttled one, waits until the pause is over, because the limits are per
  user and sending more while throttled makes the wait longer;
- keep the number of parallel requests at or under ``x-ms-dop-hint``, lower it on throttling and
  raise it again slowly (AIMD: +1 per window of successes, halved on 429);
- retry 5xx, timeouts and dropped connections with exponential backoff and jitter, but only for
  idempotent requests: a POST whose outcome is unknown is never re-sent blind (a 429 or a refused
  connection means it did not run, so those are retried).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry. Waits are ``base·2^(n-1)`` capped, with jitter."""

    max_attempts: int = 6  # attempts in total for transient failures (5xx, timeouts, drops)
    base_wait: float = 0.5
    max_wait: float = 30.0
    max_throttled: int = 25  # 429 answers tolerated for one request before giving up
    jitter: float = 0.5  # the wait is drawn from [(1-jitter)·w, w]

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        ceiling = min(self.max_wait, self.base_wait * (2 ** max(0, attempt - 1)))
        low = ceiling * (1.0 - self.jitter)
        return (rng or random).uniform(low, ceiling)

    def should_retry(self, *, attempt: int, transient: bool, idempotent: bool, sent: bool) -> bool:
        """Retry a failed attempt number ``attempt``?

        ``sent`` is False when the request provably never reached the server (connection refused),
        which makes even a POST safe to re-send.
        """
        if not transient or attempt >= self.max_attempts:
            return False
        return idempotent or not sent


@dataclass(slots=True)
class FlowStats:
    """Counters for logs, ``sync status`` and benchmarks."""

    requests: int = 0
    throttled: int = 0
    retries: int = 0
    paused_seconds: float = 0.0
    max_in_flight: int = 0
    retry_after: deque[float] = field(default_factory=lambda: deque(maxlen=100))  # latest


class FlowControl:
    """A global pause plus an AIMD concurrency limit, shared by every request of one client."""

    def __init__(
        self,
        *,
        max_concurrency: int = 52,
        initial_concurrency: int = 4,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_concurrency < 1 or initial_concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.cap = max_concurrency
        self.limit = float(min(initial_concurrency, max_concurrency))
        self.pause_until = 0.0
        self.stats = FlowStats()
        self._clock = clock
        self._sleep = sleep
        self._in_flight = 0
        self._cond = asyncio.Condition()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def concurrency(self) -> int:
        """How many requests may run at once right now."""
        return max(1, int(self.limit))

    def paused_for(self) -> float:
        """Seconds left in the current throttling pause (0 when not paused)."""
        return max(0.0, self.pause_until - self._clock())

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the allowed concurrent requests; waits out any throttling pause first."""
        async with self._cond:
            await self._cond.wait_for(lambda: self._in_flight < self.concurrency)
            self._in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
        try:
            await self.wait_pause()
            self.stats.requests += 1
            yield
        finally:
            async with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    async def wait_pause(self) -> None:
        """Sleep until no throttling pause is in force (the pause may grow meanwhile)."""
        while True:
            remaining = self.pause_until - self._clock()
            if remaining <= 0:
                return
            self.stats.paused_seconds += remaining
            await self._sleep(remaining)

    async def backoff(self, seconds: float) -> None:
        """Sleep before a retry (through the injectable sleep)."""
        await self._sleep(seconds)

    def throttled(self, retry_after: float) -> None:
        """A 429 arrived: pause everything for ``retry_after`` seconds, halve the concurrency."""
        self.stats.throttled += 1
        self.stats.retry_after.append(retry_after)
        now = self._clock()
        if now >= self.pause_until:  # several 429s of one burst cut the concurrency once
            self.limit = max(1.0, self.limit / 2)
        self.pause_until = max(self.pause_until, now + retry_after)

    def succeeded(self) -> None:
        """A request succeeded: grow the concurrency by one per window of successes."""
        self.limit = min(float(self.cap), self.limit + 1.0 / self.limit)

    def hint(self, dop: int) -> None:
        """Apply an ``x-ms-dop-hint``: the recommended degree of parallelism is the new cap."""
        if dop >= 1 and dop != self.cap:
            self.cap = dop
            self.limit = min(self.limit, float(dop))
