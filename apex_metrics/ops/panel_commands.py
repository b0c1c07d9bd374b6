"""``apex-metrics panel``: serve the MetricsPanel (the panel extra)."""

from __future__ import annotations

from typing import Annotated

import typer

from apex_metrics.ops.options import (
    DatabaseUrlOption,
    DataverseUrlOption,
    setting_option,
    settings_with,
)
from apex_metrics.ops.serving import serve_or_fail
from apex_metrics.ports import check_port


def panel_command(
    host: Annotated[
        str | None,
        setting_option(
            "panel_host",
            "--host",
            help="Address to bind; off loopback APEX_PANEL_TOKEN is required [default: 127.0.0.1].",
        ),
    ] = None,
    port: Annotated[
        int | None,
        setting_option(
            "panel_port",
            "--port",
            min=1,
            max=65535,
            help="Port to listen on [default: 8000].",
        ),
    ] = None,
    source: Annotated[
        str | None,
        setting_option(
            "panel_source",
            "--source",
            help="Where to read runs: dataverse or postgres (default: dataverse when "
            "APEX_DATAVERSE_URL is set, else postgres; postgres needs APEX_DATABASE_URL).",
        ),
    ] = None,
    root_path: Annotated[
        str | None,
        setting_option(
            "panel_root_path",
            "--root-path",
            help="Path prefix behind a reverse proxy, e.g. /metrics-panel (the proxy may strip "
            "it or pass it on).",
        ),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        setting_option(
            "panel_forwarded_allow_ips",
            "--forwarded-allow-ips",
            help="Comma-separated proxy addresses (or *) whose X-Forwarded-For/-Proto headers "
            "are trusted; empty: none [default: 127.0.0.1].",
        ),
    ] = None,
    database_url: DatabaseUrlOption = None,
    url: DataverseUrlOption = None,
) -> None:
    """Serve the MetricsPanel: live KPIs, JSON API, CSV export, server-sent events."""
    import asyncio

    from apex_metrics.panel.app import PanelConfig, serve

    if source not in (None, "dataverse", "postgres"):
        raise typer.BadParameter("must be dataverse or postgres", param_hint="--source")
    settings = settings_with(
        database_url=database_url, dataverse_url=url, panel_host=host, panel_port=port,
        panel_source=source, panel_root_path=root_path,
        panel_forwarded_allow_ips=forwarded_allow_ips,
    )  # fmt: skip
    config = PanelConfig.from_settings(
        settings, source=settings.panel_source, host=settings.panel_host, port=settings.panel_port
    )
    check_port(config.host, config.port)
    serve_or_fail(lambda: asyncio.run(serve(config)), config.host, config.port)
