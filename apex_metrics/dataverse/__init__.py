"""Dataverse Web API client: tokens, requests, ``$batch``, errors, table provisioning."""

from __future__ import annotations
