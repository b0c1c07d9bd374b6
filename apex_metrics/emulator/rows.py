"""Rows: create, retrieve, update, upsert and delete by id or alternate key, plus bulk actions."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from apex_metrics.emulator import values
from apex_metrics.emulator.errors import (
    DUPLICATE_KEY,
    DUPLICATE_RECORD,
    KEY_NOT_DEFINED,
    ApiError,
    bad_request,
    not_found,
    unknown_property,
)
from apex_metrics.emulator.messages import JSON_TYPE, ApiRequest, ApiResponse, dumps, prefer_of
from apex_metrics.emulator.metadata import Attribute, Entity, Key
from apex_metrics.emulator.query import parse_select
from apex_metrics.emulator.store import Store, new_row_id, utc_now_text

_GUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
_ETAG = re.compile(r'^W/"(\d+)"$')
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_SIMPLE_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)='([^']*)'$")
_READ_ONLY = {"createdon", "modifiedon", "versionnumber"}
_TEXT = frozenset({"String", "Memo"})


@dataclass(slots=True)
class Target:
    """The row a URL points at: by id, or by the values of one alternate key."""

    text: str  # as written in the URL, e.g. "apex_runid='r1'"
    row_id: str | None = None
    key: Key | None = None
    key_values: dict[str, Any] | None = None

    def where(self, entity: Entity) -> dict[str, Any]:
        if self.row_id is not None:
            return {entity.primary_id: self.row_id}
        assert self.key_values is not None
        return self.key_values

    def missing(self, entity: Entity) -> ApiError:
        if self.row_id is not None:
            return not_found(f"{entity.logical_name} With Id = {self.row_id} Does Not Exist")
        return not_found(
            f"A record with the specified key values does not exist in {entity.logical_name} entity"
        )


def _split_key(text: str) -> list[str]:
    parts, current, quoted, index = [], [], False, 0
    while index < len(text):
        char = text[index]
        if char == "'":
            if quoted and index + 1 < len(text) and text[index + 1] == "'":
                current.append("''")
                index += 2
                continue
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    if quoted:
        raise bad_request(f"Unterminated string in key '{text[:100]}'.")
    parts.append("".join(current))
    return parts


def _key_literal(raw: str) -> Any:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    if _NUMBER.match(raw):
        return float(raw) if "." in raw else int(raw)
    if _GUID.match(raw):
        return raw.lower()
    if raw in ("true", "false"):
        return raw == "true"
    raise bad_request(f"Invalid key value '{raw[:100]}': quote strings as 'value'.")


def _key_pairs(text: str) -> dict[str, Any]:
    """The name=value pairs of a key segment that is not a plain ``name='text'``."""
    pairs: dict[str, Any] = {}
    for part in _split_key(text.strip()):
        name, sep, raw = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise bad_request(f"Invalid key segment '{text[:100]}': expected an id or name=value.")
        if name in pairs:
            raise bad_request(f"The key property '{name}' appears twice.")
        pairs[name] = _key_literal(raw)
    return pairs


def parse_target(store: Store, entity: Entity, text: str) -> Target:
    """Resolve ``SET(<guid>)``, ``SET(col='v')`` or ``SET(k1=1,k2='x')``."""
    stripped = text.strip()
    if _GUID.match(stripped):
        return Target(text, row_id=stripped.lower())
    simple = _SIMPLE_KEY.match(stripped)
    pairs = {simple.group(1): simple.group(2)} if simple is not None else _key_pairs(text)
    primary_id = entity.primary_id
    if len(pairs) == 1 and primary_id in pairs:
        return Target(text, row_id=values.parse_guid(str(pairs[primary_id])))
    store.activate_keys(entity, time.time())
    names = set(pairs)
    for key in entity.keys.values():
        if set(key.key_attributes) == names:
            if key.status != "Active":
                raise bad_request(
                    f"The alternate key '{key.schema_name}' of entity '{entity.logical_name}' is"
                    f" not active yet (EntityKeyIndexStatus {key.status}).",
                    KEY_NOT_DEFINED,
                )
            converted = {
                name: values.to_storage(entity.attributes[name], entity.logical_name, value)
                for name, value in pairs.items()
            }
            return Target(text, key=key, key_values=converted)
    raise bad_request(
        f"The specified key attributes are not a defined key for the {entity.logical_name} entity",
        KEY_NOT_DEFINED,
    )


def render(
    entity: Entity, row: dict[str, Any], select: list[str] | None, context: str | None = None
) -> dict[str, Any]:
    """A stored row as Web API JSON (``@odata.context`` when given, ``@odata.etag``, the
    primary key, then the columns)."""
    out: dict[str, Any] = {} if context is None else {"@odata.context": context}
    out["@odata.etag"] = f'W/"{row["versionnumber"]}"'
    primary_id = entity.primary_id
    out[primary_id] = row[primary_id]
    attributes = entity.attributes
    for name in select if select is not None else list(attributes):
        if name != primary_id:
            out[name] = values.to_json(attributes[name], row.get(name))
    return out


def check_body(entity: Entity, body: Any) -> dict[str, Any]:
    """Validated storage values of a row body (annotations dropped)."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", values.PAYLOAD)
    clean: dict[str, Any] = {}
    attributes = entity.attributes
    logical_name = entity.logical_name
    plan = _CHECK_PLANS.get(attributes, tuple(body))
    if plan is not None:  # every name known: convert the values in order
        for (name, column, step, limit, conversion), value in zip(plan, body.values(), strict=True):
            if step is _DROP:
                continue
            if value is None:
                clean[name] = None
            elif (
                step is _TEXT_STEP and type(value) is str and (limit is None or len(value) <= limit)
            ):
                clean[name] = value  # what to_storage answers for valid text
            else:
                clean[name] = conversion(column, logical_name, value)
        return clean
    # A name the plan cannot take (an unknown column or annotation, a type without a
    # converter): the plain loop, which raises the error after converting the values before it.
    for name, value in body.items():
        if "@" in name:
            if name.startswith("@odata."):
                continue
            raise unknown_property(name.split("@", 1)[0], logical_name)
        attr = attributes.get(name)
        if attr is None:
            raise unknown_property(name, logical_name)
        if name in _READ_ONLY:
            continue
        clean[name] = values.to_storage(attr, logical_name, value)
    return clean


