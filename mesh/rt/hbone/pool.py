"""The HBONE connection pool, ztunnel-style.

Connections are keyed by (source identity, source IP, destination ``IP:15008``, expected identities), so
different identities never share a connection. A connection carries up to ``max_streams_per_connection``
streams (100); the next stream opens a new connection. Requests for a key that arrive while its
connection is still being set up share that connection. A connection with no stream for
``idle_timeout`` (5 min) is released with GOAWAY; a dead one (closed, GOAWAY received, keepalive
timeout) is evicted and the next stream goes to a fresh connection. A connection the peer sent GOAWAY
is only forgotten, not closed: its open streams finish (the peer drains them until its deadline), and
it closes itself after the last one. A stream the peer refused (REFUSED_STREAM: opened while its GOAWAY
was on the way) was never processed, so it is opened again on another connection (RFC 9113 8.7).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

from mesh.clock import Clock
from mesh.errors import ConfigError
from mesh.h2.errors import ErrorCode
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.hbone._log import EventLog, default_log
from mesh.rt.hbone.client import HboneClientConnection, StreamLimitError, connect
from mesh.rt.hbone.config import HboneConfig
from mesh.rt.hbone.errors import StreamResetError
from mesh.rt.hbone.stream import HboneStream
from mesh.rt.net.sockets import SocketFactory
from mesh.rt.net.timers import LoopScheduler, Scheduler, TimerHandle
from mesh.rt.tls import ContextCache, TlsMaterial

__all__ = ["CertificateSource", "HbonePool", "PoolConfig", "PoolKey"]


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What makes two streams eligible to share a connection."""

    source: WorkloadIdentity
    source_ip: str
    destination: tuple[str, int]
    """The peer's ``(IP, 15008)``."""
    expected: frozenset[WorkloadIdentity]
    """Identities the server may present (the workload's plus the service's SANs)."""


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """ztunnel's POOL_MAX_STREAMS_PER_CONNECTION and POOL_UNUSED_RELEASE_TIMEOUT."""

    max_streams_per_connection: int = 100
    idle_timeout: float = 300.0
    hbone: HboneConfig = field(default_factory=HboneConfig)

    def __post_init__(self) -> None:
        if self.max_streams_per_connection < 1:
            raise ConfigError("PoolConfig.max_streams_per_connection must be at least 1", hint="use e.g. 100")
        if self.idle_timeout <= 0:
            raise ConfigError("PoolConfig.idle_timeout must be positive", hint="use seconds, e.g. 300")


class CertificateSource(Protocol):
    """Where the pool gets the certificate the source workload presents."""

    async def client_material(self, identity: WorkloadIdentity) -> TlsMaterial:
        """The current key, chain and roots for ``identity`` (waits for a first certificate)."""
        ...


class _Slot:
    """One pooled connection (or one being set up) and the streams reserved on it."""

    __slots__ = ("conn", "connecting", "dead", "full", "idle_since", "idle_timer", "key", "streams")

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.conn: HboneClientConnection | None = None
        self.connecting: asyncio.Task[HboneClientConnection] | None = None
        self.streams = 0
        self.dead = False
        self.full = False
        self.idle_timer: TimerHandle | None = None
        self.idle_since: float | None = None


