"""The unit tier reaches no server: the guard in tests/conftest.py refuses connections."""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests.conftest import NetworkInUnitTest

pytestmark = pytest.mark.unit


def test_a_unit_test_cannot_open_a_socket() -> None:
    with pytest.raises(NetworkInUnitTest):
        socket.create_connection(("127.0.0.1", 5432), timeout=1)


def test_a_unit_test_cannot_reach_postgresql() -> None:
    with pytest.raises(NetworkInUnitTest):
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres")


async def test_nor_asynchronously() -> None:
    with pytest.raises(NetworkInUnitTest):
        await psycopg.AsyncConnection.connect("postgresql://postgres@127.0.0.1:5432/postgres")
