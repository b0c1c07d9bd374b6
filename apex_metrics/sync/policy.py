"""Retry decisions and flow control towards Dataverse.

``RetryPolicy`` turns one failed delivery into a decision (dead now, or retry after a delay with
"full jitter" exponential back-off). ``FlowControl`` is shared by every worker of a process: a
global pause on 429 (``Retry-After`` is a pause for the whole user, not one request) and an AIMD
limit on concurrent batches, halved on each 429 and raised slowly on success, so that after the
first 429 the engine paces itself instead of hammering.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryDecision:
    dead: bool
    delay: float  # seconds until the next attempt (0 when dead)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to retry a failed row, and when to give up."""

    max_attempts: int = 10
    base_wait: float = 1.0
    max_wait: float = 300.0

    def decide(
        self, *, transient: bool, attempts: int, rng: random.Random | None = None
    ) -> RetryDecision:
        """``attempts`` counts the delivery that just failed (1 for the first)."""
        if not transient or attempts >= self.max_attempts:
            return RetryDecision(dead=True, delay=0.0)
        return RetryDecision(dead=False, delay=self.backoff(attempts, rng))

    def backoff(self, attempts: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [cap/2, cap], cap = min(max_wait, base · 2^(attempts−1)).

        The lower half keeps a retry from firing at once after a failure (plain full jitter
        can draw ~0), while the spread keeps many workers' retries from synchronising.
        """
        cap = min(self.max_wait, self.base_wait * 2 ** max(0, attempts - 1))
        return (rng or random).uniform(cap / 2, cap)


# A 429 without a usable Retry-After (missing, 0 or negative) still pauses this long.
MIN_PAUSE = 1.0


class FlowControl:
    """Shared pacing of all workers of one process towards one Dataverse user."""

    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max(1, max_concurrency)
        self.limit = float(self.max_concurrency)
        self.in_flight = 0
        self.throttled = 0  # 429s seen
        self._pause_until = 0.0
        self._cond = asyncio.Condition()

    @property
    def paused_for(self) -> float:
        return max(0.0, self._pause_until - time.monotonic())

    def on_throttled(self, retry_after: float | None) -> float:
        """Record a 429: pause everyone and halve the concurrency. Returns the pause in seconds."""
        self.throttled += 1
        pause = retry_after if retry_after is not None and retry_after > 0 else MIN_PAUSE
        pause = max(pause, MIN_PAUSE / 4)
        self._pause_until = max(self._pause_until, time.monotonic() + pause)
        self.limit = max(1.0, self.limit / 2)
        return pause

    def on_success(self) -> None:
        """Additive increase: about one more concurrent batch per `limit` successes."""
        self.limit = min(float(self.max_concurrency), self.limit + 1 / self.limit)

    async def wait_ready(self, stop: asyncio.Event) -> None:
        """Wait out a global pause (returns early when ``stop`` is set)."""
        while not stop.is_set():
            left = self.paused_for
            if left <= 0:
                return
            try:
                await asyncio.wait_for(stop.wait(), timeout=left)
            except TimeoutError:
                pass

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the `limit` concurrent sending slots for one batch."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1
        try:
            yield
        finally:
            async with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()
