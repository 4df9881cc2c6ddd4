"""The one way tests wait for a condition that has no event of its own: poll it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["wait_until", "wait_until_blocking"]

POLL_INTERVAL = 0.02


async def wait_until(
    check: Callable[[], object], *, within: float | None = 5.0, what: str = "the condition"
) -> None:
    """Polls ``check`` until it returns something true; fails the test after ``within`` seconds
    (``None``: no deadline of its own, for a caller inside ``asyncio.timeout``)."""
    deadline = None if within is None else time.monotonic() + within
    while not check():
        if deadline is not None and time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within} s")
        await asyncio.sleep(POLL_INTERVAL)


def wait_until_blocking(
    check: Callable[[], object], *, within: float = 5.0, what: str = "the condition"
) -> None:
    """:func:`wait_until` for code without an event loop (a thread, a synchronous test)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within} s")
        time.sleep(POLL_INTERVAL)
