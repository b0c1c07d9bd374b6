"""The two implementations of the ``$batch`` wire format agree.

The client writes requests and reads responses with ``apex_metrics.dataverse.multipart_*``; the
emulator reads requests and writes responses with ``apex_metrics.emulator.batch_wire``, which
shares no code with it. Each side must read what the other writes, so a bug in either shows
here instead of being mirrored by the same bug on the other side.
"""

from __future__ import annotations

import re
from http import HTTPStatus

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from apex_metrics.dataverse.multipart_decode import decode_batch_request, decode_batch_response
from apex_metrics.dataverse.multipart_encode import encode_batch_request
from apex_metrics.dataverse.multipart_parts import (
    BatchPart,
    BatchRequestItem,
    BatchResponseItem,
    ChangeSet,
    ChangeSetResponse,
    MultipartError,
)
from apex_metrics.emulator import batch_wire
from tests.emulator.test_fuzz import multipart_body

pytestmark = pytest.mark.unit

AGREE = settings(max_examples=200, deadline=None)
BATCH = "batch_7f3a"
CHANGESET = "changeset_91c"
JSON_ENTRY = "application/json; type=entry"
REASONS = {status.value: status.phrase for status in HTTPStatus}

names = st.from_regex(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,15}", fullmatch=True).filter(
    lambda name: name.lower() != "content-length"
) | st.sampled_from(["Content-Type", "content-id", "Prefer", "If-Match", "OData-Version"])
# Header text: no line break, nothing to strip at either end (both sides strip values).
values = st.text(st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=30).map(
    str.strip
)
headers = st.dictionaries(names, values, max_size=5)
# Bodies made of what trips multipart readers: line breaks, text that looks like delimiters or
# like heads, non-ASCII bytes.
PIECES = [
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--", b"-", b" ", b"{}", b'{"a": 1}', b"x",
    f"--{BATCH}".encode(), f"--{BATCH}--".encode(), f"--{CHANGESET}".encode(),
    f"--{BATCH}x".encode(), f"--{CHANGESET}_2--".encode(), b"Content-Type: application/http",
    b"Content-Length: 3", b"HTTP/1.1 200 OK", b"PATCH x HTTP/1.1", "\u00e9\u65e5".encode(),
    b"\xff\x00",
]  # fmt: skip
bodies = st.lists(st.sampled_from(PIECES), max_size=12).map(b"".join)
_DELIMITER = re.compile(rb"--(?:%s|%s)(?:--)?[ \t]*" % (BATCH.encode(), CHANGESET.encode()))


def is_delimiter_free(body: bytes) -> bool:
    """No line of ``body`` is one of the batch's delimiters (a sender picks its boundaries so)."""
    return not any(_DELIMITER.fullmatch(line) for line in re.split(rb"\r\n|\r|\n", body))


urls = st.from_regex(r"[A-Za-z0-9/$()'=?&.,_%-]{1,40}", fullmatch=True) | st.sampled_from(
    ["/api/data/v9.2/things(key='a')", "https://org.crm.dynamics.com/api/data/v9.2/t", "$1"]
)
content_ids = st.none() | st.from_regex(r"[0-9A-Za-z_-]{1,8}", fullmatch=True)


@st.composite
def requests(draw: st.DrawFn, methods: list[str]) -> BatchPart:
    body = draw(st.none() | bodies)
    assume(body is None or is_delimiter_free(body))
    method = draw(st.sampled_from(methods))
    return BatchPart(method, draw(urls), draw(headers), body, draw(content_ids))


ANY_METHOD = ["GET", "POST", "PATCH", "PUT", "DELETE", "patch", "Delete"]
WRITES = ["POST", "PATCH", "PUT", "DELETE"]
changesets = st.lists(requests(WRITES), min_size=1, max_size=4).map(
    lambda parts: ChangeSet(parts, boundary=CHANGESET)
)
batches = st.lists(requests(ANY_METHOD) | changesets, max_size=6)


def expected_request(part: BatchPart) -> tuple[object, ...]:
    """What a reader should find of ``part`` once the client encoder wrote it."""
    sent = dict(part.headers)
    if part.body is not None:  # the encoder adds what a body needs
        if not any(name.lower() == "content-type" for name in sent):
            sent["Content-Type"] = JSON_ENTRY
        sent["Content-Length"] = str(len(part.body))
    inner_id = next((v for k, v in sent.items() if k.lower() == "content-id"), None)
    content_id = part.content_id or inner_id
    return (part.method.upper(), part.url, sent, part.body or None, content_id)


def expected_items(items: list[BatchRequestItem]) -> list[object]:
    return [
        [expected_request(p) for p in item.parts]
        if isinstance(item, ChangeSet)
        else expected_request(item)
        for item in items
    ]


