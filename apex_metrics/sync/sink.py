"""What the engine needs from Dataverse: one call that upserts a batch by alternate key.

``DataverseClient.upsert_many`` satisfies :class:`Sink`; unit tests use a fake with the same
shape. Bodies are built from the current row, never from deltas, so a replay does no harm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from apex_metrics.metric import FIELD_NAMES, Metric


class Outcome(Protocol):
    """One row's result inside a ``$batch`` (the client's ``UpsertOutcome``)."""

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


class Sink(Protocol):
    """Upserts by alternate key, one ``$batch`` per call, continue-on-error."""

    async def upsert_many(
        self,
        entity_set: str,
        key_column: str,
        items: Sequence[tuple[str, dict[str, Any]]],
    ) -> Sequence[Outcome]: ...


def dataverse_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The upsert body of one claimed row: every column but the key, plus the primary name."""
    return Metric(**{name: row[name] for name in FIELD_NAMES}).to_dataverse()
