"""$batch over real HTTP: wire format, change sets, $n references, continue-on-error, limits."""

from __future__ import annotations

import re

import httpx

from apex_metrics.dataverse.multipart_decode import decode_batch_response
from apex_metrics.dataverse.multipart_encode import encode_batch_request
from apex_metrics.dataverse.multipart_parts import (
    BatchPart,
    BatchResponseItem,
    ChangeSet,
    ChangeSetResponse,
    flatten_responses,
)
from tests.emulator.conftest import SET


def post_batch(
    client: httpx.Client, items: list[BatchPart | ChangeSet], prefer: str | None = None
) -> httpx.Response:
    body, content_type = encode_batch_request(items)
    headers = {"Content-Type": content_type}
    if prefer:
        headers["Prefer"] = prefer
    return client.post("$batch", content=body, headers=headers)


def decoded(response: httpx.Response) -> list[BatchResponseItem | ChangeSetResponse]:
    return decode_batch_response(response.content, response.headers["content-type"])


def rows(client: httpx.Client) -> list[str]:
    found = client.get(SET, params={"$select": "apex_runid"}).json()["value"]
    return sorted(r["apex_runid"] for r in found)


def test_raw_documented_exchange(client: httpx.Client, table: str) -> None:
    """The request shape of Microsoft's batch page, written by hand with CRLF line endings."""
    root = str(client.base_url).rstrip("/")
    text = f"""--batch_AAA123
Content-Type: multipart/mixed; boundary=changeset_BBB456

--changeset_BBB456
Content-Type: application/http
Content-Transfer-Encoding:binary
Content-ID: 1

POST {root}/{SET} HTTP/1.1
Content-Type: application/json; type=entry

{{"apex_runid":"doc-1","apex_tokensin":1}}
--changeset_BBB456
Content-Type: application/http
Content-Transfer-Encoding:binary
Content-ID: 2

PATCH $1 HTTP/1.1
Content-Type: application/json; type=entry

{{"apex_phase":"2-3"}}
--changeset_BBB456--

--batch_AAA123
Content-Type: application/http
Content-Transfer-Encoding:binary

GET {root}/{SET}?$select=apex_runid,apex_phase&$filter=contains(apex_runid,'doc') HTTP/1.1


--batch_AAA123--
"""
    response = client.post(
        "$batch",
        content=text.replace("\n", "\r\n").encode(),
        headers={"Content-Type": "multipart/mixed; boundary=batch_AAA123"},
    )
    assert response.status_code == 200
    assert response.headers["OData-Version"] == "4.0"
    match = re.match(
        r"multipart/mixed; boundary=(batchresponse_[0-9a-f-]{36})$",
        response.headers["content-type"],
    )
    assert match, response.headers["content-type"]
    raw = response.content
    assert raw.startswith(f"--{match.group(1)}\r\n".encode())
    assert raw.endswith(f"--{match.group(1)}--\r\n".encode())
    assert b'Content-Type: multipart/mixed; boundary="changesetresponse_' in raw
    assert b"HTTP/1.1 204 No Content\r\n" in raw
    items = decoded(response)
    changeset, get = items
    assert isinstance(changeset, ChangeSetResponse)
    assert [(i.status, i.content_id) for i in changeset.items] == [(204, "1"), (204, "2")]
    created = changeset.items[0]
    assert created.header("Location") == created.header("OData-EntityId")
    assert re.search(rf"/{SET}\([0-9a-f-]{{36}}\)$", created.header("OData-EntityId") or "")
    assert isinstance(get, BatchResponseItem)
    assert get.status == 200
    assert get.json()["value"][0]["apex_phase"] == "2-3"


