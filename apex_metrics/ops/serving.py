"""Serving for the commands that listen (``panel``, ``collect``); ports: ``apex_metrics.ports``."""

from __future__ import annotations

from collections.abc import Callable

from apex_metrics.exceptions import ConfigError


def serve_or_fail(run: Callable[[], object], host: str, port: int) -> None:
    """Run a server until Ctrl-C; a failed start (uvicorn exits with its status 3) becomes one
    line."""
    try:
        run()
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:
        if exc.code in (None, 0):
            return
        raise ConfigError(
            f"could not serve on {host}:{port}", hint="see the line above; --debug shows more"
        ) from None
