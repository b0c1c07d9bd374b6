"""The $batch codec against exchanges taken from Microsoft's "Execute batch operations" page, and
properties: round trips, any line end, a batch decoded as its parts are decoded alone."""

from __future__ import annotations

import string
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from apex_metrics.dataverse.multipart_decode import (
    decode_batch_request,
    decode_batch_response,
    decode_response_statuses,
    parse_boundary,
)
from apex_metrics.dataverse.multipart_encode import (
    encode_batch_request,
    encode_batch_response,
    encode_uniform_requests,
)
from apex_metrics.dataverse.multipart_parts import (
    BatchPart,
    BatchRequestItem,
    BatchResponseItem,
    BatchResponsePart,
    ChangeSet,
    ChangeSetResponse,
    MultipartError,
    flatten_responses,
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


# --- properties: round trips, LF line ends, and a batch read as its parts are read alone --------

TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
SPECIAL = {"content-type", "content-length", "content-id"}
PROPERTY = settings(max_examples=150, deadline=None)
ALONE = settings(max_examples=300, deadline=None)

names = st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(lambda n: n.lower() not in SPECIAL)
values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
).map(str.strip)
header_dicts = st.dictionaries(names, values, max_size=4)
urls = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Z")), min_size=1, max_size=30
).filter(lambda url: url.split() == [url])
content_ids = st.none() | st.text(TOKEN_CHARS, min_size=1, max_size=6)
bodies = st.none() | st.binary(max_size=40) | st.text(max_size=12).map(str.encode)
flat_bodies = st.none() | st.binary(max_size=40).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"")
)


def parts_with(
    methods: list[str], body: st.SearchStrategy[bytes | None]
) -> st.SearchStrategy[BatchPart]:
    return st.builds(BatchPart, st.sampled_from(methods), urls, header_dicts, body, content_ids)


def request_items(
    body: st.SearchStrategy[bytes | None],
) -> st.SearchStrategy[list[BatchRequestItem]]:
    changesets = st.builds(
        ChangeSet, st.lists(parts_with(["POST", "PATCH", "put", "DELETE"], body), max_size=3)
    )
    return st.lists(parts_with(["GET", "POST", "PATCH", "delete"], body) | changesets, max_size=6)


def expected_request(part: BatchPart) -> BatchPart:
    """What decoding returns for an encoded request: the encoder adds the body's headers."""
    headers = dict(part.headers)
    if part.body is not None:
        headers["Content-Type"] = "application/json; type=entry"
        headers["Content-Length"] = str(len(part.body))
    return BatchPart(part.method.upper(), part.url, headers, part.body or None, part.content_id)


def expected_requests(items: list[BatchRequestItem]) -> list[BatchRequestItem]:
    return [
        ChangeSet([expected_request(p) for p in i.parts], i.boundary)
        if isinstance(i, ChangeSet)
        else expected_request(i)
        for i in items
    ]


@PROPERTY
@given(items=request_items(bodies), newline=st.sampled_from(["\r\n", "\n"]))
def test_requests_round_trip(items: list[BatchRequestItem], newline: str) -> None:
    # With LF line ends a body ending in CR is ambiguous: that CR reads as the delimiter's CRLF.
    flat = [p for i in items for p in (i.parts if isinstance(i, ChangeSet) else [i])]
    assume(newline == "\r\n" or not any((p.body or b"").endswith(b"\r") for p in flat))
    body, content_type = encode_batch_request(items, newline=newline)
    decoded = decode_batch_request(body, content_type)
    for item, back in zip(items, decoded, strict=True):  # change-set boundaries were drawn
        if isinstance(item, ChangeSet) and isinstance(back, ChangeSet):
            item.boundary = back.boundary
    assert decoded == expected_requests(items)


statuses = st.integers(100, 599)
reasons = st.sampled_from(["", "OK", "Created"]) | values.filter(lambda r: " " not in r)
responses = st.builds(
    BatchResponseItem, statuses, header_dicts, st.binary(max_size=40), content_ids, reasons
)


