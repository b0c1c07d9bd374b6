"""Unit tests of upsert_many: the $batch request we send and how answers map back to rows; the
batch path (key_paths, batch_dumps, encode_upserts) gives the bytes and errors of part by part."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC
from types import MappingProxyType
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex_metrics.dataverse.batching import batch_dumps, dumps, encode_upserts, without_keys
from apex_metrics.dataverse.client import DataverseClient
from apex_metrics.dataverse.multipart_decode import decode_batch_request
from apex_metrics.dataverse.multipart_encode import encode_batch_request, encode_batch_response
from apex_metrics.dataverse.multipart_parts import BatchPart, BatchRequestItem, BatchResponseItem
from apex_metrics.dataverse.urls import key_path, key_paths

MakeClient = Callable[..., DataverseClient]

# A continue-on-error answer shaped like the documentation's examples (execute-batch-operations):
# a new "batchresponse_" boundary, 204 with OData-EntityId for writes, an inline JSON error for the
# failed request, and LF line endings as some servers and proxies produce.
DOC_STYLE_ANSWER = (
    "--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f\n"
    "Content-Type: application/http\n"
    "Content-Transfer-Encoding: binary\n"
    "\n"
    "HTTP/1.1 204 No Content\n"
    "OData-Version: 4.0\n"
    "Location: [Organization URI]/api/data/v9.2/apex_campaignmetricses(apex_runid='a')\n"
    "OData-EntityId: [Organization URI]/api/data/v9.2/apex_campaignmetricses(apex_runid='a')\n"
    "\n"
    "\n"
    "--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f\n"
    "Content-Type: application/http\n"
    "Content-Transfer-Encoding: binary\n"
    "\n"
    "HTTP/1.1 400 Bad Request\n"
    "REQ_ID: 5ecd1cb3-1730-4ffc-909c-d44c22270026\n"
    "Content-Type: application/json; odata.metadata=minimal\n"
    "OData-Version: 4.0\n"
    "\n"
    '{"error":{"code":"0x80044331","message":"A validation error occurred. The length of the '
    "'apex_phase' attribute of the 'apex_campaignmetrics' entity exceeded the maximum allowed "
    "length of '16'.\"}}\n"
    "--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f\n"
    "Content-Type: application/http\n"
    "Content-Transfer-Encoding: binary\n"
    "\n"
    "HTTP/1.1 201 Created\n"
    "Content-Type: application/json; odata.metadata=minimal\n"
    "OData-Version: 4.0\n"
    "\n"
    '{"@odata.etag":"W/\\"1\\"","apex_runid":"c"}\n'
    "--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f--\n"
)


async def test_batch_request_shape(mock_client: MakeClient) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        parts = decode_batch_request(request.content, request.headers["Content-Type"])
        answers = [BatchResponseItem(204 if i % 2 else 201, {}, b"") for i in range(len(parts))]
        body, content_type = encode_batch_response(answers)
        return httpx.Response(200, content=body, headers={"Content-Type": content_type})

    client = mock_client(handler)
    items = [(f"run-{i}", {"apex_runid": f"run-{i}", "apex_tokensin": i}) for i in range(3)]
    items.append(("it's", {"apex_tokensin": 9}))
    outcomes = await client.upsert_many("apex_campaignmetricses", "apex_runid", items)
    assert [o.outcome for o in outcomes] == ["created", "upserted", "created", "upserted"]
    assert [o.key for o in outcomes] == ["run-0", "run-1", "run-2", "it's"]
    request = seen[0]
    assert request.method == "POST" and request.url.path == "/api/data/v9.2/$batch"
    assert request.headers["Prefer"] == "odata.continue-on-error"
    assert request.headers["Content-Type"].startswith("multipart/mixed; boundary=")
    assert b"\r\n" in request.content, "CRLF line endings"
    boundary = request.headers["Content-Type"].split("boundary=")[1].strip('"')
    assert boundary.startswith("batch_")
    first_part = request.content.split(f"--{boundary}\r\n".encode())[1]
    head, _, rest = first_part.partition(b"\r\n\r\n")
    # The documented layout: MIME headers, blank line, request line, its headers, blank, body.
    assert head == b"Content-Type: application/http\r\nContent-Transfer-Encoding: binary"
    request_line = rest.split(b"\r\n")[0]
    assert request_line.startswith(b"PATCH http://") or request_line.startswith(b"PATCH https://")
    assert request_line.endswith(b"(apex_runid='run-0') HTTP/1.1"), "no $select: no body wanted"
    assert b"Content-Type: application/json; type=entry\r\n" in rest
    assert b"Content-Length: " in rest, "inner PATCH parts carry Content-Length"
    assert request.content.endswith(f"--{boundary}--\r\n".encode())
    parts = decode_batch_request(request.content, request.headers["Content-Type"])
    assert all(isinstance(p, BatchPart) and p.method == "PATCH" for p in parts)
    first = parts[0]
    assert isinstance(first, BatchPart)
    assert first.url.endswith("/api/data/v9.2/apex_campaignmetricses(apex_runid='run-0')")
    assert first.header("Prefer") is None, "no return=representation: no extra Retrieve per row"
    assert first.json() == {"apex_tokensin": 0}, "no key column in the body"
    last = parts[3]
    assert isinstance(last, BatchPart) and "(apex_runid='it''s')" in last.url


async def test_partial_failure_maps_to_the_right_rows(mock_client: MakeClient) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=DOC_STYLE_ANSWER.encode(),
            headers={
                "Content-Type": "multipart/mixed; boundary="
                + "batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f"
            },
        )

    client = mock_client(handler)
    outcomes = await client.upsert_many(
        "apex_campaignmetricses",
        "apex_runid",
        [("a", {}), ("b", {"apex_phase": "x" * 17}), ("c", {})],
    )
    a, b, c = outcomes
    assert (a.key, a.status, a.outcome) == ("a", 204, "upserted")
    assert (b.key, b.status, b.outcome, b.code) == ("b", 400, "failed", "0x80044331")
    assert "apex_phase" in b.message and not b.transient
    assert (c.key, c.status, c.outcome) == ("c", 201, "created")


async def test_inner_throttle_and_server_errors_are_transient_rows(mock_client: MakeClient) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        err = json.dumps(
            {"error": {"code": "0x80072322", "message": "Number of requests exceeded"}}
        )
        answers = [
            BatchResponseItem(204),
            BatchResponseItem(429, {"Retry-After": "5"}, err.encode()),
            BatchResponseItem(503, {}, b""),
            BatchResponseItem(
                412, {}, b'{"error":{"code":"0x80060892","message":"Entity Key violated"}}'
            ),
        ]
        body, content_type = encode_batch_response(answers)
        return httpx.Response(200, content=body, headers={"Content-Type": content_type})

    outcomes = await mock_client(handler).upsert_many("s", "k", [(str(i), {}) for i in range(4)])
    assert [o.transient for o in outcomes] == [False, True, True, False]
    assert [o.ok for o in outcomes] == [True, False, False, False]
    assert outcomes[3].code == "0x80060892"


async def test_whole_batch_throttled_is_retried_after_the_pause(mock_client: MakeClient) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(
                429,
                headers={"Retry-After": "0"},
                json={"error": {"code": "0x80072322", "message": "x"}},
            )
        if calls == 2:
            raise httpx.RemoteProtocolError("peer closed connection")
        parts = decode_batch_request(request.content, request.headers["Content-Type"])
        body, content_type = encode_batch_response([BatchResponseItem(200) for _ in parts])
        return httpx.Response(200, content=body, headers={"Content-Type": content_type})

    client = mock_client(handler)
    outcomes = await client.upsert_many("s", "k", [("a", {}), ("b", {})])
    assert calls == 3 and [o.outcome for o in outcomes] == ["updated", "updated"]


async def test_more_than_1000_rows_go_in_several_batches(mock_client: MakeClient) -> None:
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        parts = decode_batch_request(request.content, request.headers["Content-Type"])
        sizes.append(len(parts))
        body, content_type = encode_batch_response([BatchResponseItem(201) for _ in parts])
        return httpx.Response(200, content=body, headers={"Content-Type": content_type})

    outcomes = await mock_client(handler).upsert_many(
        "s", "k", [(f"r{i}", {}) for i in range(2001)]
    )
    assert sizes == [1000, 1000, 1]
    assert len(outcomes) == 2001 and outcomes[-1].key == "r2000"


async def test_mismatched_answer_count_fails_every_row_transiently(mock_client: MakeClient) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body, content_type = encode_batch_response([BatchResponseItem(204)])
        return httpx.Response(200, content=body, headers={"Content-Type": content_type})

    outcomes = await mock_client(handler).upsert_many("s", "k", [("a", {}), ("b", {})])
    assert [o.outcome for o in outcomes] == ["failed", "failed"]
    assert all(o.transient for o in outcomes)


async def test_a_key_dataverse_cannot_address_fails_alone(mock_client: MakeClient) -> None:
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        parts = decode_batch_request(request.content, request.headers["Content-Type"])
        sent.append(len(parts))
        body, content_type = encode_batch_response([BatchResponseItem(201) for _ in parts])
        return httpx.Response(200, content=body, headers={"Content-Type": content_type})

    items = [("a", {}), ("b/c", {}), ("d", {}), ("", {})]
    outcomes = await mock_client(handler).upsert_many("s", "k", items)
    assert [o.outcome for o in outcomes] == ["created", "failed", "created", "failed"]
    assert outcomes[1].code == "invalid_key" and "/" in outcomes[1].message
    assert not outcomes[1].transient
    assert sent == [2]


# --- the batch path: the same bytes and errors as building each part on its own -----------------

PROPERTY = settings(max_examples=150, deadline=None)
key_values = st.text(max_size=12) | st.sampled_from(["run-1", "O'Brien", "a/b", "", "x+y", "é"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.decimals(allow_nan=False, places=3)
    | st.datetimes(timezones=st.just(UTC)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.dictionaries(st.sampled_from(["apex_runid", "a", "b", "c"]), json_values, max_size=4)


def outcome(action: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", action()
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)


@PROPERTY
@given(values=st.lists(key_values, max_size=5))
def test_key_paths_are_key_path_per_value(values: list[str]) -> None:
    def one_by_one() -> list[str]:
        return [key_path("apex_campaignmetricses", {"apex_runid": v}) for v in values]

    assert outcome(lambda: key_paths("apex_campaignmetricses", "apex_runid", values)) == outcome(
        one_by_one
    )


def test_key_paths_check_names_only_when_there_are_keys() -> None:
    assert key_paths("bad name", "k", []) == []
    with pytest.raises(ValueError, match="entity set"):
        key_paths("bad name", "k", ["a"])
    assert key_paths("s", "k", [7, "it's"]) == ["s(k=7)", "s(k='it''s')"]


@PROPERTY
@given(batch=st.lists(bodies, max_size=4))
def test_batch_dumps_is_dumps(batch: list[dict[str, Any]]) -> None:
    encode = batch_dumps()
    assert [outcome(lambda b=b: encode(b)) for b in batch] == [
        outcome(lambda b=b: dumps(b)) for b in batch
    ]


def test_batch_dumps_refuses_as_dumps_does() -> None:
    encode = batch_dumps()
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="Circular reference"):
        encode(loop)
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        encode({"a": {1}})
    shared = {"x": 1}
    assert batch_dumps()({"a": shared, "b": shared}) == b'{"a":{"x":1},"b":{"x":1}}'


def parts_of(api_url: str, key_column: str, items: list[tuple[str, Any]]) -> list[BatchRequestItem]:
    """The parts as built before: one BatchPart per row."""
    return [
        BatchPart(
            "PATCH",
            f"{api_url}{key_path('s', {key_column: k})}",
            {"Content-Type": "application/json; type=entry"},
            dumps(without_keys(body, {key_column: k})),
        )
        for k, body in items
    ]


@PROPERTY
@given(items=st.lists(st.tuples(key_values, bodies | bodies.map(MappingProxyType)), max_size=4))
def test_upserts_are_encoded_as_their_parts(items: list[tuple[str, Any]]) -> None:
    api_url = "https://org.crm.dynamics.com/api/data/v9.2/"
    new = outcome(lambda: encode_upserts(api_url, "s", "apex_runid", items))
    old = outcome(lambda: parts_of(api_url, "apex_runid", items))
    assert new[0] == old[0]
    if new[0] != "ok":
        assert new == old  # the same first error, in row order
        return
    body, content_type = new[1]
    boundary = content_type.split('boundary="')[1].rstrip('"')
    assert (body, content_type) == encode_batch_request(old[1], boundary=boundary)


def test_the_first_bad_row_decides_the_error() -> None:
    bad_body = {"a": {1}}
    with pytest.raises(TypeError):
        encode_upserts("u/", "s", "k", [("a", bad_body), ("b/c", {})])
    with pytest.raises(ValueError, match="b/c"):
        encode_upserts("u/", "s", "k", [("b/c", {}), ("a", bad_body)])
