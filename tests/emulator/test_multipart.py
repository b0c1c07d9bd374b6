"""The $batch codec against exchanges taken from Microsoft's "Execute batch operations" page."""

from __future__ import annotations

import pytest

from apex_metrics.dataverse.multipart import (
    BatchPart,
    BatchResponseItem,
    ChangeSet,
    ChangeSetResponse,
    MultipartError,
    decode_batch_request,
    decode_batch_response,
    encode_batch_request,
    encode_batch_response,
    flatten_responses,
    parse_boundary,
)

ORG = "https://org.crm.dynamics.com"

# The documentation's request: a change set of two creates with Content-IDs, then a GET.
DOC_REQUEST = f"""--batch_80dd1615-2a10-428a-bb6f-0e559792721f
Content-Type: multipart/mixed; boundary=changeset_BBB456

--changeset_BBB456
Content-Type: application/http
Content-Transfer-Encoding:binary
Content-ID: 1

POST {ORG}/api/data/v9.2/tasks HTTP/1.1
Content-Type: application/json; type=entry

{{
"subject":"Task 1 in batch",
"regardingobjectid_account_task@odata.bind":"{ORG}/api/data/v9.2/accounts(00000000-0000-0000-0000-000000000001)"
}}
--changeset_BBB456
Content-Type: application/http
Content-Transfer-Encoding:binary
Content-ID: 2

POST {ORG}/api/data/v9.2/tasks HTTP/1.1
Content-Type: application/json; type=entry

{{
"subject":"Task 2 in batch",
"regardingobjectid_account_task@odata.bind":"{ORG}/api/data/v9.2/accounts(00000000-0000-0000-0000-000000000001)"
}}
--changeset_BBB456--

--batch_80dd1615-2a10-428a-bb6f-0e559792721f
Content-Type: application/http
Content-Transfer-Encoding:binary

GET {ORG}/api/data/v9.2/tasks?$select=subject&$filter=contains(subject,'Task') HTTP/1.1


--batch_80dd1615-2a10-428a-bb6f-0e559792721f--
"""
DOC_REQUEST_TYPE = 'multipart/mixed; boundary="batch_80dd1615-2a10-428a-bb6f-0e559792721f"'

# The documentation's response to it.
DOC_RESPONSE = f"""--batchresponse_f44bd09d-573f-4a30-bca0-2e500ee7e139
Content-Type: multipart/mixed; boundary=changesetresponse_77fb1d60-fc8b-4a16-b1d0-a0db8dd4d3e1

--changesetresponse_77fb1d60-fc8b-4a16-b1d0-a0db8dd4d3e1
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

HTTP/1.1 204 No Content
OData-Version: 4.0
Location: {ORG}/api/data/v9.2/tasks(a59c24f3-fafc-ed11-8f6e-000d3a993550)
OData-EntityId: {ORG}/api/data/v9.2/tasks(a59c24f3-fafc-ed11-8f6e-000d3a993550)


--changesetresponse_77fb1d60-fc8b-4a16-b1d0-a0db8dd4d3e1
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

HTTP/1.1 204 No Content
OData-Version: 4.0
Location: {ORG}/api/data/v9.2/tasks(a69c24f3-fafc-ed11-8f6e-000d3a993550)
OData-EntityId: {ORG}/api/data/v9.2/tasks(a69c24f3-fafc-ed11-8f6e-000d3a993550)


--changesetresponse_77fb1d60-fc8b-4a16-b1d0-a0db8dd4d3e1--
--batchresponse_f44bd09d-573f-4a30-bca0-2e500ee7e139
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 200 OK
Content-Type: application/json; odata.metadata=minimal; odata.streaming=true
OData-Version: 4.0

{{
  "@odata.context": "{ORG}/api/data/v9.2/$metadata#tasks(subject)",
  "value": [
    {{"@odata.etag": "W/\\"77180907\\"", "subject": "Task 1 in batch"}}
  ]
}}
--batchresponse_f44bd09d-573f-4a30-bca0-2e500ee7e139--
"""
DOC_RESPONSE_TYPE = "multipart/mixed; boundary=batchresponse_f44bd09d-573f-4a30-bca0-2e500ee7e139"

