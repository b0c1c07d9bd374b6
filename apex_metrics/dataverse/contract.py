"""The Dataverse side of the data contract: what the table must look like, and drift checks.

Everything is derived from :mod:`apex_metrics.metric` (``COLUMNS`` and the table names), so the
PostgreSQL and Dataverse sides cannot disagree. Pure functions only: :mod:`provision` reads the
environment and applies what these describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from apex_metrics import metric

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


def managed(value: bool, name: str) -> dict[str, Any]:
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
        "IsAuditEnabled": managed(True, "canmodifyauditsettings"),
        "IsDuplicateDetectionEnabled": managed(True, "canmodifyduplicatedetectionsettings"),
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


def flag(value: Any) -> bool:
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
