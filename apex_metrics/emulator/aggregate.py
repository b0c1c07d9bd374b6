"""``$apply``: ``filter(...)`` steps, then ``aggregate(...)`` or ``groupby((...),aggregate(...))``.

Like Dataverse: at most ``max_aggregate_records`` rows may be aggregated (else 0x8004E023),
no grouping by DateTime columns, no ``countdistinct`` and no ``$orderby`` on aliases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from apex_metrics.emulator import values
from apex_metrics.emulator.errors import AGGREGATE_LIMIT, ApiError, bad_request, unknown_property
from apex_metrics.emulator.metadata import Entity
from apex_metrics.emulator.query import FilterSql, is_identifier
from apex_metrics.emulator.store import Store, quote

_AGGREGATE = re.compile(r"^\s*(\S+)\s+with\s+(\w+)\s+as\s+(\S+)\s*$")
_COUNT = re.compile(r"^\s*\$count\s+as\s+(\S+)\s*$")
_FUNCS = {"sum": "SUM", "average": "AVG", "min": "MIN", "max": "MAX"}
_NUMERIC = {"Integer", "BigInt", "Decimal", "Double", "Money"}


@dataclass(slots=True)
class Apply:
    filters: list[str] = field(default_factory=list)
    groupby: list[str] = field(default_factory=list)
    aggregates: list[tuple[str, str | None, str]] = field(default_factory=list)  # func, col, alias

    @property
    def aliases(self) -> set[str]:
        return {alias for _, _, alias in self.aggregates}


def split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses and single-quoted strings."""
    parts, depth, quoted, start = [], 0, False, 0
    for index, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth < 0:
                raise bad_request("Unbalanced parentheses in $apply.")
        elif not quoted and depth == 0 and char == sep:
            parts.append(text[start:index])
            start = index + 1
    if depth or quoted:
        raise bad_request("Unbalanced parentheses or quotes in $apply.")
    parts.append(text[start:])
    return parts


def _call(step: str) -> tuple[str, str]:
    step = step.strip()
    match = re.match(r"^(\w+)\((.*)\)$", step, re.DOTALL)
    if match is None:
        raise bad_request(f"Invalid $apply transformation {step[:100]!r}.")
    return match.group(1), match.group(2)


def parse_apply(entity: Entity, text: str) -> Apply:
    spec = Apply()
    steps = split_top(text, "/")
    for position, step in enumerate(steps):
        name, inner = _call(step)
        last = position == len(steps) - 1
        if name == "filter" and not last:
            spec.filters.append(inner)
        elif name == "aggregate" and last:
            _aggregates(entity, inner, spec)
        elif name == "groupby" and last:
            _groupby(entity, inner, spec)
        else:
            raise bad_request(
                f"Unsupported $apply transformation '{name}' here: use filter(...) steps, then"
                " one aggregate(...) or groupby(...)."
            )
    return spec


def _groupby(entity: Entity, inner: str, spec: Apply) -> None:
    parts = split_top(inner, ",")
    columns = parts[0].strip()
    if not (columns.startswith("(") and columns.endswith(")")):
        raise bad_request("groupby takes a parenthesised list of properties: groupby((a,b)).")
    for name in (c.strip() for c in columns[1:-1].split(",")):
        attr = entity.attributes.get(name)
        if attr is None:
            raise unknown_property(name, entity.logical_name)
        if attr.kind == "DateTime":
            raise bad_request("Grouping by DateTime properties is not supported with $apply.")
        spec.groupby.append(name)
    rest = ",".join(parts[1:]).strip()
    if rest:
        name, aggs = _call(rest)
        if name != "aggregate":
            raise bad_request("groupby takes an optional aggregate(...) as its second argument.")
        _aggregates(entity, aggs, spec)


def _aggregates(entity: Entity, inner: str, spec: Apply) -> None:
    for item in split_top(inner, ","):
        count = _COUNT.match(item)
        if count:
            spec.aggregates.append(("COUNT", None, _alias(count.group(1))))
            continue
        match = _AGGREGATE.match(item)
        if match is None:
            raise bad_request(f"Invalid aggregate expression {item.strip()[:100]!r}.")
        column, func, alias = match.groups()
        attr = entity.attributes.get(column)
        if attr is None:
            raise unknown_property(column, entity.logical_name)
        if func == "countdistinct":
            raise bad_request("countdistinct is not supported; use FetchXML for distinct counts.")
        if func not in _FUNCS:
            raise bad_request(f"Unknown aggregation method '{func}'.")
        if func in ("sum", "average") and attr.kind not in _NUMERIC:
            raise bad_request(f"{func} needs a numeric property; '{column}' is {attr.kind}.")
        spec.aggregates.append((_FUNCS[func], column, _alias(alias)))


def _alias(name: str) -> str:
    if not is_identifier(name):
        raise bad_request(f"Invalid alias {name!r} in $apply.")
    return name


def run_apply(
    store: Store, entity: Entity, spec: Apply, where: list[str], params: list[Any], limit: int
) -> list[dict[str, Any]]:
    """Aggregate rows matching ``where`` plus the ``filter(...)`` steps."""
    clauses, args = list(where), list(params)
    for text in spec.filters:
        compiler = FilterSql(entity)
        clauses.append(compiler.compile(text))
        args.extend(compiler.params)
    condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    table = quote(entity.table)
    (matched,) = store.conn.execute(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {table}{condition} LIMIT ?)", (*args, limit + 1)
    ).fetchone()
    if matched > limit:
        raise ApiError(
            400,
            AGGREGATE_LIMIT,
            "The maximum record limit is exceeded. Reduce the number of records.",
        )
    selects = [quote(c) for c in spec.groupby]
    for func, column, alias in spec.aggregates:
        selects.append(f"{func}({quote(column) if column else '*'}) AS {quote(alias)}")
    group = f" GROUP BY {', '.join(quote(c) for c in spec.groupby)}" if spec.groupby else ""
    order = f" ORDER BY {', '.join(quote(c) for c in spec.groupby)}" if spec.groupby else ""
    if not selects:
        raise bad_request("$apply needs at least one group or aggregate.")
    cursor = store.conn.execute(
        f"SELECT {', '.join(selects)} FROM {table}{condition}{group}{order}", args
    )
    result = []
    for row in cursor.fetchall():
        item: dict[str, Any] = {}
        for index, name in enumerate(spec.groupby):
            item[name] = values.to_json(entity.attributes[name], row[index])
        for offset, (func, column, alias) in enumerate(spec.aggregates):
            value = row[len(spec.groupby) + offset]
            attr = entity.attributes.get(column) if column else None
            if attr is not None and func in ("MIN", "MAX", "SUM"):
                value = values.to_json(attr, value)
            if attr is not None and func == "SUM" and attr.kind in ("Integer", "BigInt"):
                value = int(value) if value is not None else None
            item[alias] = value
        result.append(item)
    return result
