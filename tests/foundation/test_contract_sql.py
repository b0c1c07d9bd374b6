"""SQL cannot import ``apex_metrics.metric.COLUMNS``: this test reads every list of the data
columns in the SQL we run and checks it against COLUMNS, in order (issue 17).

It parses the named blocks of queries.sql, panel.sql and sync.sql, the statements of schema.sql
(migrations are history and are left alone) and the SQL kept in Python (``sync/checks.py``).
A *list* is the comma-separated items of a parenthesised or bracketed group, a SELECT list, a SET
list or a trigger's ``UPDATE OF`` list; each item stands for the column it names (``c.x``,
``%(x)s``, ``… AS x``, ``x = …``, ``x <type> …``, ``CASE … THEN 'x' END``). A list naming at least
``len(COLUMNS) - 3`` data columns is a list of the data columns and must be, exactly, one of
three orders derived from COLUMNS: all of them (FIELD_NAMES), the key first (KEY_FIRST_NAMES),
or all but the key (BODY_COLUMNS, an upsert's SET list). ``EXPECTED`` says which order each place
holds, so that a list that loses a column, or stops parsing, fails as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from apex_metrics import metric
from apex_metrics.sql import load_queries, read_sql
from apex_metrics.sync import checks

pytestmark = pytest.mark.unit

ORDERS = {
    "all": metric.FIELD_NAMES,
    "key first": metric.KEY_FIRST_NAMES,
    "body": tuple(c.name for c in metric.BODY_COLUMNS),
}
DATA = frozenset(metric.FIELD_NAMES)
MIN_NAMES = len(metric.FIELD_NAMES) - 3

# Every place that lists the data columns, and the order of each of its lists in text order.
EXPECTED: dict[tuple[str, str], tuple[str, ...]] = {
    ("queries.sql", "upsert_metric"): ("all", "all", "body"),  # INSERT, VALUES, SET
    ("queries.sql", "insert_metric"): ("all", "all"),  # INSERT, VALUES
    ("queries.sql", "create_stage"): ("all",),
    ("queries.sql", "copy_stage"): ("all",),
    ("queries.sql", "copy_metrics"): ("all",),
    ("queries.sql", "upsert_from_stage"): ("all", "all", "body"),  # INSERT, SELECT, SET
    ("panel.sql", "runs"): ("key first",),  # panel/sources.py RUN_FIELDS
    ("sync.sql", "claim_batch"): ("all",),
    ("sync.sql", "reconcile_create_remote"): ("key first",),
    ("sync.sql", "reconcile_copy_remote"): ("key first",),  # sync/reconcile.py _REMOTE
    ("sync.sql", "reconcile_compare"): ("body", "key first"),  # differences, Dataverse side
    ("schema.sql", "campaign_metrics"): ("all",),  # CREATE TABLE
    ("schema.sql", "apex_metrics_mark_changed"): ("all", "all", "all"),  # NEW, OLD, UPDATE OF
    ("schema.sql", "v_campaign_metrics_pending"): ("all",),
    ("sync/checks.py", "INSERT_MANY"): ("all",),
}

# Lists of data columns that are deliberately not the contract: the columns the panel's rollups
# read (a change to one of them makes an hour stale). A new column joins them only if the panel
# sums it.
NOT_THE_CONTRACT: frozenset[tuple[str, str]] = frozenset(
    {("schema.sql", "apex_metrics_rollup_mark_stale")}
)


# ------------------------------------------------------------------------------------------------
# A small SQL reader: tokens, nested groups, lists, and the column each item stands for.

_TOKEN = re.compile(
    r"""
      (?P<comment>--[^\n]*)
    | (?P<dollar>\$[A-Za-z_]*\$)
    | (?P<string>'(?:[^']|'')*')
    | (?P<param>%\((?P<pname>\w+)\)s)
    | (?P<ident>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)
    | (?P<number>[0-9]+(?:\.[0-9]+)?)
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<space>\s+)
    | (?P<other>::|<>|<=|>=|\|\||.)
    """,
    re.VERBOSE,
)
_TYPES = frozenset(
    "text varchar integer int bigint smallint numeric timestamptz timestamp date boolean "
    "float8 interval json jsonb uuid".split()
)
_SELECT_ENDS = frozenset("FROM INTO WHERE UNION GROUP ORDER LIMIT HAVING".split())
_SET_ENDS = frozenset("WHERE FROM RETURNING".split())


@dataclass(frozen=True)
class Tok:
    kind: str
    text: str

    def word(self) -> str:
        return self.text.upper() if self.kind == "ident" else ""


@dataclass
class Group:
    children: list[Node]


Node = Tok | Group


def parse(sql: str) -> list[Node]:
    stack: list[list[Node]] = [[]]
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "other"
        if kind in ("comment", "space"):
            continue
        if kind == "open":
            stack.append([])
        elif kind == "close":
            inner = stack.pop()
            stack[-1].append(Group(inner))
        else:
            text = match.group("pname") if kind == "param" else match.group()
            stack[-1].append(Tok(kind, text))
    assert len(stack) == 1, "unbalanced brackets"
    return stack[0]


def _split(nodes: list[Node]) -> list[list[Node]]:
    items: list[list[Node]] = [[]]
    for node in nodes:
        if isinstance(node, Tok) and node.text == ",":
            items.append([])
        else:
            items[-1].append(node)
    return items


def _is_word(node: Node, *words: str) -> bool:
    return isinstance(node, Tok) and node.word() in words


def column_of(item: list[Node]) -> str | None:
    """The column an item of a list stands for, when it names one."""
    if not item or not all(isinstance(n, Tok | Group) for n in item):
        return None
    first = item[0]
    if len(item) == 1 and isinstance(first, Tok) and first.kind in ("ident", "param"):
        return first.text.rsplit(".", 1)[-1]
    last = item[-1]
    if len(item) >= 3 and _is_word(item[-2], "AS") and isinstance(last, Tok):
        return last.text  # expression AS name
    if isinstance(first, Tok) and first.kind == "ident" and len(item) >= 2:
        second = item[1]
        if isinstance(second, Tok) and second.text == "=":
            return first.text.rsplit(".", 1)[-1]  # SET name = value
        if isinstance(second, Tok) and second.text.lower() in _TYPES:
            return first.text  # a column definition
    if _is_word(first, "CASE") and _is_word(last, "END") and len(item) >= 4:
        value, then = item[-2], item[-3]
        if isinstance(value, Tok) and value.kind == "string" and _is_word(then, "THEN"):
            return value.text.strip("'")  # CASE WHEN … THEN 'name' END
    return None


def _clause(nodes: list[Node], start: int, ends: frozenset[str]) -> list[Node]:
    out: list[Node] = []
    for i in range(start, len(nodes)):
        node = nodes[i]
        if isinstance(node, Tok) and (node.text == ";" or node.kind == "dollar"):
            break
        if isinstance(node, Tok) and node.word() in ends:
            if node.word() == "FROM" and i > 0 and _is_word(nodes[i - 1], "DISTINCT"):
                pass  # IS DISTINCT FROM
            else:
                break
        out.append(node)
    return out


def lists(nodes: list[Node]) -> Iterator[list[str | None]]:
    """Every list in ``nodes`` (in text order), as the column each of its items names."""
    for i, node in enumerate(nodes):
        if isinstance(node, Group):
            if not any(_is_word(n, "SELECT") for n in node.children):
                yield [column_of(item) for item in _split(node.children)]
            yield from lists(node.children)
        elif _is_word(node, "SELECT"):
            yield [column_of(item) for item in _split(_clause(nodes, i + 1, _SELECT_ENDS))]
        elif _is_word(node, "SET"):
            yield [column_of(item) for item in _split(_clause(nodes, i + 1, _SET_ENDS))]
        elif _is_word(node, "OF") and i > 0 and _is_word(nodes[i - 1], "UPDATE"):
            yield [column_of(item) for item in _split(_clause(nodes, i + 1, frozenset({"ON"})))]


def data_column_lists(sql: str) -> list[tuple[str, ...]]:
    """The lists of ``sql`` that list the data columns, each as the data columns it names."""
    found = []
    for names in lists(parse(sql)):
        data = tuple(n for n in names if n in DATA)
        if len(data) >= MIN_NAMES:
            found.append(data)
    return found


_STATEMENT = re.compile(r"^(?=CREATE|ALTER|INSERT|DROP|COMMENT)", re.MULTILINE)
_OBJECT = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP\s+)?"
    r"(?:TABLE|VIEW|FUNCTION|TRIGGER|INDEX|TYPE)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)"
)


def schema_statements() -> dict[str, str]:
    """schema.sql by statement, named by the object created; a trigger's function and the
    trigger that runs it share their name (and their lists are read together)."""
    out: dict[str, str] = {}
    for chunk in _STATEMENT.split(read_sql("schema.sql")):
        match = _OBJECT.match(chunk)
        name = match.group(1) if match else chunk.split("\n", 1)[0]
        out[name] = out.get(name, "") + chunk
    return out


def sources() -> dict[tuple[str, str], str]:
    """Every SQL text that may list the data columns, by (file, block or object)."""
    out: dict[tuple[str, str], str] = {}
    for filename in ("queries.sql", "panel.sql", "sync.sql"):
        for name, sql in load_queries(filename).items():
            out[(filename, name)] = sql
    for name, sql in schema_statements().items():
        out[("schema.sql", name)] = sql
    out[("sync/checks.py", "INSERT_MANY")] = checks.INSERT_MANY
    return out


# ------------------------------------------------------------------------------------------------


def test_sql_lists_of_the_data_columns_follow_metric_columns() -> None:
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for place, sql in sources().items():
        found = data_column_lists(sql)
        if not found or place in NOT_THE_CONTRACT:
            continue
        seen.add(place)
        expected = EXPECTED.get(place)
        if expected is None:
            problems.append(f"{place}: lists the data columns; add it to EXPECTED: {found}")
            continue
        if len(found) != len(expected):
            problems.append(f"{place}: {len(found)} lists of the data columns, not {len(expected)}")
        for i, (names, order) in enumerate(zip(found, expected, strict=False)):
            if names != ORDERS[order]:
                missing = [n for n in ORDERS[order] if n not in names]
                problems.append(
                    f"{place} list {i + 1}: not metric.COLUMNS ({order}); "
                    f"missing {missing}, got {list(names)}"
                )
    for place in EXPECTED.keys() - seen:
        problems.append(f"{place}: no list of the data columns found (renamed, or parse failure?)")
    assert not problems, "\n".join(problems)