def expected_response(item: BatchResponseItem) -> BatchResponseItem:
    """What decoding returns for an encoded response: without Content-Length, the body ends
    before trailing CR/LF; an empty reason is written as the status's phrase."""
    try:
        phrase = HTTPStatus(item.status).phrase
    except ValueError:
        phrase = "Unknown"
    return BatchResponseItem(
        item.status, item.headers, item.body.rstrip(b"\r\n"), item.content_id, item.reason or phrase
    )


@PROPERTY
@given(
    items=st.lists(
        responses | st.builds(ChangeSetResponse, st.lists(responses, max_size=3)), max_size=6
    )
)
def test_responses_round_trip(items: list[BatchResponsePart]) -> None:
    body, content_type = encode_batch_response(items)
    decoded = decode_batch_response(body, content_type)
    expected: list[BatchResponsePart] = []
    for item, back in zip(items, decoded, strict=True):
        if isinstance(item, ChangeSetResponse):
            assert isinstance(back, ChangeSetResponse)
            expected.append(
                ChangeSetResponse([expected_response(i) for i in item.items], back.boundary)
            )
        else:
            expected.append(expected_response(item))
    assert decoded == expected


@PROPERTY
@given(items=request_items(flat_bodies), data=st.data())
def test_any_line_end_may_be_bare_lf(items: list[BatchRequestItem], data: st.DataObject) -> None:
    """Bodies without CR/LF: dropping the CR of any CRLF changes nothing decoded."""
    body, content_type = encode_batch_request(items, boundary="batch_lf")
    lines = body.split(b"\r\n")
    ends = data.draw(
        st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=len(lines), max_size=len(lines))
    )
    mixed = b"".join(line + end for line, end in zip(lines, ends, strict=True))[: -len(ends[-1])]
    lf_only = body.replace(b"\r\n", b"\n")
    expected = decode_batch_request(body, content_type)
    assert decode_batch_request(mixed, content_type) == expected
    assert decode_batch_request(lf_only, content_type) == expected


# Lines a part can be made of: heads that share their first lines and differ after them (by a
# Content-ID, a name in another case, a repeated name, a Content-Type), blank and malformed
# lines, LF and CRLF; what a batch decodes to must not depend on the parts before (what one
# decode call remembers), nor must the error.
STEMS = [
    ["Content-Type: application/http", "Content-Transfer-Encoding: binary"],
    ["content-type:APPLICATION/HTTP "],
]
LAST_LINES = [
    "Content-ID: 1", "Content-ID: 2", "content-id:  3 ", "X-A: 1", "x-a: 2",
    "Content-ID: 4", "Content-ID: 5", "X-C: 1",
    "Content-Type: text/plain", "Content-Type: application/http",
    "Content-Transfer-Encoding: base64", "Content-Transfer-Encoding: binary",
    "bad line", "  ", "é: 1", ":1",
]  # fmt: skip
HTTP_LINES = [
    "Content-Length: 2", "content-length: 1", "Content-Length: x", "Prefer: a", "Content-ID: 9",
    "X-B: 1", "x-b: 2", "", " ", "no colon", "OData-Version: 4.0",
]  # fmt: skip
line_ends = st.sampled_from(["\r\n", "\n"])


@st.composite
def part_texts(draw: st.DrawFn, start_lines: list[str]) -> str:
    head = draw(st.sampled_from(STEMS)) + draw(
        st.lists(st.sampled_from(LAST_LINES), min_size=1, max_size=3)
    )
    start = draw(st.sampled_from(start_lines))
    http = draw(st.lists(st.sampled_from(HTTP_LINES), max_size=3))
    lines = [*head, "", start, *http, "", draw(st.sampled_from(["{}", "", "{}\r\n", "x\n"]))]
    return "".join(line + draw(line_ends) for line in lines[:-1]) + lines[-1]


REQUEST_LINES = [
    "PATCH /x HTTP/1.1",
    "get /y HTTP/1.1",
    "POST $1 HTTP/1.1",
    "PATCH /x",
    "TRACE / HTTP/1.1",
]
STATUS_LINES = ["HTTP/1.1 200 OK", "HTTP/1.1 204", "HTTP/1.1 201 Created ", "HTTP/1.1 x", "nope"]


