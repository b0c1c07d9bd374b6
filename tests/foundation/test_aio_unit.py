"""wait_event: a cancellation that arrives as the event is set still cancels (Python 3.11's
asyncio.wait_for loses it, and a loop around it then never ends)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from apex_metrics.aio import wait_event

pytestmark = pytest.mark.unit


async def test_a_cancel_that_meets_the_event_is_not_lost() -> None:
    wake = asyncio.Event()

    async def watcher() -> None:  # the shape of every watcher loop in the package
        while True:
            with contextlib.suppress(TimeoutError):
                await wait_event(wake, 10.0)
            wake.clear()

    task = asyncio.create_task(watcher())
    await asyncio.sleep(0)  # the watcher now waits for the event
    wake.set()
    task.cancel()  # in the same step: the event's waiter and the cancel race
    done, _ = await asyncio.wait([task], timeout=2.0)
    assert done, "the watcher swallowed its cancellation and kept running"
    assert task.cancelled()


async def test_it_times_out_or_returns_when_set() -> None:
    wake = asyncio.Event()
    with pytest.raises(TimeoutError):
        await wait_event(wake, 0.01)
    asyncio.get_running_loop().call_later(0.01, wake.set)
    await wait_event(wake, 2.0)
    assert wake.is_set()


async def test_cancel_and_wait_cancels_again_what_swallowed_a_cancellation() -> None:
    from apex_metrics.aio import cancel_and_wait

    swallowed = 0

    async def stubborn() -> None:  # drops the first cancellation, as 3.11's wait_for can
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task]), 5)
    assert task.cancelled() and swallowed == 2
