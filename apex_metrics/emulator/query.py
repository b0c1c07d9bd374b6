"""OData query options translated to SQLite: ``$filter`` (parsed by odata-query), ``$select``,
``$orderby``, ``$apply``, and the opaque paging cookie of ``@odata.nextLink``.

Literals are bound as parameters, never pasted into SQL. String comparisons ignore case, as on
Dataverse (SQL Server's default collation).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote as url_quote
from urllib.parse import unquote

from odata_query import ast
from odata_query.grammar import ODataLexer, ODataParser

from apex_metrics.emulator.errors import ApiError, bad_request, unknown_property
from apex_metrics.emulator.metadata import Attribute, Entity
from apex_metrics.emulator.store import quote
from apex_metrics.emulator.values import parse_datetime
from apex_metrics.formats import ascii_int

MAX_FILTER_LENGTH = 32_768
_NUMERIC = {"Integer", "BigInt", "Decimal", "Double", "Money"}
_TEXT = {"String", "Memo"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FUNCTIONS = {"contains": ("%", "%"), "startswith": ("", "%"), "endswith": ("%", "")}
_SQL_OPS: dict[type[ast._Node], str] = {
    ast.Eq: "=",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}


def _syntax(text: str, detail: str) -> ApiError:
    return bad_request(f"Syntax error in the $filter expression '{text[:200]}': {detail}")


def parse_filter(text: str) -> ast._Node:
    """The odata-query AST of a ``$filter`` expression, or a 400."""
    if len(text) > MAX_FILTER_LENGTH:
        raise bad_request("The $filter expression is too long.")
    if not text.strip():
        raise _syntax(text, "the expression is empty")
    try:
        return ODataParser().parse(ODataLexer().tokenize(text))  # type: ignore[no-any-return]
    except RecursionError:
        raise _syntax(text, "the expression is nested too deeply") from None
    except Exception as exc:  # odata-query and sly raise several kinds for bad syntax
        raise _syntax(text, str(exc)[:200] or type(exc).__name__) from None


@dataclass(slots=True)
class FilterSql:
    """A ``$filter`` compiled for one table: SQL text plus bound parameters."""

    entity: Entity
    params: list[Any] = field(default_factory=list)

    def compile(self, text: str) -> str:
        try:
            return self._bool(parse_filter(text))
        except RecursionError:
            raise _syntax(text, "the expression is nested too deeply") from None

    def _attr(self, node: ast._Node) -> Attribute:
        if isinstance(node, ast.Identifier) and not node.namespace:
            attr = self.entity.attributes.get(node.name)
            if attr is None:
                raise unknown_property(node.name, self.entity.logical_name)
            return attr
        if isinstance(node, ast.Attribute):
            raise bad_request("Navigation properties are not supported in $filter.")
        if isinstance(node, ast.Call):
            raise bad_request(
                f"The function '{node.func.name}' is not supported here in $filter"
                " (only contains, startswith and endswith, as conditions)."
            )
        raise bad_request(f"Expected a property name in $filter, got {type(node).__name__}.")

    def _bool(self, node: ast._Node) -> str:
        if isinstance(node, ast.BoolOp):
            op = "AND" if isinstance(node.op, ast.And) else "OR"
            return f"({self._bool(node.left)} {op} {self._bool(node.right)})"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return f"(NOT {self._bool(node.operand)})"
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Identifier):
            attr = self._attr(node)
            if attr.kind == "Boolean":
                return f"({quote(attr.logical_name)} = 1)"
        raise bad_request("The $filter expression must be a condition (comparison or function).")

    def _literal(self, node: ast._Node, attr: Attribute) -> str:
        if isinstance(node, ast.Null):
            return "NULL"
        value = _literal_value(node, attr)
        self.params.append(value)
        return "?"

    def _compare(self, node: ast.Compare) -> str:
        left, right = node.left, node.right
        if not isinstance(left, ast.Identifier) and isinstance(right, ast.Identifier):
            left, right = right, left  # 5 lt x  ->  x gt 5 (mirrored below)
            mirrored = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}
            comparator: ast._Node = mirrored.get(type(node.comparator), type(node.comparator))()
        else:
            comparator = node.comparator
        attr = self._attr(left)
        column = quote(attr.logical_name)
        if isinstance(comparator, ast.In):
            if not isinstance(right, ast.List) or not right.val:
                raise bad_request("The 'in' operator needs a non-empty list of values.")
            marks = ", ".join(self._literal(item, attr) for item in right.val)
            return f"{column} IN ({marks})"
        if isinstance(right, ast.Identifier):
            other = self._attr(right)
            return f"{column} {_SQL_OPS[type(comparator)]} {quote(other.logical_name)}"
        if isinstance(right, ast.Null):
            if isinstance(comparator, ast.Eq):
                return f"{column} IS NULL"
            if isinstance(comparator, ast.NotEq):
                return f"{column} IS NOT NULL"
            raise bad_request("null can only be compared with eq or ne.")
        op = _SQL_OPS.get(type(comparator))
        if op is None:
            raise bad_request(f"Unsupported operator {type(comparator).__name__} in $filter.")
        return f"{column} {op} {self._literal(right, attr)}"

    def _call(self, node: ast.Call) -> str:
        name = node.func.name.lower()
        if node.func.namespace or name not in _FUNCTIONS:
            raise bad_request(f"The function '{node.func.name}' is not supported in $filter.")
        if len(node.args) != 2 or not isinstance(node.args[1], ast.String):
            raise bad_request(f"{name} takes a property and a string literal.")
        attr = self._attr(node.args[0])
        if attr.kind not in _TEXT:
            raise bad_request(f"{name} needs a string property; '{attr.logical_name}' is not.")
        prefix, suffix = _FUNCTIONS[name]
        escaped = re.sub(r"([\\%_])", r"\\\1", node.args[1].val)
        self.params.append(f"{prefix}{escaped}{suffix}")
        return f"{quote(attr.logical_name)} LIKE ? ESCAPE '\\'"


def _incompatible(attr: Attribute, node: ast._Node) -> ApiError:
    return bad_request(
        "A binary operator with incompatible types was detected. Found operand types"
        f" '{attr.kind}' and '{type(node).__name__}' for property '{attr.logical_name}'."
    )


def _literal_value(node: ast._Node, attr: Attribute) -> Any:
    kind = attr.kind
    if kind in _NUMERIC:
        if isinstance(node, ast.Integer):
            number = int(node.val)
            if not -(2**63) <= number < 2**63:
                raise bad_request(f"The number {node.val[:40]} in $filter is out of range.")
            return number
        if isinstance(node, ast.Float):
            return float(node.val)
    elif kind in _TEXT:
        if isinstance(node, ast.String):
            return node.val
    elif kind == "DateTime":
        if isinstance(node, ast.DateTime | ast.String):
            try:
                return parse_datetime(node.val)
            except ValueError:
                raise _incompatible(attr, node) from None
        if isinstance(node, ast.Date):
            return node.val if attr.datetime_behavior == "DateOnly" else node.val + "T00:00:00Z"
    elif kind == "Boolean":
        if isinstance(node, ast.Boolean):
            return 1 if node.val.lower() == "true" else 0
    elif kind == "Uniqueidentifier":
        if isinstance(node, ast.GUID | ast.String):
            return node.val.lower()
    raise _incompatible(attr, node)


def parse_select(entity: Entity, text: str | None) -> list[str] | None:
    """Column names of ``$select`` (None: every column)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",")]
    for name in names:
        if name not in entity.attributes:
            if not name:
                raise bad_request("$select has an empty column name.")
            raise unknown_property(name, entity.logical_name)
    return names