def batch_of(parts: list[str], boundary: str = "b") -> bytes:
    return (
        "".join(f"--{boundary}\r\n{part}\r\n" for part in parts).encode()
        + f"--{boundary}--".encode()
    )


def outcome(decode: Callable[[bytes, str], list[Any]], body: bytes) -> tuple[str, object]:
    try:
        return "ok", decode(body, "multipart/mixed; boundary=b")
    except MultipartError as exc:
        return "error", str(exc)


def assert_same_as_alone(decode: Callable[[bytes, str], list[Any]], parts: list[str]) -> None:
    kind, result = outcome(decode, batch_of(parts))
    alone = [outcome(decode, batch_of([part])) for part in parts]
    if kind == "ok":
        assert isinstance(result, list)
        assert [("ok", [item]) for item in result] == alone
        return
    failed = next(i for i, (k, _) in enumerate(alone) if k == "error")
    assert all(k == "ok" for k, _ in alone[:failed])
    assert str(result).split(": ", 1)[1] == str(alone[failed][1]).split(": ", 1)[1]


@ALONE
@given(parts=st.lists(part_texts(REQUEST_LINES), min_size=2, max_size=8))
def test_a_request_batch_reads_as_its_parts_alone(parts: list[str]) -> None:
    assert_same_as_alone(decode_batch_request, parts)


@ALONE
@given(parts=st.lists(part_texts(STATUS_LINES), min_size=2, max_size=8))
def test_a_response_batch_reads_as_its_parts_alone(parts: list[str]) -> None:
    assert_same_as_alone(decode_batch_response, parts)


@ALONE
@given(parts=st.lists(part_texts(STATUS_LINES), min_size=2, max_size=8))
def test_a_change_set_reads_as_its_parts_alone(parts: list[str]) -> None:
    def in_changeset(inner: list[str]) -> str:
        body = batch_of(inner, "cs").decode()
        return f"Content-Type: multipart/mixed; boundary=cs\r\n\r\n{body}"

    kind, result = outcome(decode_batch_response, batch_of([in_changeset(parts)]))
    alone = [outcome(decode_batch_response, batch_of([in_changeset([part])])) for part in parts]
    if kind == "ok":
        assert isinstance(result, list) and isinstance(result[0], ChangeSetResponse)
        assert [item for _, [changeset] in alone for item in changeset.items] == result[0].items  # type: ignore[misc]
    else:
        assert "error" in [k for k, _ in alone]


# --- what the reader tolerates, and how it fails -------------------------------------------------


def test_preamble_epilogue_padding_and_no_final_line_break() -> None:
    body = (
        b"This is a preamble.\r\n--b \t\r\nContent-Type: application/http\r\n\r\n"
        b"GET /x HTTP/1.1\r\n\r\n\r\n--b--  \r\nepilogue --b\r\n"
    )
    items = decode_batch_request(body, "multipart/mixed; boundary=b")
    assert items == [BatchPart("GET", "/x")]
    assert (
        decode_batch_request(body.split(b"--b--")[0] + b"--b--", "multipart/mixed; boundary=b")
        == items
    )


def test_header_names_any_case_values_trimmed_later_line_wins() -> None:
    body = (
        b"--b\r\nCONTENT-TYPE :  Application/HTTP ; x\r\ncontent-transfer-encoding: BINARY\r\n"
        b"Content-ID:  7 \r\n\r\n"
        b"\t\r\n  \r\npatch /x HTTP/1.1\r\nX-A:  1  \r\nX-A: 2\r\nx-a: 3\r\n"
        b"conTent-LENGTH: 2\r\n\r\n"
        b"{}trailing\r\n--b--\r\n"
    )
    [part] = decode_batch_request(body, "multipart/mixed; boundary=b")
    assert part == BatchPart(
        "PATCH", "/x", {"X-A": "2", "x-a": "3", "conTent-LENGTH": "2"}, b"{}", "7"
    )


