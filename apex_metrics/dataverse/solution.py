"""What ``dataverse provision`` checks around the table: the solution, publishing, auditing.

- **The solution** (``APEX_DATAVERSE_SOLUTION``): every table, column and key is created in it
  (header ``MSCRM.SolutionUniqueName``). It must exist, be unmanaged, and belong to a publisher
  whose customization prefix is the contract's (``apex``); otherwise nothing is created.
- **Publishing**: what changed is published (``PublishXml`` naming the table).
- **Organization auditing**: the table's auditing records nothing while the organization's
  ``isauditenabled`` is off; provisioning warns, with the setting to change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.contract import LN, PREFIX
from apex_metrics.dataverse.errors import DataverseError

HEADER = "MSCRM.SolutionUniqueName"
ENTITY_COMPONENT = 1  # solutioncomponent.componenttype of a table
_UNIQUE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONTRACT_PREFIX = PREFIX.rstrip("_")
AUDIT_SETTING = (
    "turn on Start Auditing in the Power Platform admin center (Environments > your "
    "environment > Settings > Audit and logs > Audit settings), i.e. the organization's "
    "isauditenabled"
)


class SolutionError(DataverseError):
    """The solution cannot take the contract's table; nothing was created."""


class UnknownSolution(SolutionError):
    """No solution with this unique name exists in the environment."""


class WrongPublisherPrefix(SolutionError):
    """The solution's publisher has another customization prefix than the contract's."""


class ManagedSolution(SolutionError):
    """The solution is managed: components cannot be added to it."""


@dataclass(frozen=True, slots=True)
class SolutionInfo:
    """The solution provisioning creates in, and its publisher."""

    unique_name: str
    solution_id: str
    friendly_name: str
    publisher: str
    prefix: str

    def line(self) -> str:
        return (
            f"solution {self.unique_name} ({self.friendly_name}): publisher {self.publisher}, "
            f"prefix {self.prefix} (matches the contract's {CONTRACT_PREFIX})"
        )


def headers_for(solution: str | None) -> dict[str, str]:
    """The request headers that create a component in ``solution`` (none without one)."""
    return {HEADER: solution} if solution else {}


def check_prefix(unique_name: str, publisher: str, prefix: str) -> None:
    """Refuse a publisher prefix other than the contract's, saying what to do."""
    if prefix.lower().rstrip("_") == CONTRACT_PREFIX:
        return
    raise WrongPublisherPrefix(
        f"solution {unique_name} belongs to publisher {publisher}, whose prefix is {prefix!r}, "
        f"but the contract's names all start with '{PREFIX}' (table {LN}); nothing was created",
        hint=f"set APEX_DATAVERSE_SOLUTION (or --solution) to a solution whose publisher has "
        f"the prefix '{CONTRACT_PREFIX}' (Power Apps > Solutions > New solution > New publisher, "
        f"Prefix {CONTRACT_PREFIX}), or change the prefix of publisher {publisher} to "
        f"'{CONTRACT_PREFIX}'; the prefix is part of the data contract (apex_metrics/metric.py "
        "PUBLISHER_PREFIX), not a setting",
    )


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def find_solution(client: DataverseClient, unique_name: str) -> SolutionInfo:
    """Read the solution and its publisher; raise when provisioning must not use it."""
    name = unique_name.strip()
    if not _UNIQUE_NAME.match(name):
        raise UnknownSolution(
            f"{name!r} is not a solution unique name (letters, digits and _ only); nothing "
            "was created",
            hint="set APEX_DATAVERSE_SOLUTION to the solution's Name column in Power Apps > "
            "Solutions, not its display name",
        )
    data = await client.get_json(
        "solutions",
        {
            "$select": "solutionid,uniquename,friendlyname,ismanaged,_publisherid_value",
            "$filter": f"uniquename eq {_quoted(name)}",
        },
    )
    found = data.get("value") or []
    if not found:
        raise UnknownSolution(
            f"solution {name} does not exist in {client.environment_url}; nothing was created",
            hint="create it (Power Apps > Solutions > New solution, with a publisher whose "
            f"prefix is '{CONTRACT_PREFIX}') or fix APEX_DATAVERSE_SOLUTION (the solution's "
            "unique Name, not its display name)",
        )
    row: dict[str, Any] = dict(found[0])
    if row.get("ismanaged"):
        raise ManagedSolution(
            f"solution {name} is managed: components cannot be added to it; nothing was created",
            hint="use an unmanaged solution (Power Apps > Solutions, Managed: No)",
        )
    publisher: dict[str, Any] = await client.get_json(
        f"publishers({row['_publisherid_value']})",
        {"$select": "uniquename,friendlyname,customizationprefix"},
    )
    prefix = str(publisher.get("customizationprefix") or "")
    publisher_name = str(publisher.get("uniquename") or row["_publisherid_value"])
    check_prefix(name, publisher_name, prefix)
    return SolutionInfo(
        unique_name=str(row.get("uniquename") or name),
        solution_id=str(row["solutionid"]),
        friendly_name=str(row.get("friendlyname") or name),
        publisher=publisher_name,
        prefix=prefix,
    )


async def in_solution(client: DataverseClient, solution: SolutionInfo, table_id: str) -> bool:
    """Whether the table (its MetadataId) is a component of ``solution``."""
    data = await client.get_json(
        "solutioncomponents",
        {
            "$select": "solutioncomponentid",
            "$filter": f"_solutionid_value eq {solution.solution_id} and objectid eq {table_id}"
            f" and componenttype eq {ENTITY_COMPONENT}",
        },
    )
    return bool(data.get("value"))


def not_in_solution_warning(solution: SolutionInfo) -> str:
    return (
        f"table {LN} exists but is not in solution {solution.unique_name}: columns and keys "
        "created now go into it, the table does not; add it in Power Apps > Solutions > "
        f"{solution.unique_name} > Add existing > Table"
    )


async def auditing_warnings(client: DataverseClient) -> list[str]:
    """A warning when the organization's auditing is off (or cannot be read)."""
    try:
        data = await client.get_json("organizations", {"$select": "isauditenabled"})
    except DataverseError as exc:
        if exc.transient:
            raise
        return [
            f"could not read the organization's auditing setting ({exc.message}); the table "
            f"records changes only when it is on: {AUDIT_SETTING}"
        ]
    rows = data.get("value") or []
    if rows and rows[0].get("isauditenabled") is False:
        return [
            "organization auditing is off: the table's auditing records nothing until you "
            + AUDIT_SETTING
        ]
    return []


def publish_xml(*entities: str) -> dict[str, str]:
    """The body of ``PublishXml`` for these tables (Microsoft's publish request schema)."""
    names = "".join(f"<entity>{name}</entity>" for name in entities)
    return {"ParameterXml": f"<importexportxml><entities>{names}</entities></importexportxml>"}
