"""Column values: check a JSON value against its column, store it, render it back.

DateTime values are kept as UTC text to whole seconds, ``YYYY-MM-DDTHH:MM:SSZ`` (Dataverse stores
UTC without fractions of a second); text compares in time order, so SQLite can sort and filter it.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

from apex_metrics.emulator.errors import ApiError, bad_request, validation
from apex_metrics.emulator.metadata import Attribute
from apex_metrics.formats import utc_z

_Plan = TypeVar("_Plan")
PAYLOAD = "0x80048d19"  # error in the payload: a value of the wrong type
_CANONICAL = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T(?!24)[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_ascii_json = json.encoder.encode_basestring_ascii


def _type_error(attr: Attribute, value: Any, edm: str) -> ApiError:
    shown = str(value)[:100]
    return bad_request(
        f"Cannot convert the literal '{shown}' to the expected type '{edm}' for the property"
        f" '{attr.logical_name}'.",
        PAYLOAD,
    )


def _range_error(attr: Attribute, entity: str, value: Any) -> ApiError:
    return validation(
        f"The value {value} of '{attr.logical_name}' on record of type '{entity}' is outside the"
        f" valid range. Accepted Values: '{_plain(attr.min_value)}' to '{_plain(attr.max_value)}'."
    )


def _plain(number: float | None) -> str:
    if number is None:
        return ""
    return str(int(number)) if float(number).is_integer() else repr(number)


def parse_datetime(text: str) -> str:
    """ISO 8601 text to ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, fractions dropped); ValueError if bad.

    Text already in that form (what clients send) comes back as it is once it parses: year
    1000 or later, so ``%Y`` would write the same four digits, and no hour 24, which some
    Pythons read as the next day.
    """
    if len(text) == 20 and _CANONICAL.fullmatch(text) is not None:
        datetime.fromisoformat(text)  # ValueError for a day, hour... out of range
        return text
    if len(text) < 10 or len(text) > 40:
        raise ValueError(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return utc_z(moment)


def to_storage(attr: Attribute, entity: str, value: Any) -> Any:
    """The SQLite value for ``value``, or an ApiError naming the column and the rule."""
    if value is None:
        return None
    convert = CONVERTERS.get(attr.kind)
    if convert is None:
        raise _type_error(attr, value, attr.kind)
    return convert(attr, entity, value)


def converter(kind: str) -> Converter | None:
    """``to_storage`` of one column type for a value that is not None (None: no such type)."""
    return CONVERTERS.get(kind)


Converter = Callable[[Attribute, str, Any], Any]


def _text(attr: Attribute, entity: str, value: Any) -> Any:
    if not isinstance(value, str):
        raise _type_error(attr, value, "Edm.String")
    if attr.max_length is not None and len(value) > attr.max_length:
        raise validation(
            f"The length of the '{attr.logical_name}' attribute of the '{entity}' entity"
            f" exceeded the maximum allowed length of '{attr.max_length}'."
        )
    return value


def _integer(attr: Attribute, entity: str, value: Any) -> Any:
    kind = attr.kind
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _type_error(attr, value, "Edm.Int32" if kind == "Integer" else "Edm.Int64")
    if kind == "Integer" and not -(2**31) <= value < 2**31:
        raise bad_request("Incorrect attribute value type System.Int64", PAYLOAD)
    if attr.min_value is not None and attr.max_value is not None:
        if not attr.min_value <= value <= attr.max_value:
            raise _range_error(attr, entity, value)
    return value


def _datetime(attr: Attribute, entity: str, value: Any) -> Any:
    if not isinstance(value, str):
        raise _type_error(attr, value, "Edm.DateTimeOffset")
    try:
        text = parse_datetime(value)
    except ValueError:
        raise _type_error(attr, value, "Edm.DateTimeOffset") from None
    return text[:10] if attr.datetime_behavior == "DateOnly" else text


def _boolean(attr: Attribute, entity: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise _type_error(attr, value, "Edm.Boolean")
    return int(value)


def _guid(attr: Attribute, entity: str, value: Any) -> Any:
    return parse_guid(value, attr)


def parse_guid(value: Any, attr: Attribute | None = None) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(uuid.UUID(value))
    except ValueError:
        name = attr.logical_name if attr else "id"
        raise bad_request(
            f"Cannot convert the literal '{str(value)[:100]}' to the expected type 'Edm.Guid'"
            f" for the property '{name}'.",
            PAYLOAD,
        ) from None


def _places(text: str) -> int | None:
    """Decimal places of a plain float repr such as ``1.25``; None when not plain."""
    if "e" in text or "E" in text or "n" in text:
        return None
    dot = text.find(".")
    if dot < 0:
        return 0
    return 0 if text.endswith(".0") else len(text) - dot - 1


def _number(attr: Attribute, entity: str, value: Any) -> float:
    if type(value) is float and attr.min_value is not None and attr.max_value is not None:
        places = _places(repr(value))  # fast path for the common case: a plain float
        if places is not None:
            if not attr.min_value <= value <= attr.max_value:
                raise _range_error(attr, entity, value)
            if attr.precision is not None and places > attr.precision:
                raise validation(
                    f"The value {value} of '{attr.logical_name}' on record of type '{entity}'"
                    f" has more than {attr.precision} decimal places (Precision {attr.precision})."
                )
            return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _type_error(attr, value, "Edm.Decimal")
    try:
        exact = Decimal(value) if isinstance(value, int | str) else Decimal(repr(value))
    except (InvalidOperation, ValueError):
        raise _type_error(attr, value, "Edm.Decimal") from None
    if not exact.is_finite():
        raise _type_error(attr, value, "Edm.Decimal")
    if attr.min_value is not None and attr.max_value is not None:
        if not Decimal(repr(attr.min_value)) <= exact <= Decimal(repr(attr.max_value)):
            raise _range_error(attr, entity, value)
    exponent = exact.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if attr.precision is not None and places > attr.precision:
        stripped = exact.normalize().as_tuple().exponent
        if not isinstance(stripped, int) or -stripped > attr.precision:
            raise validation(
                f"The value {value} of '{attr.logical_name}' on record of type '{entity}' has"
                f" more than {attr.precision} decimal places (Precision {attr.precision})."
            )
    result = float(exact)
    if not math.isfinite(result):
        raise _type_error(attr, value, "Edm.Decimal")
    return result


def to_json(attr: Attribute, stored: Any) -> Any:
    """The Web API JSON value of a stored value."""
    if stored is None:
        return None
    kind = attr.kind
    if kind == "Boolean":
        return bool(stored)
    if kind in ("Decimal", "Money") and attr.precision is not None:
        return round(float(stored), attr.precision)
    return stored


def json_text(value: Any) -> str:
    """``json.dumps(value)`` (default settings) for the scalars a column holds, faster: the same
    text, from the same C string encoder; other types go through ``json.dumps`` itself."""
    kind = type(value)
    if kind is str:
        return _ascii_json(value)
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value)


CONVERTERS: dict[str, Converter] = {  # to_storage by column type
    "String": _text,
    "Memo": _text,
    "Integer": _integer,
    "BigInt": _integer,
    "Decimal": _number,
    "Double": _number,
    "Money": _number,
    "DateTime": _datetime,
    "Boolean": _boolean,
    "Uniqueidentifier": _guid,
}


def json_of(attr: Attribute, stored: Any) -> str:
    """``json_text(to_json(attr, stored))`` in one step (audit records hold this text)."""
    if stored is None:
        return "null"
    kind = attr.kind
    if kind in _AS_STORED:  # to_json gives the value as stored
        value_type = type(stored)
        if value_type is str:
            return _ascii_json(stored)
        if value_type is int:
            return int.__repr__(stored)
        return json_text(stored)
    if kind == "Boolean":
        return "true" if stored else "false"
    if attr.precision is not None and kind in ("Decimal", "Money"):
        rounded = round(float(stored), attr.precision)
        return float.__repr__(rounded) if math.isfinite(rounded) else json.dumps(rounded)
    return json_text(stored)


_AS_STORED = frozenset({"String", "Memo", "Integer", "BigInt", "DateTime", "Uniqueidentifier"})


# --- audit records ---------------------------------------------------------------------------
# ``changedata`` is json.dumps({"changedAttributes": [{"logicalName": name, "oldValue": old,
# "newValue": new}, ...]}) of the to_json values; written out directly, the same text.


def created_text(attributes: dict[str, Attribute], values: dict[str, Any]) -> str:
    """``changedata`` of a create: every value written, none before."""
    plan = _AUDIT_PLANS.get(attributes, tuple(values))
    if plan is None:  # a column the table lacks: KeyError, as to_json(attributes[name]) gives
        plan = [_audit_step(attributes, name) for name in values]
    items = []
    for (_, head, attr, plain), value in zip(plan, values.values(), strict=True):
        text = json_text(value) if plain else json_of(attr, value)
        items.append(head + 'null, "newValue": ' + text + "}")
    return '{"changedAttributes": [' + ", ".join(items) + "]}"


def updated_text(
    attributes: dict[str, Attribute], old: dict[str, Any], values: dict[str, Any]
) -> str:
    """``changedata`` of an update: each value written, and the row's value before."""
    plan = _AUDIT_PLANS.get(attributes, tuple(values))
    if plan is None:
        plan = [_audit_step(attributes, name) for name in values]
    items = []
    for (name, head, attr, plain), value in zip(plan, values.values(), strict=True):
        before = old.get(name)
        if plain:
            old_text, new_text = json_text(before), json_text(value)
        else:
            old_text, new_text = json_of(attr, before), json_of(attr, value)
        items.append(head + old_text + ', "newValue": ' + new_text + "}")
    return '{"changedAttributes": [' + ", ".join(items) + "]}"


