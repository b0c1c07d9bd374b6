"""What every command shares on the way out: the consoles, ``--json`` output, exit statuses.

Exit status (README, "Exit status"): 0 success, 1 error, 2 usage error, 3 differences found
(``reconcile``, ``verify``, ``dataverse provision``), 4 rows dead-lettered (``sync --once``),
130 interrupted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console

from apex_metrics.exceptions import ApexMetricsError

EXIT_ERROR = 1  # an error: configuration, connection, bad input, a refusal
EXIT_USAGE = 2  # a bad flag or argument (click)
EXIT_DIFFERENCES = 3  # the command ran and found differences: reconcile, verify, provision
EXIT_DEAD_LETTERED = 4  # sync --once: some rows were dead-lettered
EXIT_INTERRUPTED = 130

console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

# Set by the root command's --debug before any command runs.
state: dict[str, bool] = {"debug": False}


class DifferencesFound(ApexMetricsError):
    """The command ran and found differences."""

    exit_code = EXIT_DIFFERENCES


def print_json(data: Any) -> None:
    """Machine-readable output for ``--json``: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_lines(lines: Iterable[str]) -> None:
    """Human output: each line as written (no markup, no highlighting, no wrapping)."""
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_error_lines(lines: Iterable[str]) -> None:
    """The same on stderr (progress, errors)."""
    for line in lines:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