_DROP, _TEXT_STEP, _CONVERT = "drop", "text", "convert"
_CheckStep = tuple[str, Attribute, str, int | None, values.Converter]
_ANNOTATION = Attribute("", "", "String")  # what an "@odata." name stands for: nothing


def _drop(attr: Attribute, entity: str, value: Any) -> Any:
    raise AssertionError("a dropped column is never converted")


def _check_plan(
    attributes: dict[str, Attribute], names: tuple[str, ...]
) -> list[_CheckStep] | None:
    """How check_body treats each name of a body; None when one of them is an error (then
    check_body's loop finds it, after converting the values before it)."""
    plan: list[_CheckStep] = []
    for name in names:
        if "@" in name:
            if not name.startswith("@odata."):
                return None
            plan.append((name, _ANNOTATION, _DROP, None, _drop))
            continue
        attr = attributes.get(name)
        if attr is None:
            return None
        convert = values.CONVERTERS.get(attr.kind)
        if convert is None:
            return None
        if name in _READ_ONLY:
            plan.append((name, attr, _DROP, None, _drop))
        elif attr.kind in _TEXT:
            plan.append((name, attr, _TEXT_STEP, attr.max_length, convert))
        else:
            plan.append((name, attr, _CONVERT, None, convert))
    return plan


_CHECK_PLANS = values.ColumnPlans(_check_plan)


def version_mismatch() -> ApiError:
    return ApiError(
        412,
        "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided.",
    )


def _etag_version(header: str) -> int:
    match = _ETAG.match(header.strip())
    if match is None:
        raise bad_request(f"Invalid ETag '{header[:100]}': expected * or W/\"<version>\".")
    return int(match.group(1))


