from __future__ import annotations

from apex_metrics.cli import main

main()
