"""Unit tests of the token providers (MockTransport; the MSAL path runs against the emulator)."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from pathlib import Path

import httpx
import pytest
import requests
import requests.adapters
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.auth import (
    LoopbackTokenProvider,
    MsalTokenProvider,
    load_certificate,
    requests_session,
)

AUTH = "http://127.0.0.1:8765"


def provider(handler, **kw: str) -> tuple[LoopbackTokenProvider, httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return (
        LoopbackTokenProvider(
            http,
            authority_host=AUTH,
            tenant_id=kw.get("tenant", "t1"),
            client_id="c1",
            client_secret="s3cret",
            environment_url=AUTH,
        ),
        http,
    )


async def test_loopback_provider_posts_client_credentials_and_caches() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        await asyncio.sleep(0.01)
        return httpx.Response(
            200, json={"token_type": "Bearer", "expires_in": 3599, "access_token": f"t{len(seen)}"}
        )

    tokens, http = provider(handler)
    async with http:
        results = await asyncio.gather(*(tokens.token() for _ in range(5)))
        assert results == ["t1"] * 5 and len(seen) == 1, "one fetch for concurrent callers"
        assert seen[0].url == "http://127.0.0.1:8765/t1/oauth2/v2.0/token"
        form = dict(httpx.QueryParams(seen[0].content.decode()))
        assert form == {
            "grant_type": "client_credentials",
            "client_id": "c1",
            "client_secret": "s3cret",
            "scope": "http://127.0.0.1:8765/.default",
        }
        tokens.invalidate()
        assert await tokens.token() == "t2"


async def test_short_lived_tokens_are_renewed_before_expiry() -> None:
    count = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return httpx.Response(200, json={"expires_in": 0.2, "access_token": f"t{count}"})

    tokens, http = provider(handler)
    async with http:
        assert await tokens.token() == "t1"
        await asyncio.sleep(0.15)  # renewal at half the lifetime for short tokens
        assert await tokens.token() == "t2"


@pytest.mark.parametrize(
    ("status", "answer", "cls"),
    [
        (
            401,
            {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
                "error_codes": [7000215],
            },
            e.InvalidClientSecret,
        ),
        (
            400,
            {
                "error": "unauthorized_client",
                "error_description": "AADSTS700016: Application not found",
                "error_codes": [700016],
            },
            e.UnknownClient,
        ),
        (503, {"error": "temporarily_unavailable"}, e.TransientError),
    ],
)
async def test_loopback_provider_errors(
    status: int, answer: dict[str, object], cls: type[e.DataverseError]
) -> None:
    tokens, http = provider(lambda request: httpx.Response(status, json=answer))
    async with http:
        with pytest.raises(cls) as caught:
            await tokens.token()
    assert "s3cret" not in caught.value.one_line()


def test_loopback_provider_refuses_remote_authority() -> None:
    http = httpx.AsyncClient()
    with pytest.raises(e.InsecureTransport):
        LoopbackTokenProvider(
            http,
            authority_host="http://login.example.com",
            tenant_id="t",
            client_id="c",
            client_secret="s",
            environment_url=AUTH,
        )


def test_msal_provider_refuses_http_and_needs_one_credential() -> None:
    with pytest.raises(e.InsecureTransport):
        MsalTokenProvider(
            authority_host="http://127.0.0.1:1",
            tenant_id="t",
            client_id="c",
            environment_url=AUTH,
            client_secret="s",
        )
    with pytest.raises(e.TokenRequestFailed):
        MsalTokenProvider(
            authority_host="https://127.0.0.1:1", tenant_id="t", client_id="c", environment_url=AUTH
        )


def test_requests_session_ignores_environment_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent.pem")
    session = requests_session(tmp_path / "ca.pem")
    assert session.trust_env is False and session.verify == str(tmp_path / "ca.pem")
    assert requests_session(None).verify is True
    session.close()


def test_certificate_credential_from_pem(tmp_path: Path) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    cert = ca.issue_cert("apex-client", key_type=trustme.KeyType.RSA)
    pem = tmp_path / "client.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    credential = load_certificate(pem)
    ec = tmp_path / "ec.pem"
    trustme.CA().issue_cert("ec-client").private_key_and_cert_chain_pem.write_to_path(str(ec))
    with pytest.raises(e.TokenRequestFailed, match="RSA"):
        load_certificate(ec)
    assert credential["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert "thumbprint" not in credential, "MSAL then names it by SHA-256 (x5t#S256, PS256)"
    assert credential["public_certificate"].startswith("-----BEGIN CERTIFICATE-----")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a pem")
    with pytest.raises(e.TokenRequestFailed):
        load_certificate(bad)
    with pytest.raises(e.TokenRequestFailed):
        load_certificate(tmp_path / "missing.pem")


class _FakeAuthority(requests.adapters.HTTPAdapter):
    """Answers MSAL's discovery GET and token POST without a network."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def,override]
        base = "https://login.example.test/t1"
        if request.method == "GET":
            data = {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
            }
        else:
            self.forms.append(dict(urllib.parse.parse_qsl(request.body)))
            data = {"token_type": "Bearer", "expires_in": 3599, "access_token": "cert-token"}
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(data).encode()
        response.headers["Content-Type"] = "application/json"
        response.url = request.url
        response.request = request
        return response


async def test_msal_certificate_credential_sends_a_signed_assertion(tmp_path: Path) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    cert = ca.issue_cert("apex-client", key_type=trustme.KeyType.RSA)
    pem = tmp_path / "client.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    tokens = MsalTokenProvider(
        authority_host="https://login.example.test",
        tenant_id="t1",
        client_id="c1",
        environment_url="https://org.example.test",
        certificate=pem,
    )
    fake = _FakeAuthority()
    tokens._session.mount("https://", fake)
    try:
        assert await tokens.token() == "cert-token"
    finally:
        tokens.close()
    (form,) = fake.forms
    assert "client_secret" not in form
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert form["scope"] == "https://org.example.test/.default"
    header = json.loads(base64.urlsafe_b64decode(form["client_assertion"].split(".")[0] + "=="))
    sha256 = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).fingerprint(
        hashes.SHA256()
    )
    assert header["alg"] == "PS256"
    assert base64.urlsafe_b64decode(header["x5t#S256"] + "==") == sha256
