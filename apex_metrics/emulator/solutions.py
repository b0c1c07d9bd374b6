"""Solutions, publishers, solution components, publishing and the organization row.

As the Web API exposes them: the entity sets ``publishers`` (``customizationprefix``),
``solutions`` (``uniquename``, ``_publisherid_value``), ``solutioncomponents`` (``objectid``,
``componenttype``, ``_solutionid_value``) and ``organizations`` (``isauditenabled``), read-only
and queryable like any table. Metadata created with the ``MSCRM.SolutionUniqueName`` header
becomes components of that solution (and, as every component, of the ``Default`` solution);
``PublishXml`` and ``PublishAllXml`` are accepted and recorded for ``/_emulator/stats``.

Componenttype values: Entity 1, Attribute 2, EntityKey 14 (the ``componenttype`` choices of the
solutioncomponent table).
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ElementTree
import zlib
from dataclasses import dataclass
from typing import Any

from apex_metrics.emulator import collection, rows
from apex_metrics.emulator.errors import (
    UNKNOWN_PROPERTY,
    ApiError,
    bad_request,
    method_not_allowed,
    not_found,
)
from apex_metrics.emulator.messages import ApiRequest, ApiResponse
from apex_metrics.emulator.metadata import Attribute, Entity
from apex_metrics.emulator.store import Store, quote, utc_now_text

HEADER = "MSCRM.SolutionUniqueName"
ENTITY, ATTRIBUTE, ENTITY_KEY = 1, 2, 14
DEFAULT_SOLUTION = "Default"
DEFAULT_PREFIX = "new"  # the Default Publisher's prefix
_NAMESPACE = uuid.UUID("6f1f6d1e-5a3b-4c1d-9a43-0e6d3a1c0001")
_UNIQUE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,64}$")
_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9]{1,7}$")
_AGGREGATE_LIMIT = 50_000  # records an $apply may touch (the service's limit)


def parse_seed(text: str) -> tuple[str, str]:
    """``UNIQUENAME=PREFIX`` as (unique name, prefix); ``ValueError`` says what is wrong."""
    name, sep, prefix = text.partition("=")
    name, prefix = name.strip(), prefix.strip().rstrip("_")
    if not sep:
        raise ValueError(f"expected UNIQUENAME=PREFIX, got {text!r}")
    check_seed(name, prefix)
    return name, prefix


def check_seed(name: str, prefix: str) -> None:
    if not _UNIQUE_NAME.match(name):
        raise ValueError(
            f"solution unique name {name!r}: only A-Z, a-z, 0-9 and _, not starting with a digit"
        )
    if not _PREFIX.match(prefix) or prefix.lower().startswith("mscrm"):
        raise ValueError(
            f"publisher prefix {prefix!r}: 2 to 8 letters or digits, starting with a letter, "
            "not starting with 'mscrm'"
        )


def _id(kind: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{name.lower()}"))


def _option_value_prefix(prefix: str) -> int:
    """A stable customizationoptionvalueprefix (10000-99999) for a prefix."""
    return 10000 + zlib.crc32(prefix.lower().encode()) % 90000


def _table(
    logical: str, schema: str, entity_set: str, code: int, columns: list[tuple[str, str]]
) -> Entity:
    entity = Entity(logical, schema, entity_set, code)
    primary = Attribute(
        f"{logical}id", f"{schema}Id", "Uniqueidentifier", is_primary_id=True, is_custom=False
    )
    attributes = [primary]
    for name, kind in columns:
        attribute = Attribute(name, name, kind, is_custom=False)
        if kind == "String":
            attribute.max_length = 256
        if kind == "Integer":
            attribute.min_value, attribute.max_value = -2147483648.0, 2147483647.0
        if kind == "DateTime":
            attribute.format, attribute.datetime_behavior = "DateAndTime", "UserLocal"
        attributes.append(attribute)
    entity.attributes = {a.logical_name: a for a in attributes}
    return entity


def system_tables() -> dict[str, Entity]:
    """The read-only entity sets, by entity set name."""
    tables = [
        _table("publisher", "Publisher", "publishers", 7101, [
            ("uniquename", "String"), ("friendlyname", "String"),
            ("customizationprefix", "String"), ("customizationoptionvalueprefix", "Integer"),
        ]),
        _table("solution", "Solution", "solutions", 7100, [
            ("uniquename", "String"), ("friendlyname", "String"), ("version", "String"),
            ("ismanaged", "Boolean"), ("isvisible", "Boolean"),
            ("_publisherid_value", "Uniqueidentifier"),
        ]),
        _table("solutioncomponent", "SolutionComponent", "solutioncomponents", 7103, [
            ("objectid", "Uniqueidentifier"), ("componenttype", "Integer"),
            ("_solutionid_value", "Uniqueidentifier"), ("rootcomponentbehavior", "Integer"),
            ("ismetadata", "Boolean"), ("createdon", "DateTime"),
        ]),
        _table("organization", "Organization", "organizations", 1019, [
            ("name", "String"), ("isauditenabled", "Boolean"),
        ]),
    ]  # fmt: skip
    return {t.entity_set_name: t for t in tables}


@dataclass(frozen=True, slots=True)
class Solution:
    """A solution that takes components: its id and its publisher's prefix."""

    solution_id: str
    unique_name: str
    prefix: str


