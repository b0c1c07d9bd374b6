"""Errors of the sync engine.

ApexMetricsError
└── SyncError                    the sync engine could not do its job
    ├── SyncIncomplete           ``sync --once`` ended with rows failed or dead-lettered
    ├── SinkFailed               a whole batch was refused for a reason no retry fixes
    └── ReconcileError           the comparison with Dataverse could not be completed
"""

from __future__ import annotations

from apex_metrics.exceptions import ApexMetricsError


class SyncError(ApexMetricsError):
    """The sync engine failed."""


class SyncIncomplete(SyncError):
    """Some rows could not be delivered."""

    hint = "see `apex-metrics sync status` for the errors; fix the cause, then `sync retry-dead`"
    exit_code = 4  # ops.output.EXIT_DEAD_LETTERED: told apart from errors (exit status 1)


class SinkFailed(SyncError):
    """Dataverse refused a whole batch for a reason that retrying will not fix."""


class ReconcileError(SyncError):
    """The comparison of PostgreSQL with Dataverse could not be completed."""
