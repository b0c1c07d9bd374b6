"""apex-metrics: AI-agent campaign runs as live KPIs in Microsoft Dataverse."""

from __future__ import annotations

__version__ = "0.1.0"