# The documentation's failure without continue-on-error: 400 holding only the failed response.
DOC_ERROR_RESPONSE = """--batchresponse_01
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 400 Bad Request
Content-Type: application/json; odata.metadata=minimal
OData-Version: 4.0

{
  "error": {
    "code": "0x80044331",
    "message": "A validation error occurred.  The length of the 'subject' attribute \
of the 'task' entity exceeded the maximum allowed length of '200'."
  }
}
--batchresponse_01--
"""


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


@pytest.mark.parametrize("newline", ["lf", "crlf"])
def test_decode_documented_request(newline: str) -> None:
    body = crlf(DOC_REQUEST) if newline == "crlf" else DOC_REQUEST.encode()
    items = decode_batch_request(body, DOC_REQUEST_TYPE)
    assert len(items) == 2
    changeset, get = items
    assert isinstance(changeset, ChangeSet)
    assert changeset.boundary == "changeset_BBB456"
    assert [p.content_id for p in changeset.parts] == ["1", "2"]
    first = changeset.parts[0]
    assert first.method == "POST"
    assert first.url == f"{ORG}/api/data/v9.2/tasks"
    assert first.header("content-type") == "application/json; type=entry"
    assert first.json()["subject"] == "Task 1 in batch"
    assert isinstance(get, BatchPart)
    assert get.method == "GET"
    assert get.url.endswith("$filter=contains(subject,'Task')")
    assert get.body is None


@pytest.mark.parametrize("newline", ["lf", "crlf"])
def test_decode_documented_response(newline: str) -> None:
    body = crlf(DOC_RESPONSE) if newline == "crlf" else DOC_RESPONSE.encode()
    items = decode_batch_response(body, DOC_RESPONSE_TYPE)
    assert isinstance(items[0], ChangeSetResponse)
    flat = flatten_responses(items)
    assert [(i.status, i.content_id) for i in flat] == [(204, "1"), (204, "2"), (200, None)]
    assert flat[0].reason == "No Content"
    assert flat[1].header("odata-entityid", "").endswith("(a69c24f3-fafc-ed11-8f6e-000d3a993550)")
    assert flat[2].json()["value"][0]["subject"] == "Task 1 in batch"


def test_decode_documented_error_response() -> None:
    items = decode_batch_response(
        crlf(DOC_ERROR_RESPONSE), "multipart/mixed; boundary=batchresponse_01"
    )
    assert len(items) == 1
    item = items[0]
    assert isinstance(item, BatchResponseItem)
    assert item.status == 400
    assert not item.ok
    assert item.json()["error"]["code"] == "0x80044331"


