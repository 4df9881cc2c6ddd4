"""Debounce decisions on a fake clock, and the coalescing queue."""

from __future__ import annotations

import asyncio

import pytest

from istiod_lite.push.debounce import Debouncer, DebounceSettings, DebounceState
from istiod_lite.push.queue import CoalescingSlot
from mesh.errors import ConfigError
from mesh.testing.clock import FakeClock

SETTINGS = DebounceSettings(quiet=0.1, max_delay=1.0)


@pytest.mark.parametrize(
    ("changes", "now", "due"),
    [
        ([], 5.0, False),  # nothing pending
        ([0.0], 0.05, False),  # still within the quiet period
        ([0.0], 0.1, True),  # quiet period over
        ([0.0, 0.08], 0.15, False),  # a second change restarts the quiet period
        ([0.0, 0.08], 0.18, True),
        ([0.0, 0.09, 0.18, 0.27, 0.36, 0.45, 0.54, 0.63, 0.72, 0.81, 0.9, 0.99], 1.0, True),  # max delay
        ([0.0, 0.09, 0.18, 0.27, 0.36, 0.45, 0.54, 0.63, 0.72, 0.81, 0.9, 0.99], 0.995, False),
    ],
)
def test_due(changes: list[float], now: float, due: bool) -> None:
    state = DebounceState()
    for at in changes:
        state = state.record(at)
    assert state.due(now, SETTINGS) is due
    assert state.changes == len(changes)


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="quiet <= max_delay"):
        DebounceSettings(quiet=2.0, max_delay=1.0)


class SleepOnFakeClock:
    """A sleep that moves the fake clock instead of waiting; calls ``during`` on each sleep."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.slept: list[float] = []
        self.during: list[float] = []  # monotonic times at which to fire a change while asleep
        self.debouncer: Debouncer | None = None

    async def __call__(self, seconds: float) -> None:
        start = self.clock.monotonic()
        self.slept.append(round(seconds, 6))
        for at in [t for t in self.during if start < t <= start + seconds]:
            self.clock.advance(at - self.clock.monotonic())
            assert self.debouncer is not None
            self.debouncer.notify()
            self.during.remove(at)
        self.clock.advance(start + seconds - self.clock.monotonic())


async def test_debouncer_merges_a_burst_into_one_batch() -> None:
    clock = FakeClock()
    sleep = SleepOnFakeClock(clock)
    debouncer = Debouncer(settings=SETTINGS, clock=clock, sleep=sleep)
    sleep.debouncer = debouncer
    sleep.during = [0.05, 0.12]  # two more changes while waiting
    debouncer.notify()
    batch = await debouncer.next_batch()
    assert batch.changes == 3
    assert batch.first == 0.0
    assert clock.monotonic() == pytest.approx(0.22)  # 100 ms after the last change
    assert debouncer.pending == DebounceState()


async def test_debouncer_caps_the_wait_at_max_delay() -> None:
    clock = FakeClock()
    sleep = SleepOnFakeClock(clock)
    debouncer = Debouncer(settings=SETTINGS, clock=clock, sleep=sleep)
    sleep.debouncer = debouncer
    sleep.during = [round(0.05 * i, 2) for i in range(1, 40)]  # a change every 50 ms for 2 s
    debouncer.notify()
    batch = await debouncer.next_batch()
    assert clock.monotonic() == pytest.approx(1.0)
    assert batch.changes == 21  # the first plus 20 during the first second


async def test_debouncer_waits_for_a_change() -> None:
    clock = FakeClock()
    debouncer = Debouncer(settings=SETTINGS, clock=clock, sleep=SleepOnFakeClock(clock))
    waiter = asyncio.create_task(debouncer.next_batch())
    await asyncio.sleep(0)
    assert not waiter.done()
    debouncer.notify()
    batch = await asyncio.wait_for(waiter, 1.0)
    assert batch.changes == 1


async def test_coalescing_slot_keeps_only_the_newest() -> None:
    slot: CoalescingSlot[int] = CoalescingSlot()
    for item in (1, 2, 3):
        slot.offer(item)
    assert slot.replaced == 2
    assert await slot.get() == 3
    assert not slot.pending
    getter = asyncio.create_task(slot.get())
    await asyncio.sleep(0)
    assert not getter.done()
    slot.offer(4)
    assert await asyncio.wait_for(getter, 1.0) == 4
    assert slot.take_nowait() is None
