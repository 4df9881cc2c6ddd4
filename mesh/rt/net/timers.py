"""Timers the HBONE transport schedules through, so tests can run them on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

__all__ = ["LoopScheduler", "Scheduler", "TimerHandle"]


class TimerHandle(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Stops the callback from running (no-op once it ran)."""
        ...


class Scheduler(Protocol):
    """Runs a callback after a delay in seconds (keepalive, idle release, drain deadlines)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedules ``callback`` to run once, ``delay`` seconds from now."""
        ...


class LoopScheduler:
    """The production scheduler: the running event loop's ``call_later``."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedules ``callback`` on the running loop."""
        return asyncio.get_running_loop().call_later(delay, callback)
