"""Per-subscriber coalescing queue: at most one pending item; a newer one replaces it."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

__all__ = ["CoalescingSlot"]

T = TypeVar("T")


class CoalescingSlot(Generic[T]):
    """Holds the latest item not yet taken. ``offer`` never blocks; ``get`` waits for an item.

    A slow subscriber therefore never makes the controller queue snapshots: it gets the newest
    one when it is ready, and the intermediate ones are skipped (counted in ``replaced``).
    """

    def __init__(self) -> None:
        self._pending: list[T] = []  # zero or one item
        self._ready = asyncio.Event()
        self.replaced = 0

    def offer(self, item: T) -> None:
        """Makes ``item`` the pending item, replacing any not yet taken."""
        if self._pending:
            self.replaced += 1
        self._pending[:] = [item]
        self._ready.set()

    @property
    def pending(self) -> bool:
        """True when an item waits to be taken."""
        return bool(self._pending)

    def take_nowait(self) -> T | None:
        """The pending item (removing it), or None."""
        self._ready.clear()
        return self._pending.pop() if self._pending else None

    async def get(self) -> T:
        """Waits for and removes the pending item."""
        while not self._pending:
            await self._ready.wait()
        self._ready.clear()
        return self._pending.pop()
