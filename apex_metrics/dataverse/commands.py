"""What ``apex-metrics dataverse whoami`` and ``dataverse provision`` do (the CLI only prints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from apex_metrics.dataverse.connect import authority_for, open_dataverse
from apex_metrics.dataverse.errors import DataverseError
from apex_metrics.dataverse.provision import Progress, ProvisionReport, provision
from apex_metrics.dataverse.urls import check_url
from apex_metrics.settings import Settings


@dataclass(frozen=True, slots=True)
class WhoAmIReport:
    environment_url: str
    authority: str
    organization_id: str
    organization_name: str | None
    user_id: str
    user_name: str | None
    application_id: str | None
    business_unit_id: str
    dop_hint: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        org = f"{self.organization_name} " if self.organization_name else ""
        user = f"{self.user_name} " if self.user_name else ""
        return [
            f"environment:   {self.environment_url}",
            f"authority:     {self.authority}",
            f"organisation:  {org}({self.organization_id})",
            f"app user:      {user}({self.user_id})"
            + (f", application id {self.application_id}" if self.application_id else ""),
            f"parallelism:   x-ms-dop-hint {self.dop_hint if self.dop_hint else 'not sent'}",
        ]


async def _optional(client: Any, path: str, select: str) -> dict[str, Any]:
    """A row the application user may not be allowed to read: {} instead of an error."""
    try:
        data = await client.get_json(path, {"$select": select})
    except DataverseError as exc:
        if exc.transient:
            raise
        return {}
    return dict(data) if isinstance(data, dict) else {}


async def run_whoami(settings: Settings) -> WhoAmIReport:
    """Acquire a token, call WhoAmI, and read the organisation and user names when allowed."""
    async with open_dataverse(settings) as client:
        me = await client.whoami()
        org = await _optional(client, f"organizations({me.organization_id})", "name")
        user = await _optional(client, f"systemusers({me.user_id})", "fullname,applicationid")
        return WhoAmIReport(
            environment_url=client.environment_url,
            authority=authority_for(settings, client.environment_url),
            organization_id=me.organization_id,
            organization_name=org.get("name"),
            user_id=me.user_id,
            user_name=user.get("fullname"),
            application_id=user.get("applicationid"),
            business_unit_id=me.business_unit_id,
            dop_hint=me.dop_hint,
        )


async def run_provision(
    settings: Settings,
    *,
    dry_run: bool,
    progress: Progress | None = None,
    key_timeout: float = 600.0,
) -> ProvisionReport:
    """Create or check the contract table (see :mod:`apex_metrics.dataverse.provision`)."""
    check_url(settings.require("dataverse_url"), what="APEX_DATAVERSE_URL")
    async with open_dataverse(settings) as client:
        return await provision(
            client,
            dry_run=dry_run,
            progress=progress,
            key_timeout=key_timeout,
            solution=settings.dataverse_solution,
        )
