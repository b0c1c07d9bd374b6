"""Which optional extra each command needs, and the error when it is not installed.

The core install (``pip install apex-metrics``) holds the recorder, the model, the spool and the
CLI's database commands (``db``, ``record``, ``import``, ``spool``, ``rollup``). Every other
command needs an extra; a command run without it fails with one line naming the extra to
install, not an import traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

from apex_metrics.exceptions import ConfigError

# The first word(s) of a command line -> the extra that command needs.
COMMAND_EXTRAS: dict[str, str] = {
    "sync": "sync",
    "reconcile": "sync",
    "dataverse": "sync",
    "panel": "panel",
    "emulator": "emulator",
    "collect": "collect",
    "demo": "demo",
    "verify": "demo",
}

# Top-level modules that only extras install: a missing one means an extra is missing (any other
# missing module is a bug, and its traceback is kept).
OPTIONAL_MODULES = frozenset(
    {
        "azure", "cryptography", "fastapi", "genai_prices", "google", "httptools", "httpx",
        "msal", "odata_query", "opentelemetry", "pgserver", "plotly", "prometheus_client",
        "requests", "sniffio", "sse_starlette", "starlette", "trustme", "uvicorn",
    }
)  # fmt: skip


class MissingExtra(ConfigError):
    """A command needs an optional dependency that is not installed."""


def extra_for(argv: Sequence[str]) -> str:
    """The extra the command in ``argv`` (options first, as typed) needs; ``all`` if unknown."""
    for word in argv:
        if not word.startswith("-"):
            return COMMAND_EXTRAS.get(word, "all")
    return "all"


def missing_extra(exc: ModuleNotFoundError, argv: Sequence[str]) -> MissingExtra | None:
    """The one-line error for ``exc``, raised while running the command in ``argv``; None when
    the missing module is not one an extra installs."""
    if (exc.name or "").split(".")[0] not in OPTIONAL_MODULES:
        return None
    extra = extra_for(argv)
    module = exc.name or "a module"
    command = next((word for word in argv if not word.startswith("-")), "this command")
    return MissingExtra(
        f"{command} needs the {extra!r} extra ({module} is not installed)",
        hint=f"pip install 'apex-metrics[{extra}]'",
    )
