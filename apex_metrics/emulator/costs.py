"""What a Web API request costs the service: the server time Dataverse would spend on it.

The emulator answers most requests in well under a millisecond, so without a cost model a
client tuned against it would learn nothing about the service protection limits, which are
charged in execution time. :class:`CostModel` prices each request from what it did
(:class:`Usage`): a fixed overhead per request, then each write, each row of a bulk message and
each retrieve. The app waits out the difference between the modeled time and the real time it
spent (``asyncio.sleep``, no CPU burnt) and charges the larger of the two to the limiter.

Where the defaults come from, and where the sources disagree, is in ``docs/emulator.md``
("Costs and service protection limits"). The ``free`` profile charges nothing on top of the
real time: for tests and benchmarks of the emulator itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

Profile = Literal["dataverse", "free"]
PROFILES: tuple[Profile, ...] = ("dataverse", "free")


@dataclass(slots=True)
class Usage:
    """What one Web API request did, counted as it runs (shared by the parts of a ``$batch``)."""

    writes: int = 0  # single writes: a request or a batch part other than GET
    multiple_rows: int = 0  # Targets of CreateMultiple / UpdateMultiple / UpsertMultiple
    retrieves: int = 0  # GET parts of a batch, and the read behind return=representation

    def request(self, method: str, status: int, representation: bool) -> None:
        """A request on its own: a GET costs only the request's overhead, anything else one
        write, plus a retrieve when it succeeded with ``Prefer: return=representation``
        (``representation``): the service reads the row back to answer with it."""
        if method != "GET":
            self._write(status, representation)

    def part(self, method: str, status: int, representation: bool) -> None:
        """A part of a ``$batch`` that ran: a GET is one retrieve, anything else is priced as
        a request on its own (the batch pays the request overhead once)."""
        if method == "GET":
            self.retrieves += 1
        else:
            self._write(status, representation)

    def _write(self, status: int, representation: bool) -> None:
        self.writes += 1
        if representation and 200 <= status < 300:
            self.retrieves += 1


@dataclass(frozen=True, slots=True)
class CostModel:
    """Modeled server time of a request, in milliseconds per unit of :class:`Usage`."""

    profile: Profile = "dataverse"
    request_ms: float = 30.0  # every request: authentication, routing, the answer
    write_ms: float = 40.0  # one create, update, upsert or delete (alone or in a $batch)
    multiple_row_ms: float = 8.0  # one target of CreateMultiple/UpdateMultiple/UpsertMultiple
    retrieve_ms: float = 10.0  # one row read: a GET part, or return=representation

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        for name in ("request_ms", "write_ms", "multiple_row_ms", "retrieve_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    @classmethod
    def free(cls) -> CostModel:
        """No modeled cost: requests take the time the emulator really spends."""
        return cls(profile="free")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def seconds(self, usage: Usage) -> float:
        """The modeled server time of a request that did ``usage`` (0.0 under ``free``)."""
        if self.profile == "free":
            return 0.0
        ms = (
            self.request_ms
            + usage.writes * self.write_ms
            + usage.multiple_rows * self.multiple_row_ms
            + usage.retrieves * self.retrieve_ms
        )
        return ms / 1000