def test_a_lone_cr_stays_in_its_line() -> None:
    body = b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200\r\r\n\r\n\r\n--b--"
    with pytest.raises(MultipartError, match=r"malformed status line 'HTTP/1\.1 200\\r'"):
        decode_batch_response(body, "multipart/mixed; boundary=b")
    body = b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n--b--"
    [item] = decode_batch_response(body, "multipart/mixed; boundary=b")
    assert isinstance(item, BatchResponseItem) and item.headers == {"X": "a\rb"}


def test_a_false_delimiter_inside_a_change_set_is_content() -> None:
    inner = (
        b"--cs\r\nContent-Type: application/http\r\nContent-ID: 1\r\n\r\n"
        b"PATCH /x HTTP/1.1\r\n\r\n--csv\r\n--cs-x\r\n--cs --\r\n--cs--\r\n"
    )
    body = b"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n" + inner + b"--b--"
    [changeset] = decode_batch_request(body, "multipart/mixed; boundary=b")
    assert isinstance(changeset, ChangeSet)
    assert changeset.parts == [BatchPart("PATCH", "/x", {}, b"--csv\r\n--cs-x\r\n--cs --", "1")]


@PROPERTY
@given(items=st.lists(responses, max_size=6), changeset=st.booleans())
def test_statuses_are_the_responses_with_successes_cut_short(
    items: list[BatchResponseItem], changeset: bool
) -> None:
    """``decode_response_statuses``: a 2xx answers its status, any other the whole response;
    a batch with a change set is left to ``decode_batch_response``."""
    parts: list[BatchResponsePart] = (
        [*items, ChangeSetResponse(items[:1])] if changeset else [*items]
    )
    body, content_type = encode_batch_response(parts)
    quick = decode_response_statuses(body, content_type)
    if changeset:
        assert quick is None
        return
    full = flatten_responses(decode_batch_response(body, content_type))
    assert quick == [r.status if 200 <= r.status < 300 else r for r in full]


