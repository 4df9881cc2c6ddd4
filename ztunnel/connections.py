"""Live connections: inbound ones registered so a policy change can close those it now denies, and the
budget of downstream connections one ztunnel serves at once."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog

from mesh.clock import Clock
from mesh.errors import ConfigError
from mesh.policy import ConnectionAttributes, applicable_policies, authorize
from mesh.rt.metrics import CounterFamily, GaugeFamily, MetricFamily
from ztunnel.state import ProxyState

__all__ = ["ConnectionBudget", "ConnectionRegistry", "TrackedConnection"]


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


class ConnectionBudget:
    """The most downstream connections one ztunnel serves at once (reliability catalogue 33).

    Downstream means what a pod opens or receives: a captured outbound connection (15001), an inbound
    plaintext one (15006), an inbound HBONE stream (15008). Beyond the limit a connection is refused at
    once (RST, or 503 for a stream) instead of exhausting descriptors and memory; connections already
    served are untouched. Refusals are logged at most once per ``log_every`` seconds, with a count.
    It is also a metrics collector: ``ztunnel_downstream_connections`` (gauge) and
    ``ztunnel_downstream_connections_refused_total`` (counter).
    """

    def __init__(
        self, limit: int, *, log: structlog.typing.FilteringBoundLogger, clock: Clock, log_every: float = 1.0
    ) -> None:
        if limit < 1:
            raise ConfigError(
                f"the connection limit must be at least 1, not {limit}", hint="pass --max-connections N"
            )
        self.limit = limit
        self.active = 0
        self.refused = 0
        self._log = log
        self._clock = clock
        self._log_every = log_every
        self._next_log = 0.0
        self._unlogged = 0

    def try_acquire(self) -> bool:
        """Takes one connection's place; False (and the refusal counted) when the limit is reached."""
        if self.active < self.limit:
            self.active += 1
            return True
        self.refused += 1
        self._unlogged += 1
        now = self._clock.monotonic()
        if now >= self._next_log:
            self._log.warning(
                "connection.limit_reached",
                limit=self.limit,
                refused=self._unlogged,
                refused_total=self.refused,
            )
            self._next_log, self._unlogged = now + self._log_every, 0
        return False

    def release(self) -> None:
        """Gives back a place taken by :meth:`try_acquire`."""
        self.active -= 1

    def collect(self) -> list[MetricFamily]:
        """The gauge of connections served and the counter of refusals, as of now."""
        active = GaugeFamily("ztunnel_downstream_connections", "Downstream connections being served.")
        active.add_metric((), self.active)
        refused = CounterFamily(
            "ztunnel_downstream_connections_refused",
            "Downstream connections refused because --max-connections were being served.",
        )
        refused.add_metric((), self.refused)
        return [active, refused]
