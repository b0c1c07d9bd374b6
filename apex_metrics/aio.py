"""Small asyncio helpers shared by every long-running part."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set, at most ``timeout`` seconds (then :class:`TimeoutError`).

    ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11, ``wait_for`` loses a
    cancellation that arrives just as the event is set, and a loop around it then never ends
    (a panel's lifespan hung on shutdown this way)."""
    async with asyncio.timeout(max(0.0, timeout)):
        await event.wait()


async def cancel_and_wait(tasks: list[asyncio.Task[Any]], *, timeout: float = 10.0) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again those that swallowed the
    cancellation (Python 3.11's ``wait_for``, in our code or a library's, can drop one: the
    task then runs on and a shutdown that merely gathers it never ends). Gives up after
    ``timeout`` seconds, logging what still runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    if pending:
        log.warning("tasks still running after cancel: %s", sorted(t.get_name() for t in pending))
    for task in tasks:  # consume the outcomes (no "exception was never retrieved")
        if task.done() and not task.cancelled():
            task.exception()
