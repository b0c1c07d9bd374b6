"""Routing of Web API requests (direct or inside ``$batch``) to their handlers."""

from __future__ import annotations

import re
import uuid
from typing import Any

from apex_metrics.emulator import collection, rows
from apex_metrics.emulator.batch import run_batch
from apex_metrics.emulator.config import EmulatorConfig
from apex_metrics.emulator.errors import (
    UNKNOWN_PROPERTY,
    ApiError,
    bad_request,
    method_not_allowed,
)
from apex_metrics.emulator.messages import ApiRequest, ApiResponse
from apex_metrics.emulator.metadata import Attribute, Entity
from apex_metrics.emulator.metadata_api import MetadataApi, segment
from apex_metrics.emulator.solutions import Solutions
from apex_metrics.emulator.store import Store
from apex_metrics.emulator.values import to_json

_BULK = {"CreateMultiple", "UpdateMultiple", "UpsertMultiple"}
_ORG_ID = "a1b2c3d4-0000-4000-8000-0000000e0001"
_BUSINESS_UNIT = "a1b2c3d4-0000-4000-8000-0000000e0002"


def audit_entity() -> Entity:
    """The read-only ``audits`` entity set over the audit log."""
    entity = Entity("audit", "Audit", "audits", 4567)
    columns = [
        Attribute("auditid", "AuditId", "Uniqueidentifier", is_primary_id=True, is_custom=False),
        Attribute("_objectid_value", "ObjectId", "String", max_length=100, is_custom=False),
        Attribute("objecttypecode", "ObjectTypeCode", "String", max_length=100, is_custom=False),
        Attribute("action", "Action", "Integer", is_custom=False),
        Attribute("operation", "Operation", "Integer", is_custom=False),
        Attribute("_userid_value", "UserId", "String", max_length=100, is_custom=False),
        Attribute("createdon", "CreatedOn", "DateTime", is_custom=False),
        Attribute("changedata", "ChangeData", "Memo", max_length=1_048_576, is_custom=False),
    ]
    entity.attributes = {a.logical_name: a for a in columns}
    return entity


def _split_path(path: str) -> list[str]:
    """Path segments, not splitting inside parentheses or quotes."""
    if "/" not in path:
        return [path] if path else []
    parts, depth, quoted, start = [], 0, False, 0
    for index, char in enumerate(path):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif char == "/" and depth == 0 and not quoted:
            parts.append(path[start:index])
            start = index + 1
    parts.append(path[start:])
    return [p for p in parts if p]


