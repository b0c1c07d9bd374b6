"""What the engine needs from Dataverse: one call that upserts a batch of rows by alternate key.

:class:`DataverseSink` writes through the client with ``UpsertMultiple`` (the default) or a
``$batch`` of upserts (``APEX_SYNC_WRITE``); unit tests use a fake with the same shape
(``sync/fakes.py``). Bodies are built from the current row, never from deltas, so a replay does
no harm (:func:`apex_metrics.metric.dataverse_body`, also importable from here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal, Protocol

from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.metric import ALTERNATE_KEY_COLUMN, ENTITY_SET, TABLE_LOGICAL_NAME
from apex_metrics.metric import dataverse_body as dataverse_body  # verify.py, benches

WriteMode = Literal["upsert-multiple", "batch"]
WRITE_MODES: Final[tuple[WriteMode, ...]] = ("upsert-multiple", "batch")


class Outcome(Protocol):
    """One row's result (the client's ``UpsertOutcome``)."""

    @property
    def key(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def outcome(self) -> str: ...  # "created" | "updated" | "upserted" | "failed"
    @property
    def code(self) -> str | None: ...
    @property
    def message(self) -> str | None: ...
    @property
    def transient(self) -> bool: ...
    @property
    def retry_after(self) -> float: ...


class Sink(Protocol):
    """Upserts rows by alternate key: one outcome per row, in order. Raises only what
    concerns the request as a whole (429, transient failures, refused credentials)."""

    async def upsert(self, items: Sequence[tuple[str, dict[str, Any]]]) -> Sequence[Outcome]: ...


class DataverseSink:
    """The engine's writes to ``apex_campaignmetrics``: ``UpsertMultiple`` or ``$batch``.

    A 429 is handed straight back (``max_throttled=0``): the flow has paused every request
    already, and the engine gives the rows back without spending their attempts, rather than
    holding their leases through a long ``Retry-After``.
    """

    def __init__(
        self,
        client: DataverseClient,
        mode: WriteMode = "upsert-multiple",
        *,
        entity_set: str = ENTITY_SET,
        logical_name: str = TABLE_LOGICAL_NAME,
        key_column: str = ALTERNATE_KEY_COLUMN,
    ) -> None:
        if mode not in WRITE_MODES:
            raise ValueError(f"write mode must be one of {', '.join(WRITE_MODES)}")
        self.client = client
        self.mode = mode
        self.entity_set = entity_set
        self.logical_name = logical_name
        self.key_column = key_column

    async def upsert(self, items: Sequence[tuple[str, dict[str, Any]]]) -> Sequence[Outcome]:
        if self.mode == "batch":
            return await self.client.upsert_many(
                self.entity_set, self.key_column, items, max_throttled=0
            )
        return await self.client.upsert_multiple(
            self.entity_set, self.logical_name, self.key_column, items, max_throttled=0
        )
