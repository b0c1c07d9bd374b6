"""Small asyncio helpers shared by every long-running part."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set, at most ``timeout`` seconds (then :class:`TimeoutError`).

    ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11, ``wait_for`` loses a
    cancellation that arrives just as the event is set, and a loop around it then never ends
    (a panel's lifespan hung on shutdown this way)."""
    async with asyncio.timeout(max(0.0, timeout)):
        await event.wait()