def emulator_view(items: list[batch_wire.BatchRequestItem]) -> list[object]:
    def one(part: batch_wire.BatchPart) -> tuple[object, ...]:
        return (part.method, part.url, part.headers, part.body, part.content_id)

    return [
        [one(p) for p in item.parts] if isinstance(item, batch_wire.ChangeSet) else one(item)
        for item in items
    ]


def client_view(items: list[BatchRequestItem]) -> list[object]:
    def one(part: BatchPart) -> tuple[object, ...]:
        return (part.method, part.url, part.headers, part.body, part.content_id)

    return [
        [one(p) for p in item.parts] if isinstance(item, ChangeSet) else one(item) for item in items
    ]


@AGREE
@given(items=batches, newline=st.sampled_from(["\r\n", "\n"]))
def test_the_emulator_reads_what_the_client_writes(
    items: list[BatchRequestItem], newline: str
) -> None:
    if newline == "\n":  # with bare LF line ends a final CR would join the line break
        parts = [p for i in items for p in (i.parts if isinstance(i, ChangeSet) else [i])]
        assume(not any(p.body and p.body.endswith(b"\r") for p in parts))
    body, content_type = encode_batch_request(items, boundary=BATCH, newline=newline)
    decoded = batch_wire.decode_request(body, content_type)
    assert emulator_view(decoded) == expected_items(items)


response_headers = st.dictionaries(
    names.filter(lambda name: name.lower() != "content-id"), values, max_size=5
)


@st.composite
def responses(draw: st.DrawFn) -> batch_wire.BatchResponseItem:
    status = draw(st.sampled_from([200, 201, 204, 299, 400, 404, 412, 429, 500, 503]))
    body = draw(bodies)
    assume(is_delimiter_free(body))
    sent = draw(response_headers)
    if draw(st.booleans()):
        sent["Content-Length"] = str(len(body))
    else:  # without Content-Length a reader drops the CR and LF bytes at the end of a body
        assume(not body.endswith((b"\r", b"\n")))
    return batch_wire.BatchResponseItem(status, sent, body, draw(content_ids))


answers = st.lists(
    responses() | st.lists(responses(), min_size=1, max_size=4).map(batch_wire.ChangeSetResponse),
    max_size=6,
)


def expected_response(item: batch_wire.BatchResponseItem) -> tuple[object, ...]:
    return (item.status, item.headers, item.body, item.content_id)


def read_response(item: BatchResponseItem) -> tuple[object, ...]:
    return (item.status, item.headers, item.body, item.content_id)


@AGREE
@given(items=answers)
def test_the_client_reads_what_the_emulator_writes(
    items: list[batch_wire.BatchResponsePart],
) -> None:
    body, content_type = batch_wire.encode_response(items)
    decoded = decode_batch_response(body, content_type)
    assert len(decoded) == len(items)
    for got, sent in zip(decoded, items, strict=True):
        if isinstance(sent, batch_wire.ChangeSetResponse):
            assert isinstance(got, ChangeSetResponse)
            assert [read_response(i) for i in got.items] == [
                expected_response(i) for i in sent.items
            ]
        else:
            assert isinstance(got, BatchResponseItem)
            assert read_response(got) == expected_response(sent)
            assert got.reason == REASONS.get(sent.status, "Unknown")


@settings(max_examples=300, deadline=None)
@given(body=multipart_body)
def test_both_readers_agree_on_what_both_accept(body: bytes) -> None:
    """The fuzzer's bodies (mostly malformed): what both readers accept, they read alike."""
    content_type = "multipart/mixed; boundary=b"
    try:
        client = decode_batch_request(body, content_type)
        emulator = batch_wire.decode_request(body, content_type)
    except (MultipartError, batch_wire.MalformedBatch):
        return
    assert emulator_view(emulator) == client_view(client)


def test_an_empty_batch_is_read_as_empty() -> None:
    body, content_type = encode_batch_request([], boundary=BATCH)
    assert batch_wire.decode_request(body, content_type) == []


HTTP_PART = b"--b\r\nContent-Type: application/http\r\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # a closing delimiter glued to the body before it is not a delimiter (RFC 2046)
        (HTTP_PART + b"\r\nGET /x HTTP/1.1\r\n\r\n{}--b--", "closing"),
        (HTTP_PART + b"X-A: 1\r\n y\r\n\r\nGET /x HTTP/1.1\r\n--b--", "malformed header"),
        (HTTP_PART + b"\r\nGET /x HTTP/1.1\r\nA b: c\r\n\r\n--b--", "malformed header"),
        (
            HTTP_PART + b"\r\nPATCH /x HTTP/1.1\r\nContent-Length: x\r\n\r\n{}\r\n--b--",
            "Content-Length",
        ),
        (
            b"--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs--\r\n--b--",
            "no --cs delimiter",
        ),
    ],
)
def test_the_emulator_refuses(body: bytes, message: str) -> None:
    with pytest.raises(batch_wire.MalformedBatch, match=message):
        batch_wire.decode_request(body, "multipart/mixed; boundary=b")
