"""apex_metrics.ports: the one port check of every command that listens."""

from __future__ import annotations

import socket

import pytest

from apex_metrics.emulator.errors import EmulatorError
from apex_metrics.exceptions import ConfigError
from apex_metrics.ports import check_port, free_port

pytestmark = pytest.mark.unit


def test_a_busy_port_is_one_error_naming_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            check_port("127.0.0.1", port)
        assert info.value.message == f"port {port} on 127.0.0.1 is already in use"
        assert info.value.hint == "stop what listens there, or pick another port with --port"
        with pytest.raises(EmulatorError) as emulator:
            check_port("127.0.0.1", port, error=EmulatorError, in_use_hint="pick another")
        assert emulator.value.hint == "pick another"


def test_a_free_port_passes() -> None:
    check_port("127.0.0.1", free_port())
