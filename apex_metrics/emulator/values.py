"""Column values: check a JSON value against its column, store it, render it back.

DateTime values are kept as UTC text to whole seconds, ``YYYY-MM-DDTHH:MM:SSZ`` (Dataverse stores
UTC without fractions of a second); text compares in time order, so SQLite can sort and filter it.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from apex_metrics.emulator.errors import ApiError, bad_request, validation
from apex_metrics.emulator.metadata import Attribute

PAYLOAD = "0x80048d19"  # error in the payload: a value of the wrong type


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
    """ISO 8601 text to ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, fractions dropped); ValueError if bad."""
    if len(text) < 10 or len(text) > 40:
        raise ValueError(text)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_storage(attr: Attribute, entity: str, value: Any) -> Any:
    """The SQLite value for ``value``, or an ApiError naming the column and the rule."""
    if value is None:
        return None
    kind = attr.kind
    if kind in ("String", "Memo"):
        if not isinstance(value, str):
            raise _type_error(attr, value, "Edm.String")
        if attr.max_length is not None and len(value) > attr.max_length:
            raise validation(
                f"The length of the '{attr.logical_name}' attribute of the '{entity}' entity"
                f" exceeded the maximum allowed length of '{attr.max_length}'."
            )
        return value
    if kind in ("Integer", "BigInt"):
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
    if kind in ("Decimal", "Double", "Money"):
        return _number(attr, entity, value)
    if kind == "DateTime":
        if not isinstance(value, str):
            raise _type_error(attr, value, "Edm.DateTimeOffset")
        try:
            text = parse_datetime(value)
        except ValueError:
            raise _type_error(attr, value, "Edm.DateTimeOffset") from None
        return text[:10] if attr.datetime_behavior == "DateOnly" else text
    if kind == "Boolean":
        if not isinstance(value, bool):
            raise _type_error(attr, value, "Edm.Boolean")
        return int(value)
    if kind == "Uniqueidentifier":
        return parse_guid(value, attr)
    raise _type_error(attr, value, kind)


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
