"""Create or check the Dataverse table of the data contract (``apex-metrics dataverse provision``).

The contract (design.md, :mod:`apex_metrics.metric`): table ``apex_CampaignMetrics`` with the
primary name column ``apex_name``, the 13 columns with their exact types, lengths, precision
and ranges, the alternate key ``apex_RunIdKey`` on ``apex_runid`` (Active before upserts use it),
change tracking, auditing and duplicate detection.

Idempotent: what exists and matches is left alone, what is missing is created, and what exists
but differs (drift) is reported column by column with the fix; Dataverse cannot change a
column's type in place, so drift is never "repaired" by deleting data. A name carrying the
publisher prefix twice (``apex_apex_…``, the maker portal adding ``apex_`` to a name typed with
it) is recognised and explained. ``dry_run`` reads only and returns the plan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal

from apex_metrics import metric
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.errors import DataverseError

LN = metric.TABLE_LOGICAL_NAME
TABLE_PATH = f"EntityDefinitions(LogicalName='{LN}')"
PREFIX = metric.PUBLISHER_PREFIX
DOUBLE = PREFIX + PREFIX
PRIMARY_NAME_LENGTH = 100
Kind = Literal["string", "integer", "decimal", "datetime"]
ATTRIBUTE_TYPES: dict[str, str] = {
    "string": "String",
    "integer": "Integer",
    "decimal": "Decimal",
    "datetime": "DateTime",
}
METADATA_TYPES: dict[str, str] = {
    "string": "StringAttributeMetadata",
    "integer": "IntegerAttributeMetadata",
    "decimal": "DecimalAttributeMetadata",
    "datetime": "DateTimeAttributeMetadata",
}


# ------------------------------------------------------------------------------------------------
# What the contract asks for


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    logical: str
    schema: str
    kind: Kind
    label: str
    required: bool = False
    max_length: int | None = None
    min_value: int | Decimal | None = None
    max_value: int | Decimal | None = None
    precision: int | None = None

    def describe(self) -> str:
        """e.g. ``Decimal, Precision 5, 0…99999.99999``."""
        text = ATTRIBUTE_TYPES[self.kind]
        if self.kind == "string":
            text += f", MaxLength {self.max_length}"
        if self.kind == "decimal":
            text += f", Precision {self.precision}"
        if self.min_value is not None:
            text += f", {self.min_value}…{self.max_value}"
        if self.kind == "datetime":
            text += ", DateAndTime"
        return text


def _schema_name(logical: str, pg_name: str) -> str:
    schema = PREFIX + "".join(part.capitalize() for part in pg_name.split("_"))
    return schema if schema.lower() == logical else logical


def contract_columns() -> tuple[ColumnSpec, ...]:
    """The 13 data columns, from :data:`apex_metrics.metric.COLUMNS`."""
    specs = []
    for col in metric.COLUMNS:
        specs.append(
            ColumnSpec(
                logical=col.dataverse,
                schema=_schema_name(col.dataverse, col.name),
                kind=col.kind,
                label=col.name.replace("_", " ").capitalize(),
                required=col.required,
                max_length=col.max_length,
                min_value=col.min_value,
                max_value=col.max_value,
                precision=col.precision,
            )
        )
    return tuple(specs)


PRIMARY_NAME = ColumnSpec(
    logical=metric.PRIMARY_NAME,
    schema="apex_Name",
    kind="string",
    label="Name",
    max_length=PRIMARY_NAME_LENGTH,
)


def label(text: str) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
                "Label": text,
                "LanguageCode": 1033,
            }
        ],
    }


def _number(value: int | Decimal) -> int | float:
    return value if isinstance(value, int) else float(value)


def attribute_body(spec: ColumnSpec, *, primary_name: bool = False) -> dict[str, Any]:
    """The AttributeMetadata body that creates ``spec``."""
    body: dict[str, Any] = {
        "@odata.type": f"Microsoft.Dynamics.CRM.{METADATA_TYPES[spec.kind]}",
        "SchemaName": spec.schema,
        "AttributeType": ATTRIBUTE_TYPES[spec.kind],
        "AttributeTypeName": {"Value": f"{ATTRIBUTE_TYPES[spec.kind]}Type"},
        "DisplayName": label(spec.label),
        "Description": label(f"apex-metrics: {spec.label.lower()}"),
        "RequiredLevel": {
            "Value": "ApplicationRequired" if spec.required else "None",
            "CanBeChanged": True,
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
    }
    if spec.kind == "string":
        body["FormatName"] = {"Value": "Text"}
        body["MaxLength"] = spec.max_length
        if primary_name:
            body["IsPrimaryName"] = True
    elif spec.kind == "integer":
        body["Format"] = "None"
    elif spec.kind == "decimal":
        body["Precision"] = spec.precision
    else:
        body["Format"] = "DateAndTime"
        body["DateTimeBehavior"] = {"Value": "UserLocal"}
    if spec.min_value is not None and spec.max_value is not None:
        body["MinValue"] = _number(spec.min_value)
        body["MaxValue"] = _number(spec.max_value)
    return body


def _managed(value: bool, name: str) -> dict[str, Any]:
    return {"Value": value, "CanBeChanged": True, "ManagedPropertyLogicalName": name}


def table_body() -> dict[str, Any]:
    """The EntityMetadata body that creates the table with its primary name column and flags."""
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": metric.TABLE_SCHEMA_NAME,
        "DisplayName": label("Campaign Metrics"),
        "DisplayCollectionName": label("Campaign Metrics"),
        "Description": label("apex-metrics: one row per AI-agent campaign run"),
        "OwnershipType": "UserOwned",
        "IsActivity": False,
        "HasActivities": False,
        "HasNotes": False,
        "ChangeTrackingEnabled": True,
        "IsAuditEnabled": _managed(True, "canmodifyauditsettings"),
        "IsDuplicateDetectionEnabled": _managed(True, "canmodifyduplicatedetectionsettings"),
        "Attributes": [attribute_body(PRIMARY_NAME, primary_name=True)],
    }


def key_body() -> dict[str, Any]:
    return {
        "SchemaName": metric.ALTERNATE_KEY_SCHEMA_NAME,
        "DisplayName": label("Run id"),
        "KeyAttributes": [metric.ALTERNATE_KEY_COLUMN],
    }


# ------------------------------------------------------------------------------------------------
# Comparing what exists with the contract


@dataclass(slots=True)
class Step:
    """One change: planned (dry run) or done."""

    action: str
    target: str
    detail: str
    done: bool = False


@dataclass(slots=True)
class Problem:
    """Something that exists but breaks the contract, and how to fix it."""

    target: str
    kind: str
    expected: str
    actual: str
    fix: str

    def __str__(self) -> str:
        return (
            f"{self.target}: {self.kind}: expected {self.expected}, found {self.actual} "
            f"({self.fix})"
        )


def _flag(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(value.get("Value"))
    return bool(value)


def _attribute_type(actual: dict[str, Any]) -> str:
    if actual.get("AttributeType"):
        return str(actual["AttributeType"])
    odata_type = str(actual.get("@odata.type", ""))
    for kind, meta in METADATA_TYPES.items():
        if odata_type.endswith(meta):
            return ATTRIBUTE_TYPES[kind]
    return "unknown"


def _same_number(actual: Any, expected: int | Decimal) -> bool:
    try:
        return Decimal(str(actual)) == Decimal(expected)
    except ArithmeticError:
        return False


def compare_column(spec: ColumnSpec, actual: dict[str, Any]) -> list[Problem]:
    """Drift of one existing column, one Problem per differing property."""
    problems: list[Problem] = []
    name = spec.logical
    found_type = _attribute_type(actual)
    if found_type != ATTRIBUTE_TYPES[spec.kind]:
        problems.append(
            Problem(
                name,
                "wrong type",
                spec.describe(),
                found_type,
                f"Dataverse cannot change a column's type: delete column {name} (its values are "
                "lost), then run `apex-metrics dataverse provision` to create it right",
            )
        )
        return problems
    if spec.kind == "string" and actual.get("MaxLength") != spec.max_length:
        problems.append(
            Problem(
                name,
                "wrong length",
                f"MaxLength {spec.max_length}",
                f"MaxLength {actual.get('MaxLength')}",
                f"set Maximum character count of {name} to {spec.max_length} in the maker portal",
            )
        )
    if spec.kind == "decimal" and actual.get("Precision") != spec.precision:
        problems.append(
            Problem(
                name,
                "wrong precision",
                f"Precision {spec.precision}",
                f"Precision {actual.get('Precision')}",
                f"set Decimal places of {name} to {spec.precision} in the maker portal",
            )
        )
    if spec.min_value is not None and spec.max_value is not None:
        lo, hi = actual.get("MinValue"), actual.get("MaxValue")
        if not (_same_number(lo, spec.min_value) and _same_number(hi, spec.max_value)):
            problems.append(
                Problem(
                    name,
                    "wrong range",
                    f"{spec.min_value}…{spec.max_value}",
                    f"{lo}…{hi}",
                    f"set Minimum/Maximum value of {name} to {spec.min_value} and "
                    f"{spec.max_value} in the maker portal",
                )
            )
    if spec.kind == "datetime":
        fmt = actual.get("Format")
        fmt = fmt.get("Value") if isinstance(fmt, dict) else fmt
        if fmt not in (None, "DateAndTime"):
            problems.append(
                Problem(
                    name,
                    "wrong format",
                    "DateAndTime",
                    str(fmt),
                    f"delete column {name} and run provision again (format cannot change)",
                )
            )
    return problems


def double_prefix_problem(logical: str, kind: str) -> Problem:
    meant = logical[len(PREFIX) :]
    typed = meant[len(PREFIX) :]
    return Problem(
        logical,
        "double prefix",
        meant,
        logical,
        f"this {kind} was made in the maker portal with the prefix typed in (the portal adds "
        f"'{PREFIX}' itself, so '{meant}' became '{logical}'); delete {logical} and let "
        f"`apex-metrics dataverse provision` create {meant} (in the portal, type '{typed}')",
    )


class ContractDrift(DataverseError):
    """The Dataverse table differs from the contract in ways provisioning must not repair."""

    hint = "fix each problem listed above as it says, then run `apex-metrics dataverse provision`"


# ------------------------------------------------------------------------------------------------
# The report


@dataclass(slots=True)
class ProvisionReport:
    environment_url: str
    dry_run: bool
    table: str = LN
    entity_set: str = metric.ENTITY_SET
    steps: list[Step] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    key_status: str | None = None

    @property
    def changed(self) -> bool:
        return any(step.done for step in self.steps)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["changed"] = self.changed
        data["ok"] = self.ok
        return data

    def lines(self) -> list[str]:
        """Human-readable summary."""
        out = []
        verb = "would" if self.dry_run else "did"
        for step in self.steps:
            mark = "planned" if self.dry_run else ("done" if step.done else "pending")
            out.append(f"[{mark}] {step.action} {step.target}: {step.detail}")
        for problem in self.problems:
            out.append(f"[problem] {problem}")
        if not self.steps and not self.problems:
            out.append(
                f"nothing to change: table {self.table} ({self.entity_set}) matches the contract "
                f"(13 columns, key {metric.ALTERNATE_KEY_SCHEMA_NAME} {self.key_status}, change "
                "tracking, auditing, duplicate detection)"
            )
        elif not self.problems:
            out.append(f"{len(self.steps)} change(s) {verb} apply; no drift")
        else:
            out.append(f"{len(self.problems)} problem(s) need a manual fix")
        return out


Progress = Callable[[str], None]


# ------------------------------------------------------------------------------------------------
# Reading and changing the environment


async def _find_table(client: DataverseClient, logical: str) -> dict[str, Any] | None:
    data = await client.get_json(
        "EntityDefinitions",
        {
            "$select": "LogicalName,SchemaName,EntitySetName,MetadataId",
            "$filter": f"LogicalName eq '{logical}'",
        },
    )
    rows = data.get("value", [])
    return dict(rows[0]) if rows else None


async def _attributes(client: DataverseClient) -> dict[str, dict[str, Any]]:
    data = await client.get_json(f"{TABLE_PATH}/Attributes")
    return {str(a.get("LogicalName")): dict(a) for a in data.get("value", [])}


async def _keys(client: DataverseClient) -> list[dict[str, Any]]:
    data = await client.get_json(f"{TABLE_PATH}/Keys")
    return [dict(k) for k in data.get("value", [])]


def _our_key(keys: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    for key in keys:
        attrs = [str(a).lower() for a in key.get("KeyAttributes") or []]
        if attrs == [metric.ALTERNATE_KEY_COLUMN]:
            return key
    return None


def _missing_flags(definition: dict[str, Any]) -> list[str]:
    missing = []
    if not _flag(definition.get("ChangeTrackingEnabled")):
        missing.append("change tracking")
    if not _flag(definition.get("IsAuditEnabled")):
        missing.append("auditing")
    if not _flag(definition.get("IsDuplicateDetectionEnabled")):
        missing.append("duplicate detection")
    return missing


async def provision(
    client: DataverseClient,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    key_timeout: float = 600.0,
    poll_interval: float = 2.0,
) -> ProvisionReport:
    """Create what is missing, report what differs; with ``dry_run`` only plan."""
    say = progress or (lambda _msg: None)
    report = ProvisionReport(client.environment_url, dry_run)

    async def step(action: str, target: str, detail: str, run: Any = None) -> None:
        item = Step(action, target, detail)
        report.steps.append(item)
        if not dry_run and run is not None:
            say(f"{action} {target}: {detail}")
            await run
            item.done = True
        elif run is not None:
            run.close()  # never awaited in a dry run

    stray = await _find_table(client, PREFIX + LN)
    if stray is not None:
        report.problems.append(double_prefix_problem(PREFIX + LN, "table"))
    table = await _find_table(client, LN)
    specs = (PRIMARY_NAME, *contract_columns())
    if table is None:
        await step(
            "create table",
            metric.TABLE_SCHEMA_NAME,
            f"entity set {metric.ENTITY_SET}, primary name {metric.PRIMARY_NAME}",
            client.request("POST", "EntityDefinitions", json_body=table_body()),
        )
        if dry_run:
            for spec in specs[1:]:
                await step("create column", spec.logical, spec.describe())
            await step("create key", metric.ALTERNATE_KEY_SCHEMA_NAME, "on apex_runid")
            await step("wait for key", metric.ALTERNATE_KEY_SCHEMA_NAME, "until Active")
            return report
    else:
        entity_set = table.get("EntitySetName")
        if entity_set and entity_set != metric.ENTITY_SET:
            report.problems.append(
                Problem(
                    LN,
                    "wrong entity set",
                    metric.ENTITY_SET,
                    str(entity_set),
                    "the table was created with another schema name; delete it and provision",
                )
            )

    attributes = await _attributes(client)
    primary = attributes.get(metric.PRIMARY_NAME)
    for spec in specs[1:]:
        actual = attributes.get(spec.logical)
        if actual is None:
            await step(
                "create column",
                spec.logical,
                spec.describe(),
                client.request("POST", f"{TABLE_PATH}/Attributes", json_body=attribute_body(spec)),
            )
        else:
            report.problems.extend(compare_column(spec, actual))
        doubled = DOUBLE + spec.logical[len(PREFIX) :]
        if doubled in attributes:
            report.problems.append(double_prefix_problem(doubled, "column"))
    if primary is None:
        report.problems.append(
            Problem(
                metric.PRIMARY_NAME,
                "missing primary name column",
                "apex_name (String) as primary name",
                "absent",
                "the table was created with another primary name column; recreate the table",
            )
        )

    definition = await client.get_json(TABLE_PATH)
    missing_flags = _missing_flags(definition)
    if missing_flags:
        await step(
            "enable",
            LN,
            ", ".join(missing_flags),
            _put_flags(client, definition),
        )

    keys = await _keys(client)
    key = _our_key(keys)
    if key is None:
        await step(
            "create key",
            metric.ALTERNATE_KEY_SCHEMA_NAME,
            "on apex_runid",
            client.request("POST", f"{TABLE_PATH}/Keys", json_body=key_body()),
        )
        if dry_run:
            await step("wait for key", metric.ALTERNATE_KEY_SCHEMA_NAME, "until Active")
            return report
        key = _our_key(await _keys(client))
    status = str((key or {}).get("EntityKeyIndexStatus") or "Unknown")
    if status != "Active" and not dry_run:
        status = await _wait_key_active(client, say, key_timeout, poll_interval)
        report.steps.append(Step("wait for key", metric.ALTERNATE_KEY_SCHEMA_NAME, status, True))
    elif status != "Active":
        report.steps.append(Step("wait for key", metric.ALTERNATE_KEY_SCHEMA_NAME, f"now {status}"))
    report.key_status = status
    if status == "Failed":
        report.problems.append(
            Problem(
                metric.ALTERNATE_KEY_SCHEMA_NAME,
                "key index failed",
                "Active",
                "Failed",
                "remove duplicate apex_runid values, then reactivate the key (ReactivateEntityKey "
                "or the maker portal: Keys > Reactivate)",
            )
        )
    return report


async def _put_flags(client: DataverseClient, definition: dict[str, Any]) -> None:
    body = {k: v for k, v in definition.items() if not k.startswith("@odata.context")}
    body["ChangeTrackingEnabled"] = True
    body["IsAuditEnabled"] = _managed(True, "canmodifyauditsettings")
    body["IsDuplicateDetectionEnabled"] = _managed(True, "canmodifyduplicatedetectionsettings")
    target = (
        f"EntityDefinitions({definition['MetadataId']})"
        if definition.get("MetadataId")
        else TABLE_PATH
    )
    await client.request("PUT", target, json_body=body, headers={"MSCRM.MergeLabels": "true"})


async def _wait_key_active(
    client: DataverseClient, say: Progress, timeout: float, interval: float
) -> str:
    started = time.monotonic()
    last = ""
    while True:
        key = _our_key(await _keys(client))
        status = str((key or {}).get("EntityKeyIndexStatus") or "Unknown")
        elapsed = time.monotonic() - started
        if status != last:
            say(f"key {metric.ALTERNATE_KEY_SCHEMA_NAME}: {status} after {elapsed:.0f} s")
            last = status
        if status in ("Active", "Failed"):
            return status
        if elapsed >= timeout:
            raise DataverseError(
                f"key {metric.ALTERNATE_KEY_SCHEMA_NAME} still {status} after {timeout:.0f} s",
                hint="the index job is slow on large tables; run provision again later to keep "
                "waiting",
            )
        await asyncio.sleep(interval)