_AuditStep = tuple[str, str, Attribute, bool]  # name, item head, column, value as stored?


def _audit_step(attributes: dict[str, Attribute], name: str) -> _AuditStep:
    attr = attributes[name]
    return name, _item_head(name), attr, attr.kind in _AS_STORED


def _audit_plan(
    attributes: dict[str, Attribute], names: tuple[str, ...]
) -> list[_AuditStep] | None:
    if any(name not in attributes for name in names):
        return None
    return [_audit_step(attributes, name) for name in names]


def deleted_text(attributes: dict[str, Attribute], old: dict[str, Any]) -> str:
    """``changedata`` of a delete: the row's custom columns that held a value."""
    items = [
        _item_head(name) + json_of(attr, old.get(name)) + ', "newValue": null}'
        for name, attr in attributes.items()
        if attr.is_custom and old.get(name) is not None
    ]
    return '{"changedAttributes": [' + ", ".join(items) + "]}"


def _item_head(name: str) -> str:
    head = _ITEM_HEADS.get(name)
    if head is None:
        if len(_ITEM_HEADS) > 10_000:
            _ITEM_HEADS.clear()
        head = _ITEM_HEADS[name] = '{"logicalName": ' + json.dumps(name) + ', "oldValue": '
    return head


_ITEM_HEADS: dict[str, str] = {}  # column name -> the start of its changedAttributes items


