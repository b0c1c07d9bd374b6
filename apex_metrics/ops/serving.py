"""Ports and servers for the commands that listen (``panel``, ``collect``) and for the demo."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from apex_metrics.exceptions import ConfigError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at the moment, on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """Fail with one line when ``host:port`` cannot be bound (uvicorn would print a traceback
    or an ERROR line and exit 3, which is our "differences found")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use",
                    hint=f"stop what listens there, or pick another port with {flag}",
                ) from None
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="check the address with --host",
            ) from None


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
