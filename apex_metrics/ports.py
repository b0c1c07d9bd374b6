"""Ports: one nothing listens on, and a check that a server can bind its own (the panel,
``collect``, the emulator, the demo)."""

from __future__ import annotations

import errno
import socket

from apex_metrics.exceptions import ApexMetricsError, ConfigError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at the moment, on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(
    host: str,
    port: int,
    flag: str = "--port",
    *,
    error: type[ApexMetricsError] = ConfigError,
    in_use_hint: str | None = None,
) -> None:
    """Fail with one line (``error``) when ``host:port`` cannot be bound, before a server starts
    (uvicorn would print a traceback or an ERROR line and exit 3, which is our "differences
    found")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise error(
                    f"port {port} on {host} is already in use",
                    hint=in_use_hint
                    or f"stop what listens there, or pick another port with {flag}",
                ) from None
            raise error(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="check the address with --host",
            ) from None
