"""Live connections, both directions, for ``meshctl zc connections`` (inbound ones also so a policy
change can close those it now denies), and the budget of downstream connections one ztunnel serves
at once."""

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
from mesh.rt.net.relay import RelayEnd
from mesh.telemetry import ConnectionRecord
from ztunnel.state import ProxyState

__all__ = ["ConnectionBudget", "ConnectionRegistry", "PolicyHold", "TrackedConnection"]


@dataclass(frozen=True, slots=True)
class PolicyHold:
    """What re-checking an inbound connection against new policy needs, and how to end it."""

    workload_uid: str
    attributes: ConnectionAttributes
    close: Callable[[str], None]


@dataclass(slots=True)
class TrackedConnection:
    """One live connection: who talks to whom (as this ztunnel saw it), its two relay ends (their
    byte counts grow while it runs) and, inbound, its policy hold."""

    id: int
    record: ConnectionRecord
    client_end: RelayEnd
    server_end: RelayEnd
    policy: PolicyHold | None
    started: float = field(default_factory=time.time)

    @property
    def direction(self) -> str:
        """``inbound`` (this ztunnel serves the destination) or ``outbound`` (the source)."""
        return "inbound" if self.record.reporter == "destination" else "outbound"

    def row(self, now: float) -> dict[str, object]:
        """The connection as ``/connections`` lists it (Istio's access-log key names)."""
        record = self.record
        return {
            "id": self.id,
            "direction": self.direction,
            "src.addr": record.source_addr,
            "dst.addr": record.destination_addr,
            "dst.hbone_addr": record.hbone_addr,
            "src.identity": record.source_principal,
            "dst.identity": record.destination_principal,
            "src.workload": record.source.name if record.source else "",
            "dst.workload": record.destination.name if record.destination else "",
            "bytes_sent": self.client_end.bytes_in,
            "bytes_recv": self.server_end.bytes_in,
            "started": self.started,
            "age_seconds": round(max(0.0, now - self.started), 3),
        }


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
        record: ConnectionRecord,
        client_end: RelayEnd,
        server_end: RelayEnd,
        *,
        policy: PolicyHold | None = None,
    ) -> int:
        """Tracks a live connection; returns its id for ``remove``."""
        conn_id = next(self._ids)
        self._connections[conn_id] = TrackedConnection(conn_id, record, client_end, server_end, policy)
        return conn_id

    def remove(self, conn_id: int) -> None:
        """Stops tracking (the connection ended)."""
        self._connections.pop(conn_id, None)

    def recheck(self, state: ProxyState) -> int:
        """Closes every inbound connection the new ``state`` denies; returns how many."""
        closed = 0
        for conn in list(self._connections.values()):
            hold = conn.policy
            if hold is None:
                continue
            workload = state.workloads.get(hold.workload_uid)
            allowed = (
                workload is not None
                and authorize(applicable_policies(workload, state.policies), hold.attributes).allowed
            )
            if not allowed:
                self._connections.pop(conn.id, None)
                hold.close("closed due to policy change")
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
