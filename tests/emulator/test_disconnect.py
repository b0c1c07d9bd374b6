"""A caller that hangs up mid-request (a killed worker) leaves no error trace and no write."""

from __future__ import annotations

import logging
import socket
import time
from urllib.parse import urlsplit

import httpx

from apex_metrics.testing import running_emulator


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_client_hanging_up_mid_body_is_not_an_error() -> None:
    collect = _Collect()
    watched = [logging.getLogger("uvicorn.error"), logging.getLogger("apex_metrics.emulator")]
    try:
        with running_emulator() as emu:
            for log in watched:  # after uvicorn configured its loggers
                log.addHandler(collect)
            token = httpx.post(
                emu.token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": emu.config.client_id,
                    "client_secret": emu.config.client_secret,
                    "scope": f"{emu.url}/.default",
                },
            ).json()["access_token"]
            parts = urlsplit(emu.url)
            with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
                sock.sendall(
                    b"PATCH /api/data/v9.2/accounts(name='x') HTTP/1.1\r\n"
                    b"Host: " + parts.netloc.encode() + b"\r\n"
                    b"Authorization: Bearer " + token.encode() + b"\r\n"
                    b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"nam'
                )
                time.sleep(0.2)
            time.sleep(0.5)  # let the server notice the hang-up
            answer = httpx.get(f"{emu.api}/WhoAmI", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200  # still serving
    finally:
        for log in watched:
            log.removeHandler(collect)
    assert [r.getMessage() for r in collect.records] == []
