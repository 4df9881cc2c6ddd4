"""Allocator settings for a process that relays bulk data (glibc only; elsewhere a no-op).

A relay allocates and frees buffers of 64 KiB to 1 MiB all the time (socket reads, joined frames,
TLS records). With glibc's defaults such buffers land above the dynamic mmap threshold or at the top
of a heap that is trimmed back to the kernel after each burst, so every transfer pays page faults and
zeroing of fresh pages (seen as ~20 % of a relay's CPU in ``perf``). Raising both thresholds keeps
these buffers on the heap and reused. Call :func:`tune_malloc` once at process start.

The price is memory kept after a burst (several MB). :func:`trim_when_idle` gives it back once the
process goes quiet, like Envoy's ``shrink_heap`` overload action: never during load, where it would
cost the page faults the thresholds avoid.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import time
from collections.abc import Callable

__all__ = ["freeze_startup_heap", "malloc_trim", "trim_when_idle", "tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None  # not glibc
    return libc


def tune_malloc(*, mmap_threshold: int = 4 * 1024 * 1024, trim_threshold: int = 32 * 1024 * 1024) -> bool:
    """Sets glibc's mmap and trim thresholds; returns False where that is not possible."""
    libc = _libc()
    if libc is None:
        return False
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return bool(mmap_ok) and bool(trim_ok)


def malloc_trim() -> bool:
    """Returns the heap's free pages to the kernel; True when some were released."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


async def trim_when_idle(
    *,
    interval: float = 5.0,
    busy_share: float = 0.02,
    quiet_trims: int = 3,
    cpu: Callable[[], float] = time.process_time,
    trim: Callable[[], bool] = malloc_trim,
) -> None:
    """Runs until cancelled: trims the heap at the end of each busy spell.

    An interval in which the process used more than ``busy_share`` of a core is busy; each of the
    first ``quiet_trims`` quiet intervals after busy ones trims (memory is also freed a little after
    the load stops: idle HBONE connections drop their bulk buffers at their next keepalive PING,
    10 s later). A process that stays quiet is not trimmed again, so this costs nothing idle.
    """
    trims_left = 0
    last = cpu()
    while True:
        await asyncio.sleep(interval)
        now = cpu()
        if now - last > busy_share * interval:
            trims_left = quiet_trims
        elif trims_left:
            trim()
            trims_left -= 1
        last = now


def freeze_startup_heap() -> int:
    """Collects once, then moves every object alive now (modules, protobuf descriptors, the parsed
    config) out of the cycle collector's reach, so a full collection walks only what traffic made.
    Without it, a full collection under a flood of connections held the GIL for 100-250 ms, and with
    it the readiness thread (perf/README.md, issue 20). Call once, when start-up is done; returns
    how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
