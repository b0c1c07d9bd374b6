"""One typed settings object, read from ``APEX_*`` environment variables, ``.env.local``, ``.env``.

Precedence (highest first): the process environment, ``.env.local``, ``.env``, the defaults below.
Secrets are ``SecretStr``: their ``repr`` and ``str`` print ``**********``, never the value.
CLI flags default to these values; ``docs/configuration.md`` lists every field (a test keeps
the two in step).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from apex_metrics.exceptions import ConfigError

ENV_PREFIX = "APEX_"


class Settings(BaseSettings):
    """Every setting of apex-metrics. Field ``x`` is read from ``APEX_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=(".env", ".env.local"),  # later files win: .env.local overrides .env
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # --- PostgreSQL -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL connection string, e.g. postgresql://user@host:5432/dbname",
    )

    # --- Dataverse and Entra ID ---------------------------------------------------------------
    dataverse_url: str | None = Field(
        default=None,
        description="Dataverse environment URL, e.g. https://org.crm.dynamics.com "
        "(the local emulator: http://127.0.0.1:8765)",
    )
    auth: Literal["client", "managed-identity", "workload-identity", "default"] = Field(
        default="client",
        description="How to sign in to Entra ID: client (the app registration's "
        "APEX_CLIENT_SECRET or APEX_CLIENT_CERTIFICATE; the emulator's local credentials), "
        "managed-identity (ManagedIdentityCredential), workload-identity "
        "(WorkloadIdentityCredential, AKS) or default (DefaultAzureCredential)",
    )
    tenant_id: str | None = Field(default=None, description="Entra ID tenant (directory) id")
    client_id: str | None = Field(default=None, description="App registration (client) id")
    client_secret: SecretStr | None = Field(default=None, description="App client secret")
    client_certificate: Path | None = Field(
        default=None,
        description="PEM file with the app's certificate and private key (instead of a secret)",
    )
    authority_host: str = Field(
        default="https://login.microsoftonline.com",
        description="Token authority; the local emulator is its own authority (same URL as "
        "APEX_DATAVERSE_URL)",
    )
    ca_bundle: Path | None = Field(
        default=None, description="Extra CA file to trust (e.g. the https emulator's test CA)"
    )
    dataverse_affinity: bool = Field(
        default=False,
        description="Keep Dataverse's server-affinity cookie (pins every request to one web "
        "server, whose limits then cap everything); off spreads requests over the web servers",
    )
    dataverse_solution: str | None = Field(
        default=None,
        description="Unique name of the unmanaged solution `dataverse provision` creates the "
        "table, its columns and its key in (its publisher's prefix must be apex); unset: no "
        "solution (the Default solution only)",
    )

    # --- Sync engine --------------------------------------------------------------------------
    sync_poll_interval: float = Field(
        default=1.0, gt=0, description="Seconds between polls when no NOTIFY arrives"
    )
    sync_batch_size: int = Field(
        default=1000,
        ge=1,
        le=1000,
        description="Most rows per claim and request (fewer when requests are slow: the pacer "
        "aims at about 10 s per request)",
    )
    sync_write: Literal["upsert-multiple", "batch"] = Field(
        default="upsert-multiple",
        description="How rows are written: UpsertMultiple by alternate key (all or nothing per "
        "chunk; a failing chunk is resent as $batch to find the bad row) or $batch of upserts",
    )
    sync_max_attempts: int = Field(
        default=10, ge=1, description="Delivery attempts before a row is dead-lettered"
    )
    sync_lease_seconds: float = Field(
        default=60.0, gt=0, description="How long a claim holds rows before another worker may"
    )
    sync_run_retention_days: int = Field(
        default=30, ge=1, description="Days of sync run history to keep"
    )
    sync_workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Concurrent sync workers per process (unset: x-ms-dop-hint + 2)",
    )
    sync_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port where `apex-metrics sync` serves Prometheus /metrics (unset: none)",
    )

    # --- Recorder spool -----------------------------------------------------------------------
    spool_dir: Path | None = Field(
        default=None,
        description="Directory where the recorder keeps runs while PostgreSQL is away (unset: "
        "the user's state directory, ~/.local/state/apex-metrics/spool on Linux)",
    )
    spool_max_bytes: int = Field(
        default=100_000_000,
        ge=1,
        description="Most bytes the spool holds; past it new runs are refused (and logged as "
        "errors), the spooled ones are kept",
    )

    # --- OTLP receiver (apex-metrics collect) --------------------------------------------------
    ingest_token: SecretStr | None = Field(
        default=None,
        description="Bearer token `collect` requires on POST /v1/traces and GET /metrics "
        "(mandatory off loopback)",
    )
    collect_idle_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Seconds without a new span after which `collect` finalises a trace "
        "(writes its run, then forgets it; later spans of it are rejected as late)",
    )
    collect_max_spans: int = Field(
        default=1_000_000,
        ge=1,
        description="Most span ids `collect` holds in memory over all traces (then 503 until "
        "written traces can be dropped)",
    )
    collect_max_traces: int = Field(
        default=100_000, ge=1, description="Most traces `collect` holds in memory"
    )
    collect_host: str = Field(
        default="127.0.0.1",
        description="Address `collect` listens on (off loopback APEX_INGEST_TOKEN is required)",
    )
    collect_port: int = Field(
        default=4318, ge=1, le=65535, description="Port `collect` listens on (OTLP/HTTP's 4318)"
    )

    # --- Panel and logs -----------------------------------------------------------------------
    panel_token: SecretStr | None = Field(
        default=None, description="Token required by the panel (mandatory off loopback)"
    )
    panel_host: str = Field(
        default="127.0.0.1",
        description="Address the panel listens on (off loopback APEX_PANEL_TOKEN is required)",
    )
    panel_port: int = Field(default=8000, ge=1, le=65535, description="Port of the panel")
    panel_source: Literal["dataverse", "postgres"] | None = Field(
        default=None,
        description="Where the panel reads runs (unset: dataverse when APEX_DATAVERSE_URL is "
        "set, else postgres)",
    )
    panel_root_path: str | None = Field(
        default=None,
        description="Path prefix the panel is served under behind a reverse proxy, e.g. "
        "/metrics-panel (the proxy strips it or not: both work)",
    )
    panel_forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Comma-separated addresses (or *) of reverse proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto headers the panel trusts; empty: trust none",
    )
    panel_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The panel `apex-metrics verify` checks (gate 9); include the root path",
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Log format")

    def require(self, field: str) -> str:
        """Return a setting's value, or fail with one line naming its env var."""
        value = getattr(self, field)
        if value is None or value == "":
            raise ConfigError(
                f"{env_name(field)} is not set",
                hint=f"export {env_name(field)}=… or put it in .env.local",
            )
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return str(value)


def env_name(field: str) -> str:
    """The environment variable that feeds ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings() -> Settings:
    """Read the settings now; an invalid value fails with one line naming its env var."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        raise ConfigError(f"{env_name(field)}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return load_settings()
