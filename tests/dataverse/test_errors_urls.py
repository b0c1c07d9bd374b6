"""Unit tests: error mapping, Retry-After, transport rules, OData key quoting."""

from __future__ import annotations

import httpx
import pytest

from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.urls import check_url, is_loopback, key_path, same_origin


def body(code: str, message: str) -> bytes:
    return httpx.Response(200, json={"error": {"code": code, "message": message}}).content


@pytest.mark.parametrize(
    ("status", "code", "cls", "transient"),
    [
        (429, "0x80072322", e.Throttled, True),
        (401, "0x80072560", e.NotApplicationUser, False),
        (403, "0x80072560", e.NotApplicationUser, False),
        (401, "", e.TokenRejected, False),
        (403, "", e.PrivilegeDenied, False),
        (404, "0x80040217", e.NotFound, False),
        (412, "0x80060892", e.PreconditionFailed, False),
        (400, "0x80044331", e.DataverseValidationError, False),
        (400, "0x8004E023", e.AggregateLimitExceeded, False),
        (500, "0x80040333", e.DataverseError, False),
        (500, "0x80040216", e.TransientError, True),
        (503, "", e.TransientError, True),
    ],
)
def test_status_and_code_map_to_error_classes(
    status: int, code: str, cls: type[e.DataverseError], transient: bool
) -> None:
    response = httpx.Response(status, content=body(code, "boom"), headers={"Retry-After": "7"})
    error = e.error_from_response(response, what="PATCH x")
    assert type(error) is cls
    assert error.transient is transient
    assert error.status == status and error.code == code
    assert error.hint, "every error says what to do"
    assert "boom" in error.message and "PATCH x" in error.message


def test_throttled_carries_retry_after_and_validation_names_the_column() -> None:
    throttled = e.error_from_response(httpx.Response(429, headers={"Retry-After": "12"}), what="x")
    assert isinstance(throttled, e.Throttled) and throttled.retry_after == 12.0
    message = (
        "A validation error occurred. The length of the 'apex_phase' attribute of the "
        "'apex_campaignmetrics' entity exceeded the maximum allowed length of '16'."
    )
    invalid = e.error_from_response(
        httpx.Response(400, content=body("0x80044331", message)), what="x"
    )
    assert isinstance(invalid, e.DataverseValidationError) and invalid.column == "apex_phase"
    unknown = e.error_from_response(
        httpx.Response(
            400,
            content=body("0x80060888", "Could not find a property named 'apex_nope' on type 'x'."),
        ),
        what="x",
    )
    assert isinstance(unknown, e.DataverseValidationError) and unknown.column == "apex_nope"


def test_retry_after_parsing() -> None:
    assert e.parse_retry_after("3", 9.0) == 3.0
    assert e.parse_retry_after(None, 9.0) == 9.0
    assert e.parse_retry_after("garbage", 9.0) == 9.0
    assert e.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 9.0) == 0.0  # in the past


@pytest.mark.parametrize(
    ("answer", "cls"),
    [
        (
            {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
                "error_codes": [7000215],
            },
            e.InvalidClientSecret,
        ),
        (
            {
                "error": "unauthorized_client",
                "error_description": "AADSTS700016: Application with identifier 'x' was not found",
                "error_codes": [700016],
            },
            e.UnknownClient,
        ),
        (
            {"error": "invalid_request", "error_description": "AADSTS90002: Tenant 'x' not found."},
            e.UnknownClient,
        ),
        (
            {"error": "invalid_scope", "error_description": "AADSTS70011: bad scope"},
            e.TokenRequestFailed,
        ),
    ],
)
def test_token_answers_map_to_auth_errors(
    answer: dict[str, object], cls: type[e.DataverseError]
) -> None:
    error = e.error_from_token_answer(401, answer, authority="https://login.example/t")
    assert type(error) is cls
    assert error.hint and "APEX_" in error.hint


def test_transport_errors_are_transient_except_tls() -> None:
    assert e.error_from_transport(httpx.ReadTimeout("slow"), what="x").transient
    assert e.error_from_transport(httpx.RemoteProtocolError("dropped"), what="x").transient
    assert e.error_from_transport(httpx.DecodingError("bad gzip"), what="x").transient
    tls = e.error_from_transport(
        httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] nope"), what="x"
    )
    assert isinstance(tls, e.InsecureTransport) and not tls.transient
    assert "APEX_CA_BUNDLE" in (tls.hint or "")


def test_url_rules() -> None:
    assert check_url("https://org.crm.dynamics.com/", what="u") == "https://org.crm.dynamics.com"
    assert check_url("http://127.0.0.1:8765", what="u") == "http://127.0.0.1:8765"
    assert check_url("http://localhost:1", what="u") == "http://localhost:1"
    assert check_url("http://[::1]:8765", what="u") == "http://[::1]:8765"
    for bad in (
        "http://org.crm.dynamics.com",
        "http://10.0.0.1:80",
        "ftp://x",
        "org.crm.dynamics.com",
        "https://user:pw@org.example",
        "https://org.example/?a=1",
    ):
        with pytest.raises(e.InsecureTransport):
            check_url(bad, what="APEX_DATAVERSE_URL")
    assert check_url("https://org.example/x/", what="u") == "https://org.example/x"
    with pytest.raises(e.InsecureTransport, match="path"):
        check_url("https://org.crm.dynamics.com/main.aspx", what="u", allow_path=False)
    assert is_loopback("127.5.0.1") and not is_loopback("128.0.0.1") and not is_loopback(None)
    assert same_origin("https://a.example/x", "https://a.example:443")
    assert not same_origin("https://a.example.evil/x", "https://a.example")
    assert not same_origin("http://a.example/x", "https://a.example")


def test_key_quoting_follows_odata_rules() -> None:
    assert (
        key_path("apex_campaignmetricses", {"apex_runid": "run-1"})
        == "apex_campaignmetricses(apex_runid='run-1')"
    )
    assert key_path("s", {"k": "O'Brien"}) == "s(k='O''Brien')"
    assert key_path("s", {"k": "a b#é"}) == "s(k='a%20b%23%C3%A9')"
    assert key_path("s", {"a": 2, "b": "x"}) == "s(a=2,b='x')"
    for bad in ("a/b", "a?b", "50%", "a&b", "a+b", "a:b", ""):
        with pytest.raises(ValueError):
            key_path("s", {"k": bad})
    with pytest.raises(ValueError):
        key_path("s;drop", {"k": "x"})