class Solutions:
    """The solution tables of one store, seeded from the configuration."""

    def __init__(
        self,
        store: Store,
        seeds: tuple[tuple[str, str], ...],
        organization_id: str,
        org_auditing: bool,
    ) -> None:
        for name, prefix in seeds:
            check_seed(name, prefix)
        self.store = store
        self.seeds = ((DEFAULT_SOLUTION, DEFAULT_PREFIX), *seeds)
        self.organization_id = organization_id
        self.org_auditing = org_auditing
        # No audit records at all when the organization's auditing is off, whatever the tables
        # say (auditing is on only when the organization, the table and the column have it on).
        store.auditing = org_auditing
        self.entity_sets = system_tables()
        self.publishes: list[dict[str, Any]] = []
        self._create_tables()
        self._version = max(
            int(self.store.conn.execute(f"SELECT COALESCE(MAX(versionnumber), 0) FROM {t}")
                .fetchone()[0])
            for t in ("e_publisher", "e_solution", "e_solutioncomponent", "e_organization")
        )  # fmt: skip
        self.seed()

    def _next_version(self) -> int:
        """Row versions of these tables (their etags): a counter of their own, so that they
        leave the data rows' versions (and change tracking) as they were."""
        self._version += 1
        return self._version

    @property
    def default_id(self) -> str:
        return _id("solution", DEFAULT_SOLUTION)

    def _create_tables(self) -> None:
        with self.store.transaction():
            for entity in self.entity_sets.values():
                columns = [f"{quote(entity.primary_id)} TEXT PRIMARY KEY NOT NULL"]
                for attribute in entity.attributes.values():
                    if not attribute.is_primary_id:
                        collate = " COLLATE NOCASE" if attribute.kind == "String" else ""
                        sql_type = "INTEGER" if attribute.kind in ("Integer", "Boolean") else "TEXT"
                        columns.append(f"{quote(attribute.logical_name)} {sql_type}{collate}")
                columns.append('"versionnumber" INTEGER NOT NULL')
                self.store.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {quote(entity.table)} ({', '.join(columns)})"
                )
            self.store.conn.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS e_solutioncomponent_member ON"
                " e_solutioncomponent (_solutionid_value, objectid, componenttype)"
            )

    def seed(self) -> None:
        """Write the organization, the Default solution and the configured ones (again)."""
        conn = self.store.conn
        with self.store.transaction():
            conn.execute(
                "INSERT OR REPLACE INTO e_organization VALUES (?, ?, ?, ?)",
                (self.organization_id, "apex-local", int(self.org_auditing),
                 self._next_version()),
            )  # fmt: skip
            for name, prefix in self.seeds:
                publisher_id = _id("publisher", prefix)
                default = name == DEFAULT_SOLUTION
                publisher = "DefaultPublisher" if default else f"{prefix.lower()}publisher"
                friendly = "Default Publisher" if default else f"Publisher {prefix.lower()}"
                conn.execute(
                    "INSERT OR REPLACE INTO e_publisher VALUES (?, ?, ?, ?, ?, ?)",
                    (publisher_id, publisher, friendly, prefix.lower(),
                     _option_value_prefix(prefix), self._next_version()),
                )  # fmt: skip
                conn.execute(
                    "INSERT OR REPLACE INTO e_solution VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (_id("solution", name), name, "Default Solution" if default else name,
                     "1.0.0.0", 0, int(not default), publisher_id, self._next_version()),
                )  # fmt: skip

    def reset(self) -> None:
        """Forget every component and publish; seed again (the admin reset)."""
        with self.store.transaction():
            self.store.conn.execute("DELETE FROM e_solutioncomponent")
        self.publishes.clear()
        self.seed()

    # --- the MSCRM.SolutionUniqueName header ------------------------------------------------------

    def target(self, request: ApiRequest) -> Solution | None:
        """The solution named by the request's header; an unknown name is a 404, as for any
        record that does not exist (checked before anything is created)."""
        name = request.header(HEADER)
        if name is None or not name.strip():
            return None
        found = self.store.conn.execute(
            "SELECT s.solutionid, s.uniquename, p.customizationprefix FROM e_solution s"
            " JOIN e_publisher p ON p.publisherid = s._publisherid_value"
            " WHERE s.uniquename = ?",
            (name.strip(),),
        ).fetchone()
        if found is None:
            raise not_found(f"solution With UniqueName = {name.strip()[:100]} Does Not Exist")
        return Solution(str(found[0]), str(found[1]), str(found[2]))

    def add(self, solution: Solution | None, object_id: str, component_type: int) -> None:
        """Make ``object_id`` a component of the Default solution and of ``solution``."""
        targets = {self.default_id}
        if solution is not None:
            targets.add(solution.solution_id)
        with self.store.atomic():
            for solution_id in sorted(targets):
                self.store.conn.execute(
                    "INSERT OR IGNORE INTO e_solutioncomponent VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (str(uuid.uuid4()), object_id, component_type, solution_id, 0, 1,
                     utc_now_text(), self._next_version()),
                )  # fmt: skip

    # --- reading the entity sets, publishing ------------------------------------------------------

    def read(self, request: ApiRequest, name: str, ref: str | None, rest: list[str]) -> ApiResponse:
        entity = self.entity_sets[name]
        if request.method != "GET":
            raise method_not_allowed(request.method, name if ref is None else f"{name}(...)")
        if ref is None and not rest:
            return collection.list_rows(self.store, entity, request, _AGGREGATE_LIMIT)
        if ref is None and rest == ["$count"]:
            return collection.count_rows(self.store, entity, request)
        if ref is not None and not rest:
            target = rows.parse_target(self.store, entity, ref)
            return rows.retrieve(self.store, entity, target, request)
        segment = rest[0] if rest else name
        raise ApiError(404, UNKNOWN_PROPERTY, f"Resource not found for the segment '{segment}'.")

    def publish(self, request: ApiRequest, action: str) -> ApiResponse:
        """``PublishXml`` (``{"ParameterXml": "<importexportxml>…"}``) or ``PublishAllXml``:
        definitions already take effect at once here, so publishing is only recorded."""
        entities: list[str] = []
        if action == "PublishXml":
            body = request.json()
            text = body.get("ParameterXml") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise bad_request("PublishXml needs the ParameterXml parameter (a string).")
            entities = _published_entities(text)
        self.publishes.append({"action": action, "entities": entities})
        return ApiResponse.empty(204)


def _published_entities(text: str) -> list[str]:
    """The entity logical names of a PublishXml ParameterXml (Microsoft's publish request
    schema: ``<importexportxml><entities><entity>name</entity>…``)."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise bad_request(f"ParameterXml is not well-formed XML: {exc}.") from None
    if root.tag != "importexportxml":
        raise bad_request("ParameterXml must have the root element importexportxml.")
    return [
        (item.text or "").strip().lower()
        for item in root.findall("./entities/entity")
        if (item.text or "").strip()
    ]
