"""Unit tests of retry, back-off and pacing (no network): the policy's decisions, the slots'
rest after a request, the exact pause on 429, the batch size from measured durations."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest

from apex_metrics.dataverse import errors as e
from apex_metrics.dataverse.flow import Flow
from apex_metrics.dataverse.pacing import (
    RECOVERY_SECONDS,
    SECONDS_PER_REQUEST,
    LocalSlots,
    Pacer,
    SlotWaitStopped,
)
from apex_metrics.dataverse.retry import MIN_PAUSE, RetryPolicy

pytestmark = pytest.mark.unit


class Clock:
    """A clock the test moves by hand, and a sleep that moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def test_rows_die_at_once_when_invalid_and_back_off_when_transient() -> None:
    policy = RetryPolicy(max_attempts=4, base_wait=1.0, max_wait=5.0)
    assert policy.decide(transient=False, attempts=1).dead
    rng = random.Random(1)
    waits = [policy.decide(transient=True, attempts=n, rng=rng) for n in (1, 2, 3)]
    assert not any(w.dead for w in waits)
    assert 0.5 <= waits[0].delay <= 1.0 and 1.0 <= waits[1].delay <= 2.0
    assert 2.0 <= waits[2].delay <= 4.0
    assert policy.decide(transient=True, attempts=4).dead  # max attempts reached
    assert all(2.5 <= policy.backoff(30, rng) <= 5.0 for _ in range(50))  # capped


def test_requests_are_retried_only_when_sending_again_is_safe() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(attempt=1, transient=True, idempotent=True, sent=True)
    assert not policy.should_retry(attempt=3, transient=True, idempotent=True, sent=True)
    assert not policy.should_retry(attempt=1, transient=False, idempotent=True, sent=False)
    assert not policy.should_retry(attempt=1, transient=True, idempotent=False, sent=True)
    assert policy.should_retry(attempt=1, transient=True, idempotent=False, sent=False)


def test_a_429_pauses_for_exactly_retry_after() -> None:
    assert RetryPolicy.pause_for(7.0) == 7.0
    assert RetryPolicy.pause_for(0.2) == 0.2
    assert RetryPolicy.pause_for(0) == MIN_PAUSE, "Retry-After: 0 is no reason to hammer"
    assert RetryPolicy.pause_for(None) == MIN_PAUSE


async def test_a_slot_rests_so_that_execution_stays_under_the_budget() -> None:
    clock = Clock()
    pacer = Pacer(concurrency=1, utilization=0.8, clock=clock, sleep=clock.sleep)
    async with pacer.slot() as ticket:
        started = clock()
        clock.now += 4.0  # a request that took 4 s
        pacer.record(ticket, started, rows=400)
        assert pacer.rest(ticket) == pytest.approx(4.0 / 0.8 - 4.0)
    assert pacer.row_seconds() == pytest.approx(0.01)
    taken = await pacer.slots.take(1, 60)
    assert taken.slot is None and taken.next_free == pytest.approx(1.0), "resting one second"
    clock.now += 1.0
    assert (await pacer.slots.take(1, 60)).slot == 0


async def test_short_requests_are_spaced_by_the_request_budget() -> None:
    clock = Clock()
    pacer = Pacer(concurrency=2, clock=clock, sleep=clock.sleep)
    async with pacer.slot() as ticket:
        started = clock()
        clock.now += 0.01
        pacer.record(ticket, started, rows=1)
        assert pacer.rest(ticket) == pytest.approx(SECONDS_PER_REQUEST - 0.01)


async def test_slots_freed_together_start_spread_not_in_lockstep() -> None:
    clock = Clock()
    pacer = Pacer(concurrency=4, clock=clock, sleep=clock.sleep)
    async with pacer.slot() as ticket:
        started = clock()
        clock.now += 8.0  # requests take 8 s: four slots start one every 2 s
        pacer.record(ticket, started, rows=1000)
    assert pacer.spacing() == pytest.approx(2.0)
    await pacer.throttled(5.0)  # a pause frees every slot at the same moment
    clock.now += 5.0
    starts: list[float] = []

    async def start() -> None:
        async with pacer.slot():
            starts.append(clock())

    await asyncio.gather(*(start() for _ in range(4)))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([2.0, 2.0, 2.0]), "one start per mean duration / slots"


async def test_a_ticket_without_a_request_gives_the_slot_back_at_once() -> None:
    clock = Clock()
    pacer = Pacer(concurrency=1, clock=clock, sleep=clock.sleep)
    async with pacer.slot() as ticket:
        assert pacer.rest(ticket) == 0.0
    assert (await pacer.slots.take(1, 60)).slot == 0


