"""The token authority and the Web API's answers to missing, bad, expired and foreign tokens."""

from __future__ import annotations

import time

import httpx

from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import RunningEmulator, running_emulator
from tests.emulator.conftest import get_token


def token_request(emu: RunningEmulator, **changes: str) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": emu.config.client_id,
        "client_secret": emu.config.client_secret,
        "scope": f"{emu.url}/.default",
        **changes,
    }
    return httpx.post(emu.token_url, data=form, timeout=10)


def test_token_is_a_bearer_token_with_lifetime(emulator: RunningEmulator) -> None:
    response = token_request(emulator)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3599
    assert body["access_token"].count(".") == 2


def test_wrong_secret_is_invalid_client_7000215(emulator: RunningEmulator) -> None:
    response = token_request(emulator, client_secret="wrong")
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert "wrong" not in response.text
    assert emulator.config.client_secret not in response.text


def test_unknown_client_is_700016(emulator: RunningEmulator) -> None:
    response = token_request(emulator, client_id="someone-else")
    assert response.status_code == 400
    assert response.json()["error_codes"] == [700016]


def test_scope_must_be_the_environment_default_scope(emulator: RunningEmulator) -> None:
    missing_suffix = token_request(emulator, scope=emulator.url)
    assert missing_suffix.status_code == 400
    assert missing_suffix.json()["error"] == "invalid_scope"
    other = token_request(emulator, scope="https://other.crm.dynamics.com/.default")
    assert other.status_code == 400
    assert other.json()["error_codes"] == [500011]
    grant = token_request(emulator, grant_type="password")
    assert grant.json()["error"] == "unsupported_grant_type"


def test_unknown_tenant(emulator: RunningEmulator) -> None:
    response = httpx.post(
        f"{emulator.url}/other-tenant/oauth2/v2.0/token",
        data={"grant_type": "client_credentials"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_openid_configuration_points_at_the_token_endpoint(emulator: RunningEmulator) -> None:
    url = f"{emulator.url}/{emulator.config.tenant_id}/v2.0/.well-known/openid-configuration"
    body = httpx.get(url, timeout=10).json()
    assert body["token_endpoint"] == emulator.token_url
    assert body["issuer"] == f"{emulator.url}/{emulator.config.tenant_id}/v2.0"


def test_web_api_needs_a_valid_token(emulator: RunningEmulator) -> None:
    whoami = f"{emulator.api}/WhoAmI"
    missing = httpx.get(whoami, timeout=10)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    malformed = httpx.get(whoami, headers={"Authorization": "Bearer abc.def.ghi"}, timeout=10)
    assert malformed.status_code == 401
    token = get_token(emulator)
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    forged = httpx.get(whoami, headers={"Authorization": f"Bearer {tampered}"}, timeout=10)
    assert forged.status_code == 401
    good = httpx.get(whoami, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert good.status_code == 200
    assert good.headers["x-ms-dop-hint"].isdigit()
    assert good.headers["x-ms-ratelimit-burst-remaining-xrm-requests"].isdigit()
    assert float(good.headers["x-ms-ratelimit-time-remaining-xrm-requests"]) > 0
    assert set(good.json()) >= {"BusinessUnitId", "UserId", "OrganizationId"}


def test_expired_token_is_refused() -> None:
    with running_emulator(EmulatorConfig(token_lifetime_seconds=1, costs=CostModel.free())) as emu:
        token = get_token(emu)
        time.sleep(1.1)
        response = httpx.get(
            f"{emu.api}/WhoAmI", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "0x8005F101"


def test_app_without_application_user_gets_403() -> None:
    config = EmulatorConfig(
        extra_clients={"outsider": "outsider-secret"},
        application_users=frozenset({"apex-local-client"}),
        costs=CostModel.free(),
    )
    with running_emulator(config) as emu:
        token = get_token(emu, "outsider", "outsider-secret")
        response = httpx.get(
            f"{emu.api}/WhoAmI", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert response.status_code == 403
        assert response.json() == {
            "error": {
                "code": "0x80072560",
                "message": "The user is not a member of the organization.",
            }
        }


def test_unknown_routes_and_methods_answer_json(emulator: RunningEmulator) -> None:
    missing = httpx.get(f"{emulator.url}/nothing/here", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "0x80060888"
    wrong = httpx.request("OPTIONS", f"{emulator.api}/WhoAmI", timeout=10)
    assert wrong.status_code == 405
    assert "OPTIONS" in wrong.json()["error"]["message"]
    token_get = httpx.get(emulator.token_url, timeout=10)
    assert token_get.status_code == 405
