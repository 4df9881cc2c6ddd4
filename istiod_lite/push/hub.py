"""The current snapshot, the connected subscribers, and the loop that rebuilds and fans out.

``ConfigPusher.mark_dirty`` is what informers call on a change (it never computes); ``run``
debounces, builds an immutable snapshot with the injected ``build`` callable, and offers it to
every subscriber's coalescing slot. A failing build is logged and counted and the previous
snapshot stays in force.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog
from google.protobuf.message import Message

from istiod_lite.push.debounce import Debouncer, DebounceSettings, Sleep
from istiod_lite.push.delta import DiffCache
from istiod_lite.push.metrics import PushMetrics
from istiod_lite.push.projection import Subscriber, select_projection
from istiod_lite.push.queue import CoalescingSlot
from istiod_lite.push.snapshot import Snapshot, build_snapshot, empty_snapshot
from istiod_lite.push.stream import StreamState
from mesh.clock import Clock
from mesh.errors import MeshError

__all__ = ["BuildFn", "ConfigPusher", "Connection", "Hub", "Publication"]

BuildFn = Callable[[], Mapping[str, Mapping[str, Message]]]


@dataclass(frozen=True, slots=True)
class Publication:
    """A snapshot offered to subscribers, with the monotonic time of the change that caused it."""

    snapshot: Snapshot
    changed_at: float | None


@dataclass(slots=True)
class Connection:
    """One connected stream: who, since when, its protocol state and its push queue."""

    id: str
    subscriber: Subscriber
    connected_at: float
    state: StreamState
    slot: CoalescingSlot[Publication] = field(default_factory=CoalescingSlot)


class Hub:
    """Holds the current snapshot and the connected streams."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._current = Publication(empty_snapshot(now=clock.now()), None)
        self._connections: dict[str, Connection] = {}
        self._ids = itertools.count(1)
        self.diffs = DiffCache()

    @property
    def current(self) -> Snapshot:
        """The snapshot in force (counter 0 until the first build)."""
        return self._current.snapshot

    def publish(self, publication: Publication) -> None:
        """Makes ``publication`` current and queues it for every connected stream."""
        self._current = publication
        for connection in self._connections.values():
            connection.slot.offer(publication)

    def connect(self, subscriber: Subscriber) -> Connection:
        """Registers a new stream (Istio's connection id: ``<node id>-<n>``)."""
        conn_id = f"{subscriber.node_id}-{next(self._ids)}"
        state = StreamState(subscriber, select_projection(subscriber), diffs=self.diffs)
        connection = Connection(conn_id, subscriber, self._clock.now(), state)
        self._connections[conn_id] = connection
        return connection

    def disconnect(self, connection: Connection) -> None:
        """Forgets a stream."""
        self._connections.pop(connection.id, None)

    def connections(self) -> tuple[Connection, ...]:
        """The connected streams, oldest first."""
        return tuple(self._connections.values())


class ConfigPusher:
    """Debounces changes, builds snapshots, publishes them to the hub."""

    def __init__(
        self,
        build: BuildFn,
        hub: Hub,
        *,
        clock: Clock,
        metrics: PushMetrics,
        settings: DebounceSettings | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._build = build
        self._hub = hub
        self._clock = clock
        self._metrics = metrics
        self._debouncer = Debouncer(settings=settings or DebounceSettings(), clock=clock, sleep=sleep)
        self._counter = itertools.count(1)
        self._log = structlog.get_logger().bind(component="istiod_lite.push")

    def mark_dirty(self) -> None:
        """Informers call this on every change; the build happens later, debounced."""
        self._debouncer.notify()

    def rebuild(self, *, changed_at: float | None = None) -> Snapshot | None:
        """Builds and publishes a snapshot now; returns it, or None when the build failed."""
        started = self._clock.monotonic()
        try:
            messages = self._build()
            snapshot = build_snapshot(
                messages, counter=next(self._counter), now=self._clock.now(), previous=self._hub.current
            )
        except Exception as exc:  # any failure of the injected build: keep serving the old snapshot
            self._metrics.builds.labels("error").inc()
            self._log.error("push.build_failed", error=str(exc), exc_info=not isinstance(exc, MeshError))
            return None
        self._metrics.builds.labels("ok").inc()
        self._metrics.build_time.observe(self._clock.monotonic() - started)
        self._hub.publish(Publication(snapshot, changed_at))
        self._log.info("push.snapshot", version=snapshot.version, subscribers=len(self._hub.connections()))
        return snapshot

    async def run(self, *, build_first: bool = True) -> None:
        """Builds the first snapshot at once (unless told not to), then one per debounced burst, forever."""
        if build_first:
            self.rebuild()
        while True:
            batch = await self._debouncer.next_batch()
            self.rebuild(changed_at=batch.first)
