"""A shortcut through ``$batch`` for its commonest part: ``PATCH SET(key)``, an upsert.

The sync engine sends 1,000 of them per batch, alike but for the key and the body. Taking each
through ``_sub_request``, ``WebApi.handle`` and ``rows.upsert`` parses the same URL shape,
headers, ``$select`` and ``Prefer`` 1,000 times and reads each target row with its own query.
:class:`Upserts` answers such parts directly:

- the URL is matched once against the shapes the usual path accepts (an absolute or rooted
  URL of one row, nothing to unquote), so it yields what ``split_target`` and ``segment``
  would; anything else goes through those functions, as before;
- what parts of one shape share (table, key, ``$select``, headers) is worked out once per
  batch and checked again where it could change (the table's keys);
- the rows a run of such parts at the batch's top level upserts are read with one
  ``IN (...)`` query. That stays exact: only these parts write in between (any other part
  drops what was read), and each write marks the key values it touched to be read again.

The answer is built by the same code as the usual path's (``rows.check_body``,
``rows.write_upsert``, ``rows.upsert_row``), so status, headers, body, versions and audit
records are the same. A part the shortcut does not take returns None: the caller runs it
the usual way, which gives the same answer or error as before. ``FAST_PATH = False`` turns the
shortcut off (the tests compare both ways).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from apex_metrics.emulator import rows
from apex_metrics.emulator.batch_wire import BatchPart, BatchRequestItem
from apex_metrics.emulator.errors import ApiError, bad_request
from apex_metrics.emulator.messages import (
    ApiRequest,
    ApiResponse,
    decode_json,
    option,
    prefer_of,
    query_pairs,
    split_target,
)
from apex_metrics.emulator.metadata import Attribute, Entity, Key
from apex_metrics.emulator.metadata_api import segment
from apex_metrics.emulator.query import parse_select
from apex_metrics.emulator.store import Store, quote
from apex_metrics.emulator.values import Converter, converter

FAST_PATH = True

# An absolute or rooted URL of one row with nothing to unquote (no % or +): split_target
# keeps SET(ref) and the query after the first "?", and segment splits SET(ref) at the
# first "(". _KEY_URL is the same with ref a plain key, name='text'.
_PREFIX = r"(?:https?://[^/?]*)?/api/data/v9\.[0-2]/([A-Za-z][A-Za-z0-9_.]*)\("
_PLAIN_URL = re.compile(_PREFIX + r"([^%+?/]*)\)(?:\?([^%+]*))?")
_KEY_URL = re.compile(_PREFIX + r"([A-Za-z_][A-Za-z0-9_]*)='([^'%+?/]*)'\)(?:\?([^%+]*))?")
# First segments that WebApi._route answers before looking for an entity set.
_ROUTED = frozenset(
    {"WhoAmI", "EntityDefinitions", "PublishXml", "PublishAllXml", "CreateEntities", "audits"}
)
_IN_CHUNK = 500  # key values per IN (...) query
_MAX_RELOADS = 3  # runs read ahead per batch after the first; then row by row


@dataclass(slots=True)
class _Shape:
    """What the parts of one (entity set, key column, query, headers) have in common."""

    entity: Entity
    key: Key
    attr: Attribute  # the key column
    convert: Converter  # values.to_storage of the key column, for a value that is not None
    select: list[str] | None
    if_match: str | None
    if_none_match: str | None
    asks_detection: bool  # MSCRM.SuppressDuplicateDetection: false
    wants_body: bool  # Prefer: return=representation
    context: str  # @odata.context of the representation
    location: str  # OData-EntityId up to the key
    plain_headers: bool  # no two header names differ only in case: their order is no matter


@dataclass(slots=True)
class _ReadAhead:
    """Rows of one run of upserts by a text key column, by folded key value."""

    set_name: str
    column: str
    end: int  # index of the first top-level item after the run
    covered: set[str] = field(default_factory=set)  # folded values read (row or no row)
    found: dict[str, dict[str, Any]] = field(default_factory=dict)
    stale: set[str] = field(default_factory=set)  # written since: read again

    def covers(self, set_name: str, column: str) -> bool:
        return self.set_name == set_name and self.column == column

    def written(self, folded: str | None, value: Any) -> None:
        """Rows with these key values (the first one folded already) may have changed."""
        if folded is not None:
            self.stale.add(folded)
        if value is not None:
            folded = _fold(value)
            if folded is not None:
                self.stale.add(folded)


def _still_active(entity: Entity, key: Key) -> bool:
    """``key`` is still the entity's key of its columns, and active."""
    return key.status == "Active" and entity.keys.get(key.logical_name) is key


