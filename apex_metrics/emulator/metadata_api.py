"""``EntityDefinitions``: tables, their ``Attributes`` and ``Keys``; ``CreateEntities``."""

from __future__ import annotations

import re
import time
from typing import Any

from odata_query import ast

from apex_metrics.emulator.errors import (
    KEY_ATTRIBUTES_EXIST,
    KEY_NAME_EXISTS,
    ApiError,
    bad_request,
    method_not_allowed,
    not_found,
)
from apex_metrics.emulator.messages import ApiRequest, ApiResponse
from apex_metrics.emulator.metadata import (
    INVALID_ARGUMENT,
    NAME_EXISTS,
    Entity,
    Key,
    apply_flags,
    attribute_from_json,
    check_schema_name,
    duplicate_attribute,
    entity_from_json,
    label_text,
)
from apex_metrics.emulator.query import parse_filter
from apex_metrics.emulator.solutions import ATTRIBUTE, ENTITY, ENTITY_KEY, Solutions
from apex_metrics.emulator.store import Store

RESERVED_SETS = {
    "entitydefinitions", "whoami", "audits", "createentities", "publishxml", "publishallxml",
}  # fmt: skip
_KEY_TYPES = {"String", "Integer", "Decimal", "DateTime", "BigInt"}
# Dataverse sets no fixed number, only a row size ("a few hundred" columns in practice); SQLite
# stops at 2,000. The emulator's choice: 1,000 columns a table, then 400 and nothing written.
MAX_ATTRIBUTES = 1000


def _too_many_attributes(count: int) -> ApiError:
    return bad_request(
        f"A table can have at most {MAX_ATTRIBUTES} columns in the emulator (this one would have"
        f" {count}).",
        INVALID_ARGUMENT,
    )


_SEGMENT = re.compile(r"^([A-Za-z][A-Za-z0-9_.]*)(?:\((.*)\))?$", re.DOTALL)
_GUID = re.compile(r"^[0-9a-fA-F-]{36}$")


def segment(text: str) -> tuple[str, str | None]:
    match = _SEGMENT.match(text)
    if match is None:
        raise bad_request(f"Invalid path segment '{text[:100]}'.")
    return match.group(1), match.group(2)


def _by_reference(items: list[Any], ref: str, what: str) -> Any:
    """Find a definition by ``LogicalName='x'`` or by MetadataId."""
    match = re.match(r"^\s*LogicalName\s*=\s*'([^']*)'\s*$", ref)
    for item in items:
        if match and item.logical_name == match.group(1).lower():
            return item
        if not match and _GUID.match(ref.strip()) and item.metadata_id == ref.strip().lower():
            return item
    raise not_found(f"Could not find {what} with {ref[:100]}.")


# --- generic projection and filtering of metadata JSON ---------------------------------------


def _value(item: dict[str, Any], name: str) -> Any:
    value = item.get(name)
    if isinstance(value, dict) and "Value" in value:
        return value["Value"]
    return value


def _literal(node: ast._Node) -> Any:
    if isinstance(node, ast.Null):
        return None
    if isinstance(node, ast.Boolean):
        return node.val.lower() == "true"
    if isinstance(node, ast.Integer):
        return int(node.val)
    if isinstance(node, ast.Float):
        return float(node.val)
    if isinstance(node, ast.String | ast.GUID):
        return node.val
    raise bad_request(f"Unsupported literal {type(node).__name__} in $filter.")


def _matches(node: ast._Node, item: dict[str, Any]) -> bool:
    if isinstance(node, ast.BoolOp):
        first, second = _matches(node.left, item), _matches(node.right, item)
        return (first and second) if isinstance(node.op, ast.And) else (first or second)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _matches(node.operand, item)
    if isinstance(node, ast.Compare) and isinstance(node.left, ast.Identifier):
        left, right = _value(item, node.left.name), _literal(node.right)
        if isinstance(left, str) and isinstance(right, str):
            left, right = left.lower(), right.lower()
        if isinstance(node.comparator, ast.Eq):
            return bool(left == right)
        if isinstance(node.comparator, ast.NotEq):
            return bool(left != right)
        try:
            if isinstance(node.comparator, ast.Lt):
                return bool(left < right)
            if isinstance(node.comparator, ast.LtE):
                return bool(left <= right)
            if isinstance(node.comparator, ast.Gt):
                return bool(left > right)
            return bool(left >= right)
        except TypeError:
            return False
    if isinstance(node, ast.Call) and len(node.args) == 2:
        name = node.func.name.lower()
        subject, needle = node.args
        if isinstance(subject, ast.Identifier) and isinstance(needle, ast.String):
            text = str(_value(item, subject.name) or "").lower()
            wanted = needle.val.lower()
            if name == "contains":
                return wanted in text
            if name == "startswith":
                return text.startswith(wanted)
            if name == "endswith":
                return text.endswith(wanted)
    raise bad_request("Unsupported $filter expression on metadata.")


