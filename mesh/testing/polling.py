"""The one way tests wait for a condition that has no event of its own: poll it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until", "wait_until_blocking"]

POLL_INTERVAL = 0.02
T = TypeVar("T")


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


def wait_until_blocking(check: Callable[[], T], *, within: float = 5.0, what: str = "the condition") -> T:
    """:func:`wait_until` for code without an event loop (a thread, a synchronous test); returns
    what ``check`` returned once true."""
    deadline = time.monotonic() + within
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {within} s")
        time.sleep(POLL_INTERVAL)
    return value
