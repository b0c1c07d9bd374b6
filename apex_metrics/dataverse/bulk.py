"""The ``UpsertMultiple`` bulk message: the request body, and which failures name a row.

``POST SET/Microsoft.Dynamics.CRM.UpsertMultiple`` with ``{"Targets": [...]}``: one target per
row, each with ``@odata.type`` (the table), ``@odata.id`` (the row by alternate key) and every
column but the key (Microsoft's SDK found that a key column in the body fails the create path;
the server copies the key from ``@odata.id``). On a standard table the message is all or
nothing: one bad row fails the request and nothing is written, and the error does not say which
row it was, so the caller narrows the chunk down (``client.upsert_multiple``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from apex_metrics.dataverse.batching import batch_dumps
from apex_metrics.dataverse.errors import (
    DUPLICATE_DETECTED,
    DataverseError,
    DataverseValidationError,
    PreconditionFailed,
)
from apex_metrics.dataverse.urls import key_paths

Items = Sequence[tuple[str, Mapping[str, Any]]]
ACTION = "Microsoft.Dynamics.CRM.UpsertMultiple"
# Rows per UpsertMultiple on a standard table (Microsoft's suggested starting size).
MAX_ROWS = 1000


def encode_upsert_multiple(
    entity_set: str, logical_name: str, key_column: str, items: Items
) -> bytes:
    """The JSON body of one ``UpsertMultiple`` for ``items`` (key value, body)."""
    paths = key_paths(entity_set, key_column, [key_value for key_value, _body in items])
    encode = batch_dumps()
    odata_type = f"Microsoft.Dynamics.CRM.{logical_name}"
    parts = []
    for (_key_value, body), path in zip(items, paths, strict=True):
        target: dict[str, Any] = {"@odata.type": odata_type, "@odata.id": path}
        target.update((k, v) for k, v in body.items() if k != key_column)
        parts.append(encode(target))
    return b'{"Targets":[' + b",".join(parts) + b"]}"


def blames_a_row(error: DataverseError) -> bool:
    """Could one row of the request have caused ``error``? (Then narrowing the chunk down
    finds it; an error about the request as a whole, such as 401, 403 or 404, stays whole.)"""
    if isinstance(error, DataverseValidationError | PreconditionFailed):
        return True
    return error.status == 409 or error.code.lower() == DUPLICATE_DETECTED
