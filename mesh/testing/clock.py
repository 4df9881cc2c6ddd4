"""A clock that moves only when a test says so."""

from __future__ import annotations

import asyncio
import heapq

__all__ = ["FakeClock", "VirtualTime"]


class FakeClock:
    """Deterministic clock; ``advance`` moves wall and monotonic time together."""

    def __init__(self, *, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        return self._wall

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Moves time forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock never goes back; pass a positive number of seconds")
        self._wall += seconds
        self._mono += seconds


class VirtualTime:
    """``sleep`` on a :class:`FakeClock` for several concurrent loops (electors, timers).

    A sleeper waits until :meth:`run` wakes it; ``run`` moves the clock to the earliest wake-up,
    but only once ``participants`` loops are all asleep, so no loop sees time pass while it is
    still working (a request in flight): virtual time, deterministic in what each loop observes.
    """

    def __init__(self, clock: FakeClock, *, participants: int = 1) -> None:
        self.clock = clock
        self.participants = participants
        """How many loops must be asleep before time moves; change it when one stops."""
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = 0

    async def sleep(self, seconds: float) -> None:
        """Returns when the virtual clock reached now + ``seconds``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._order += 1
        heapq.heappush(self._sleepers, (self.clock.monotonic() + max(seconds, 0.0), self._order, waiter))
        await waiter

    async def run(self) -> None:
        """Drives the clock until cancelled (start it as a task next to the loops)."""
        while True:
            await asyncio.sleep(0.001)  # let the loops run, and finish what they started
            self._sleepers = [s for s in self._sleepers if not s[2].done()]
            heapq.heapify(self._sleepers)
            if self._sleepers and len(self._sleepers) >= self.participants:
                wake_at, _, waiter = heapq.heappop(self._sleepers)
                self.clock.advance(max(wake_at - self.clock.monotonic(), 0.0))
                waiter.set_result(None)