def _split_expand(text: str) -> list[tuple[str, str]]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text + ","):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            part = text[start:index].strip()
            start = index + 1
            if not part:
                continue
            name, _, inner = part.partition("(")
            parts.append((name.strip(), inner.rstrip(")")))
    return parts


def _project(item: dict[str, Any], select: str | None) -> dict[str, Any]:
    if select is None:
        return item
    names = {n.strip() for n in select.split(",")}
    names |= {"MetadataId"}
    return {k: v for k, v in item.items() if k in names or k.startswith("@odata")}


def _collection(
    request: ApiRequest, items: list[dict[str, Any]], context: str, expand: Any = None
) -> ApiResponse:
    text = request.option("$filter")
    if text is not None:
        tree = parse_filter(text)
        items = [i for i in items if _matches(tree, i)]
    select = request.option("$select")
    value = []
    for item in items:
        projected = _project(item, select)
        if expand is not None:
            projected.update(expand(item["MetadataId"]))
        value.append(projected)
    return ApiResponse.json(200, {"@odata.context": context, "value": value})


def _context(request: ApiRequest, entity: Entity) -> str:
    return f"{request.service_root}/$metadata#EntityDefinitions('{entity.logical_name}')"


# --- handlers ----------------------------------------------------------------------------------


class MetadataApi:
    def __init__(self, store: Store, key_delay: float, solutions: Solutions) -> None:
        self.store = store
        self.key_delay = key_delay
        self.solutions = solutions

    def _entity_json(self, entity: Entity, request: ApiRequest) -> dict[str, Any]:
        data = _project(entity.to_json(), request.option("$select"))
        for name, inner in _split_expand(request.option("$expand") or ""):
            options = dict(part.split("=", 1) for part in inner.split(";") if "=" in part)
            if name == "Attributes":
                items = [a.to_json(entity.logical_name) for a in entity.attributes.values()]
            elif name == "Keys":
                self.store.activate_keys(entity, time.time())
                items = [k.to_json(entity.logical_name) for k in entity.keys.values()]
            else:
                raise bad_request(f"Cannot expand '{name[:50]}' on EntityMetadata.")
            data[name] = [_project(i, options.get("$select")) for i in items]
        return data

    def handle(self, request: ApiRequest, segments: list[str]) -> ApiResponse:
        method = request.method
        root = f"{request.service_root}/EntityDefinitions"
        _, ref = segment(segments[0])
        if ref is None and len(segments) == 1:
            if method == "GET":
                entities = list(self.store.entities.values())
                text = request.option("$filter")
                tree = parse_filter(text) if text is not None else None
                value = [
                    self._entity_json(e, request)
                    for e in entities
                    if tree is None or _matches(tree, e.to_json())
                ]
                context = f"{request.service_root}/$metadata#EntityDefinitions"
                return ApiResponse.json(200, {"@odata.context": context, "value": value})
            if method == "POST":
                return self.create_entity(request, request.json())
            raise method_not_allowed(method, "EntityDefinitions")
        if ref is None:
            raise bad_request("EntityDefinitions needs a key: EntityDefinitions(LogicalName='x').")
        entity: Entity = _by_reference(list(self.store.entities.values()), ref, "EntityMetadata")
        if len(segments) == 1:
            if method == "GET":
                body = {
                    "@odata.context": f"{request.service_root}/$metadata#EntityDefinitions/$entity"
                }
                return ApiResponse.json(200, {**body, **self._entity_json(entity, request)})
            if method == "PUT":
                return self.update_entity(entity, request)
            raise method_not_allowed(method, "EntityDefinitions(...)")
        base = f"{root}({entity.metadata_id})"
        name, sub_ref = segment(segments[1])
        if name == "Attributes":
            return self.attributes(entity, request, sub_ref, segments[2:], base)
        if name == "Keys":
            return self.keys(entity, request, sub_ref, base)
        raise not_found(f"Resource not found for the segment '{segments[1][:100]}'.")

    def create_entity(self, request: ApiRequest, body: Any) -> ApiResponse:
        solution = self.solutions.target(request)
        entity = self._new_entity(body)
        with self.store.transaction():
            self.store.create_table(entity)
            self.solutions.add(solution, entity.metadata_id, ENTITY)
        location = f"{request.service_root}/EntityDefinitions({entity.metadata_id})"
        return ApiResponse.empty(204, {"OData-EntityId": location})

    def _new_entity(self, body: Any) -> Entity:
        entity = entity_from_json(body, self.store.next_object_type_code(), time.time())
        if (
            entity.logical_name in self.store.entities
            or entity.entity_set_name in self.store.by_set
        ):
            raise bad_request(
                f"An entity with the name '{entity.logical_name}' already exists.", NAME_EXISTS
            )
        if entity.entity_set_name.lower() in RESERVED_SETS:
            raise bad_request(f"The name '{entity.logical_name}' is reserved.", INVALID_ARGUMENT)
        if len(entity.attributes) > MAX_ATTRIBUTES:
            raise _too_many_attributes(len(entity.attributes))
        return entity

    def create_entities(self, request: ApiRequest) -> ApiResponse:
        """The ``CreateEntities`` action Microsoft's SDK uses: ``{"Entities": [...]}``."""
        body = request.json()
        items = body.get("Entities") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise bad_request(
                "CreateEntities needs a non-empty 'Entities' array.", INVALID_ARGUMENT
            )
        solution = self.solutions.target(request)
        entities = [self._new_entity(item) for item in items]
        if len({e.logical_name for e in entities}) != len(entities):
            raise bad_request("The same entity appears twice in CreateEntities.", NAME_EXISTS)
        with self.store.transaction():
            for entity in entities:
                self.store.create_table(entity)
                self.solutions.add(solution, entity.metadata_id, ENTITY)
        context = f"{request.service_root}/$metadata#Microsoft.Dynamics.CRM.CreateEntitiesResponse"
        return ApiResponse.json(
            200, {"@odata.context": context, "EntityIds": [e.metadata_id for e in entities]}
        )

    def update_entity(self, entity: Entity, request: ApiRequest) -> ApiResponse:
        body = request.json()
        if not isinstance(body, dict):
            raise bad_request("The entity definition must be a JSON object.", INVALID_ARGUMENT)
        for name in ("LogicalName", "SchemaName"):
            sent = body.get(name)
            if sent is not None and str(sent).lower() != entity.logical_name:
                raise bad_request(f"{name} cannot be changed.", INVALID_ARGUMENT)
        solution = self.solutions.target(request)
        apply_flags(entity, body)
        entity.display_name = label_text(body.get("DisplayName"), entity.display_name)
        with self.store.transaction():
            self.store.save_entity(entity)
            if solution is not None:  # an update names the solution to add the table to
                self.solutions.add(solution, entity.metadata_id, ENTITY)
        return ApiResponse.empty(204)

    def attributes(
        self, entity: Entity, request: ApiRequest, ref: str | None, rest: list[str], base: str
    ) -> ApiResponse:
        items = list(entity.attributes.values())
        if ref is None:
            cast = None
            if rest:
                cast = rest[0].removeprefix("Microsoft.Dynamics.CRM.")
                if len(rest) > 1 or not cast.endswith("AttributeMetadata"):
                    raise not_found(f"Resource not found for the segment '{rest[0][:100]}'.")
            if request.method == "GET":
                data = [a.to_json(entity.logical_name) for a in items]
                if cast:
                    data = [d for d in data if d["@odata.type"].endswith("." + cast)]
                context = f"{_context(request, entity)}/Attributes"
                return _collection(request, data, context)
            if request.method == "POST" and not rest:
                solution = self.solutions.target(request)
                attr = attribute_from_json(request.json())
                if attr.logical_name in entity.attributes:
                    raise duplicate_attribute(attr.logical_name, entity.logical_name)
                if attr.is_primary_name:
                    raise bad_request(
                        "The entity already has a primary name attribute.", INVALID_ARGUMENT
                    )
                if len(entity.attributes) >= MAX_ATTRIBUTES:
                    raise _too_many_attributes(len(entity.attributes) + 1)
                with self.store.transaction():
                    self.store.add_column(entity, attr)
                    self.solutions.add(solution, attr.metadata_id, ATTRIBUTE)
                return ApiResponse.empty(
                    204, {"OData-EntityId": f"{base}/Attributes({attr.metadata_id})"}
                )
            raise method_not_allowed(request.method, "Attributes")
        attr = _by_reference(items, ref, "AttributeMetadata")
        if request.method != "GET":
            raise method_not_allowed(request.method, "Attributes(...)")
        return ApiResponse.json(
            200, _project(attr.to_json(entity.logical_name), request.option("$select"))
        )

    def keys(self, entity: Entity, request: ApiRequest, ref: str | None, base: str) -> ApiResponse:
        self.store.activate_keys(entity, time.time())
        if ref is None:
            if request.method == "GET":
                data = [k.to_json(entity.logical_name) for k in entity.keys.values()]
                context = f"{_context(request, entity)}/Keys"
                return _collection(request, data, context)
            if request.method == "POST":
                solution = self.solutions.target(request)
                key = self._new_key(entity, request.json())
                entity.keys[key.logical_name] = key
                with self.store.transaction():
                    self.store.save_entity(entity)
                    self.solutions.add(solution, key.metadata_id, ENTITY_KEY)
                self.store.activate_keys(entity, time.time())
                return ApiResponse.empty(204, {"OData-EntityId": f"{base}/Keys({key.metadata_id})"})
            raise method_not_allowed(request.method, "Keys")
        key = _by_reference(list(entity.keys.values()), ref, "EntityKeyMetadata")
        if request.method == "GET":
            return ApiResponse.json(
                200, _project(key.to_json(entity.logical_name), request.option("$select"))
            )
        if request.method == "DELETE":
            self.store.drop_key(entity, key)
            return ApiResponse.empty(204)
        raise method_not_allowed(request.method, "Keys(...)")

    def _new_key(self, entity: Entity, body: Any) -> Key:
        if not isinstance(body, dict):
            raise bad_request("The key definition must be a JSON object.", INVALID_ARGUMENT)
        schema = check_schema_name(body.get("SchemaName"), "key")
        columns = body.get("KeyAttributes")
        if not isinstance(columns, list) or not columns or len(columns) > 16:
            raise bad_request("KeyAttributes must list 1 to 16 column names.", INVALID_ARGUMENT)
        for column in columns:
            attr = entity.attributes.get(column) if isinstance(column, str) else None
            if attr is None or not attr.is_custom:
                raise bad_request(
                    f"KeyAttributes: '{column}' is not a custom column of '{entity.logical_name}'.",
                    INVALID_ARGUMENT,
                )
            if attr.kind not in _KEY_TYPES:
                raise bad_request(
                    f"KeyAttributes: '{column}' is {attr.kind}; keys take Decimal, Integer,"
                    " String or DateTime columns.",
                    INVALID_ARGUMENT,
                )
        if len(set(columns)) != len(columns):
            raise bad_request("KeyAttributes lists a column twice.", INVALID_ARGUMENT)
        if schema.lower() in entity.keys:
            raise ApiError(
                400, KEY_NAME_EXISTS, f"An entity key with the name {schema} already exists."
            )
        if any(set(k.key_attributes) == set(columns) for k in entity.keys.values()):
            raise ApiError(
                400,
                KEY_ATTRIBUTES_EXIST,
                "An entity key with the selected attributes already exists.",
            )
        if len(entity.keys) >= 10:
            raise bad_request("A table can have at most 10 alternate keys.", INVALID_ARGUMENT)
        return Key(
            logical_name=schema.lower(),
            schema_name=schema,
            key_attributes=[str(c) for c in columns],
            activate_at=time.time() + self.key_delay,
            display_name=label_text(body.get("DisplayName"), schema),
        )