class HbonePool:
    """Opens CONNECT streams on pooled HBONE connections."""

    def __init__(
        self,
        *,
        sockets: SocketFactory,
        certs: CertificateSource,
        clock: Clock,
        scheduler: Scheduler | None = None,
        config: PoolConfig | None = None,
        log: EventLog | None = None,
    ) -> None:
        self._sockets = sockets
        self._certs = certs
        self._clock = clock
        self._scheduler = scheduler or LoopScheduler()
        self.config = config or PoolConfig()
        self.log = log or default_log()
        self._contexts = ContextCache()
        self._slots: dict[PoolKey, list[_Slot]] = {}
        self.connections_opened = 0

    async def open_stream(
        self, key: PoolKey, authority: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> tuple[int, HboneStream]:
        """CONNECT ``authority`` over a pooled connection for ``key``; returns the status and the stream."""
        for _ in range(3):  # a peer with a lower stream limit, or going away, makes us move on
            slot = await self._acquire(key)
            conn = slot.conn
            assert conn is not None
            try:
                status, stream = await conn.open_stream(authority, headers)
            except StreamLimitError:
                slot.full = True
                self._release(slot)
                continue
            except StreamResetError as exc:
                self._release(slot)
                if exc.error_code != ErrorCode.REFUSED_STREAM:
                    raise
                continue  # never processed by the peer: safe on another connection
            except BaseException:
                self._release(slot)
                raise
            stream.add_done_callback(lambda s=slot: self._release(s))  # type: ignore[misc]
            return status, stream
        raise StreamLimitError(
            f"no connection to {key.destination[0]}:{key.destination[1]} accepts another stream",
            hint="the peer refuses new streams; retry later",
        )

    def connections(self, key: PoolKey) -> list[HboneClientConnection]:
        """The live connections for ``key`` (for admin dumps and tests)."""
        return [s.conn for s in self._slots.get(key, []) if s.conn is not None and not s.dead]

    def all_connections(self) -> list[HboneClientConnection]:
        """Every live pooled connection, whatever its key."""
        return [s.conn for group in self._slots.values() for s in group if s.conn is not None and not s.dead]

    def stream_counts(self, key: PoolKey) -> list[int]:
        """Streams reserved or open on each connection for ``key``."""
        return [s.streams for s in self._slots.get(key, []) if not s.dead]

    async def close(self) -> None:
        """Closes every pooled connection (GOAWAY) and forgets them."""
        slots = [s for group in self._slots.values() for s in group]
        for slot in slots:
            self._evict(slot)
            if slot.connecting is not None and not slot.connecting.done():
                slot.connecting.cancel()
        for slot in slots:
            if slot.conn is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await asyncio.shield(slot.conn.closed)

    async def _acquire(self, key: PoolKey) -> _Slot:
        limit = self.config.max_streams_per_connection
        for slot in list(self._slots.get(key, ())):
            if slot.dead or slot.full or slot.streams >= limit:
                continue
            if slot.conn is not None and not slot.conn.usable:
                self._forget(slot)  # closed or going away: it ends itself once its streams are done
                continue
            self._reserve(slot)
            if slot.conn is None:
                assert slot.connecting is not None
                try:
                    await asyncio.shield(slot.connecting)
                except BaseException:
                    self._release(slot)
                    raise
            return slot
        slot = _Slot(key)
        self._slots.setdefault(key, []).append(slot)
        self._reserve(slot)
        slot.connecting = asyncio.get_running_loop().create_task(self._connect(slot))
        slot.connecting.add_done_callback(_retrieve)
        try:
            await asyncio.shield(slot.connecting)
        except BaseException:
            self._release(slot)
            raise
        return slot

    async def _connect(self, slot: _Slot) -> HboneClientConnection:
        key = slot.key
        try:
            material = await self._certs.client_material(key.source)
            context = self._contexts.client(material)
            sock = await self._sockets.connect(key.destination, source_ip=key.source_ip)
            conn = await connect(
                sock,
                context=context,
                expected=key.expected,
                config=self.config.hbone,
                scheduler=self._scheduler,
                log=self.log,
            )
        except BaseException:
            self._evict(slot)
            raise
        self.connections_opened += 1
        slot.conn = conn
        conn.closed.add_done_callback(lambda _: self._evict(slot))
        if slot.dead:  # the pool closed meanwhile
            conn.close()
        return conn

    def _reserve(self, slot: _Slot) -> None:
        slot.streams += 1
        slot.idle_since = None
        if slot.idle_timer is not None:
            slot.idle_timer.cancel()
            slot.idle_timer = None

    def _release(self, slot: _Slot) -> None:
        slot.streams -= 1
        slot.full = False
        if slot.streams == 0 and not slot.dead:
            slot.idle_since = self._clock.monotonic()
            slot.idle_timer = self._scheduler.call_later(self.config.idle_timeout, lambda: self._idle(slot))

    def _idle(self, slot: _Slot) -> None:
        slot.idle_timer = None
        if slot.streams == 0 and not slot.dead:
            self.log.debug("hbone.pool_idle_release", **{"dst.addr": f"{slot.key.destination[0]}"})
            self._evict(slot)

    def _evict(self, slot: _Slot) -> None:
        """Forgets the slot and closes its connection (GOAWAY; streams still open end with it)."""
        self._forget(slot)
        if slot.conn is not None and not slot.conn.is_closed:
            slot.conn.close()

    def _forget(self, slot: _Slot) -> None:
        """Takes the slot out of the pool; its connection is left as it is."""
        if slot.dead:
            return
        slot.dead = True
        if slot.idle_timer is not None:
            slot.idle_timer.cancel()
            slot.idle_timer = None
        group = self._slots.get(slot.key)
        if group is not None:
            with contextlib.suppress(ValueError):
                group.remove(slot)
            if not group:
                del self._slots[slot.key]


def _retrieve(task: asyncio.Task[HboneClientConnection]) -> None:
    if not task.cancelled():
        task.exception()  # reported to the waiters; never "exception was never retrieved"
