"""Serve the emulator in the foreground (``apex-metrics emulator``)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from apex_metrics.emulator.app import create_app
from apex_metrics.emulator.assertions import thumbprints
from apex_metrics.emulator.config import EmulatorConfig
from apex_metrics.emulator.errors import EmulatorError
from apex_metrics.ports import check_port


@dataclass(frozen=True, slots=True)
class StartupInfo:
    url: str
    tenant_id: str
    client_id: str
    ca_file: Path | None
    storage: str
    cost_profile: str = "dataverse"
    web_servers: int = 2
    dop_hint: int = 8
    certificate_thumbprints: tuple[str, ...] = ()  # SHA-1, of the client's certificates

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "APEX_DATAVERSE_URL": self.url,
            "APEX_AUTHORITY_HOST": self.url,
            "APEX_TENANT_ID": self.tenant_id,
            "APEX_CLIENT_ID": self.client_id,
            "APEX_CA_BUNDLE": str(self.ca_file) if self.ca_file else None,
            "storage": self.storage,
            "cost_profile": self.cost_profile,
            "web_servers": self.web_servers,
            "dop_hint": self.dop_hint,
            "client_certificate_thumbprints": list(self.certificate_thumbprints),
        }

    def limits_line(self) -> str:
        """What the emulator charges and how much parallelism it advertises."""
        cost = (
            "Dataverse's modeled server time per request"
            if self.cost_profile == "dataverse"
            else "only the emulator's own time"
        )
        servers = "1 web server" if self.web_servers == 1 else f"{self.web_servers} web servers"
        return (
            f"Costs: {self.cost_profile} profile ({cost}); {servers}, limits per client and "
            f"server; parallelism hint (x-ms-dop-hint) {self.dop_hint}"
        )

    def lines(self) -> list[str]:
        lines = [
            f"Dataverse emulator serving {self.url} (storage: {self.storage})",
            "Point apex-metrics at it with:",
            f"  APEX_DATAVERSE_URL={self.url}",
            f"  APEX_AUTHORITY_HOST={self.url}",
            f"  APEX_TENANT_ID={self.tenant_id}",
            f"  APEX_CLIENT_ID={self.client_id}",
            "  APEX_CLIENT_SECRET=<the secret the emulator was started with>",
        ]
        if self.certificate_thumbprints:
            lines.append(
                "  or APEX_CLIENT_CERTIFICATE=<PEM with the key of certificate "
                f"{', '.join(self.certificate_thumbprints)}> (needs --tls: MSAL wants https)"
            )
        if self.ca_file:
            lines.append(f"  APEX_CA_BUNDLE={self.ca_file}")
        lines.append(
            "Admin API: GET /_emulator/stats, GET|PATCH /_emulator/faults, POST /_emulator/reset"
        )
        lines.append(self.limits_line())
        return lines


def tls_files(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for ``host``: (ca.pem, cert.pem, key.pem)."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert(host, "localhost")
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca.cert_pem.write_to_path(str(ca_file))
    server.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    server.private_key_pem.write_to_path(str(key_file))
    return ca_file, cert_file, key_file


async def serve(
    config: EmulatorConfig,
    host: str,
    port: int,
    *,
    tls: bool,
    announce: Callable[[StartupInfo], None],
) -> None:
    """Serve until interrupted; ``announce`` gets the environment URL before serving."""
    if not 0 < port < 65536:
        raise EmulatorError(f"invalid port {port}", hint="use 1-65535")
    check_port(host, port, error=EmulatorError, in_use_hint="pick another with --port")
    storage = str(config.db_path) if config.db_path else "memory"
    with tempfile.TemporaryDirectory(prefix="apex-emulator-tls-") as tmp:
        ssl: dict[str, str] = {}
        ca_file = None
        if tls:
            ca_file, cert_file, key_file = tls_files(Path(tmp), host)
            ssl = {"ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file)}
        try:
            app = create_app(config)
        except Exception as exc:  # e.g. an unreadable database file
            raise EmulatorError(f"cannot open the emulator storage {storage}: {exc}") from None
        shown_host = f"[{host}]" if ":" in host else host
        url = f"{'https' if tls else 'http'}://{shown_host}:{port}"
        limits = config.limits
        announce(
            StartupInfo(
                url,
                config.tenant_id,
                config.client_id,
                ca_file,
                storage,
                config.costs.profile,
                limits.web_servers,
                limits.dop_hint,
                thumbprints(config),
            )
        )
        server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, **ssl)  # type: ignore[arg-type]
        )
        await server.serve()
