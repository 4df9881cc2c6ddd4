"""A scrape-time gauge of the asyncio tasks alive in an event loop.

Every connection a proxy serves lives in one or more tasks, so a count that does not come back
after load is a leak, like descriptors that do not (reliability catalogue 35: "fd and task counts
stable").
"""

from __future__ import annotations

import asyncio

from mesh.rt.metrics._families import GaugeFamily

__all__ = ["LoopTasks"]


class LoopTasks:
    """Collector of ``<name>``: the tasks of ``loop`` not yet done, counted at each scrape."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._name = name

    def collect(self) -> list[GaugeFamily]:
        """The gauge as of now (``asyncio.all_tasks`` copes with tasks created meanwhile)."""
        family = GaugeFamily(self._name, "Asyncio tasks alive in the event loop (not yet done).")
        family.add_metric((), len(asyncio.all_tasks(self._loop)))
        return [family]