async def test_slots_cap_the_requests_in_flight_and_nest() -> None:
    pacer = Pacer(concurrency=2, seconds_per_request=0.0, utilization=1.0)
    running = peak = 0

    async def job() -> None:
        nonlocal running, peak
        async with pacer.slot() as outer, pacer.slot() as inner:
            assert inner is outer, "a task that holds a slot uses it again"
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.wait_for(asyncio.gather(*(job() for _ in range(10))), 5)
    assert peak == 2 and pacer.stats.max_in_flight == 2


async def test_throttling_pauses_everyone_and_lowers_the_pressure_once_per_burst() -> None:
    clock = Clock()
    pacer = Pacer(concurrency=8, clock=clock, sleep=clock.sleep)
    assert await pacer.throttled(3.0) == 3.0
    assert pacer.pressure == 0.5 and pacer.paused_for() == 3.0
    assert await pacer.throttled(1.0) == 1.0  # same burst: a shorter pause never shortens it
    assert pacer.pressure == 0.5 and pacer.paused_for() == 3.0
    taken = await pacer.slots.take(8, 60)
    assert taken.slot is None and taken.paused == pytest.approx(3.0), "the pool shares it"
    clock.now += 3.0
    await pacer.throttled(2.0)
    assert pacer.pressure == 0.25
    for _ in range(200):  # however many requests succeed during the pause: no growth
        pacer.succeeded()
    assert pacer.pressure == 0.25
    clock.now += 2.0 + RECOVERY_SECONDS / 2  # after the pause, half the recovery time
    pacer.succeeded()
    assert pacer.pressure == pytest.approx(0.5)
    clock.now += RECOVERY_SECONDS
    pacer.succeeded()
    assert pacer.pressure == 1.0, "back by time, never above 1"


async def test_a_slot_waits_out_the_pause_or_stops() -> None:
    pacer = Pacer(concurrency=1)
    await pacer.throttled(0.3)
    started = time.monotonic()
    async with pacer.slot():
        waited = time.monotonic() - started
    assert 0.29 <= waited < 0.6, "the pause is Retry-After, not more"
    await pacer.throttled(30.0)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    with pytest.raises(SlotWaitStopped):
        async with pacer.slot(until=stop):
            pass


def test_dop_hint_sets_the_slots_within_the_cap() -> None:
    pacer = Pacer(concurrency=4, max_concurrency=10)
    pacer.hint(8)
    assert pacer.concurrency == 8
    pacer.hint(60)
    assert pacer.concurrency == 10
    pacer.hint(0)
    assert pacer.concurrency == 10


def test_batch_size_follows_the_measured_cost_per_row() -> None:
    pacer = Pacer(target_request_seconds=10.0)
    assert pacer.batch_size(1000) == 100, "a modest first batch, before any measurement"
    assert pacer.batch_size(20) == 20
    pacer._cost_seconds, pacer._cost_rows = 4.0, 100.0  # 40 ms a row ($batch parts)
    assert pacer.batch_size(1000) == 250
    pacer._cost_seconds, pacer._cost_rows = 8.0, 1000.0  # 8 ms a row (UpsertMultiple)
    assert pacer.batch_size(1000) == 1000


async def test_local_slots_prefer_the_one_that_rested_longest() -> None:
    clock = Clock()
    slots = LocalSlots(clock)
    await slots.give_back(0, 5.0)
    await slots.give_back(1, 0.0)
    assert (await slots.take(2, 60)).slot == 1
    taken = await slots.take(2, 60)
    assert taken.slot is None and taken.next_free == pytest.approx(5.0)


async def test_flow_retries_transient_failures_and_pauses_on_429() -> None:
    clock = Clock()
    pacer = Pacer(concurrency=1, seconds_per_request=0.0, clock=clock, sleep=clock.sleep)
    flow = Flow(pacer, RetryPolicy(max_attempts=3, base_wait=0.5, max_wait=3.0), sleep=clock.sleep)
    answers: list[BaseException | str] = [
        e.Throttled("429", retry_after=4.0, status=429),
        e.TransientError("503", status=503, retry_after=2.0),
        "ok",
    ]

    async def attempt() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await flow.call(attempt, idempotent=True, what="test") == "ok"
    assert clock.slept[0] == 4.0, "the 429 paused for exactly Retry-After"
    assert clock.slept[1] >= 2.0, "a 503's Retry-After is a floor for the back-off"
    assert flow.stats.throttled == 1 and flow.stats.retries == 1

    async def always_throttled() -> str:
        raise e.Throttled("429", retry_after=1.0, status=429)

    with pytest.raises(e.Throttled):
        await flow.call(always_throttled, idempotent=True, what="test", max_throttled=0)