def _fold(value: Any) -> str | None:
    """The value SQLite's NOCASE compares for ASCII text; None for anything else."""
    if type(value) is str and value.isascii():
        return value.lower()
    return None


class Upserts:
    """Answers the plain upserts of one ``$batch`` (see the module's docstring)."""

    def __init__(self, outer: ApiRequest, store: Store, items: list[BatchRequestItem]) -> None:
        self.store = store
        self.items = items
        self.base = outer.base
        self.root = outer.service_root
        self.user_id = outer.caller.user_id
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self._last: tuple[str, str, str | None, dict[str, str], _Shape] | None = None
        self._ahead: _ReadAhead | None = None
        self._reloads = 0

    def forget(self) -> None:
        """Rows may have changed in ways not followed here: read them again."""
        self._ahead = None

    def answer(self, part: BatchPart, index: int | None = None) -> ApiResponse | None:
        """The answer to ``part`` (at ``index`` of the batch's top level, None: inside a change
        set), or None when it should take the usual way."""
        if part.method != "PATCH" or not FAST_PATH or not self.store.in_transaction:
            self._ahead = None
            return None
        url = part.url.strip()
        plain = _KEY_URL.fullmatch(url)
        if plain is not None:
            shape = self._shape(plain.group(1), plain.group(2), plain.group(4), part.headers)
            if shape is not None:
                return self._keyed(shape, plain.group(2), plain.group(3), part, index)
        self._ahead = None
        return self._routed(part, url)

    # --- parts of a known shape ------------------------------------------------------------

    def _shape(
        self, set_name: str, column: str, query_text: str | None, headers: dict[str, str]
    ) -> _Shape | None:
        """The shape of ``SET(column='...')?query`` with these headers, while it holds."""
        last = self._last
        shape: _Shape | None
        if (
            last is not None
            and last[:3] == (set_name, column, query_text)
            and last[4].plain_headers
            and last[3] == headers
        ):
            shape = last[4]  # the common case: like the part before
        else:
            shape = self._shapes.get((set_name, column, query_text, *headers.items()))
        store = self.store
        entity = store.by_set.get(set_name)
        if entity is None or set_name in _ROUTED or column == entity.primary_id:
            return None  # the usual way (an id written as a key: parse_target's id target)
        # as parse_target: pending keys whose time has come become active first
        store.activate_keys(entity, time.time())
        if shape is None or shape.entity is not entity or not _still_active(entity, shape.key):
            shape = self._new_shape(entity, column, query_text, headers)
            if shape is None:
                return None
            self._shapes[(set_name, column, query_text, *headers.items())] = shape
        self._last = (set_name, column, query_text, headers, shape)
        return shape

    def _new_shape(
        self, entity: Entity, column: str, query_text: str | None, headers: dict[str, str]
    ) -> _Shape | None:
        key = next((k for k in entity.keys.values() if set(k.key_attributes) == {column}), None)
        attr = entity.attributes.get(column)
        convert = converter(attr.kind) if attr is not None else None
        if key is None or key.status != "Active" or attr is None or convert is None:
            return None  # parse_target answers with the error
        try:
            select = parse_select(entity, option(query_pairs(query_text or ""), "$select"))
        except ApiError:
            return None  # upsert_row answers with it, after checking the body
        lower = {name.lower(): value for name, value in headers.items()}
        detection = lower.get("mscrm.suppressduplicatedetection")
        return _Shape(
            entity=entity,
            key=key,
            attr=attr,
            convert=convert,
            select=select,
            if_match=lower.get("if-match"),
            if_none_match=lower.get("if-none-match"),
            asks_detection=(detection or "").strip().lower() == "false",
            wants_body=prefer_of(lower.get("prefer")).get("return") == "representation",
            context=f"{self.root}/$metadata#{entity.entity_set_name}/$entity",
            location=f"{self.root}/{entity.entity_set_name}(",
            plain_headers=len(lower) == len(headers),
        )

    def _keyed(
        self, shape: _Shape, column: str, raw: str, part: BatchPart, index: int | None
    ) -> ApiResponse:
        """``rows.upsert`` of a part of a known shape; ``raw``: the key value in the URL."""
        entity = shape.entity
        store = self.store
        ref = f"{column}='{raw}'"
        try:
            # parse_target, upsert_row, apply_upsert: the same steps in the same order
            value = shape.convert(shape.attr, entity.logical_name, raw)
            where = {column: value}
            target = rows.Target(ref, key=shape.key, key_values=where)
            clean = rows.check_body(entity, decode_json(part.body or b""))
            ahead = self._read_ahead(shape, column, index)
            folded = _fold(value)
            if ahead is None or folded is None:
                old = store.fetch_one(entity, where)
            elif folded in ahead.covered and folded not in ahead.stale:
                old = ahead.found.get(folded)
            else:
                old = store.fetch_one(entity, where)
            try:
                row, created = rows.write_upsert(
                    store, entity, target, clean, self.user_id, old, shape.if_match,
                    shape.if_none_match,
                    detect_duplicates=entity.duplicate_detection and shape.asks_detection,
                )  # fmt: skip
            finally:
                if ahead is not None:  # the rows this part may have written: read them again
                    ahead.written(folded, clean.get(column))
        except ApiError as exc:  # as WebApi.handle answers
            return ApiResponse.error(exc)
        except RecursionError:
            return ApiResponse.error(bad_request("The request is nested too deeply."))
        location = shape.location + ref + ")"
        if shape.wants_body:
            status = 201 if created else 200
            return rows.representation(self.root, entity, row, status, location, shape.select)
        return ApiResponse.empty(204, {"OData-EntityId": location})

    # --- reading a run's rows ahead --------------------------------------------------------

    def _read_ahead(self, shape: _Shape, column: str, index: int | None) -> _ReadAhead | None:
        """The rows read for the run of parts that ``index`` belongs to (None: read its row
        alone)."""
        if index is None or shape.attr.kind not in ("String", "Memo"):
            self._ahead = None
            return None
        set_name = shape.entity.entity_set_name
        ahead = self._ahead
        if ahead is not None and ahead.end > index and ahead.covers(set_name, column):
            return ahead
        if self._reloads > _MAX_RELOADS:
            self._ahead = None
            return None
        self._reloads += 1
        self._ahead = ahead = self._load(shape, column, index)
        return ahead

    def _load(self, shape: _Shape, column: str, index: int) -> _ReadAhead:
        set_name = shape.entity.entity_set_name
        values: set[str] = set()
        end = index
        while end < len(self.items):
            item = self.items[end]
            if not isinstance(item, BatchPart) or item.method != "PATCH":
                break
            plain = _KEY_URL.fullmatch(item.url.strip())
            if plain is None or plain.group(1) != set_name or plain.group(2) != column:
                break
            values.add(plain.group(3))
            end += 1
        ahead = _ReadAhead(set_name, column, end)
        wanted = sorted(v for v in values if v.isascii())
        entity = shape.entity
        primary_id = entity.primary_id
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            cursor = self.store.conn.execute(
                f"SELECT * FROM {quote(entity.table)} WHERE {quote(column)} IN ({marks})", chunk
            )
            names = [d[0] for d in cursor.description]
            for record in cursor:
                row = dict(zip(names, record, strict=True))
                folded = _fold(row[column])
                if folded is None:  # not what the column should hold: read row by row
                    return _ReadAhead(set_name, column, end)
                if folded in ahead.found and ahead.found[folded][primary_id] != row[primary_id]:
                    ahead.stale.add(folded)  # two rows answer to it: let SQLite say which
                ahead.found[folded] = row
            ahead.covered.update(v.lower() for v in chunk)
        return ahead

    # --- any other PATCH ---------------------------------------------------------------------

    def _routed(self, part: BatchPart, url: str) -> ApiResponse | None:
        """The URL checks of ``_sub_request`` and ``WebApi._route``, then ``rows.upsert``."""
        route = self._route(url)
        if route is None:
            return None
        entity, ref, query = route
        store = self.store
        try:
            target = rows.parse_target(store, entity, ref)
        except ApiError:
            return None
        headers = {name.lower(): value for name, value in part.headers.items()}
        try:
            return rows.upsert_row(
                store, entity, target, decode_json(part.body or b""), option(query, "$select"),
                headers, self.root, self.user_id,
            )  # fmt: skip
        except ApiError as exc:  # as WebApi.handle answers
            return ApiResponse.error(exc)
        except RecursionError:
            return ApiResponse.error(bad_request("The request is nested too deeply."))

    def _route(self, url: str) -> tuple[Entity, str, list[tuple[str, str]]] | None:
        plain = _PLAIN_URL.fullmatch(url)
        if plain is not None:  # what split_target and segment make of it, in one match
            name, ref, query_text = plain.groups()
            query = query_pairs(query_text) if query_text else []
        else:
            if url.startswith("$"):
                return None
            try:
                target = split_target(url, self.base)
            except ApiError:
                return None
            if target is None:
                return None
            path, query = target
            path = path.strip("/")
            if "/" in path or not path.endswith(")"):
                return None
            try:
                name, ref = segment(path)
            except ApiError:
                return None
        entity = self.store.by_set.get(name)
        if ref is None or name in _ROUTED or entity is None:
            return None
        return entity, ref, query
