"""Dataverse Web API client: tokens, requests, ``$batch``, errors, table provisioning."""

from __future__ import annotations

from apex_metrics.dataverse.client import DataverseClient, UpsertOutcome, WhoAmI
from apex_metrics.dataverse.connect import open_dataverse
from apex_metrics.dataverse.errors import DataverseError
from apex_metrics.dataverse.provision import ProvisionReport, provision

__all__ = [
    "DataverseClient",
    "DataverseError",
    "ProvisionReport",
    "UpsertOutcome",
    "WhoAmI",
    "open_dataverse",
    "provision",
]
