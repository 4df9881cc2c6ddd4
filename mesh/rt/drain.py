"""Graceful shutdown: long-lived tasks hold a drain handle and finish within a deadline."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

__all__ = ["Drain"]


class Drain:
    """Coordinates a graceful stop.

    ``trigger`` starts the drain; tasks watch ``draining`` and stop taking new work;
    ``register`` adds a callback run at drain start (e.g. close listeners, send GOAWAY);
    ``wait_closed`` returns when every tracked task ended or the deadline passed, after
    which the remaining tasks are cancelled.
    """

    def __init__(self, *, deadline: float = 5.0) -> None:
        self.deadline = deadline
        self._draining = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self._callbacks: list[Callable[[], Awaitable[None] | None]] = []

    @property
    def draining(self) -> bool:
        """True once the drain started."""
        return self._draining.is_set()

    async def wait_triggered(self) -> None:
        """Waits until the drain starts."""
        await self._draining.wait()

    def track(self, task: asyncio.Task[object]) -> None:
        """Tracks a task; it is awaited (then cancelled at the deadline) during the drain."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def register(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Runs ``callback`` when the drain starts."""
        self._callbacks.append(callback)

    def trigger(self) -> None:
        """Starts the drain (idempotent)."""
        self._draining.set()

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTERM and SIGINT start the drain."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.trigger)

    async def wait_closed(self) -> int:
        """Runs the drain callbacks, waits for tracked tasks, cancels stragglers.

        Returns how many tasks had to be cancelled at the deadline.
        """
        await self._draining.wait()
        for callback in self._callbacks:
            result = callback()
            if result is not None:
                await result
        pending = {t for t in self._tasks if not t.done()}
        if not pending:
            return 0
        _, still_running = await asyncio.wait(pending, timeout=self.deadline)
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.wait(still_running, timeout=1.0)
        return len(still_running)
