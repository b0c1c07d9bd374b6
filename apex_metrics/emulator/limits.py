"""Service protection limits per caller: requests and execution time over a sliding window,
concurrent requests; 429 with ``Retry-After`` in whole seconds.

As on Dataverse, the request and execution-time limits bite once exceeded within the window and
the concurrency limit bites at once. A caller that keeps sending while throttled waits longer:
each request sent before its ``Retry-After`` has passed adds ``penalty * 2**strikes`` seconds.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from apex_metrics.emulator.config import ServiceLimits
from apex_metrics.emulator.errors import CONCURRENCY, EXECUTION_TIME, TOO_MANY_REQUESTS, ApiError


@dataclass(slots=True)
class _CallerState:
    starts: deque[float] = field(default_factory=deque)
    durations: deque[tuple[float, float]] = field(default_factory=deque)  # (end, seconds)
    busy_seconds: float = 0.0
    in_flight: int = 0
    blocked_until: float = 0.0
    strikes: int = 0
    code: str = TOO_MANY_REQUESTS


def throttled(code: str, seconds: float, limits: ServiceLimits) -> ApiError:
    window = int(limits.window_seconds)
    messages = {
        TOO_MANY_REQUESTS: f"Number of requests exceeded the limit of {limits.requests_per_window}"
        f" over time window of {window} seconds.",
        EXECUTION_TIME: "Combined execution time of incoming requests exceeded limit of"
        f" {int(limits.execution_seconds_per_window * 1000):,} milliseconds over time window of"
        f" {window} seconds. Decrease number of concurrent requests or reduce the duration of"
        " requests and try again later.",
        CONCURRENCY: f"Number of concurrent requests exceeded the limit of"
        f" {limits.concurrent_requests}.",
    }
    retry = max(1, math.ceil(seconds))
    return ApiError(
        429, code, messages.get(code, "Too many requests."), {"Retry-After": str(retry)}
    )


class Limiter:
    def __init__(self, limits: ServiceLimits) -> None:
        self.limits = limits
        self.callers: dict[str, _CallerState] = {}

    def reset(self) -> None:
        self.callers.clear()

    def _trim(self, state: _CallerState, now: float) -> None:
        horizon = now - self.limits.window_seconds
        while state.starts and state.starts[0] <= horizon:
            state.starts.popleft()
        while state.durations and state.durations[0][0] <= horizon:
            state.busy_seconds -= state.durations.popleft()[1]

    def enter(self, caller: str, now: float | None = None) -> None:
        """Admit a request or raise a 429 ApiError."""
        limits = self.limits
        now = time.monotonic() if now is None else now
        state = self.callers.setdefault(caller, _CallerState())
        if now < state.blocked_until:
            state.strikes += 1
            extra = limits.penalty_seconds * 2 ** min(state.strikes, 16)
            state.blocked_until = min(state.blocked_until + extra, now + limits.max_retry_after)
            raise throttled(state.code, state.blocked_until - now, limits)
        state.strikes = 0
        self._trim(state, now)
        if state.in_flight >= limits.concurrent_requests:
            raise throttled(CONCURRENCY, 1, limits)
        wait = 0.0
        if len(state.starts) >= limits.requests_per_window:
            state.code = TOO_MANY_REQUESTS
            wait = state.starts[0] + limits.window_seconds - now
        elif state.busy_seconds >= limits.execution_seconds_per_window:
            state.code = EXECUTION_TIME
            wait = state.durations[0][0] + limits.window_seconds - now
        if wait > 0:
            state.blocked_until = now + wait
            raise throttled(state.code, wait, limits)
        state.starts.append(now)
        state.in_flight += 1

    def leave(self, caller: str, seconds: float, now: float | None = None) -> None:
        state = self.callers.get(caller)
        if state is None:
            return
        now = time.monotonic() if now is None else now
        state.in_flight = max(0, state.in_flight - 1)
        state.durations.append((now, seconds))
        state.busy_seconds += seconds