class ColumnPlans(Generic[_Plan]):
    """What ``build(attributes, names)`` works out for a list of column names of a table,
    kept while the table's columns stay as they were. Columns are only ever added (never
    removed or changed in place), so a table with as many columns as before has the same
    ones. A batch sends the same list of names in part after part: each is worked out once."""

    def __init__(self, build: Callable[[dict[str, Attribute], tuple[str, ...]], _Plan]) -> None:
        self.build = build
        # id(attributes) -> (attributes, how many, {names: plan}); holding the dict keeps its id
        self._tables: dict[int, tuple[dict[str, Attribute], int, dict[tuple[str, ...], _Plan]]]
        self._tables = {}

    def get(self, attributes: dict[str, Attribute], names: tuple[str, ...]) -> _Plan:
        table = self._tables.get(id(attributes))
        if table is None or table[0] is not attributes or table[1] != len(attributes):
            if len(self._tables) > 64:
                self._tables.clear()
            table = (attributes, len(attributes), {})
            self._tables[id(attributes)] = table
        plans = table[2]
        if names in plans:
            return plans[names]
        if len(plans) > 1024:
            plans.clear()
        plan = plans[names] = self.build(attributes, names)
        return plan


_AUDIT_PLANS = ColumnPlans(_audit_plan)
