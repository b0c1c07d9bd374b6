"""MetricsPanel: live campaign KPIs in the browser (FastAPI app, JSON API, SSE)."""

from __future__ import annotations
