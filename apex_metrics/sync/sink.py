"""What the engine needs from Dataverse: one call that upserts a batch by alternate key.

``DataverseClient.upsert_many`` satisfies :class:`Sink`; unit tests use a fake with the same
shape. Bodies are built from the current row, never from deltas, so a replay does no harm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from apex_metrics.metric import ALTERNATE_KEY_COLUMN, COLUMNS, PRIMARY_NAME, to_json_value


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


_BODY_COLUMNS: Final = tuple(
    (c.name, c.dataverse, c.kind) for c in COLUMNS if c.dataverse != ALTERNATE_KEY_COLUMN
)


def dataverse_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """The upsert body of one claimed row: every column but the key, plus the primary name.

    The same as ``Metric.to_dataverse()`` (a test keeps them equal), without building a Metric:
    this runs for every row of every batch.
    """
    body: dict[str, Any] = {PRIMARY_NAME: row["run_id"]}
    for name, dataverse, kind in _BODY_COLUMNS:
        value = row[name]
        if value is not None and kind in ("decimal", "datetime"):
            value = to_json_value(value)
        body[dataverse] = value
    return body
