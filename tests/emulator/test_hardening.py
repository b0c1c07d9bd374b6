"""Issue 18 hardening of the emulator: Host names, the admin API, body caps, odd text, columns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.requests import Request

from apex_metrics.dataverse.multipart_parts import BatchPart, BatchResponseItem
from apex_metrics.emulator import app as emulator_app
from apex_metrics.testing import RunningEmulator
from tests.emulator.conftest import SET, emulator_stats, label
from tests.emulator.test_batch import decoded, post_batch, rows


def test_loopback_emulator_answers_only_loopback_host_names(emulator: RunningEmulator) -> None:
    port = urlsplit(emulator.url).port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        answer = httpx.get(f"{emulator.url}/_emulator/stats", headers={"Host": host}, timeout=10)
        assert answer.status_code == 200, host
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}"):
        for path in ("/_emulator/stats", "/api/data/v9.2/WhoAmI"):
            answer = httpx.get(f"{emulator.url}{path}", headers={"Host": host}, timeout=10)
            assert answer.status_code == 421, (host, path)


@pytest.mark.parametrize(
    "request_args",
    [
        {"data": {"x": "1"}},  # an HTML form
        {"content": b"{}", "headers": {"Content-Type": "text/plain"}},  # enctype=text/plain
        {},  # fetch(url, {method: "POST", mode: "no-cors"}): no body, no Content-Type
    ],
)
def test_admin_api_refuses_what_a_cross_site_page_can_send(
    emulator: RunningEmulator, request_args: dict[str, Any]
) -> None:
    httpx.patch(f"{emulator.url}/_emulator/faults", json={"latency_ms": 7}, timeout=10)
    reset = httpx.post(f"{emulator.url}/_emulator/reset", timeout=10, **request_args)
    assert reset.status_code == 415
    change = httpx.put(f"{emulator.url}/_emulator/faults", timeout=10, **request_args)
    assert change.status_code == 415
    faults = httpx.get(f"{emulator.url}/_emulator/faults", timeout=10).json()
    assert faults["latency_ms"] == 7  # neither call changed anything
    assert httpx.post(f"{emulator.url}/_emulator/reset", json={}, timeout=10).status_code == 200


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def test_token_endpoint_caps_the_body_even_when_chunked(emulator: RunningEmulator) -> None:
    limit = emulator_app.MAX_TOKEN_BODY_BYTES
    chunked = httpx.post(emulator.token_url, content=_chunks(limit + 1), timeout=30)
    assert chunked.status_code == 413, chunked.text
    assert chunked.json()["error"] == "invalid_request"
    sized = httpx.post(emulator.token_url, content=b"x" * (limit + 1), timeout=30)
    assert sized.status_code == 413


def test_web_api_caps_chunked_bodies_and_writes_nothing(
    client: httpx.Client, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(emulator_app, "MAX_BODY_BYTES", 256 * 1024)
    part = b'{"apex_runid": "big-%d", "apex_name": "' + b"n" * 900 + b'"}'
    body = b"[" + b",".join(part.replace(b"%d", str(i).encode()) for i in range(400)) + b"]"

    def stream() -> Iterator[bytes]:
        yield b'{"Targets": '
        yield body
        yield b"}"

    answer = client.post(
        f"{SET}/Microsoft.Dynamics.CRM.CreateMultiple",
        content=stream(),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 413 and "Content-Length" not in answer.request.headers
    batch = client.post(
        "$batch",
        content=_chunks(300 * 1024),
        headers={"Content-Type": "multipart/mixed; boundary=batch_x"},
    )
    assert batch.status_code == 413
    assert rows(client) == []


def test_non_latin1_key_gets_a_percent_encoded_entity_id(client: httpx.Client, table: str) -> None:
    answer = client.patch(f"{SET}(apex_runid='r\u20ac-caf\u00e9')", json={"apex_tokensin": 1})
    assert answer.status_code == 204, answer.text
    entity_id = answer.headers["odata-entityid"]
    assert entity_id.isascii()
    assert entity_id.endswith(f"{SET}(apex_runid='r%E2%82%AC-caf%C3%A9')")
    assert rows(client) == ["r\u20ac-caf\u00e9"]
    batch = post_batch(
        client, [BatchPart("PATCH", f"{SET}(apex_runid='\u65e5\u672c')", body=b"{}")]
    )
    assert batch.status_code == 200, batch.text
    (item,) = decoded(batch)
    assert isinstance(item, BatchResponseItem) and item.status == 204
    assert item.headers["OData-EntityId"].endswith("(apex_runid='%E6%97%A5%E6%9C%AC')")


@pytest.mark.parametrize(
    "body",
    [
        b'{"apex_runid": "s-1", "apex_phase": "\\ud800"}',
        b'{"apex_runid": "s-1", "apex_phase": "x\\uDC00y"}',
        b'{"apex_runid": "s-1", "apex_nope\\ud83d": 1}',
        b'{"apex_runid": "s-1", "apex_phase": "\xed\xa0\x80"}',
    ],
)
def test_lone_surrogate_is_a_400_and_writes_nothing(
    client: httpx.Client, table: str, body: bytes
) -> None:
    answer = client.post(SET, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "0x80048d19"
    keyed = client.patch(
        f"{SET}(apex_runid='s-2')", content=body, headers={"Content-Type": "application/json"}
    )
    assert keyed.status_code == 400
    batch = post_batch(client, [BatchPart("PATCH", f"{SET}(apex_runid='s-3')", body=body)])
    (item,) = decoded(batch)
    assert isinstance(item, BatchResponseItem) and item.status == 400
    assert rows(client) == []
    ok = client.post(SET, content=b'{"apex_runid": "s-4", "apex_phase": "\\ud83d\\ude00"}')
    assert ok.status_code == 204  # a proper pair is an emoji


def test_too_many_columns_is_a_400_and_creates_nothing(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    body = {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": "apex_Wide",
        "DisplayName": label("Wide"),
        "DisplayCollectionName": label("Wide"),
        "OwnershipType": "OrganizationOwned",
        "HasActivities": False,
        "HasNotes": False,
        "Attributes": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                "SchemaName": "apex_Name",
                "IsPrimaryName": True,
                "MaxLength": 100,
                "FormatName": {"Value": "Text"},
                "DisplayName": label("Name"),
            },
            *(
                {
                    "@odata.type": "Microsoft.Dynamics.CRM.IntegerAttributeMetadata",
                    "SchemaName": f"apex_C{i}",
                    "DisplayName": label(f"C{i}"),
                }
                for i in range(2100)
            ),
        ],
    }
    answer = client.post("EntityDefinitions", json=body)
    assert answer.status_code == 400, answer.text
    assert "at most 1000 columns" in answer.json()["error"]["message"]
    assert client.get("EntityDefinitions(LogicalName='apex_wide')").status_code == 404
    assert "apex_wides" not in emulator_stats(emulator)["tables"]


@pytest.mark.parametrize("value", [b"\xb2", b"1\xb2", b"9" * 5000, b"0"])
def test_page_size_that_is_not_ascii_digits_is_a_400_not_a_500(
    client: httpx.Client, table: str, value: bytes
) -> None:
    # b"\xb2" arrives as "²", which str.isdigit() takes for a digit and int() refuses (it was a
    # 500); 5,000 digits are past what int() reads.
    answer = client.get(SET, headers={"Prefer": b"odata.maxpagesize=" + value})
    assert answer.status_code == 400, answer.text
    assert "odata.maxpagesize" in answer.json()["error"]["message"]
    batch = post_batch(
        client, [BatchPart("GET", SET, headers={"Prefer": "odata.maxpagesize=\u00b2"})]
    )
    (item,) = decoded(batch)
    assert isinstance(item, BatchResponseItem) and item.status == 400
    assert client.get(SET, params={"$top": "\u00b2"}).status_code == 400


@pytest.mark.parametrize("declared", [b"\xb2", b"\xb9\xb2", b"9" * 5000])
async def test_declared_length_that_is_not_ascii_digits_counts_as_too_large(
    declared: bytes,
) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", declared)]}
    assert await emulator_app.read_capped(Request(scope, receive), 1024) is None
