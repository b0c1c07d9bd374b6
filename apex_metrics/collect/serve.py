"""Run ``apex-metrics collect`` under uvicorn (refusing a non-loopback address without a token)."""

from __future__ import annotations

from pydantic import SecretStr

from apex_metrics.collect.app import CollectConfig, create_app
from apex_metrics.exceptions import ConfigError
from apex_metrics.loopback import is_loopback


def check_bind(host: str, token: SecretStr | None) -> None:
    """Refuse to listen off loopback without APEX_INGEST_TOKEN."""
    if not is_loopback(host) and (token is None or not token.get_secret_value()):
        raise ConfigError(
            f"refusing to accept traces on {host} without APEX_INGEST_TOKEN",
            hint="set APEX_INGEST_TOKEN (exporters send it as Authorization: Bearer …), "
            "or bind to 127.0.0.1",
        )


async def serve(config: CollectConfig) -> None:
    """Serve until interrupted."""
    import uvicorn

    check_bind(config.host, config.token)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    )
    await server.serve()
