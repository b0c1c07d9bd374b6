"""A local server that behaves like the parts of the Dataverse Web API (v9.2) and of Entra ID's
token endpoint that apex-metrics uses. ``create_app(EmulatorConfig(...))`` gives the ASGI app."""

from __future__ import annotations

from apex_metrics.emulator.app import create_app
from apex_metrics.emulator.config import EmulatorConfig, FaultSettings, ServiceLimits
from apex_metrics.emulator.costs import CostModel, Usage

__all__ = ["CostModel", "EmulatorConfig", "FaultSettings", "ServiceLimits", "Usage", "create_app"]