class RowWriter:
    """Writes rows of one table inside the caller's transaction, with audit and versions."""

    def __init__(self, store: Store, entity: Entity, user_id: str) -> None:
        self.store = store
        self.entity = entity
        self.user_id = user_id

    def insert(self, values_: dict[str, Any], row_id: str | None = None) -> dict[str, Any]:
        entity = self.entity
        primary_id = entity.primary_id
        row_id = row_id or values_.pop(primary_id, None) or new_row_id()
        now = utc_now_text()
        row = {**values_, primary_id: row_id, "createdon": now, "modifiedon": now}
        row["versionnumber"] = self.store.next_version()
        try:
            self.store.insert(entity, row)
        except sqlite3.IntegrityError as exc:
            raise self._duplicate(exc, row) from None
        self.store.counts["rows.created"] += 1
        if entity.audit:
            changedata = self.store.changedata.created(entity, values_)
            self.store.audit(entity, row_id, 1, self.user_id, changedata)
        return row

    def update(self, old: dict[str, Any], values_: dict[str, Any]) -> dict[str, Any]:
        entity = self.entity
        values_.pop(entity.primary_id, None)
        changes = {
            **values_,
            "modifiedon": utc_now_text(),
            "versionnumber": self.store.next_version(),
        }
        row_id = old[entity.primary_id]
        try:
            self.store.update(entity, row_id, changes)
        except sqlite3.IntegrityError as exc:
            raise self._duplicate(exc, {**old, **changes}) from None
        self.store.counts["rows.updated"] += 1
        if entity.audit:
            changedata = self.store.changedata.updated(entity, old, values_)
            self.store.audit(entity, row_id, 2, self.user_id, changedata)
        return {**old, **changes}

    def delete(self, old: dict[str, Any]) -> None:
        entity = self.entity
        row_id = old[entity.primary_id]
        self.store.delete(entity, row_id)
        self.store.counts["rows.deleted"] += 1
        if entity.audit:
            changedata = values.deleted_text(entity.attributes, old)
            self.store.audit(entity, row_id, 3, self.user_id, changedata)

    def _duplicate(self, exc: sqlite3.IntegrityError, row: dict[str, Any]) -> ApiError:
        entity = self.entity
        message = str(exc)
        for key in entity.keys.values():
            if all(f"{entity.table}.{c}" in message for c in key.key_attributes):
                shown = ",".join(str(row.get(c)) for c in key.key_attributes)
                return ApiError(
                    412,
                    DUPLICATE_KEY,
                    f"Entity Key {key.schema_name} violated. A record with the same value for"
                    f" {','.join(key.key_attributes)} already exists. A duplicate record cannot be"
                    f" created. Try using a different key value. ({shown})",
                )
        return ApiError(412, DUPLICATE_RECORD, "Cannot insert duplicate key.")


def _entity_uri(request: ApiRequest, entity: Entity, key_text: str) -> str:
    return f"{request.service_root}/{entity.entity_set_name}({key_text})"


def representation(
    root: str,
    entity: Entity,
    row: dict[str, Any],
    status: int,
    location: str,
    select: list[str] | None,
) -> ApiResponse:
    body = render(entity, row, select, f"{root}/$metadata#{entity.entity_set_name}/$entity")
    headers = {
        "Content-Type": JSON_TYPE,
        "OData-Version": "4.0",
        "Preference-Applied": "return=representation",
        "OData-EntityId": location,
        "ETag": body["@odata.etag"],
    }
    return ApiResponse(status, headers, dumps(body))


def _wants_body(request: ApiRequest) -> bool:
    return request.prefer().get("return") == "representation"


def _detects_duplicates(entity: Entity, headers: dict[str, str]) -> bool:
    """Rule-based duplicate detection runs only when asked for and enabled on the table."""
    header = headers.get("mscrm.suppressduplicatedetection")
    return entity.duplicate_detection and (header or "").strip().lower() == "false"


def check_duplicates(
    store: Store, entity: Entity, clean: dict[str, Any], row_id: str | None
) -> None:
    """The emulator's one duplicate detection rule: same primary name (ignoring case)."""
    name = entity.primary_name
    if name is None or clean.get(name) is None:
        return
    twin = store.fetch_one(entity, {name: clean[name]})
    if twin is not None and twin[entity.primary_id] != row_id:
        raise ApiError(
            500,
            "0x80040333",
            "A record was not created or updated because a duplicate of the current record"
            " already exists.",
        )


def create(store: Store, entity: Entity, request: ApiRequest) -> ApiResponse:
    """POST SET: 204 + OData-EntityId, or 201 + the row with return=representation."""
    clean = check_body(entity, request.json())
    select = parse_select(entity, request.option("$select"))
    row_id = clean.pop(entity.primary_id, None)
    if _detects_duplicates(entity, request.headers):
        check_duplicates(store, entity, clean, row_id)
    with store.atomic():
        row = RowWriter(store, entity, request.caller.user_id).insert(clean, row_id)
    location = _entity_uri(request, entity, row[entity.primary_id])
    if _wants_body(request):
        return representation(request.service_root, entity, row, 201, location, select)
    return ApiResponse.empty(204, {"OData-EntityId": location, "Location": location})


