"""Sign-in through an azure-core ``TokenCredential``: one the test controls, and a real
azure-identity ``WorkloadIdentityCredential`` exchanging a federated token at the https
emulator (APEX_AUTH=workload-identity)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity import (
    CredentialUnavailableError,
    DefaultAzureCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)

from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.connect import open_dataverse, token_provider
from apex_metrics.dataverse.credential import CredentialTokenProvider
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.emulator.config import FederatedCredential
from apex_metrics.testing import RunningEmulator, running_emulator
from tests.emulator.assertion_helpers import ClientCert, federated_token, make_certificate
from tests.emulator.conftest import get_token

from .conftest import fast_flow, local_settings

ISSUER = "https://oidc.aks.test/issuer/1234"
SUBJECT = "system:serviceaccount:apex:sync"
WORKLOAD_CLIENT = "11111111-2222-3333-4444-555555555555"


class CountingCredential:
    """A sync TokenCredential the test controls: a client-credentials token from the emulator,
    counting the calls (and the threads they run on)."""

    def __init__(self, emulator: RunningEmulator, lifetime: float = 3600) -> None:
        self.emulator = emulator
        self.lifetime = lifetime
        self.calls: list[tuple[str, ...]] = []
        self.threads: set[int] = set()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append(scopes)
        self.threads.add(threading.get_ident())
        return AccessToken(get_token(self.emulator), int(time.time() + self.lifetime))


class AsyncCountingCredential:
    """The same as an AsyncTokenCredential."""

    def __init__(self, emulator: RunningEmulator) -> None:
        self.emulator = emulator
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        token = await asyncio.to_thread(get_token, self.emulator)
        return AccessToken(token, int(time.time() + 3600))


class FailingCredential:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise self.error


async def test_a_token_credential_signs_in_and_is_cached(http_emulator: RunningEmulator) -> None:
    credential = CountingCredential(http_emulator)
    settings = local_settings(http_emulator.url)
    async with open_dataverse(settings, credential=credential, flow=fast_flow()) as client:
        assert isinstance(client.tokens, CredentialTokenProvider)
        results = await asyncio.gather(*(client.whoami() for _ in range(5)))
        assert all(r.user_id for r in results)
        assert credential.calls == [(f"{http_emulator.url}/.default",)], "one call, cached"
        assert threading.get_ident() not in credential.threads, "a worker thread, not the loop"


async def test_short_lived_tokens_are_renewed(http_emulator: RunningEmulator) -> None:
    credential = CountingCredential(http_emulator, lifetime=0.4)
    async with open_dataverse(local_settings(http_emulator.url), credential=credential) as client:
        await client.whoami()
        await asyncio.sleep(0.3)  # past half the lifetime: renewed ahead of expiry
        await client.whoami()
        assert len(credential.calls) == 2


async def test_an_async_credential_is_awaited(http_emulator: RunningEmulator) -> None:
    credential = AsyncCountingCredential(http_emulator)
    async with open_dataverse(local_settings(http_emulator.url), credential=credential) as client:
        await client.whoami()
        await client.whoami()
    assert credential.calls == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("error", "cls", "words"),
    [
        (CredentialUnavailableError("No managed identity endpoint found."),
         e.CredentialUnavailable, "managed identity"),
        (ClientAuthenticationError("AADSTS700016: Application not found. Trace ID: x"),
         e.TokenRequestFailed, "AADSTS700016"),
        (ServiceRequestError("connection refused"), e.TransientError, "connection refused"),
        (ClientAuthenticationError("[SSL: CERTIFICATE_VERIFY_FAILED] bad"),
         e.InsecureTransport, "APEX_CA_BUNDLE"),
    ],
)  # fmt: skip
async def test_azure_identity_errors_become_ours(
    error: Exception, cls: type[e.DataverseError], words: str
) -> None:
    tokens = CredentialTokenProvider(
        FailingCredential(error),
        environment_url="https://org.example.test",
        setting="APEX_AUTH=managed-identity",
    )
    with pytest.raises(cls) as caught:
        await tokens.token()
    line = caught.value.one_line()
    assert words in line
    assert "Trace ID" not in line
    if cls is not e.InsecureTransport:
        assert line.startswith("APEX_AUTH=managed-identity: ")


@pytest.mark.unit
async def test_a_credential_must_return_a_token() -> None:
    class Empty:
        def get_token(self, *scopes: str, **kwargs: Any) -> object:
            return object()

    tokens = CredentialTokenProvider(Empty(), environment_url="https://org.example.test")
    with pytest.raises(e.TokenRequestFailed, match="no usable token"):
        await tokens.token()
    with pytest.raises(TypeError):
        CredentialTokenProvider(object(), environment_url="https://org.example.test")


@pytest.mark.unit
def test_apex_auth_picks_the_azure_identity_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    http = httpx.AsyncClient()
    url = "https://org.crm.dynamics.com"

    def provider(**values: Any) -> Any:
        return token_provider(local_settings(url, **values), url, http)

    managed = provider(auth="managed-identity")
    assert isinstance(managed._credential, ManagedIdentityCredential)
    assert isinstance(provider(auth="default")._credential, DefaultAzureCredential)
    with pytest.raises(e.CredentialUnavailable) as caught:
        provider(auth="workload-identity")
    assert caught.value.message.startswith("APEX_AUTH=workload-identity: ")
    assert "token_file_path" in caught.value.message and caught.value.hint
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(tmp_path / "token"))
    workload = provider(auth="workload-identity", tenant_id="t", client_id="c")
    assert isinstance(workload._credential, WorkloadIdentityCredential)
    for tokens in (managed, workload):
        tokens.close()


# --- WorkloadIdentityCredential against the https emulator ------------------------------------


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    """The signing key of a (pretend) AKS OIDC issuer."""
    return make_certificate(tmp_path_factory.mktemp("issuer"), "issuer")


@pytest.fixture(scope="module")
def federated_emulator(issuer: ClientCert) -> Iterator[RunningEmulator]:
    trust = FederatedCredential(WORKLOAD_CLIENT, ISSUER, SUBJECT, issuer.public_pem)
    config = EmulatorConfig(federated_credentials=(trust,), costs=CostModel.free())
    with running_emulator(config, tls=True) as server:
        yield server


def workload_settings(server: RunningEmulator, token_file: Path, **values: Any) -> Any:
    return local_settings(
        server.url, auth="workload-identity", tenant_id=server.config.tenant_id,
        client_id=WORKLOAD_CLIENT, ca_bundle=server.ca_file, **values,
    )  # fmt: skip


async def test_workload_identity_credential_exchanges_a_federated_token(
    federated_emulator: RunningEmulator,
    issuer: ClientCert,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(federated_token(issuer, issuer=ISSUER, subject=SUBJECT))
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    settings = workload_settings(federated_emulator, token_file)
    async with open_dataverse(settings, flow=fast_flow()) as client:
        assert isinstance(client.tokens, CredentialTokenProvider)
        assert isinstance(client.tokens._credential, WorkloadIdentityCredential)
        me = await client.whoami()
        assert me.user_id
        body = (await client.tokens.token()).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        assert claims["appid"] == WORKLOAD_CLIENT and claims["appidacr"] == "2"


async def test_workload_identity_with_an_untrusted_subject_names_apex_auth(
    federated_emulator: RunningEmulator,
    issuer: ClientCert,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # azure-identity logs the failure with its exception, whose HTTP answer holds a socket
    # for as long as pytest keeps the record: keep no record.
    caplog.set_level(logging.CRITICAL, logger="azure.identity")
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(federated_token(issuer, issuer=ISSUER, subject="system:sa:other:x"))
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    async with open_dataverse(workload_settings(federated_emulator, token_file)) as client:
        with pytest.raises(e.TokenRequestFailed) as caught:
            await client.whoami()
    line = caught.value.one_line()
    assert line.startswith("APEX_AUTH=workload-identity: ")
    assert "AADSTS70021" in line and "No matching federated identity record" in line
