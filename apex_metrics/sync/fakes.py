"""A fake Dataverse sink for unit tests of the engine: an in-memory table with scripted faults."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from apex_metrics.dataverse.errors import Throttled, TransientError
from apex_metrics.dataverse.flow import Flow


@dataclass(frozen=True)
class FakeOutcome:
    key: str
    status: int
    outcome: str
    code: str | None = None
    message: str | None = None
    transient: bool = False
    retry_after: float = 0.0


@dataclass
class FakeSink:
    """An in-memory Dataverse table keyed by run id, with scripted faults."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    call_times: list[float] = field(default_factory=list)  # time.monotonic() of each call
    invalid: set[str] = field(default_factory=set)  # keys answered 400
    fail_rate: float = 0.0  # per-row 503
    batch_fail_rate: float = 0.0  # whole-request 503
    throttle_next: int = 0  # whole requests answered 429
    retry_after: float = 0.05
    delay: float = 0.0
    seed: int = 7
    on_call: Any = None  # async callback(keys) run before the writes land
    flow: Flow | None = None  # when set, calls go through it as DataverseSink's do (429 paused)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def upsert(self, items: Sequence[tuple[str, dict[str, Any]]]) -> list[FakeOutcome]:
        if self.flow is None:
            return await self._upsert(items)

        async def attempt() -> list[FakeOutcome]:
            return await self._upsert(items)

        return await self.flow.call(
            attempt, idempotent=True, what="fake upsert", rows=len(items), max_throttled=0
        )

    async def _upsert(self, items: Sequence[tuple[str, dict[str, Any]]]) -> list[FakeOutcome]:
        keys = [k for k, _ in items]
        self.calls.append(keys)
        self.call_times.append(time.monotonic())
        if self.on_call is not None:
            await self.on_call(keys)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.throttle_next > 0:
            self.throttle_next -= 1
            raise Throttled("429", retry_after=self.retry_after, status=429, code="0x80072322")
        if self.batch_fail_rate and self.rng.random() < self.batch_fail_rate:
            raise TransientError("503 Service Unavailable", status=503)
        out = []
        for key, body in items:
            if key in self.invalid:
                out.append(
                    FakeOutcome(key, 400, "failed", "0x80044331", "A validation error occurred.")
                )
            elif self.fail_rate and self.rng.random() < self.fail_rate:
                out.append(FakeOutcome(key, 503, "failed", "", "Service Unavailable", True))
            else:
                existed = key in self.rows
                self.rows[key] = dict(body)
                self.writes[key] = self.writes.get(key, 0) + 1
                out.append(FakeOutcome(key, 204, "updated" if existed else "created"))
        return out

    async def query(
        self,
        entity_set: str,
        *,
        select: list[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every stored row with its key, like ``DataverseClient.query``."""
        for key, body in list(self.rows.items()):
            yield {"apex_runid": key, **body}

    async def delete(self, entity_set: str, key: dict[str, str]) -> bool:
        """Delete by key, like ``DataverseClient.delete``."""
        return self.rows.pop(key["apex_runid"], None) is not None