def test_lf_line_endings_are_accepted(client: httpx.Client, table: str) -> None:
    body, content_type = encode_batch_request(
        [BatchPart("PATCH", f"{SET}(apex_runid='lf')", body=b'{"apex_tokensin": 5}')], newline="\n"
    )
    assert b"\r" not in body
    response = client.post("$batch", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200
    assert rows(client) == ["lf"]


def test_change_set_is_atomic(client: httpx.Client, table: str) -> None:
    changeset = ChangeSet(
        [
            BatchPart("PATCH", f"{SET}(apex_runid='cs-1')", body=b"{}", content_id="1"),
            BatchPart(
                "PATCH",
                f"{SET}(apex_runid='cs-2')",
                body=b'{"apex_phase": "way too long here"}',
                content_id="2",
            ),
        ]
    )
    response = post_batch(
        client, [BatchPart("PATCH", f"{SET}(apex_runid='before')", body=b"{}"), changeset]
    )
    assert response.status_code == 400
    items = decoded(response)
    assert len(items) == 1  # only the failure
    failure = items[0]
    assert isinstance(failure, BatchResponseItem)
    assert failure.status == 400
    assert failure.content_id == "2"
    assert failure.json()["error"]["code"] == "0x80044331"
    assert rows(client) == ["before"]  # the first request ran; the change set rolled back


def test_continue_on_error_runs_everything(client: httpx.Client, table: str) -> None:
    items: list[BatchPart | ChangeSet] = [
        BatchPart("PATCH", f"{SET}(apex_runid='ok-1')", body=b"{}"),
        BatchPart("PATCH", f"{SET}(apex_runid='bad')", body=b'{"apex_nope": 1}'),
        BatchPart("POST", SET, body=b'{"apex_runid": "ok-1"}'),
        BatchPart("PATCH", f"{SET}(apex_runid='ok-2')", body=b"{}", headers={"If-Match": "*"}),
        BatchPart("PATCH", f"{SET}(apex_runid='ok-3')", body=b"{}"),
        BatchPart("GET", f"{SET}(apex_runid='ok-1')?$select=apex_runid"),
    ]
    response = post_batch(client, items, prefer="odata.continue-on-error")
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "odata.continue-on-error"
    statuses = [i.status for i in flatten_responses(decoded(response))]
    assert statuses == [204, 400, 412, 404, 204, 200]
    codes = [
        i.json()["error"]["code"] for i in flatten_responses(decoded(response)) if i.status >= 400
    ]
    assert codes == ["0x80060888", "0x80060892", "0x80040217"]
    assert rows(client) == ["ok-1", "ok-3"]


def test_without_continue_on_error_stops_at_first_failure(client: httpx.Client, table: str) -> None:
    items: list[BatchPart | ChangeSet] = [
        BatchPart("PATCH", f"{SET}(apex_runid='s1')", body=b"{}"),
        BatchPart("PATCH", f"{SET}(apex_runid='s2')", body=b'{"apex_tokensin": "x"}'),
        BatchPart("PATCH", f"{SET}(apex_runid='s3')", body=b"{}"),
    ]
    response = post_batch(client, items)
    assert response.status_code == 400
    assert [i.status for i in flatten_responses(decoded(response))] == [400]
    assert rows(client) == ["s1"]


def test_content_id_references_and_missing_ids(client: httpx.Client, table: str) -> None:
    bad_ref = ChangeSet([BatchPart("PATCH", "$9", body=b"{}", content_id="1")])
    missing = ChangeSet([BatchPart("POST", SET, body=b'{"apex_runid": "m"}')])
    get_inside = (
        b"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n"
        b"--c\r\nContent-Type: application/http\r\n"
        b"Content-ID: 1\r\n\r\nGET " + SET.encode() + b" HTTP/1.1\r\n\r\n--c--\r\n--b--\r\n"
    )
    one = post_batch(client, [bad_ref], prefer="odata.continue-on-error")
    message = flatten_responses(decoded(one))[0].json()["error"]["message"]
    assert message == "Content-ID Reference: '$9' does not exist in the batch context."
    two = post_batch(client, [missing], prefer="odata.continue-on-error")
    assert flatten_responses(decoded(two))[0].json()["error"] == {
        "code": "0x80060888",
        "message": "Content-ID header not present",
    }
    three = client.post(
        "$batch", content=get_inside, headers={"Content-Type": "multipart/mixed; boundary=b"}
    )
    assert three.status_code == 400
    assert "GET is not allowed inside a change set" in three.json()["error"]["message"]
    assert rows(client) == []


def test_limits_and_malformed_batches(client: httpx.Client, table: str) -> None:
    many = [BatchPart("PATCH", f"{SET}(apex_runid='x{i}')", body=b"{}") for i in range(1001)]
    too_many = post_batch(client, many)
    assert too_many.status_code == 400
    assert "exceeds the limit of 1000" in too_many.json()["error"]["message"]
    assert rows(client) == []
    exactly = post_batch(client, many[:1000], prefer="odata.continue-on-error")
    assert exactly.status_code == 200
    assert len(flatten_responses(decoded(exactly))) == 1000
    stats = httpx.get(
        f"{str(client.base_url).split('/api/')[0]}/_emulator/stats", timeout=10
    ).json()
    assert stats["batch"] == {"batch.batches": 1, "batch.requests": 1000, "batch.changesets": 0}
    assert stats["rows"] == {"rows.created": 1000}
    for body, content_type in [
        (b"not multipart", "multipart/mixed; boundary=b"),
        (b"--b\r\n", "multipart/mixed; boundary=b"),
        (b"{}", "application/json"),
    ]:
        response = client.post("$batch", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "0x80060888"
    assert client.get("$batch").status_code == 405
    nested = post_batch(
        client, [BatchPart("POST", "$batch", body=b"")], prefer="odata.continue-on-error"
    )
    inner = flatten_responses(decoded(nested))[0]
    assert inner.status == 400
    assert inner.json()["error"]["message"] == "Batches cannot be nested."


def test_representation_inside_a_batch_tells_created_from_updated(
    client: httpx.Client, table: str
) -> None:
    """The sync client's shape: PATCH by key, $select of the key, return=representation."""
    headers = {"Content-Type": "application/json; type=entry", "Prefer": "return=representation"}
    part = BatchPart(
        "PATCH", f"{SET}(apex_runid='rep')?$select=apex_runid", headers, b'{"apex_tokensin": 1}'
    )
    first = flatten_responses(decoded(post_batch(client, [part], "odata.continue-on-error")))
    second = flatten_responses(decoded(post_batch(client, [part], "odata.continue-on-error")))
    assert (first[0].status, second[0].status) == (201, 200)
    body = second[0].json()
    assert body["apex_runid"] == "rep"
    assert "apex_tokensin" not in body
    assert second[0].header("Preference-Applied") == "return=representation"
    assert second[0].header("OData-EntityId", "").endswith(f"{SET}(apex_runid='rep')")
