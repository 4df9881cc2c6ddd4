"""Stopping a task for sure."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_until_done"]


async def cancel_until_done(task: asyncio.Task[Any], *, every: float) -> int:
    """Cancels ``task`` and waits until it has ended, cancelling it again each ``every`` seconds
    while it runs on; returns how many cancels it took (more than 1: a cancel was lost).

    One cancel can be lost: on Python 3.11 ``asyncio.wait_for`` returns its result instead of
    raising when the cancel comes after what it waited for has finished (CPython gh-86296), and
    code may catch CancelledError. ``every`` must outlast the task's own clean-up after a cancel
    (a grace period), which a second cancel would cut short. The task's own exception is not
    raised here: it stays on the task for the caller to read.
    """
    cancels = 0
    while not task.done():
        task.cancel()
        cancels += 1
        await asyncio.wait({task}, timeout=every)
    return cancels
