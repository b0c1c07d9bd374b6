"""When to try again after a failure, and how long to wait: one policy for requests and rows.

A request that failed transiently (5xx, timeout, dropped connection) is retried in place by
:class:`~apex_metrics.dataverse.flow.Flow` while ``should_retry`` says so; a row the sync engine
could not deliver gets a :class:`RetryDecision` (dead now, or again after a delay) that is kept
in PostgreSQL. Both wait ``backoff(n)``: exponential, capped, with jitter drawn from its upper
half, so a retry never fires at once and many workers' retries do not line up.

A 429 is not a failure to back off from: the pause is exactly ``Retry-After``
(:meth:`RetryPolicy.pause_for`), and a throttled request never ran, so any method may be sent
again; ``max_throttled`` bounds how many 429s one request may take before its caller gets them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# A 429 without a usable Retry-After (missing, zero or negative) still pauses this long.
MIN_PAUSE = 1.0


@dataclass(frozen=True, slots=True)
class RetryDecision:
    dead: bool
    delay: float  # seconds until the next attempt (0 when dead)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry.

    ``max_attempts`` counts attempts in all (the first included); ``backoff(n)`` waits
    ``min(max_wait, base_wait · 2^(n-1))`` times a factor drawn from ``[1 - jitter, 1]``.
    """

    max_attempts: int = 6
    base_wait: float = 0.5
    max_wait: float = 30.0
    max_throttled: int = 25  # 429 answers one request may take before its caller gets them
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_wait <= 0 or self.max_wait < self.base_wait:
            raise ValueError("waits must be positive, max_wait at least base_wait")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_wait, self.base_wait * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(ceiling * (1.0 - self.jitter), ceiling)

    def should_retry(self, *, attempt: int, transient: bool, idempotent: bool, sent: bool) -> bool:
        """Send a failed request again, after attempt number ``attempt``?

        ``sent`` is False when the request provably never reached the server (connection
        refused), which makes even a POST safe to send again.
        """
        if not transient or attempt >= self.max_attempts:
            return False
        return idempotent or not sent

    def decide(
        self, *, transient: bool, attempts: int, rng: random.Random | None = None
    ) -> RetryDecision:
        """What to do with a row whose delivery number ``attempts`` just failed."""
        if not transient or attempts >= self.max_attempts:
            return RetryDecision(dead=True, delay=0.0)
        return RetryDecision(dead=False, delay=self.backoff(attempts, rng))

    @staticmethod
    def pause_for(retry_after: float | None) -> float:
        """The pause a 429 asks for: ``Retry-After`` exactly, ``MIN_PAUSE`` when it says none."""
        if retry_after is None or retry_after <= 0:
            return MIN_PAUSE
        return retry_after


# Rows: ten deliveries, waits from 1 s up to 5 minutes (kept in PostgreSQL, not slept).
ROW_RETRY = RetryPolicy(max_attempts=10, base_wait=1.0, max_wait=300.0)