def parse_orderby(entity: Entity, text: str | None, aliases: set[str] | None = None) -> str:
    """The SQL ``ORDER BY`` list of ``$orderby`` ("" when absent)."""
    if text is None:
        return ""
    terms = []
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise bad_request(f"Invalid $orderby term {part.strip()!r}.")
        if aliases and words[0] in aliases:
            raise bad_request("The query node SingleValueOpenPropertyAccess is not supported")
        if words[0] not in entity.attributes:
            raise unknown_property(words[0], entity.logical_name)
        direction = " DESC" if len(words) == 2 and words[1] == "desc" else ""
        terms.append(quote(words[0]) + direction)
    return ", ".join(terms)


def parse_top(text: str | None) -> int | None:
    if text is None:
        return None
    top = ascii_int(text, 9)
    if top is None:
        raise bad_request(
            f"Invalid value for $top: '{text[:50]}'. Expected a non-negative integer."
        )
    return top


# --- paging cookie ----------------------------------------------------------------------------


def make_skiptoken(state: dict[str, Any], page: int) -> str:
    """An opaque ``$skiptoken`` shaped like Dataverse's paging cookie."""
    raw = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()
    cookie = f'<cookie pagenumber="{page}" pagingcookie="{url_quote(raw)}" istracking="False" />'
    return cookie


def read_skiptoken(text: str) -> dict[str, Any]:
    match = re.search(r'pagingcookie="([^"]*)"', text)
    page = re.search(r'pagenumber="(\d{1,9})"', text)
    try:
        if match is None or page is None:
            raise ValueError
        state = json.loads(base64.urlsafe_b64decode(unquote(match.group(1)).encode()))
        if not isinstance(state, dict) or "o" not in state:
            raise ValueError
        for value in state.values():  # offsets and versions: small non-negative integers
            if type(value) is not int or not 0 <= value < 2**53:
                raise ValueError
        state["page"] = int(page.group(1))
        return state
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request("The $skiptoken is not valid: follow @odata.nextLink as it is.") from None


def is_identifier(name: str) -> bool:
    return bool(_IDENT.match(name))
