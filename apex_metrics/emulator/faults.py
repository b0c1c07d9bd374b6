"""Seeded fault injection on the Web API, and statistics of what the emulator received."""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

from apex_metrics.emulator.config import FaultSettings
from apex_metrics.emulator.costs import Usage
from apex_metrics.emulator.errors import TOO_MANY_REQUESTS, ApiError


class DropConnection(Exception):
    """Raised after the response has started, so the server closes the connection."""


@dataclass(frozen=True, slots=True)
class Decision:
    delay: float = 0.0
    error: ApiError | None = None
    drop: bool = False


class FaultInjector:
    def __init__(self, settings: FaultSettings) -> None:
        self.configure(settings)

    def configure(self, settings: FaultSettings) -> None:
        self.settings = settings
        self.random = random.Random(settings.seed)
        self.storm_until = time.monotonic() + settings.storm_seconds

    def decide(self) -> Decision:
        """What to do with the next Web API request (one random draw per kind, in order)."""
        s = self.settings
        delay = s.latency_ms / 1000
        if s.latency_jitter_ms:
            delay += self.random.uniform(0, s.latency_jitter_ms) / 1000
        if time.monotonic() < self.storm_until:
            return Decision(delay, _throttle(s.storm_retry_after))
        draw = self.random.random()
        for rate, error in (
            (s.throttle_rate, _throttle(s.storm_retry_after)),
            (s.error_500_rate, ApiError(500, "0x80040216", "An unexpected error occurred.")),
            (s.error_503_rate, ApiError(503, "0x80040216", "The service is unavailable.",
                                        {"Retry-After": "1"})),
        ):  # fmt: skip
            if draw < rate:
                return Decision(delay, error)
            draw -= rate
        if s.drop_rate and self.random.random() < s.drop_rate:
            return Decision(delay, drop=True)
        return Decision(delay)


def _throttle(retry_after: int) -> ApiError:
    return ApiError(
        429,
        TOO_MANY_REQUESTS,
        "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
        {"Retry-After": str(retry_after)},
    )


class Stats:
    """Counters of requests, statuses, rows written and faults, plus the last requests."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.time()
        self.counters: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=200)

    def record(
        self, method: str, path: str, status: int, seconds: float, kind: str, *,
        server: int | None = None, usage: Usage | None = None, modeled: float = 0.0,
    ) -> None:  # fmt: skip
        """Count a request; a Web API request also notes its web server, what it did and its
        modeled time (0 when it was not admitted, or under the free profile)."""
        self.counters["requests"] += 1
        self.counters[f"requests.{kind}"] += 1
        self.statuses[status] += 1
        entry: dict[str, Any] = {
            "method": method, "path": path[:200], "status": status, "ms": round(seconds * 1000, 2)
        }  # fmt: skip
        if server is not None:
            entry["server"] = server
        if usage is not None:
            entry["usage"] = asdict(usage)
            entry["modeled_ms"] = round(modeled * 1000, 3)
        self.recent.append(entry)

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.started,
            "counters": dict(self.counters),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "recent": list(self.recent),
        }
