"""cancel_until_done: a task that loses a cancel is cancelled again; one that cleans up is not cut short."""

from __future__ import annotations

import asyncio

from mesh.rt.tasks import cancel_until_done


async def test_a_task_that_swallows_a_cancel_is_cancelled_again() -> None:
    swallowed: list[str] = []

    async def runs_on() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.append("first cancel")
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(runs_on())
    await asyncio.sleep(0)
    assert await cancel_until_done(task, every=0.05) == 2
    assert swallowed == ["first cancel"]
    assert task.cancelled()


async def test_a_clean_up_shorter_than_every_runs_to_its_end() -> None:
    cleaned: list[str] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.1)  # as a container's SIGTERM wait
            cleaned.append("done")

    task = asyncio.ensure_future(cleans_up())
    await asyncio.sleep(0)
    assert await cancel_until_done(task, every=5.0) == 1
    assert cleaned == ["done"]


async def test_a_finished_task_is_left_with_its_exception() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    assert await cancel_until_done(task, every=1.0) == 0
    assert isinstance(task.exception(), ValueError)
