"""Unit tests of upsert_multiple: the UpsertMultiple body we send, and how a failing chunk is
narrowed down to its bad row through a $batch with continue-on-error."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.multipart_decode import decode_batch_request
from apex_metrics.dataverse.multipart_encode import encode_batch_response
from apex_metrics.dataverse.multipart_parts import BatchPart, BatchResponseItem

pytestmark = pytest.mark.unit

MakeClient = Callable[..., DataverseClient]
SET, TABLE, KEY = "apex_campaignmetricses", "apex_campaignmetrics", "apex_runid"


def bad_row_answer(bad: str) -> Callable[[httpx.Request], httpx.Response]:
    """A server where the row ``bad`` breaks a rule: UpsertMultiple fails as a whole (all or
    nothing), a $batch answers per part."""

    def handler(request: httpx.Request) -> httpx.Response:
        error = {"error": {"code": "0x80044331", "message": "The length of 'apex_phase' ..."}}
        if request.url.path.endswith("UpsertMultiple"):
            targets = json.loads(request.content)["Targets"]
            if any(t["@odata.id"].endswith(f"'{bad}')") for t in targets):
                return httpx.Response(400, json=error)
            return httpx.Response(204)
        parts = decode_batch_request(request.content, request.headers["Content-Type"])
        answers = []
        for part in parts:
            assert isinstance(part, BatchPart)
            if part.url.endswith(f"'{bad}')"):
                answers.append(BatchResponseItem(400, {}, json.dumps(error).encode()))
            else:
                answers.append(BatchResponseItem(204))
        body, content_type = encode_batch_response(answers)
        return httpx.Response(200, content=body, headers={"Content-Type": content_type})

    return handler


async def test_upsert_multiple_request_shape(mock_client: MakeClient) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    items = [("run-1", {KEY: "run-1", "apex_tokensin": 1}), ("O'Neil", {"apex_phase": "2-3"})]
    outcomes = await mock_client(handler).upsert_multiple(SET, TABLE, KEY, items)
    assert [(o.key, o.status, o.outcome) for o in outcomes] == [
        ("run-1", 204, "upserted"),
        ("O'Neil", 204, "upserted"),
    ]
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == f"/api/data/v9.2/{SET}/Microsoft.Dynamics.CRM.UpsertMultiple"
    assert request.headers["Content-Type"] == "application/json"
    assert "Prefer" not in request.headers
    assert json.loads(request.content) == {
        "Targets": [
            {
                "@odata.type": f"Microsoft.Dynamics.CRM.{TABLE}",
                "@odata.id": f"{SET}(apex_runid='run-1')",
                "apex_tokensin": 1,
            },
            {
                "@odata.type": f"Microsoft.Dynamics.CRM.{TABLE}",
                "@odata.id": f"{SET}(apex_runid='O''Neil')",
                "apex_phase": "2-3",
            },
        ]
    }, "the key column never goes in a target's body"


async def test_a_failing_chunk_is_resent_as_batch_and_only_the_bad_row_fails(
    mock_client: MakeClient,
) -> None:
    paths: list[str] = []
    answer = bad_row_answer("r-7")

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path.rsplit("/", 1)[1])
        return answer(request)

    items = [(f"r-{i}", {"apex_tokensin": i}) for i in range(20)]
    outcomes = await mock_client(handler).upsert_multiple(SET, TABLE, KEY, items)
    assert paths == ["Microsoft.Dynamics.CRM.UpsertMultiple", "$batch"]
    failed = [o for o in outcomes if not o.ok]
    assert [(o.key, o.status, o.code) for o in failed] == [("r-7", 400, "0x80044331")]
    assert not failed[0].transient
    assert sum(o.ok for o in outcomes) == 19


async def test_a_single_row_chunk_takes_the_error_as_its_own(mock_client: MakeClient) -> None:
    paths: list[str] = []
    answer = bad_row_answer("only")

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return answer(request)

    (outcome,) = await mock_client(handler).upsert_multiple(SET, TABLE, KEY, [("only", {})])
    assert (outcome.outcome, outcome.status, outcome.code) == ("failed", 400, "0x80044331")
    assert len(paths) == 1, "no $batch needed to blame one row"


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(401, "", e.TokenRejected), (403, "", e.PrivilegeDenied), (404, "0x80060888", e.NotFound)],
)
async def test_errors_about_the_whole_request_are_raised_not_narrowed(
    mock_client: MakeClient, status: int, code: str, error: type[Exception]
) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(status, json={"error": {"code": code, "message": "no"}})

    with pytest.raises(error):
        await mock_client(handler).upsert_multiple(SET, TABLE, KEY, [("a", {}), ("b", {})])
    assert not any(p.endswith("$batch") for p in paths)


async def test_a_throttled_chunk_is_raised_to_the_caller_when_asked(
    mock_client: MakeClient,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429,
            headers={"Retry-After": "7"},
            json={"error": {"code": "0x80072321", "message": "Combined execution time"}},
        )

    client = mock_client(handler)
    with pytest.raises(e.Throttled) as caught:
        await client.upsert_multiple(SET, TABLE, KEY, [("a", {})], max_throttled=0)
    assert caught.value.retry_after == 7.0 and caught.value.code == "0x80072321"
    assert 6.9 < client.flow.pacer.paused_for() <= 7.0, "the flow paused for exactly Retry-After"
