"""SQL files of apex-metrics: named query blocks, numbered migrations and the full schema.

A query file is a sequence of blocks, each opened by a ``-- name: <identifier>`` line (the style
of procrastinate's ``queries.sql``)::

    -- name: upsert_metric
    -- Insert a run, or update it and make it pending again.
    INSERT INTO campaign_metrics ...

Comment lines directly after the name line are the block's description and are kept in the SQL.
Each part has its own file: ``queries.sql`` (foundation), ``sync.sql``, ``panel.sql``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import LiteralString

_NAME_LINE = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def read_sql(filename: str) -> LiteralString:
    """The text of one file of this package (``"schema.sql"``, ``"migrations/0001_x.sql"``)."""
    path = resources.files(__package__).joinpath(filename)
    # The files ship with the package and are never built from user input.
    return path.read_text(encoding="utf-8")


@cache
def load_queries(filename: str) -> dict[str, LiteralString]:
    """Parse a file of ``-- name:`` blocks into ``{name: sql}``.

    Raises ``ValueError`` for a file without blocks, text before the first block, an empty block
    or a name used twice, so that a broken file fails at import time rather than mid-run.
    """
    text = read_sql(filename)
    matches = list(_NAME_LINE.finditer(text))
    if not matches:
        raise ValueError(f"{filename}: no '-- name:' blocks")
    head = text[: matches[0].start()]
    if any(ln.strip() and not ln.lstrip().startswith("--") for ln in head.splitlines()):
        raise ValueError(f"{filename}: SQL before the first '-- name:' line")
    queries: dict[str, LiteralString] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = match.group(1)
        body = text[match.end() : end].strip()
        if not any(ln.strip() and not ln.lstrip().startswith("--") for ln in body.splitlines()):
            raise ValueError(f"{filename}: block {name!r} is empty")
        if name in queries:
            raise ValueError(f"{filename}: block {name!r} is defined twice")
        queries[name] = body
    return queries


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered migration file: ``migrations/NNNN_slug.sql``."""

    version: int
    name: str  # "0001_campaign_metrics"
    sql: LiteralString


def load_migrations() -> list[Migration]:
    """Every migration file, in version order. Two files with one number are an error."""
    folder = resources.files(__package__).joinpath("migrations")
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version:04d}")
        sql = read_sql(f"migrations/{entry.name}")
        found[version] = Migration(version, entry.name.removesuffix(".sql"), sql)
    return [found[v] for v in sorted(found)]
