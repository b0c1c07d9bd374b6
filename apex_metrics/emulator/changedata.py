"""Audit ``changedata``: written compact, rendered when read.

An audit record's ``changedata`` is the JSON text of every column a write touched, with its old
and new values as the Web API shows them (``values.created_text`` / ``updated_text``). Building
that text for every row of a 1,000-row ``$batch`` cost more than writing the rows; audits are read
rarely. So a create or an update stores only ``@`` and the JSON of ``[plan, new values]`` (or
``[plan, new, old]``), the stored values in one C-encoder call, where ``plan`` numbers the table
and the list of column names (kept in ``emu_audit_plans``). The SQLite function
``emu_changedata`` renders the text when the ``e_audit`` view is read, through the same
functions as before, so readers see the same text. Stored values survive the JSON round trip
unchanged (text, integers, floats, booleans, null: what SQLite and ``values.to_storage`` hand
out). Anything else, and deletes, are written out at once.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from apex_metrics.emulator import values
from apex_metrics.emulator.metadata import Entity

MARK = "@"  # changedata text proper always starts with "{"
# json.dumps' C encoder with its default settings, built once (json.dumps builds one per call);
# no record of the objects being encoded: what it encodes here is a list of two or three lists
# of scalars. A value it cannot encode raises TypeError.
_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_ENCODER = (
    _C_ENCODER(
        None, None, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    if _C_ENCODER is not None
    else None
)


def _encode(item: list[Any]) -> str:
    if _ENCODER is None:
        return json.dumps(item)
    return "".join(_ENCODER(item, 0))


class ChangeData:
    """The compact form of audit ``changedata`` over one SQLite connection, and its rendering.

    ``entities`` is the store's own dict (logical name → table), read when rendering."""

    def __init__(self, conn: sqlite3.Connection, entities: dict[str, Entity]) -> None:
        self.conn = conn
        self.entities = entities
        self._ids: dict[tuple[str, tuple[str, ...]], int] = {}
        self._plans: dict[int, tuple[str, tuple[str, ...]]] = {}
        self._unsaved: set[int] = set()
        for plan_id, logical_name, names in conn.execute(
            "SELECT id, entity, names FROM emu_audit_plans"
        ):
            key = (str(logical_name), tuple(json.loads(names)))
            self._ids[key] = int(plan_id)
            self._plans[int(plan_id)] = key
        conn.create_function("emu_changedata", 1, self.render, deterministic=True)

    # --- writing -------------------------------------------------------------------------------

    def created(self, entity: Entity, new: dict[str, Any]) -> str:
        """``changedata`` of a create, compact when it can be."""
        plan_id = self._plan(entity, new)
        if plan_id is not None:
            try:
                return MARK + _encode([plan_id, list(new.values())])
            except (TypeError, ValueError):
                pass  # not a stored value: written out at once
        return values.created_text(entity.attributes, new)  # raises as it always did

    def updated(self, entity: Entity, old: dict[str, Any], new: dict[str, Any]) -> str:
        """``changedata`` of an update (``old``: the whole row before), compact when it can be."""
        plan_id = self._plan(entity, new)
        if plan_id is not None:
            try:
                return MARK + _encode([plan_id, list(new.values()), [old.get(n) for n in new]])
            except (TypeError, ValueError):
                pass
        return values.updated_text(entity.attributes, old, new)

    def _plan(self, entity: Entity, new: dict[str, Any]) -> int | None:
        """The number of this table's list of names (None: a name the table lacks)."""
        key = (entity.logical_name, tuple(new))
        plan_id = self._ids.get(key)
        if plan_id is not None:
            return plan_id
        if any(name not in entity.attributes for name in new):
            return None
        plan_id = len(self._plans) + 1
        self._ids[key] = plan_id
        self._plans[plan_id] = key
        self._unsaved.add(plan_id)
        return plan_id

    def save(self) -> None:
        """Write the plans made since the last save (in the transaction about to commit the
        audit rows that use them)."""
        if self._unsaved:
            self.conn.executemany(
                "INSERT OR IGNORE INTO emu_audit_plans VALUES (?, ?, ?)",
                [
                    (plan_id, self._plans[plan_id][0], json.dumps(self._plans[plan_id][1]))
                    for plan_id in sorted(self._unsaved)
                ],
            )
            self._unsaved.clear()

    def forget(self) -> None:
        """Every plan is gone (the store was reset)."""
        self._ids.clear()
        self._plans.clear()
        self._unsaved.clear()
        self.conn.execute("DELETE FROM emu_audit_plans")

    # --- reading -------------------------------------------------------------------------------

    def render(self, text: str | None) -> str | None:
        """The ``changedata`` text of a stored value (text proper is returned as it is)."""
        if text is None or not text.startswith(MARK):
            return text
        plan_id, new_values, *rest = json.loads(text[1:])
        logical_name, names = self._plans[plan_id]
        new = dict(zip(names, new_values, strict=True))
        attributes = self.entities[logical_name].attributes
        if rest:
            return values.updated_text(attributes, dict(zip(names, rest[0], strict=True)), new)
        return values.created_text(attributes, new)