def test_request_round_trip_keeps_order_ids_and_bodies() -> None:
    items = [
        ChangeSet(
            [
                BatchPart("POST", "/api/data/v9.2/tasks", body=b'{"subject":"a"}', content_id="1"),
                BatchPart("PATCH", "$1", body=b'{"subject":"b"}', content_id="2"),
            ]
        ),
        BatchPart("PATCH", "/api/data/v9.2/things(key='x')", body=b'{"n":1}\r\n\r\n'),
        BatchPart("DELETE", "/api/data/v9.2/things(key='y')", headers={"If-Match": "*"}),
        BatchPart("GET", "/api/data/v9.2/things?$top=1"),
    ]
    body, content_type = encode_batch_request(items, boundary="batch_42")
    assert content_type == 'multipart/mixed; boundary="batch_42"'
    assert body.startswith(b'--batch_42\r\nContent-Type: multipart/mixed; boundary="changeset_')
    assert body.endswith(b"--batch_42--\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"")
    decoded = decode_batch_request(body, content_type)
    assert isinstance(decoded[0], ChangeSet)
    assert [(p.method, p.url, p.content_id, p.body) for p in decoded[0].parts] == [
        ("POST", "/api/data/v9.2/tasks", "1", b'{"subject":"a"}'),
        ("PATCH", "$1", "2", b'{"subject":"b"}'),
    ]
    patch, delete, get = decoded[1:]
    assert isinstance(patch, BatchPart)
    assert patch.body == b'{"n":1}\r\n\r\n'  # Content-Length keeps trailing bytes exactly
    assert patch.header("Content-Length") == "11"
    assert isinstance(delete, BatchPart)
    assert delete.header("if-match") == "*"
    assert delete.body is None
    assert isinstance(get, BatchPart)
    assert get.header("Content-Type") is None


def test_request_encoded_with_lf_decodes_the_same() -> None:
    items = [BatchPart("PATCH", "things(k='a')", body=b'{"n":1}')]
    body, content_type = encode_batch_request(items, newline="\n")
    assert b"\r" not in body
    decoded = decode_batch_request(body, content_type)
    assert decoded == [
        BatchPart(
            "PATCH",
            "things(k='a')",
            {"Content-Type": "application/json; type=entry", "Content-Length": "7"},
            b'{"n":1}',
        )
    ]


def test_response_round_trip() -> None:
    items = [
        ChangeSetResponse(
            [BatchResponseItem(204, {"OData-EntityId": "x(1)"}, content_id="1")],
            boundary="changesetresponse_7",
        ),
        BatchResponseItem(
            412, {"Content-Type": "application/json"}, b'{"error":{"code":"0x80060892"}}'
        ),
    ]
    body, content_type = encode_batch_response(items, boundary="batchresponse_9")
    assert content_type == "multipart/mixed; boundary=batchresponse_9"
    assert b"HTTP/1.1 412 Precondition Failed\r\n" in body
    assert b"Content-ID: 1\r\n" in body
    decoded = decode_batch_response(body, content_type)
    flat = flatten_responses(decoded)
    assert [(i.status, i.content_id) for i in flat] == [(204, "1"), (412, None)]
    assert flat[0].header("OData-EntityId") == "x(1)"
    assert flat[1].json() == {"error": {"code": "0x80060892"}}


def test_content_id_in_inner_headers_is_accepted() -> None:
    body = (
        b"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n"
        b"--cs\r\nContent-Type: application/http\r\n\r\n"
        b"POST /api/data/v9.2/tasks HTTP/1.1\r\nContent-ID: 7\r\n\r\n{}\r\n--cs--\r\n--b--"
    )
    items = decode_batch_request(body, "multipart/mixed; boundary=b")
    changeset = items[0]
    assert isinstance(changeset, ChangeSet)
    assert changeset.parts[0].content_id == "7"


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        (None, "Content-Type is missing"),
        ("application/json", "must be multipart/mixed"),
        ("multipart/mixed", "no boundary"),
        ('multipart/mixed; boundary=""', "invalid multipart boundary"),
    ],
)
def test_bad_content_type(content_type: str | None, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        parse_boundary(content_type)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"nothing here", "no --b delimiter"),
        (b"--b\r\nContent-Type: application/http\r\n\r\nGET /x HTTP/1.1\r\n", "closing delimiter"),
        (b"--b\r\nContent-Type: text/plain\r\n\r\nGET /x HTTP/1.1\r\n--b--", "application/http"),
        (b"--b\r\nContent-Type: application/http\r\n\r\n\r\n--b--", "request line is missing"),
        (b"--b\r\nContent-Type: application/http\r\n\r\nGET /x\r\n--b--", "malformed request line"),
        (b"--b\r\nContent-Type: application/http\r\n\r\nTRACE /x HTTP/1.1\r\n--b--", "not allowed"),
        (b"--b\r\nno colon\r\n\r\nGET /x HTTP/1.1\r\n--b--", "malformed header line"),
        (b"--b\r\nContent-Type: application/http\xff\r\n\r\nGET / HTTP/1.1\r\n--b--", "UTF-8"),
        (
            b"--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"GET /x HTTP/1.1\r\n--b--",
            "must be binary",
        ),
        (
            b"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs\r\n"
            b"Content-Type: application/http\r\n\r\nGET /x HTTP/1.1\r\n--cs--\r\n--b--",
            "GET is not allowed inside a change set",
        ),
        (
            b"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs\r\n"
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x--\r\n--cs--\r\n--b--",
            "cannot be nested",
        ),
        (
            b"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs\r\n--b--",
            "--cs-- is missing",
        ),
    ],
)
def test_malformed_request_bodies(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        decode_batch_request(body, "multipart/mixed; boundary=b")


def test_error_is_a_value_error() -> None:
    assert issubclass(MultipartError, ValueError)


def test_boundary_prefix_is_not_a_delimiter() -> None:
    body = b"--b\r\nContent-Type: application/http\r\n\r\nGET /x HTTP/1.1\r\n\r\n--bb\r\n--b--\r\n"
    items = decode_batch_request(body, "multipart/mixed; boundary=b")
    assert len(items) == 1
    assert isinstance(items[0], BatchPart)
    assert items[0].body == b"--bb"
