"""Certificate sign-in end to end: real MSAL over https against the emulator's token endpoint
(APEX_CLIENT_CERTIFICATE), in process and through the CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msal.oauth2cli.assertion
import pytest

from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.auth import MsalTokenProvider
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.emulator import CostModel, EmulatorConfig
from apex_metrics.testing import RunningEmulator, free_port, running_emulator
from tests.emulator.assertion_helpers import ClientCert, make_certificate

from .conftest import fast_flow, local_settings


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientCert]:
    directory = tmp_path_factory.mktemp("certs")
    return {name: make_certificate(directory, name) for name in ("app", "other")}


@pytest.fixture(scope="module")
def cert_emulator(certs: dict[str, ClientCert]) -> Iterator[RunningEmulator]:
    """The https emulator with the app's certificate registered for the default client id."""
    config = EmulatorConfig(
        client_certificates={"apex-local-client": (certs["app"].cert_pem,)},
        costs=CostModel.free(),
    )
    with running_emulator(config, tls=True) as server:
        yield server


def signed_in_with(token: str) -> str:
    """``appidacr`` of an emulator token: 1 = client secret, 2 = certificate."""
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return str(claims["appidacr"])


def cert_settings(server: RunningEmulator, pem: Path) -> Any:
    return local_settings(server.url, ca_bundle=server.ca_file, client_certificate=pem)


async def test_registered_certificate_signs_in_and_calls_dataverse(
    cert_emulator: RunningEmulator, certs: dict[str, ClientCert]
) -> None:
    settings = cert_settings(cert_emulator, certs["app"].pem_file)
    async with open_dataverse(settings, flow=fast_flow()) as client:
        assert isinstance(client.tokens, MsalTokenProvider)
        me = await client.whoami()
        assert me.user_id and me.environment_url == cert_emulator.url
        await client.whoami()
        assert client.tokens.fetches == 1, "the token is cached"
        assert signed_in_with(await client.tokens.token()) == "2", "a certificate, no secret"


async def test_another_certificate_is_refused_with_aadsts700027(
    cert_emulator: RunningEmulator, certs: dict[str, ClientCert]
) -> None:
    settings = cert_settings(cert_emulator, certs["other"].pem_file)
    async with open_dataverse(settings, flow=fast_flow()) as client:
        with pytest.raises(e.CertificateRejected) as caught:
            await client.whoami()
    line = caught.value.one_line()
    assert "AADSTS700027" in line and "not registered on application" in line
    assert certs["other"].sha256.hex().upper() in line
    assert "APEX_CLIENT_CERTIFICATE" in line, "the hint names the setting"
    assert "PRIVATE KEY" not in line


async def test_expired_assertion_from_msal_is_refused_with_aadsts700024(
    cert_emulator: RunningEmulator, certs: dict[str, ClientCert], monkeypatch: pytest.MonkeyPatch
) -> None:
    class SlowClock:  # MSAL dates its assertions by this clock: an hour behind
        @staticmethod
        def time() -> float:
            return time.time() - 3600

    monkeypatch.setattr(msal.oauth2cli.assertion, "time", SlowClock)
    settings = cert_settings(cert_emulator, certs["app"].pem_file)
    async with open_dataverse(settings, flow=fast_flow()) as client:
        with pytest.raises(e.CertificateRejected) as caught:
            await client.whoami()
    assert "AADSTS700024" in caught.value.one_line()
    assert "not within its valid time range" in caught.value.one_line()


def test_cli_emulator_with_client_certificate_and_whoami(
    certs: dict[str, ClientCert], tmp_path: Path
) -> None:
    """`apex-metrics emulator --tls --client-certificate PEM`, then `dataverse whoami` signing in
    with APEX_CLIENT_CERTIFICATE (the right one, then another)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    command = [sys.executable, "-m", "apex_metrics", "emulator", "--tls", "--json"]
    command += ["--port", str(free_port()), "--cost-profile", "free"]
    command += ["--client-certificate", str(certs["app"].pem_file)]
    emulator = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=clean, cwd=tmp_path)
    try:
        assert emulator.stdout is not None
        info = json.loads(emulator.stdout.readline())
        assert info["client_certificate_thumbprints"] == [certs["app"].sha1.hex().upper()]
        env = {
            **clean,
            "APEX_DATAVERSE_URL": info["url"],
            "APEX_CA_BUNDLE": info["APEX_CA_BUNDLE"],
            "APEX_CLIENT_CERTIFICATE": str(certs["app"].pem_file),
        }

        def whoami(**changes: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "apex_metrics", "dataverse", "whoami", "--json"],
                env={**env, **changes}, capture_output=True, text=True, timeout=60,
                check=False, cwd=tmp_path,
            )  # fmt: skip

        deadline = time.monotonic() + 15
        good = whoami()
        while good.returncode != 0 and "unreachable" in good.stderr:  # still binding
            assert time.monotonic() < deadline, good.stderr
            time.sleep(0.2)
            good = whoami()
        assert good.returncode == 0, good.stderr
        assert json.loads(good.stdout)["user_id"]
        bad = whoami(APEX_CLIENT_CERTIFICATE=str(certs["other"].pem_file))
        assert bad.returncode == 1
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and "AADSTS700027" in lines[0], bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        emulator.terminate()
        emulator.wait(10)
        if emulator.stdout is not None:
            emulator.stdout.close()


def test_cli_emulator_refuses_a_file_without_certificate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    result = subprocess.run(
        [sys.executable, "-m", "apex_metrics", "emulator", "--client-certificate", str(bad)],
        env=clean, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no PEM certificate found" in result.stderr and "Traceback" not in result.stderr
