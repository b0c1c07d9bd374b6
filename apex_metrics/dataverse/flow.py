"""The one home of retry, back-off and pacing for every request to Dataverse.

:class:`Flow` runs an *attempt* (one request, sent and classified by the client, see
``client.py``) inside a :class:`~apex_metrics.dataverse.pacing.Pacer` slot, and decides what
follows a failure:

- a 429 pauses every request of the flow, and of every process sharing its slot pool, for
  exactly ``Retry-After``, before the slot is given back (so nothing slips through); the
  request is then sent again, since a throttled request never ran (up to ``max_throttled``
  429s, then the caller gets the :class:`Throttled`);
- a transient failure (5xx, timeout, dropped connection) is retried with exponential back-off
  and jitter, but only when re-sending is safe: the request is idempotent, or it provably never
  reached the server. A 503's ``Retry-After`` is a floor for the wait;
- anything else is raised at once.

The sync engine, ``provision``, ``reconcile``, ``whoami`` and the panel all send through it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from apex_metrics.dataverse.errors import DataverseError, Throttled
from apex_metrics.dataverse.pacing import Pacer, PacerStats
from apex_metrics.dataverse.retry import RetryPolicy

log = logging.getLogger("apex_metrics.dataverse")
T = TypeVar("T")

NOT_RETRIED = (
    "not retried automatically: the server may have executed it; check before sending it again"
)


class Flow:
    """Retry policy plus pacer, shared by every request of one client."""

    def __init__(
        self,
        pacer: Pacer | None = None,
        retry: RetryPolicy | None = None,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.pacer = pacer or Pacer(sleep=sleep)
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._sleep = sleep

    @property
    def stats(self) -> PacerStats:
        return self.pacer.stats

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        what: str,
        rows: int = 0,
        max_throttled: int | None = None,
    ) -> T:
        """Run ``attempt`` until it succeeds or the policy gives up (see the module docstring).

        ``rows``: how many rows the request carries (the pacer learns the cost per row).
        ``max_throttled``: 429s tolerated before raising (default: the policy's).
        """
        allowed = self.retry.max_throttled if max_throttled is None else max_throttled
        failures = throttles = 0
        while True:
            async with self.pacer.slot() as ticket:
                started = self.pacer.now()
                try:
                    result = await attempt()
                except DataverseError as exc:
                    error = exc
                else:
                    self.pacer.record(ticket, started, rows)
                    self.pacer.succeeded()
                    return result
                self.pacer.record(ticket, started)
                if isinstance(error, Throttled):
                    pause = await self.pacer.throttled(error.retry_after)
            if isinstance(error, Throttled):
                throttles += 1
                if throttles > allowed:
                    raise error
                log.info("%s throttled (429): every request waits %.1f s", what, pause)
                continue  # the next slot waits out the pause
            failures += 1
            if self.retry.should_retry(
                attempt=failures, transient=error.transient, idempotent=idempotent, sent=error.sent
            ):
                self.pacer.stats.retries += 1
                floor = min(error.retry_after or 0.0, self.retry.max_wait)
                wait = max(self.retry.backoff(failures, self._rng), floor)
                log.info("%s failed (%s); retry %d in %.2f s", what, error.message, failures, wait)
                await self._sleep(wait)
                continue
            if error.transient and not idempotent and error.sent:
                error.hint = NOT_RETRIED
            raise error
