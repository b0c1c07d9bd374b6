"""Microsoft's own clients against the emulator over https with a test CA:
PowerPlatform-Dataverse-Client (sync SDK), azure-identity and MSAL."""

from __future__ import annotations

from collections.abc import Iterator

import msal
import pytest
import requests
from azure.identity import ClientSecretCredential
from PowerPlatform.Dataverse.client import DataverseClient
from PowerPlatform.Dataverse.models.upsert import UpsertItem

from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import RunningEmulator, running_emulator


@pytest.fixture
def tls_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with running_emulator(
        EmulatorConfig(key_activation_delay_seconds=0.2, costs=CostModel.free()), tls=True
    ) as emu:
        assert emu.ca_file is not None
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emu.ca_file))
        yield emu


def test_msal_acquires_a_token_over_https(tls_emulator: RunningEmulator) -> None:
    with requests.Session() as session:
        session.trust_env = False
        session.verify = str(tls_emulator.ca_file)
        _msal_exchange(tls_emulator, session)


def _msal_exchange(tls_emulator: RunningEmulator, session: requests.Session) -> None:
    config = tls_emulator.config
    app = msal.ConfidentialClientApplication(
        config.client_id,
        client_credential=config.client_secret,
        authority=f"{tls_emulator.url}/{config.tenant_id}",
        instance_discovery=False,
        http_client=session,
    )
    result = app.acquire_token_for_client(scopes=[f"{tls_emulator.url}/.default"])
    assert "access_token" in result, result
    assert result["token_type"] == "Bearer"
    cached = app.acquire_token_for_client(scopes=[f"{tls_emulator.url}/.default"])
    assert cached["access_token"] == result["access_token"]
    whoami = session.get(
        f"{tls_emulator.api}/WhoAmI",
        headers={"Authorization": f"Bearer {result['access_token']}"},
        timeout=10,
    )
    assert whoami.status_code == 200
    assert "UserId" in whoami.json()

    wrong = msal.ConfidentialClientApplication(
        config.client_id,
        client_credential="not-the-secret",
        authority=f"{tls_emulator.url}/{config.tenant_id}",
        instance_discovery=False,
        http_client=session,
    )
    failed = wrong.acquire_token_for_client(scopes=[f"{tls_emulator.url}/.default"])
    assert failed["error"] == "invalid_client"
    assert 7000215 in failed["error_codes"]


def test_microsoft_sdk_against_the_emulator(tls_emulator: RunningEmulator) -> None:
    config = tls_emulator.config
    credential = ClientSecretCredential(
        config.tenant_id,
        config.client_id,
        config.client_secret,
        authority=tls_emulator.url,
        disable_instance_discovery=True,
        connection_verify=str(tls_emulator.ca_file),
    )
    with credential, DataverseClient(tls_emulator.url, credential) as client:
        info = client.tables.create(
            "apex_SdkRun",
            {"apex_RunId": {"type": "string", "max_length": 64}, "apex_Tokens": "int"},
        )
        assert info["entity_set_name"] == "apex_sdkruns"
        key = client.tables.create_alternate_key("apex_SdkRun", "apex_SdkRunKey", ["apex_runid"])
        assert key.status in ("Pending", "Active")
        for _ in range(100):  # the key turns Active after 0.2 s; as in Microsoft's SDK sample
            if client.tables.get_alternate_keys("apex_SdkRun")[0].status == "Active":
                break
            import time

            time.sleep(0.05)
        else:
            pytest.fail("the alternate key never became Active")

        record_id = client.records.create("apex_SdkRun", {"apex_runid": "a", "apex_tokens": 1})
        record = client.records.retrieve(
            "apex_SdkRun", record_id, select=["apex_runid", "apex_tokens"]
        )
        assert record["apex_runid"] == "a"
        assert record["apex_tokens"] == 1

        client.records.upsert(
            "apex_SdkRun",
            [UpsertItem(alternate_key={"apex_runid": "a"}, record={"apex_tokens": 2})],
        )
        client.records.upsert(
            "apex_SdkRun",
            [
                UpsertItem(alternate_key={"apex_runid": f"u{i}"}, record={"apex_tokens": i})
                for i in range(5)
            ],
        )
        assert client.records.retrieve("apex_SdkRun", record_id)["apex_tokens"] == 2

        batch = client.batch.new()
        for i in range(7):
            batch.records.create("apex_SdkRun", {"apex_runid": f"b{i}", "apex_tokens": 10 + i})
        with batch.changeset() as changeset:
            changeset.records.create("apex_SdkRun", {"apex_runid": "c1"})
        result = batch.execute(continue_on_error=True)
        assert len(result.responses) == 8
        assert all(r.status_code == 204 for r in result.responses)

        pages = list(
            client.records.list_pages(
                "apex_SdkRun", select=["apex_runid"], orderby=["apex_runid"], page_size=4
            )
        )
        assert [len(p) for p in pages] == [4, 4, 4, 2]
        runs = [r["apex_runid"] for page in pages for r in page]
        assert runs == sorted(runs)
        assert len(set(runs)) == 14  # a, u0..u4, b0..b6, c1
