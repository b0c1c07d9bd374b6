from __future__ import annotations

from apex_metrics.ops.cli import main

main()
