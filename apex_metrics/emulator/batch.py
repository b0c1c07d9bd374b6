"""``POST $batch``: requests run in order; change sets are atomic and resolve ``$n`` references.

Without ``Prefer: odata.continue-on-error`` the first failure stops the batch, which answers 400
with only that failure; with it every request runs and the batch answers 200. A failed change
set is answered by one response (the failing request's), as the OData spec says.

Each part that runs is counted in the batch's ``Usage`` (the service runs them one after
another, each at the price of a request on its own, without its overhead): a GET as a retrieve,
anything else as a write, plus a retrieve when it answered 2xx with ``return=representation``;
a bulk message inside a batch counts its targets instead. Parts that do not run (after the
failure that stops a batch or a change set, or refused for their Content-ID) cost nothing.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from apex_metrics.emulator.batch_upserts import Upserts
from apex_metrics.emulator.batch_wire import (
    BatchPart,
    BatchResponseItem,
    BatchResponsePart,
    ChangeSet,
    ChangeSetResponse,
    MalformedBatch,
    decode_request,
    encode_response,
)
from apex_metrics.emulator.errors import UNKNOWN_PROPERTY, ApiError, bad_request
from apex_metrics.emulator.messages import (
    ApiRequest,
    ApiResponse,
    ascii_headers,
    returns_representation,
    split_target,
)
from apex_metrics.emulator.store import Store

MAX_REQUESTS = 1000
_REFERENCE = re.compile(r"^\$(\w+)(.*)$", re.DOTALL)

Dispatch = Callable[[ApiRequest], ApiResponse]


class _ChangeSetFailed(Exception):
    def __init__(self, response: BatchResponseItem) -> None:
        self.response = response


def _item(response: ApiResponse, content_id: str | None = None) -> BatchResponseItem:
    headers = ascii_headers(response.headers)
    return BatchResponseItem(response.status, headers, response.body, content_id)


def _error_item(exc: ApiError, content_id: str | None = None) -> BatchResponseItem:
    return _item(ApiResponse.error(exc), content_id)


def _sub_request(outer: ApiRequest, part: BatchPart, references: dict[str, str]) -> ApiRequest:
    url = part.url.strip()
    match = _REFERENCE.match(url)
    if match is not None and (match.group(1).isdigit() or match.group(1) in references):
        location = references.get(match.group(1))
        if location is None:
            raise bad_request(
                f"Content-ID Reference: '${match.group(1)}' does not exist in the batch context."
            )
        url = location + match.group(2)
    target = split_target(url, outer.base)
    if target is None:
        raise bad_request(f"The batch request URL '{url[:200]}' is not under /api/data/v9.2/.")
    path, query = target
    if path.strip("/") == "$batch":
        raise bad_request("Batches cannot be nested.")
    headers = {name.lower(): value for name, value in part.headers.items()}
    return ApiRequest(
        part.method, path, query, headers, part.body or b"", outer.base, outer.caller, True,
        usage=outer.usage,
    )  # fmt: skip


def _charge(outer: ApiRequest, part: BatchPart, status: int) -> None:
    """Count a part that ran (answered ``status``) in the batch's usage."""
    outer.usage.part(part.method, status, returns_representation(part.headers))


@contextmanager
def _no_collection() -> Iterator[None]:
    """No cyclic garbage collection while a batch runs. A 1,000-part batch makes and keeps
    tens of thousands of small containers, which would start a hundred collections, some of
    them over every object of the process; cycles made meanwhile are collected afterwards."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def run_batch(request: ApiRequest, store: Store, dispatch: Dispatch) -> ApiResponse:
    with _no_collection():
        return _run_batch(request, store, dispatch)


def _run_batch(request: ApiRequest, store: Store, dispatch: Dispatch) -> ApiResponse:
    try:
        items = decode_request(request.body, request.header("content-type"))
    except MalformedBatch as exc:
        raise bad_request(f"The batch request is malformed: {exc}") from None
    total = sum(len(i.parts) if isinstance(i, ChangeSet) else 1 for i in items)
    if total > MAX_REQUESTS:
        raise bad_request(
            f"The number of requests in the batch ({total}) exceeds the limit of {MAX_REQUESTS}."
        )
    store.counts["batch.batches"] += 1
    store.counts["batch.requests"] += total
    store.counts["batch.changesets"] += sum(isinstance(i, ChangeSet) for i in items)
    keep_going = "odata.continue-on-error" in request.prefer()
    responses: list[BatchResponsePart] = []
    failed = False
    upserts = Upserts(request, store, items)
    with store.transaction():
        for index, item in enumerate(items):
            if isinstance(item, ChangeSet):
                upserts.forget()
                result = _run_changeset(request, item, store, dispatch, upserts)
            else:
                response = upserts.answer(item, index)
                if response is None:
                    result = _run_one(request, item, dispatch)
                else:
                    _charge(request, item, response.status)
                    result = _item(response, item.content_id)
            ok = isinstance(result, ChangeSetResponse) or result.ok
            if not ok and not keep_going:
                responses = [result]
                failed = True
                break
            responses.append(result)
    body, content_type = encode_response(responses)
    headers = {"Content-Type": content_type, "OData-Version": "4.0"}
    if keep_going:
        headers["Preference-Applied"] = "odata.continue-on-error"
    return ApiResponse(400 if failed else 200, headers, body)


def _run_one(outer: ApiRequest, part: BatchPart, dispatch: Dispatch) -> BatchResponseItem:
    return _item(_dispatch(outer, part, {}, dispatch), part.content_id)


def _dispatch(
    outer: ApiRequest, part: BatchPart, references: dict[str, str], dispatch: Dispatch
) -> ApiResponse:
    """The answer to ``part`` the usual way, counted in the batch's usage."""
    try:
        sub = _sub_request(outer, part, references)
        response = dispatch(sub)
    except ApiError as exc:
        _charge(outer, part, exc.status)
        return ApiResponse.error(exc)
    if not sub.counted:
        _charge(outer, part, response.status)
    return response


def _run_changeset(
    outer: ApiRequest, changeset: ChangeSet, store: Store, dispatch: Dispatch, upserts: Upserts
) -> BatchResponsePart:
    references: dict[str, str] = {}
    results: list[BatchResponseItem] = []
    try:
        with store.transaction():
            for part in changeset.parts:
                content_id = part.content_id
                if content_id is None:
                    failure = ApiError(400, UNKNOWN_PROPERTY, "Content-ID header not present")
                    raise _ChangeSetFailed(_error_item(failure))
                if content_id in references or any(r.content_id == content_id for r in results):
                    failure = bad_request(f"Duplicate Content-ID '{content_id}' in the change set.")
                    raise _ChangeSetFailed(_error_item(failure, content_id))
                response = upserts.answer(part)
                if response is None:
                    response = _dispatch(outer, part, references, dispatch)
                else:
                    _charge(outer, part, response.status)
                if response.status >= 400:
                    raise _ChangeSetFailed(_item(response, content_id))
                location = response.headers.get("OData-EntityId")
                if location:
                    references[content_id] = location
                results.append(_item(response, content_id))
    except _ChangeSetFailed as failure:
        return failure.response
    return ChangeSetResponse(results)
