"""Query parameters of the panel's API: every one validated, unknown ones refused (400)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from apex_metrics.exceptions import ApexMetricsError
from apex_metrics.formats import ascii_int
from apex_metrics.panel.kpis import WINDOWS, Window

MAX_CUSTOM: Final = timedelta(days=366)
FILTER_PARAMS: Final = frozenset({"window", "from", "to", "campaign", "phase"})


class BadParameter(ApexMetricsError):
    """A query parameter is invalid."""

    def __init__(self, name: str, rule: str) -> None:
        self.name = name
        self.rule = rule
        super().__init__(f"{name}: {rule}")


@dataclass(frozen=True, slots=True)
class Filters:
    """What the page asks for: a window, optional campaign and phase."""

    window_name: str
    window: Window
    campaign: str | None = None
    phase: str | None = None

    def query_args(self) -> dict[str, str]:
        """The filters as URL query arguments (what the page puts in its URL)."""
        args = {"window": self.window_name}
        if self.window_name == "custom":
            args["from"] = self.window.start.isoformat()
            args["to"] = self.window.end.isoformat()
        if self.campaign is not None:
            args["campaign"] = self.campaign
        if self.phase is not None:
            args["phase"] = self.phase
        return args


def _text(params: Mapping[str, str], name: str, max_length: int) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if len(value) > max_length:
        raise BadParameter(name, f"at most {max_length} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadParameter(name, "must not contain control characters")
    return value


def _datetime(params: Mapping[str, str], name: str) -> datetime:
    value = params.get(name)
    if not value:
        raise BadParameter(name, "required when window=custom (ISO 8601, e.g. 2026-01-31T12:00Z)")
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "+") if "T" in value else value)
    except ValueError:
        raise BadParameter(name, "must be an ISO 8601 date-time, e.g. 2026-01-31T12:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if not datetime(1753, 1, 1, tzinfo=UTC) <= parsed <= datetime(9999, 1, 1, tzinfo=UTC):
        raise BadParameter(name, "must lie between 1753-01-01 and 9999-01-01")
    return parsed.astimezone(UTC)


def check_known(params: Mapping[str, str], allowed: Collection[str]) -> None:
    for name in params:
        if name not in allowed:
            raise BadParameter(name, f"unknown parameter (allowed: {', '.join(sorted(allowed))})")


def parse_filters(
    params: Mapping[str, str], now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Filters:
    """Window, campaign and phase from query parameters; raises :class:`BadParameter`."""
    name = params.get("window") or "24h"
    if name == "custom":
        start, end = _datetime(params, "from"), _datetime(params, "to")
        if end <= start:
            raise BadParameter("to", "must be later than from")
        if end - start > MAX_CUSTOM:
            raise BadParameter("to", "a custom window spans at most 366 days")
        window = Window(start, end)
    elif name in WINDOWS:
        for extra in ("from", "to"):
            if params.get(extra):
                raise BadParameter(extra, "only allowed with window=custom")
        end = now()
        window = Window(end - WINDOWS[name], end)
    else:
        raise BadParameter("window", "must be one of 1h, 24h, 7d, 30d, custom")
    return Filters(name, window, _text(params, "campaign", 64), _text(params, "phase", 16))


def parse_limit(params: Mapping[str, str], default: int, maximum: int) -> int:
    value = params.get("limit")
    if value is None or value == "":
        return default
    limit = ascii_int(value, len(str(maximum)))
    if limit is None or not 1 <= limit <= maximum:
        raise BadParameter("limit", f"must be an integer from 1 to {maximum}")
    return limit
