"""The token endpoint's client assertions: certificate-signed JWTs and federated tokens
(emulator/assertions.py), checked on the authority itself (no server, no network)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from apex_metrics.emulator.assertions import read_certificate_files
from apex_metrics.emulator.auth import Authority, TokenError
from apex_metrics.emulator.config import EmulatorConfig, FederatedCredential
from apex_metrics.emulator.errors import EmulatorError

from .assertion_helpers import (
    ClientCert,
    assertion,
    assertion_form,
    federated_token,
    make_certificate,
)

pytestmark = pytest.mark.unit

BASE = "https://127.0.0.1:8443"
TENANT = "apex-local-tenant"
CLIENT = "apex-local-client"
ENDPOINT = f"{BASE}/{TENANT}/oauth2/v2.0/token"
SCOPE = f"{BASE}/.default"
ISSUER = "https://oidc.aks.test/issuer/1234"
SUBJECT = "system:serviceaccount:apex:sync"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientCert]:
    directory = tmp_path_factory.mktemp("certs")
    return {
        name: make_certificate(directory, name, expired=name == "expired")
        for name in ("app", "other", "expired", "issuer")
    }


@pytest.fixture(scope="module")
def authority(certs: dict[str, ClientCert]) -> Authority:
    config = EmulatorConfig(
        client_certificates={CLIENT: (certs["app"].cert_pem, certs["expired"].cert_pem)},
        federated_credentials=(
            FederatedCredential("workload-app", ISSUER, SUBJECT, certs["issuer"].public_pem),
        ),
    )
    return Authority(config, b"k" * 32)


def issue(authority: Authority, form: dict[str, str]) -> dict[str, Any]:
    return authority.issue(TENANT, urlencode(form).encode(), None, BASE)


def refused(authority: Authority, form: dict[str, str]) -> TokenError:
    with pytest.raises(TokenError) as caught:
        issue(authority, form)
    return caught.value


def claims_of(access_token: str) -> dict[str, Any]:
    body = access_token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return data


@pytest.mark.parametrize("alg", ["PS256", "RS256"])
def test_assertion_signed_by_the_registered_certificate_gets_a_token(
    authority: Authority, certs: dict[str, ClientCert], alg: str
) -> None:
    token = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT, alg=alg)
    answer = issue(authority, assertion_form(CLIENT, SCOPE, token))
    assert answer["token_type"] == "Bearer"
    claims = claims_of(answer["access_token"])
    assert claims["appid"] == CLIENT and claims["aud"] == BASE
    assert claims["appidacr"] == "2", "a certificate sign-in, not a secret"
    secret = issue(authority, {"grant_type": "client_credentials", "client_id": CLIENT,
                               "client_secret": "apex-local-secret", "scope": SCOPE})  # fmt: skip
    assert claims_of(secret["access_token"])["appidacr"] == "1"


def test_another_certificate_is_700027_naming_its_thumbprint(
    authority: Authority, certs: dict[str, ClientCert]
) -> None:
    token = assertion(certs["other"], client_id=CLIENT, audience=ENDPOINT)
    error = refused(authority, assertion_form(CLIENT, SCOPE, token))
    assert error.status == 401
    assert error.body["error"] == "invalid_client"
    assert error.body["error_codes"] == [700027]
    description = error.body["error_description"]
    assert description.startswith("AADSTS700027: The certificate with identifier used to sign")
    assert certs["other"].sha256.hex().upper() in description
    assert set(error.body) >= {"timestamp", "trace_id", "correlation_id", "error_uri"}


def test_a_forged_signature_is_700027(authority: Authority, certs: dict[str, ClientCert]) -> None:
    # Signed by another key but naming the registered certificate's thumbprint.
    token = assertion(certs["other"], client_id=CLIENT, audience=ENDPOINT)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    header["x5t#S256"] = base64.urlsafe_b64encode(certs["app"].sha256).rstrip(b"=").decode()
    forged_header = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    forged = ".".join([forged_header, *token.split(".")[1:]])
    error = refused(authority, assertion_form(CLIENT, SCOPE, forged))
    assert error.body["error_codes"] == [700027]
    assert "invalid signature" in error.body["error_description"]
    # The right key, but the payload changed after signing.
    good = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT)
    head, _, signature = good.split(".")
    other_body = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT, lifetime=9).split(".")
    error = refused(authority, assertion_form(CLIENT, SCOPE, f"{head}.{other_body[1]}.{signature}"))
    assert error.body["error_codes"] == [700027]


def test_expired_assertion_is_700024(authority: Authority, certs: dict[str, ClientCert]) -> None:
    old = time.time() - 3600
    token = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT, issued=old)
    error = refused(authority, assertion_form(CLIENT, SCOPE, token))
    assert error.status == 401 and error.body["error_codes"] == [700024]
    assert "not within its valid time range" in error.body["error_description"]
    future = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT, issued=time.time() + 3600)
    assert refused(authority, assertion_form(CLIENT, SCOPE, future)).body["error_codes"] == [700024]
    # Within the 5-minute clock skew: accepted.
    recent = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT, issued=time.time() - 700)
    assert issue(authority, assertion_form(CLIENT, SCOPE, recent))["access_token"]


def test_expired_certificate_is_700027(authority: Authority, certs: dict[str, ClientCert]) -> None:
    token = assertion(certs["expired"], client_id=CLIENT, audience=ENDPOINT)
    error = refused(authority, assertion_form(CLIENT, SCOPE, token))
    assert error.body["error_codes"] == [700027]
    assert "The key used is expired" in error.body["error_description"]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"aud": f"{BASE}/{TENANT}/v2.0"}, 50027),  # not the token endpoint
        ({"aud": "https://login.microsoftonline.com/x/oauth2/v2.0/token"}, 50027),
        ({"sub": "someone"}, 50048),  # iss = client, sub differs
        ({"iss": "other-app", "sub": "other-app"}, 700021),
        ({"exp": "soon"}, 50027),
    ],
)
def test_claims_are_checked(
    authority: Authority, certs: dict[str, ClientCert], changes: dict[str, Any], code: int
) -> None:
    token = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT, **changes)
    assert refused(authority, assertion_form(CLIENT, SCOPE, token)).body["error_codes"] == [code]


def test_v1_token_endpoint_and_audience_lists_are_accepted(
    authority: Authority, certs: dict[str, ClientCert]
) -> None:
    v1 = assertion(certs["app"], client_id=CLIENT, audience=f"{BASE}/{TENANT}/oauth2/token")
    assert issue(authority, assertion_form(CLIENT, SCOPE, v1))["access_token"]
    listed = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT, aud=["x", ENDPOINT])
    assert issue(authority, assertion_form(CLIENT, SCOPE, listed))["access_token"]


def test_malformed_requests(authority: Authority, certs: dict[str, ClientCert]) -> None:
    token = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT)
    form = assertion_form(CLIENT, SCOPE, token)
    assert refused(authority, {**form, "client_assertion": "a.b"}).body["error_codes"] == [50027]
    assert refused(authority, {**form, "client_assertion_type": "x"}).status == 400
    missing_type = {k: v for k, v in form.items() if k != "client_assertion_type"}
    assert refused(authority, missing_type).body["error"] == "invalid_request"
    assert refused(authority, {**form, "client_assertion": ""}).body["error_codes"] == [900144]
    both = refused(authority, {**form, "client_secret": "apex-local-secret"})
    assert both.status == 400 and both.body["error"] == "invalid_request"
    unnamed = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT, thumbprint="none")
    assert refused(authority, assertion_form(CLIENT, SCOPE, unnamed)).body["error_codes"] == [
        700027
    ]
    hs256 = assertion(certs["app"], client_id=CLIENT, audience=ENDPOINT, alg="RS512")
    error = refused(authority, assertion_form(CLIENT, SCOPE, hs256))
    assert error.body["error_codes"] == [700027] and "RS512" in error.body["error_description"]


def test_federated_token_matching_a_federated_credential(
    authority: Authority, certs: dict[str, ClientCert]
) -> None:
    good = federated_token(certs["issuer"], issuer=ISSUER, subject=SUBJECT)
    answer = issue(authority, assertion_form("workload-app", SCOPE, good))
    assert claims_of(answer["access_token"])["appid"] == "workload-app"
    for bad in (
        federated_token(certs["issuer"], issuer=ISSUER, subject="system:serviceaccount:x:y"),
        federated_token(certs["issuer"], issuer="https://elsewhere", subject=SUBJECT),
        federated_token(certs["issuer"], issuer=ISSUER, subject=SUBJECT, audience="api://x"),
    ):
        error = refused(authority, assertion_form("workload-app", SCOPE, bad))
        assert error.body["error_codes"] == [70021]
        assert "No matching federated identity record" in error.body["error_description"]
    wrong_key = federated_token(certs["other"], issuer=ISSUER, subject=SUBJECT)
    error = refused(authority, assertion_form("workload-app", SCOPE, wrong_key))
    assert error.body["error_codes"] == [700027]
    expired = federated_token(
        certs["issuer"], issuer=ISSUER, subject=SUBJECT, issued=time.time() - 7200
    )
    error = refused(authority, assertion_form("workload-app", SCOPE, expired))
    assert error.body["error_codes"] == [700024]
    # The workload app has no secret and no certificate: a secret is refused.
    secret = {"grant_type": "client_credentials", "client_id": "workload-app",
              "client_secret": "guess", "scope": SCOPE}  # fmt: skip
    assert refused(authority, secret).body["error_codes"] == [7000215]


def test_client_certificate_files(tmp_path: Path, certs: dict[str, ClientCert]) -> None:
    (pem,) = read_certificate_files([certs["app"].pem_file])
    assert "PRIVATE KEY" not in pem and pem == certs["app"].cert_pem
    (tmp_path / "bad.pem").write_text("nothing here")
    with pytest.raises(EmulatorError, match="no PEM certificate"):
        read_certificate_files([tmp_path / "bad.pem"])
    with pytest.raises(EmulatorError, match="cannot read"):
        read_certificate_files([tmp_path / "missing.pem"])