@ALONE
@given(parts=st.lists(part_texts(STATUS_LINES), min_size=1, max_size=8))
def test_statuses_read_and_fail_as_the_whole_decode(parts: list[str]) -> None:
    """Part by part as ``decode_batch_response`` reads it, and with its errors, except that
    the header lines and body of a success are not read (nor checked); a batch answers as its
    parts alone, up to the first error or part that is not application/http."""
    expected: tuple[str, object] = ("ok", [])
    for part in parts:
        quick = outcome(decode_response_statuses, batch_of([part]))  # type: ignore[arg-type]
        full = outcome(decode_batch_response, batch_of([part]))
        if quick[0] == "error":
            assert full == quick
        elif quick[1] is None:  # not application/http: the whole decode says why
            assert full[0] == "error"
        else:
            [answer] = quick[1]  # type: ignore[misc]
            if isinstance(answer, int):
                assert 200 <= answer < 300
                if full[0] == "ok":
                    assert full[1][0].status == answer  # type: ignore[index]
                else:  # what only a success's header lines could have shown
                    assert "status line" not in str(full[1])
            else:
                assert full == ("ok", [answer])
        if expected[0] == "ok" and expected[1] is not None:
            if quick[0] == "error" or quick[1] is None:
                expected = quick
            else:
                expected[1].extend(quick[1])  # type: ignore[union-attr, arg-type]
    got = outcome(decode_response_statuses, batch_of(parts))  # type: ignore[arg-type]
    if expected[0] == "error":
        assert got[0] == "error"
        assert str(got[1]).split(": ", 1)[1] == str(expected[1]).split(": ", 1)[1]
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 20x OK\r\n--b--",
            "malformed status line",
        ),
        (b"--b\r\nContent-Type: application/http\r\n\r\n\r\n--b--", "status line is missing"),
        (
            b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 \xc2\xb2 OK\r\n--b--",
            "malformed status",
        ),
        (
            b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n"
            b"Content-Length: \xc2\xb2\r\n\r\n{}\r\n--b--",
            "Content-Length '²' is not a number",
        ),
        (
            b"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\nX\xff: 1\r\n--b--",
            "UTF-8",
        ),
        (
            b"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs\r\n"
            b"Content-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n--b--",
            "batch response part 1: the closing delimiter --cs-- is missing",
        ),
        (b"--b\r\n\r\nHTTP/1.1 200 OK\r\n--b--", "not 'missing'"),
    ],
)
def test_malformed_response_bodies(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        decode_batch_response(body, "multipart/mixed; boundary=b")


def test_content_length_digits_without_value_are_malformed() -> None:
    body = (
        b"--b\r\nContent-Type: application/http\r\n\r\nPATCH /x HTTP/1.1\r\n"
        b"Content-Length: \xc2\xb2\r\n\r\n{}\r\n--b--"
    )
    with pytest.raises(MultipartError, match="is not a number"):
        decode_batch_request(body, "multipart/mixed; boundary=b")


# --- encoding ------------------------------------------------------------------------------------


@PROPERTY
@given(
    method=st.sampled_from(["PATCH", "post"]),
    targets=st.lists(st.tuples(urls, st.binary(max_size=20)), max_size=4),
    headers=st.dictionaries(
        names | st.sampled_from(["Content-Type", "content-length"]), values, max_size=3
    ),
)
def test_uniform_requests_are_encoded_as_parts_are(
    method: str, targets: list[tuple[str, bytes]], headers: dict[str, str]
) -> None:
    parts: list[BatchRequestItem] = [BatchPart(method, url, headers, body) for url, body in targets]
    assert encode_uniform_requests(
        method, targets, headers, boundary="b_1"
    ) == encode_batch_request(parts, boundary="b_1")


def test_encoded_parts_keep_header_order_and_unknown_statuses() -> None:
    part = BatchPart("patch", "/x", {"prefer": "a", "content-type": "text/plain"}, b"{}", "5")
    body, _ = encode_batch_request([part], boundary="b")
    assert body == (
        b"--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
        b"Content-ID: 5\r\n\r\nPATCH /x HTTP/1.1\r\nprefer: a\r\ncontent-type: text/plain\r\n"
        b"Content-Length: 2\r\n\r\n{}\r\n--b--\r\n"
    )
    body, _ = encode_batch_response(
        [BatchResponseItem(299), BatchResponseItem(200, reason="Fine")], boundary="r"
    )
    assert b"HTTP/1.1 299 Unknown\r\n" in body and b"HTTP/1.1 200 Fine\r\n" in body


MIME = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (MIME + "Content-Type: text/plain", "must be application/http .*not 'text/plain'"),
        (
            "Content-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n"
            "Content-Type: application/http",
            None,
        ),
        (MIME + "Content-Transfer-Encoding: base64", "must be binary, not 'base64'"),
        (MIME + "Content-ID: 4\r\ncontent-ID: 5", "5"),
        # Names that differ by case: the first spelling keeps its place, the value set last wins.
        (MIME + "content-id: 2\r\nContent-ID: 1\r\ncontent-id: 3", "1"),
        (MIME + "X-A: 1", None),
        (MIME + "content-type: multipart/mixed; boundary=c", "no --c delimiter found"),
    ],
)
@pytest.mark.parametrize("after_another", [False, True])
def test_the_last_head_line_counts(head: str, expected: str | None, after_another: bool) -> None:
    """Heads that share their first lines with the part before and differ by the last one."""
    parts = [f"{head}\r\n\r\nPATCH /x HTTP/1.1\r\n\r\n{{}}"]
    if after_another:
        parts.insert(0, f"{MIME}Content-ID: 1\r\n\r\nPATCH /p HTTP/1.1\r\n\r\n{{}}")
    body = batch_of(parts)
    if expected is not None and not expected.isdigit():
        with pytest.raises(MultipartError, match=expected):
            decode_batch_request(body, "multipart/mixed; boundary=b")
        return
    part = decode_batch_request(body, "multipart/mixed; boundary=b")[-1]
    assert isinstance(part, BatchPart) and part.content_id == expected
