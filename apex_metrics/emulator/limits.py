"""Service protection limits per (application user, web server): requests and execution time
over a sliding window, concurrent requests; 429 with ``Retry-After`` in whole seconds.

Dataverse evaluates the limits "per user", and "each web server available to your environment
will enforce these limits independently", so every state here is keyed by (client id, server
index). As on the service, the request and execution-time limits bite once exceeded within the
window and the concurrency limit bites at once. A caller that keeps sending while throttled
waits longer: each request sent before its ``Retry-After`` has passed adds
``penalty * 2**strikes`` seconds.

Execution time is charged when a request ends (``leave``), all of it at that moment: a long
request weighs on the window from its end until ``window_seconds`` later.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from apex_metrics.emulator.config import ServiceLimits
from apex_metrics.emulator.errors import CONCURRENCY, EXECUTION_TIME, TOO_MANY_REQUESTS, ApiError

CODES = (TOO_MANY_REQUESTS, EXECUTION_TIME, CONCURRENCY)


@dataclass(slots=True)
class _Totals:
    """Counts since the last reset, of one server or of one caller on one server."""

    requests: int = 0  # Web API requests answered, throttled ones included
    execution_seconds_total: float = 0.0
    in_flight: int = 0
    concurrent_peak: int = 0
    throttled: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "execution_seconds_total": round(self.execution_seconds_total, 6),
            "in_flight": self.in_flight,
            "concurrent_peak": self.concurrent_peak,
            "throttled": {code: self.throttled[code] for code in CODES},
        }


@dataclass(slots=True)
class _CallerState:
    """One caller on one server: its windows, its throttling, its counts."""

    starts: deque[float] = field(default_factory=deque)  # admitted requests in the window
    durations: deque[tuple[float, float]] = field(default_factory=deque)  # (end, seconds)
    busy_seconds: float = 0.0  # the sum of ``durations``
    blocked_until: float = 0.0
    strikes: int = 0
    code: str = TOO_MANY_REQUESTS
    totals: _Totals = field(default_factory=_Totals)


def throttled(code: str, seconds: float, limits: ServiceLimits) -> ApiError:
    """The 429 the service answers for ``code``, with ``Retry-After`` in whole seconds (>= 1)."""
    window = f"{limits.window_seconds:g}"  # 300, as the service writes it
    messages = {
        TOO_MANY_REQUESTS: f"Number of requests exceeded the limit of {limits.requests_per_window}"
        f" over time window of {window} seconds.",
        EXECUTION_TIME: "Combined execution time of incoming requests exceeded limit of"
        f" {int(limits.execution_seconds_per_window * 1000):,}  milliseconds over time window of"
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
    """The limits of every (caller, web server), and what each server has served."""

    def __init__(self, limits: ServiceLimits) -> None:
        self.limits = limits
        self.reset()

    def reset(self) -> None:
        self.callers: dict[tuple[str, int], _CallerState] = {}
        self.servers = [_Totals() for _ in range(self.limits.web_servers)]

    def _state(self, caller: str, server: int) -> _CallerState:
        state = self.callers.get((caller, server))
        if state is None:
            state = self.callers[caller, server] = _CallerState()
        return state

    def _trim(self, state: _CallerState, now: float) -> None:
        horizon = now - self.limits.window_seconds
        while state.starts and state.starts[0] <= horizon:
            state.starts.popleft()
        while state.durations and state.durations[0][0] <= horizon:
            state.busy_seconds -= state.durations.popleft()[1]
        if not state.durations:
            state.busy_seconds = 0.0  # no float drift left over from the subtractions

    def _refuse(self, state: _CallerState, server: int, code: str, wait: float) -> ApiError:
        state.totals.throttled[code] += 1
        self.servers[server].throttled[code] += 1
        return throttled(code, wait, self.limits)

    def enter(self, caller: str, server: int, now: float | None = None) -> None:
        """Admit a request of ``caller`` on ``server`` or raise a 429 ApiError."""
        limits = self.limits
        now = time.monotonic() if now is None else now
        state = self._state(caller, server)
        if now < state.blocked_until:
            state.strikes += 1
            extra = limits.penalty_seconds * 2 ** min(state.strikes, 16)
            state.blocked_until = min(state.blocked_until + extra, now + limits.longest_wait)
            raise self._refuse(state, server, state.code, state.blocked_until - now)
        state.strikes = 0
        self._trim(state, now)
        totals = state.totals
        if totals.in_flight >= limits.concurrent_requests:
            raise self._refuse(state, server, CONCURRENCY, 1)
        wait = 0.0
        if len(state.starts) >= limits.requests_per_window:
            state.code = TOO_MANY_REQUESTS
            wait = self._requests_free_at(state) - now
        elif state.busy_seconds >= limits.execution_seconds_per_window:
            state.code = EXECUTION_TIME
            wait = self._time_free_at(state) - now
        if wait > 0:
            state.blocked_until = now + wait
            raise self._refuse(state, server, state.code, wait)
        state.starts.append(now)
        totals.in_flight += 1
        totals.concurrent_peak = max(totals.concurrent_peak, totals.in_flight)
        server_totals = self.servers[server]
        server_totals.in_flight += 1
        server_totals.concurrent_peak = max(server_totals.concurrent_peak, server_totals.in_flight)

    def _requests_free_at(self, state: _CallerState) -> float:
        """When the window holds fewer requests than the limit again."""
        first_to_go = len(state.starts) - self.limits.requests_per_window
        return state.starts[first_to_go] + self.limits.window_seconds

    def _time_free_at(self, state: _CallerState) -> float:
        """When enough execution time has left the window for the rest to be under the budget
        (the oldest request alone may not be enough)."""
        budget = self.limits.execution_seconds_per_window
        left = state.busy_seconds
        for end, seconds in state.durations:
            left -= seconds
            if left < budget:
                return end + self.limits.window_seconds
        # only with a budget of 0: free once everything has left
        last = state.durations[-1][0] if state.durations else 0.0
        return last + self.limits.window_seconds

    def leave(self, caller: str, server: int, seconds: float, now: float | None = None) -> None:
        """Charge ``seconds`` of execution time to a request admitted by ``enter``; it ends."""
        state = self.callers.get((caller, server))
        if state is None:
            return
        now = time.monotonic() if now is None else now
        state.durations.append((now, seconds))
        state.busy_seconds += seconds
        for totals in (state.totals, self.servers[server]):
            totals.in_flight = max(0, totals.in_flight - 1)
            totals.execution_seconds_total += seconds

    def answered(self, server: int, caller: str | None) -> None:
        """Count a Web API answer of ``server`` (``caller``: None when not authenticated)."""
        self.servers[server].requests += 1
        if caller is not None:
            self._state(caller, server).totals.requests += 1

    def remaining(self, caller: str, server: int, now: float | None = None) -> tuple[int, float]:
        """Requests and execution seconds ``caller`` has left in the window on ``server``."""
        state = self._state(caller, server)
        self._trim(state, time.monotonic() if now is None else now)
        limits = self.limits
        return (
            max(0, limits.requests_per_window - len(state.starts)),
            max(0.0, limits.execution_seconds_per_window - state.busy_seconds),
        )

    def stats(self, now: float | None = None) -> list[dict[str, Any]]:
        """One entry per server: its counts, its windows (every caller summed) and each
        caller's share."""
        now = time.monotonic() if now is None else now
        servers: list[dict[str, Any]] = []
        for index, totals in enumerate(self.servers):
            servers.append(
                {"server": index, **totals.to_dict(), "requests_in_window": 0,
                 "execution_seconds_in_window": 0.0, "callers": {}}
            )  # fmt: skip
        for (caller, index), state in sorted(self.callers.items()):
            self._trim(state, now)
            entry = servers[index]
            entry["requests_in_window"] += len(state.starts)
            entry["execution_seconds_in_window"] += state.busy_seconds
            entry["callers"][caller] = {
                **state.totals.to_dict(),
                "requests_in_window": len(state.starts),
                "execution_seconds_in_window": round(state.busy_seconds, 6),
            }
        for entry in servers:
            entry["execution_seconds_in_window"] = round(entry["execution_seconds_in_window"], 6)
        return servers
