"""Problems that must not raise are logged instead: once per kind and interval, with a count.

The recorder never raises into application code (unless strict), so what goes wrong there is
only seen in the logs: each kind of problem (database away, spool full, invalid input) logs one
line, then stays quiet for the interval and says, on its next line, how many it held back.
"""

from __future__ import annotations

import logging
import threading
import time

from apex_metrics.exceptions import ApexMetricsError


class ProblemLog:
    """Logs each kind of problem at most once per ``interval`` seconds; the next line says how
    many were held back. ``clear`` forgets a kind once the problem is over."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def report(self, kind: str, level: int, message: str, *, interval: float | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._seen.get(kind)
            if last is not None and now - last[0] < (
                self._interval if interval is None else interval
            ):
                self._seen[kind] = (last[0], last[1] + 1)
                return
            self._seen[kind] = (now, 0)
        held = f" ({last[1]} more like this held back)" if last and last[1] else ""
        self._logger.log(level, "%s%s", message, held)

    def clear(self, kind: str) -> bool:
        """Forget ``kind``; True when it had been reported."""
        with self._lock:
            return self._seen.pop(kind, None) is not None


def one_line(exc: BaseException) -> str:
    return exc.one_line() if isinstance(exc, ApexMetricsError) else f"{type(exc).__name__}: {exc}"
