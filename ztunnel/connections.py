"""Live inbound connections, so a policy change can close the ones it now denies."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from mesh.policy import ConnectionAttributes, applicable_policies, authorize
from ztunnel.state import ProxyState

__all__ = ["ConnectionRegistry", "TrackedConnection"]


@dataclass(slots=True)
class TrackedConnection:
    """One admitted inbound connection and how to end it."""

    id: int
    workload_uid: str
    attributes: ConnectionAttributes
    close: Callable[[str], None]
    direction: str
    started: float = field(default_factory=time.time)


class ConnectionRegistry:
    """Registers admitted connections; ``recheck`` applies a new state to all of them."""

    def __init__(self) -> None:
        self._connections: dict[int, TrackedConnection] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[TrackedConnection]:
        return iter(list(self._connections.values()))

    def add(
        self,
        *,
        workload_uid: str,
        attributes: ConnectionAttributes,
        close: Callable[[str], None],
        direction: str = "inbound",
    ) -> int:
        """Tracks a connection; returns its id for ``remove``."""
        conn_id = next(self._ids)
        self._connections[conn_id] = TrackedConnection(conn_id, workload_uid, attributes, close, direction)
        return conn_id

    def remove(self, conn_id: int) -> None:
        """Stops tracking (the connection ended)."""
        self._connections.pop(conn_id, None)

    def recheck(self, state: ProxyState) -> int:
        """Closes every inbound connection the new ``state`` denies; returns how many."""
        closed = 0
        for conn in list(self._connections.values()):
            if conn.direction != "inbound":
                continue
            workload = state.workloads.get(conn.workload_uid)
            allowed = (
                workload is not None
                and authorize(applicable_policies(workload, state.policies), conn.attributes).allowed
            )
            if not allowed:
                self._connections.pop(conn.id, None)
                conn.close("closed due to policy change")
                closed += 1
        return closed