def retrieve(store: Store, entity: Entity, target: Target, request: ApiRequest) -> ApiResponse:
    select = parse_select(entity, request.option("$select"))
    row = store.fetch_one(entity, target.where(entity))
    if row is None:
        raise target.missing(entity)
    etag = f'W/"{row["versionnumber"]}"'
    if_none_match = request.header("if-none-match")
    if if_none_match and if_none_match.strip() == etag:
        return ApiResponse.empty(304, {"ETag": etag})
    body = {
        "@odata.context": f"{request.service_root}/$metadata#{entity.entity_set_name}/$entity",
        **render(entity, row, select),
    }
    return ApiResponse.json(200, body, {"ETag": etag})


def upsert(store: Store, entity: Entity, target: Target, request: ApiRequest) -> ApiResponse:
    """PATCH SET(key): update, or create when missing (If-Match / If-None-Match restrict it)."""
    return upsert_row(
        store, entity, target, request.json(), request.option("$select"), request.headers,
        request.service_root, request.caller.user_id,
    )  # fmt: skip


def upsert_row(
    store: Store,
    entity: Entity,
    target: Target,
    body: Any,
    select_text: str | None,
    headers: dict[str, str],
    root: str,
    user_id: str,
) -> ApiResponse:
    """``upsert`` of a decoded body (``headers``: names in lower case; ``root``: the service
    root URL); ``$batch`` calls it directly for its parts."""
    clean = check_body(entity, body)
    select = parse_select(entity, select_text)
    with store.atomic():
        row, created = apply_upsert(
            store, entity, target, clean, user_id, headers.get("if-match"),
            headers.get("if-none-match"), detect_duplicates=_detects_duplicates(entity, headers),
        )  # fmt: skip
    location = f"{root}/{entity.entity_set_name}({target.text})"
    if prefer_of(headers.get("prefer")).get("return") == "representation":
        return representation(root, entity, row, 201 if created else 200, location, select)
    return ApiResponse.empty(204, {"OData-EntityId": location})


def apply_upsert(
    store: Store,
    entity: Entity,
    target: Target,
    clean: dict[str, Any],
    user_id: str,
    if_match: str | None = None,
    if_none_match: str | None = None,
    *,
    detect_duplicates: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Upsert one row inside the caller's transaction; returns (row, created)."""
    old = store.fetch_one(entity, target.where(entity))
    return write_upsert(
        store, entity, target, clean, user_id, old, if_match, if_none_match,
        detect_duplicates=detect_duplicates,
    )  # fmt: skip


def write_upsert(
    store: Store,
    entity: Entity,
    target: Target,
    clean: dict[str, Any],
    user_id: str,
    old: dict[str, Any] | None,
    if_match: str | None = None,
    if_none_match: str | None = None,
    *,
    detect_duplicates: bool = False,
) -> tuple[dict[str, Any], bool]:
    """``apply_upsert`` once the target's row (``old``, None when there is none) was read."""
    writer = RowWriter(store, entity, user_id)
    if detect_duplicates:
        check_duplicates(store, entity, clean, old[entity.primary_id] if old else target.row_id)
    if if_none_match is not None and if_none_match.strip() == "*" and old is not None:
        raise ApiError(412, "", "A record with matching key values already exists.")
    if if_match is not None:
        if old is None:
            raise target.missing(entity)
        if if_match.strip() != "*" and _etag_version(if_match) != old["versionnumber"]:
            raise version_mismatch()
    if old is not None:
        for name in target.key_values or {}:
            clean.pop(name, None)  # a key cannot be changed through its own key URL
        return writer.update(old, clean), False
    if target.key_values is not None:
        for name, value in target.key_values.items():
            clean.setdefault(name, value)  # body values win over URL values
        return writer.insert(clean), True
    return writer.insert(clean, target.row_id), True


def delete(store: Store, entity: Entity, target: Target, request: ApiRequest) -> ApiResponse:
    if_match = request.header("if-match")
    with store.atomic():
        old = store.fetch_one(entity, target.where(entity))
        if old is None:
            raise target.missing(entity)
        if if_match and if_match.strip() != "*" and _etag_version(if_match) != old["versionnumber"]:
            raise version_mismatch()
        RowWriter(store, entity, request.caller.user_id).delete(old)
    return ApiResponse.empty(204)
