"""The allocator helpers: thresholds set on glibc, and the heap trimmed once per busy spell."""

from __future__ import annotations

import asyncio
import ctypes

from mesh.rt.net.memory import malloc_trim, trim_when_idle, tune_malloc


def test_glibc_thresholds_and_trim_are_available_here() -> None:
    assert tune_malloc() is True
    blocks = [ctypes.create_string_buffer(64 * 1024) for _ in range(512)]  # 32 MiB on the heap
    del blocks
    assert malloc_trim() is True, "32 MiB just freed under a 32 MiB trim threshold: pages to give back"


async def test_the_heap_is_trimmed_in_the_first_quiet_intervals_after_each_busy_spell() -> None:
    # CPU seconds read at start and after each interval: busy, busy, quiet x4, busy, quiet x3.
    readings = [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.2, 1.2]
    trims: list[int] = []
    checks = 0
    done = asyncio.Event()

    def cpu() -> float:
        nonlocal checks
        checks += 1
        if checks == len(readings):
            done.set()
        return readings[min(checks, len(readings)) - 1]

    def trim() -> bool:
        trims.append(checks)
        return True

    # interval 0: every CPU use counts as busy, and the checks run back to back
    task = asyncio.create_task(trim_when_idle(interval=0.0, quiet_trims=2, cpu=cpu, trim=trim))
    await asyncio.wait_for(done.wait(), timeout=5)
    task.cancel()
    assert trims == [4, 5, 9, 10], "the first two quiet checks after each busy spell, then no more"