class WebApi:
    def __init__(self, config: EmulatorConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.solutions = Solutions(store, config.solutions, _ORG_ID, config.org_auditing)
        self.metadata = MetadataApi(store, config.key_activation_delay_seconds, self.solutions)
        self.audits = audit_entity()

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one request; every ApiError becomes its Dataverse error response.

        A request on its own is counted in ``request.usage`` here, from its method and answer
        (``$batch`` counts its parts and bulk messages their targets themselves); the parts of
        a batch are counted by the batch, which also answers some of them without this method.
        """
        try:
            response = self._route(request)
        except ApiError as exc:
            response = ApiResponse.error(exc)
        except RecursionError:
            response = ApiResponse.error(bad_request("The request is nested too deeply."))
        if not request.in_batch and not request.counted:
            representation = request.prefer().get("return") == "representation"
            request.usage.request(request.method, response.status, representation)
        return response

    def _route(self, request: ApiRequest) -> ApiResponse:
        method, path = request.method, request.path.strip("/")
        if path == "$batch":
            request.counted = not request.in_batch  # priced by its parts
            if method != "POST" or request.in_batch:
                raise method_not_allowed(method, "$batch")
            return run_batch(request, self.store, self.handle)
        if path == "":
            sets = [{"name": e.entity_set_name, "kind": "EntitySet", "url": e.entity_set_name}
                    for e in self.store.entities.values()]  # fmt: skip
            return ApiResponse.json(
                200, {"@odata.context": f"{request.service_root}/$metadata", "value": sets}
            )
        if path == "$metadata":
            return self._csdl()
        segments = _split_path(path)
        name, ref = segment(segments[0])
        if name == "WhoAmI":
            if method != "GET" or len(segments) > 1 or ref not in (None, ""):
                raise method_not_allowed(method, "WhoAmI")
            return self._whoami(request)
        if name == "EntityDefinitions":
            return self.metadata.handle(request, segments)
        if name in ("PublishXml", "PublishAllXml") and method == "POST" and len(segments) == 1:
            return self.solutions.publish(request, name)
        if name == "CreateEntities" and method == "POST" and len(segments) == 1:
            return self.metadata.create_entities(request)
        if name == "audits":
            if method != "GET" or ref is not None or len(segments) > 1:
                raise method_not_allowed(method, "audits")
            return collection.list_rows(
                self.store, self.audits, request, self.config.max_aggregate_records
            )
        if name in self.solutions.entity_sets:
            return self.solutions.read(request, name, ref, segments[1:])
        entity = self.store.by_set.get(name)
        if entity is None:
            raise ApiError(
                404, UNKNOWN_PROPERTY, f"Resource not found for the segment '{name[:100]}'."
            )
        if ref is None:
            return self._collection(entity, request, segments[1:])
        target = rows.parse_target(self.store, entity, ref)
        if len(segments) == 1:
            if method == "GET":
                return rows.retrieve(self.store, entity, target, request)
            if method == "PATCH":
                return rows.upsert(self.store, entity, target, request)
            if method == "DELETE":
                return rows.delete(self.store, entity, target, request)
            raise method_not_allowed(method, entity.entity_set_name + "(...)")
        if len(segments) == 2:
            return self._property(entity, target, segments[1], request)
        raise ApiError(
            404, UNKNOWN_PROPERTY, f"Resource not found for the segment '{segments[2][:100]}'."
        )

    def _collection(self, entity: Entity, request: ApiRequest, rest: list[str]) -> ApiResponse:
        method = request.method
        if not rest:
            if method == "GET":
                return collection.list_rows(
                    self.store, entity, request, self.config.max_aggregate_records
                )
            if method == "POST":
                return rows.create(self.store, entity, request)
            raise method_not_allowed(method, entity.entity_set_name)
        if rest == ["$count"] and method == "GET":
            return collection.count_rows(self.store, entity, request)
        action = rest[0].removeprefix("Microsoft.Dynamics.CRM.")
        if len(rest) == 1 and action in _BULK and method == "POST":
            return self._bulk(entity, action, request)
        raise ApiError(
            404, UNKNOWN_PROPERTY, f"Resource not found for the segment '{rest[0][:100]}'."
        )

    def _property(
        self, entity: Entity, target: rows.Target, name: str, request: ApiRequest
    ) -> ApiResponse:
        attr = entity.attributes.get(name)
        if attr is None:
            raise ApiError(
                404, UNKNOWN_PROPERTY, f"Resource not found for the segment '{name[:100]}'."
            )
        if request.method == "GET":
            row = self.store.fetch_one(entity, target.where(entity))
            if row is None:
                raise target.missing(entity)
            value = to_json(attr, row.get(name))
            row_id = row[entity.primary_id]
            context = f"{request.service_root}/$metadata#{entity.entity_set_name}({row_id})/{name}"
            return ApiResponse.json(200, {"@odata.context": context, "value": value})
        if request.method in ("PUT", "DELETE"):
            if request.method == "PUT":
                body = request.json()
                if not isinstance(body, dict) or "value" not in body:
                    raise bad_request('PUT of a single property takes {"value": ...}.')
                value = body["value"]
            else:
                value = None
            clean = rows.check_body(entity, {name: value})
            with self.store.transaction():
                rows.apply_upsert(
                    self.store, entity, target, clean, request.caller.user_id, if_match="*"
                )
            return ApiResponse.empty(204)
        raise method_not_allowed(request.method, name)

    def _bulk(self, entity: Entity, action: str, request: ApiRequest) -> ApiResponse:
        """CreateMultiple / UpdateMultiple / UpsertMultiple: all or nothing (standard tables
        roll back on any error). Answered as documented: CreateMultiple 200 with the ``Ids``
        of ``CreateMultipleResponse``, the other two 204 with no body.

        Priced by its targets: every one sent, even when one fails and they all roll back
        (how far the service gets before the failure is not known)."""
        request.counted = True
        body = request.json()
        targets = body.get("Targets") if isinstance(body, dict) else None
        if not isinstance(targets, list) or not targets:
            raise bad_request(f"{action} needs a non-empty 'Targets' array.")
        request.usage.multiple_rows += len(targets)
        ids: list[str] = []
        with self.store.transaction():
            for item in targets:
                if not isinstance(item, dict):
                    raise bad_request("Each target must be a JSON object.")
                odata_id = item.get("@odata.id")
                clean = rows.check_body(entity, item)
                if action == "CreateMultiple":
                    row = rows.RowWriter(self.store, entity, request.caller.user_id).insert(clean)
                else:
                    target = self._bulk_target(entity, clean, odata_id)
                    if_match = "*" if action == "UpdateMultiple" else None
                    row, _ = rows.apply_upsert(
                        self.store, entity, target, clean, request.caller.user_id, if_match
                    )
                ids.append(row[entity.primary_id])
        if action != "CreateMultiple":
            return ApiResponse.empty(204)
        context = f"{request.service_root}/$metadata#Microsoft.Dynamics.CRM.{action}Response"
        return ApiResponse.json(200, {"@odata.context": context, "Ids": ids})

    def _bulk_target(self, entity: Entity, clean: dict[str, Any], odata_id: Any) -> rows.Target:
        if isinstance(odata_id, str):
            match = re.match(r"^.*?([A-Za-z0-9_]+)\((.*)\)$", odata_id.strip())
            if match is None or match.group(1) != entity.entity_set_name:
                raise bad_request(f"Invalid @odata.id '{odata_id[:100]}'.")
            return rows.parse_target(self.store, entity, match.group(2))
        if entity.primary_id in clean:
            return rows.Target(
                str(clean[entity.primary_id]), row_id=str(clean.pop(entity.primary_id))
            )
        for key in entity.keys.values():
            if key.status == "Active" and all(c in clean for c in key.key_attributes):
                key_values = {c: clean[c] for c in key.key_attributes}
                text = ",".join(f"{c}={v!r}" for c, v in key_values.items())
                return rows.Target(text, key=key, key_values=key_values)
        raise bad_request("Each target needs @odata.id, the primary key or an alternate key.")

    def _whoami(self, request: ApiRequest) -> ApiResponse:
        context = f"{request.service_root}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse"
        body = {
            "@odata.context": context,
            "BusinessUnitId": _BUSINESS_UNIT,
            "UserId": request.caller.user_id,
            "OrganizationId": _ORG_ID,
        }
        return ApiResponse.json(200, body)

    def _csdl(self) -> ApiResponse:
        sets = "".join(
            f'<EntitySet Name="{e.entity_set_name}" EntityType="mscrm.{e.logical_name}"/>'
            for e in self.store.entities.values()
        )
        xml = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">'
            '<edmx:DataServices><Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm"'
            ' xmlns="http://docs.oasis-open.org/odata/ns/edm">'
            f'<EntityContainer Name="System">{sets}</EntityContainer>'
            "</Schema></edmx:DataServices></edmx:Edmx>"
        )
        return ApiResponse(
            200, {"Content-Type": "application/xml", "OData-Version": "4.0"}, xml.encode()
        )


def new_request_id() -> str:
    return str(uuid.uuid4())
