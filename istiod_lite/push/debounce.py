"""Debounce: merge bursts of changes into one build.

A build starts once changes have been quiet for ``quiet`` seconds, or ``max_delay`` seconds
after the first change of the burst, whichever comes first (istiod: PILOT_DEBOUNCE_AFTER 100 ms,
PILOT_DEBOUNCE_MAX 10 s; we cap at 1 s). The decision is the pure ``DebounceState``; the
``Debouncer`` shell gets its clock and its sleep injected, so tests run it on a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from mesh.clock import Clock
from mesh.errors import ConfigError

__all__ = ["DebounceSettings", "DebounceState", "Debouncer"]


@dataclass(frozen=True, slots=True)
class DebounceSettings:
    """Quiet period and maximum delay, in seconds."""

    quiet: float = 0.1
    max_delay: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.quiet <= self.max_delay:
            raise ConfigError(
                f"debounce quiet={self.quiet}s max_delay={self.max_delay}s is invalid",
                hint="use 0 <= quiet <= max_delay, e.g. quiet=0.1 max_delay=1.0",
            )


@dataclass(frozen=True, slots=True)
class DebounceState:
    """A burst of changes: when it started, when it last changed, how many changes it merged."""

    first: float | None = None
    last: float | None = None
    changes: int = 0

    def record(self, now: float) -> DebounceState:
        """The state after one more change at ``now`` (monotonic seconds)."""
        first = now if self.first is None else self.first
        return replace(self, first=first, last=now, changes=self.changes + 1)

    def deadline(self, settings: DebounceSettings) -> float | None:
        """When the burst is due, or None when there is no change pending."""
        if self.first is None or self.last is None:
            return None
        return min(self.last + settings.quiet, self.first + settings.max_delay)

    def due(self, now: float, settings: DebounceSettings) -> bool:
        """True when a build should start at ``now``."""
        deadline = self.deadline(settings)
        return deadline is not None and now >= deadline


Sleep = Callable[[float], Awaitable[None]]


class Debouncer:
    """Collects change notifications; ``next_batch`` returns when a burst is due."""

    def __init__(self, *, settings: DebounceSettings, clock: Clock, sleep: Sleep = asyncio.sleep) -> None:
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._state = DebounceState()
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Records a change now; never blocks and never computes anything."""
        self._state = self._state.record(self._clock.monotonic())
        self._changed.set()

    @property
    def pending(self) -> DebounceState:
        """The burst being collected."""
        return self._state

    async def next_batch(self) -> DebounceState:
        """Waits for a change, then until its burst is due; returns the burst and starts a new one."""
        while self._state.first is None:
            self._changed.clear()
            await self._changed.wait()
        while True:
            deadline = self._state.deadline(self._settings)
            now = self._clock.monotonic()
            if deadline is None or now >= deadline:
                break
            await self._sleep(deadline - now)
        batch, self._state = self._state, DebounceState()
        return batch
