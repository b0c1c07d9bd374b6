"""Table, column and key definitions (EntityMetadata, AttributeMetadata, EntityKeyMetadata).

Definitions are plain dataclasses, stored as JSON in SQLite and rendered as the Web API renders
them. Names follow Dataverse: LogicalName is the SchemaName in lower case, the primary key is
``<logical name>id`` and the entity set name is the logical name pluralised.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from apex_metrics.emulator.errors import ApiError, bad_request

INVALID_ARGUMENT = "0x80040203"
NAME_EXISTS = "0x80040237"

_PREFIXED = re.compile(r"^[A-Za-z][A-Za-z0-9]{1,7}_[A-Za-z0-9_]*[A-Za-z0-9]$")
_SYSTEM_TYPES = {"createdon": "DateTime", "modifiedon": "DateTime", "versionnumber": "BigInt"}

# AttributeType -> (odata type name, AttributeTypeName.Value)
ATTRIBUTE_TYPES: dict[str, tuple[str, str]] = {
    "String": ("StringAttributeMetadata", "StringType"),
    "Memo": ("MemoAttributeMetadata", "MemoType"),
    "Integer": ("IntegerAttributeMetadata", "IntegerType"),
    "BigInt": ("BigIntAttributeMetadata", "BigIntType"),
    "Decimal": ("DecimalAttributeMetadata", "DecimalType"),
    "Double": ("DoubleAttributeMetadata", "DoubleType"),
    "Money": ("MoneyAttributeMetadata", "MoneyType"),
    "DateTime": ("DateTimeAttributeMetadata", "DateTimeType"),
    "Boolean": ("BooleanAttributeMetadata", "BooleanType"),
    "Uniqueidentifier": ("AttributeMetadata", "UniqueidentifierType"),
}
_BY_ODATA_TYPE = {
    odata.removesuffix("AttributeMetadata"): kind for kind, (odata, _) in ATTRIBUTE_TYPES.items()
}
_BY_ODATA_TYPE["Uniqueidentifier"] = "Uniqueidentifier"


def pluralise(logical_name: str) -> str:
    """The entity set name Dataverse derives from a logical name (observed rule)."""
    if re.search(r"(s|x|z|ch|sh)$", logical_name):
        return logical_name + "es"
    if re.search(r"[^aeiou]y$", logical_name):
        return logical_name[:-1] + "ies"
    return logical_name + "s"


def label(text: str) -> dict[str, Any]:
    localized = {"Label": text, "LanguageCode": 1033}
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


def label_text(value: Any, default: str) -> str:
    labels = value.get("LocalizedLabels") if isinstance(value, dict) else None
    for item in labels if isinstance(labels, list) else []:
        if isinstance(item, dict) and isinstance(item.get("Label"), str):
            return str(item["Label"])
    return default


def managed(value: bool, name: str) -> dict[str, Any]:
    return {"Value": value, "CanBeChanged": True, "ManagedPropertyLogicalName": name}


def flag(value: Any, name: str) -> bool:
    """A bool sent plainly or as a BooleanManagedProperty ``{"Value": ...}``."""
    if isinstance(value, dict):
        value = value.get("Value")
    if not isinstance(value, bool):
        raise bad_request(f'{name} must be a boolean or {{"Value": boolean}}', INVALID_ARGUMENT)
    return value


@dataclass(slots=True)
class Attribute:
    logical_name: str
    schema_name: str
    kind: str
    metadata_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    display_name: str = ""
    max_length: int | None = None
    min_value: float | None = None
    max_value: float | None = None
    precision: int | None = None
    format: str | None = None
    datetime_behavior: str | None = None
    required_level: str = "None"
    is_primary_id: bool = False
    is_primary_name: bool = False
    is_custom: bool = True

    @property
    def writable(self) -> bool:
        return self.logical_name not in _SYSTEM_TYPES

    def to_json(self, entity: str) -> dict[str, Any]:
        odata, type_name = ATTRIBUTE_TYPES[self.kind]
        data: dict[str, Any] = {
            "@odata.type": f"#Microsoft.Dynamics.CRM.{odata}",
            "MetadataId": self.metadata_id,
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name,
            "EntityLogicalName": entity,
            "AttributeType": self.kind,
            "AttributeTypeName": {"Value": type_name},
            "DisplayName": label(self.display_name or self.schema_name),
            "RequiredLevel": managed_level(self.required_level),
            "IsPrimaryId": self.is_primary_id,
            "IsPrimaryName": self.is_primary_name,
            "IsCustomAttribute": self.is_custom,
            "IsValidForCreate": self.writable,
            "IsValidForUpdate": self.writable and not self.is_primary_id,
            "IsValidForRead": True,
        }
        if self.kind in ("String", "Memo"):
            data["MaxLength"] = self.max_length
            data["FormatName"] = {"Value": self.format or "Text"}
        if self.kind in ("Integer", "BigInt", "Decimal", "Double", "Money"):
            data["MinValue"] = self.min_value
            data["MaxValue"] = self.max_value
        if self.kind in ("Decimal", "Double", "Money"):
            data["Precision"] = self.precision
        if self.kind == "Integer":
            data["Format"] = self.format or "None"
        if self.kind == "DateTime":
            data["Format"] = self.format or "DateAndTime"
            data["DateTimeBehavior"] = {"Value": self.datetime_behavior or "UserLocal"}
        return data


def managed_level(level: str) -> dict[str, Any]:
    return {
        "Value": level,
        "CanBeChanged": True,
        "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
    }


@dataclass(slots=True)
class Key:
    logical_name: str
    schema_name: str
    key_attributes: list[str]
    activate_at: float
    status: str = "Pending"  # Pending -> Active, or Failed
    metadata_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    display_name: str = ""

    def to_json(self, entity: str) -> dict[str, Any]:
        return {
            "MetadataId": self.metadata_id,
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name,
            "EntityLogicalName": entity,
            "KeyAttributes": list(self.key_attributes),
            "EntityKeyIndexStatus": self.status,
            "DisplayName": label(self.display_name or self.schema_name),
            "AsyncJob": None,
            "IsManaged": False,
            "IsCustomizable": managed(True, "iscustomizable"),
        }


@dataclass(slots=True)
class Entity:
    logical_name: str
    schema_name: str
    entity_set_name: str
    object_type_code: int
    metadata_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    display_name: str = ""
    display_collection_name: str = ""
    description: str = ""
    ownership_type: str = "UserOwned"
    change_tracking: bool = False
    audit: bool = False
    duplicate_detection: bool = False
    optimistic_concurrency: bool = True
    has_notes: bool = False
    has_activities: bool = False
    attributes: dict[str, Attribute] = field(default_factory=dict)
    keys: dict[str, Key] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    @property
    def primary_id(self) -> str:
        return f"{self.logical_name}id"

    @property
    def primary_name(self) -> str | None:
        return next((a.logical_name for a in self.attributes.values() if a.is_primary_name), None)

    @property
    def table(self) -> str:
        return f"e_{self.logical_name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "@odata.type": "#Microsoft.Dynamics.CRM.EntityMetadata",
            "MetadataId": self.metadata_id,
            "LogicalName": self.logical_name,
            "SchemaName": self.schema_name,
            "EntitySetName": self.entity_set_name,
            "LogicalCollectionName": self.entity_set_name,
            "CollectionSchemaName": self.schema_name + "s",
            "PrimaryIdAttribute": self.primary_id,
            "PrimaryNameAttribute": self.primary_name,
            "ObjectTypeCode": self.object_type_code,
            "IsCustomEntity": True,
            "IsActivity": False,
            "HasNotes": self.has_notes,
            "HasActivities": self.has_activities,
            "OwnershipType": self.ownership_type,
            "DisplayName": label(self.display_name or self.schema_name),
            "DisplayCollectionName": label(self.display_collection_name or self.schema_name),
            "Description": label(self.description),
            "ChangeTrackingEnabled": self.change_tracking,
            "IsAuditEnabled": managed(self.audit, "canmodifyauditsettings"),
            "IsDuplicateDetectionEnabled": managed(
                self.duplicate_detection, "canmodifyduplicatedetectionsettings"
            ),
            "IsOptimisticConcurrencyEnabled": self.optimistic_concurrency,
        }

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Entity:
        data = dict(record)
        data["attributes"] = {k: Attribute(**v) for k, v in data["attributes"].items()}
        data["keys"] = {k: Key(**v) for k, v in data["keys"].items()}
        return cls(**data)


def check_schema_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _PREFIXED.match(value):
        raise bad_request(
            f"Invalid {what} SchemaName {value!r}: it must start with a customization (publisher)"
            " prefix followed by an underscore, e.g. 'new_Name', and hold only letters, digits"
            " and underscores.",
            INVALID_ARGUMENT,
        )
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{name} must be a number", INVALID_ARGUMENT)
    return float(value)


def attribute_from_json(body: Any) -> Attribute:
    """Build a column from an AttributeMetadata body (plain or Complex* type)."""
    if not isinstance(body, dict):
        raise bad_request("The attribute definition must be a JSON object.", INVALID_ARGUMENT)
    odata_type = (
        str(body.get("@odata.type") or "").lstrip("#").removeprefix("Microsoft.Dynamics.CRM.")
    )
    odata_type = odata_type.removeprefix("Complex").removesuffix("AttributeMetadata")
    kind = _BY_ODATA_TYPE.get(odata_type) or str(body.get("AttributeType"))
    if kind not in ATTRIBUTE_TYPES or kind in ("Uniqueidentifier", "BigInt"):
        raise bad_request(
            f"Unsupported attribute type {body.get('@odata.type') or body.get('AttributeType')!r};"
            " the emulator supports String, Memo, Integer, Decimal, Double, Money, DateTime and"
            " Boolean columns.",
            INVALID_ARGUMENT,
        )
    schema = check_schema_name(body.get("SchemaName"), "attribute")
    attribute = Attribute(
        logical_name=schema.lower(),
        schema_name=schema,
        kind=str(kind),
        display_name=label_text(body.get("DisplayName"), schema),
        is_primary_name=bool(body.get("IsPrimaryName", False)),
    )
    attribute.required_level = _text_value(body.get("RequiredLevel")) or "None"
    _set_limits(attribute, body)
    return attribute


def _text_value(value: Any) -> str | None:
    """The string in ``{"Value": "..."}``, if that is what ``value`` is."""
    inner = value.get("Value") if isinstance(value, dict) else None
    return inner if isinstance(inner, str) else None


def _set_limits(attribute: Attribute, body: dict[str, Any]) -> None:
    kind = attribute.kind
    if kind in ("String", "Memo"):
        default = 100 if kind == "String" else 2000
        length = body.get("MaxLength", default)
        longest = 4000 if kind == "String" else 1_048_576
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= longest:
            raise bad_request(f"MaxLength must be an integer from 1 to {longest}", INVALID_ARGUMENT)
        attribute.max_length = length
        attribute.format = _text_value(body.get("FormatName")) or "Text"
    elif kind == "Integer":
        minimum, maximum = _number(body, "MinValue"), _number(body, "MaxValue")
        attribute.min_value = -2147483648.0 if minimum is None else minimum
        attribute.max_value = 2147483647.0 if maximum is None else maximum
        if attribute.min_value < -2147483648 or attribute.max_value > 2147483647:
            raise bad_request("Integer MinValue/MaxValue must fit in 32 bits", INVALID_ARGUMENT)
    elif kind in ("Decimal", "Double", "Money"):
        top = 922337203685477.0 if kind == "Money" else 100_000_000_000.0
        minimum, maximum = _number(body, "MinValue"), _number(body, "MaxValue")
        attribute.min_value = -top if minimum is None else minimum
        attribute.max_value = top if maximum is None else maximum
        precision = body.get("Precision", 2)
        limit = {"Decimal": 10, "Double": 5, "Money": 4}[kind]
        if (
            isinstance(precision, bool)
            or not isinstance(precision, int)
            or not 0 <= precision <= limit
        ):
            raise bad_request(f"Precision must be an integer from 0 to {limit}", INVALID_ARGUMENT)
        attribute.precision = precision
        if not -top <= attribute.min_value <= attribute.max_value <= top:
            raise bad_request(
                f"MinValue/MaxValue must satisfy {-top:.0f} <= MinValue <= MaxValue <= {top:.0f}",
                INVALID_ARGUMENT,
            )
    elif kind == "DateTime":
        fmt = body.get("Format")
        attribute.format = fmt if isinstance(fmt, str) and fmt else "DateAndTime"
        attribute.datetime_behavior = _text_value(body.get("DateTimeBehavior")) or "UserLocal"
    if attribute.min_value is not None and attribute.max_value is not None:
        if attribute.min_value > attribute.max_value:
            raise bad_request("MinValue must not be greater than MaxValue", INVALID_ARGUMENT)


def system_attributes(logical_name: str) -> list[Attribute]:
    pk = Attribute(
        f"{logical_name}id",
        f"{logical_name}Id",
        "Uniqueidentifier",
        is_primary_id=True,
        is_custom=False,
    )
    extra = [
        Attribute(name, name.capitalize(), kind, is_custom=False)
        for name, kind in _SYSTEM_TYPES.items()
    ]
    for attr in extra:
        if attr.kind == "DateTime":
            attr.format = "DateAndTime"
            attr.datetime_behavior = "UserLocal"
    return [pk, *extra]


def entity_from_json(body: Any, object_type_code: int, now: float) -> Entity:
    """Build a table from an EntityMetadata (or ComplexEntityMetadata) body."""
    if not isinstance(body, dict):
        raise bad_request("The entity definition must be a JSON object.", INVALID_ARGUMENT)
    schema = check_schema_name(body.get("SchemaName"), "entity")
    logical = schema.lower()
    attributes = body.get("Attributes") or []
    if not isinstance(attributes, list):
        raise bad_request("Attributes must be an array", INVALID_ARGUMENT)
    columns = [attribute_from_json(a) for a in attributes]
    primary = [c for c in columns if c.is_primary_name]
    if len(primary) != 1 or primary[0].kind != "String":
        raise bad_request(
            "The entity must have exactly one primary name attribute: a StringAttributeMetadata"
            " with IsPrimaryName true.",
            INVALID_ARGUMENT,
        )
    entity = Entity(
        logical_name=logical,
        schema_name=schema,
        entity_set_name=pluralise(logical),
        object_type_code=object_type_code,
        display_name=label_text(body.get("DisplayName"), schema),
        display_collection_name=label_text(body.get("DisplayCollectionName"), schema),
        description=label_text(body.get("Description"), ""),
        ownership_type=str(body.get("OwnershipType") or "UserOwned"),
        has_notes=bool(body.get("HasNotes", False)),
        has_activities=bool(body.get("HasActivities", False)),
        created_at=now,
    )
    apply_flags(entity, body)
    for attr in [*system_attributes(logical), *columns]:
        if attr.logical_name in entity.attributes:
            raise duplicate_attribute(attr.logical_name, logical)
        entity.attributes[attr.logical_name] = attr
    return entity


def apply_flags(entity: Entity, body: dict[str, Any]) -> None:
    """Apply the table flags present in an entity definition."""
    if "ChangeTrackingEnabled" in body:
        enabled = flag(body["ChangeTrackingEnabled"], "ChangeTrackingEnabled")
        if entity.change_tracking and not enabled:
            raise bad_request("Change tracking cannot be disabled once enabled.", INVALID_ARGUMENT)
        entity.change_tracking = enabled
    if "IsAuditEnabled" in body:
        entity.audit = flag(body["IsAuditEnabled"], "IsAuditEnabled")
    if "IsDuplicateDetectionEnabled" in body:
        entity.duplicate_detection = flag(
            body["IsDuplicateDetectionEnabled"], "IsDuplicateDetectionEnabled"
        )
    if "IsOptimisticConcurrencyEnabled" in body:
        entity.optimistic_concurrency = flag(
            body["IsOptimisticConcurrencyEnabled"], "IsOptimisticConcurrencyEnabled"
        )


def duplicate_attribute(name: str, entity: str) -> ApiError:
    return bad_request(
        f"An attribute with the name '{name}' already exists on entity '{entity}'.", NAME_EXISTS
    )
