"""The HBONE server role: accepts mTLS HTTP/2 connections and hands each CONNECT to a handler.

The handler decides (policy, target checks, upstream connect) and returns an :class:`InboundDecision`:
a status and, on 200, a connected upstream socket to relay the stream to (or an in-process protocol
that takes the stream as its transport). Bytes the client sends before the decision wait on the
stream and reach the upstream only after the 200 is sent (no early-data leak on a denial).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mesh.errors import MeshError
from mesh.h2.errors import ErrorCode, H2ProtocolError
from mesh.h2.events import ConnectRequest
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.hbone._log import EventLog, default_log
from mesh.rt.hbone.config import HboneConfig
from mesh.rt.hbone.connection import HboneConnection
from mesh.rt.hbone.stream import HboneStream
from mesh.rt.net.relay import RelayEnd, splice
from mesh.rt.net.sockets import set_keepalive, set_stream_carrier_timers
from mesh.rt.net.timers import LoopScheduler, Scheduler
from mesh.rt.tls import ContextCache, TlsMaterial, verify_client_peer

__all__ = ["HboneServer", "HboneServerConnection", "InboundDecision", "InboundHandler", "InboundRequest"]


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """A CONNECT request with what the handler needs to decide on it."""

    authority: str
    headers: tuple[tuple[str, str], ...]
    peer_identity: WorkloadIdentity
    """The client's verified SPIFFE identity (never taken from headers)."""
    peer_address: tuple[str, int]
    local_address: tuple[str, int]
    """Where the TLS connection landed: the authority's IP must match it (else 400)."""
    stream_id: int


@dataclass(frozen=True, slots=True)
class InboundDecision:
    """The handler's answer: a status, response headers, and on 200 where the bytes go."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    upstream: socket.socket | None = field(default=None, compare=False)
    """A connected, non-blocking TCP socket to relay the stream to."""
    protocol: asyncio.Protocol | None = field(default=None, compare=False)
    """Or a protocol that takes the stream itself as its transport (e.g. the waypoint's HTTP codec)."""


InboundHandler = Callable[[InboundRequest], Awaitable[InboundDecision]]


class HboneServerConnection(HboneConnection):
    """Server role: a client in our trust domain; each CONNECT runs ``handler`` in its own task."""

    client_side = False

    def __init__(
        self,
        *,
        handler: InboundHandler,
        trust_domain: str,
        config: HboneConfig | None = None,
        scheduler: Scheduler | None = None,
        log: EventLog | None = None,
    ) -> None:
        super().__init__(config=config, scheduler=scheduler, log=log)
        self._handler = handler
        self._trust_domain = trust_domain
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def verify_peer(self, ssl_object: ssl.SSLObject) -> WorkloadIdentity:
        """The client must chain to our roots and be in our trust domain."""
        return verify_client_peer(ssl_object, trust_domain=self._trust_domain)

    def on_connect_request(self, event: ConnectRequest) -> None:
        """Opens the stream (holding early bytes) and starts the handler."""
        transport = self.transport
        assert transport is not None and self.peer_identity is not None
        if self.going_away:
            self.reset_stream(event.stream_id, ErrorCode.REFUSED_STREAM)
            return
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        stream = HboneStream(
            self,
            event.stream_id,
            extra={
                "authority": event.authority,
                "peer_identity": self.peer_identity,
                "peername": peer,
                "sockname": local,
            },
        )
        self.streams[event.stream_id] = stream
        request = InboundRequest(
            authority=event.authority,
            headers=event.headers,
            peer_identity=self.peer_identity,
            peer_address=(peer[0], peer[1]),
            local_address=(local[0], local[1]),
            stream_id=event.stream_id,
        )
        task = asyncio.get_running_loop().create_task(self._serve(stream, request))
        self._tasks[event.stream_id] = task

    def on_stream_finished(self, stream: HboneStream) -> None:
        """A stream reset while its handler runs cancels the handler."""
        task = self._tasks.pop(stream.stream_id, None)
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()

    async def _serve(self, stream: HboneStream, request: InboundRequest) -> None:
        try:
            decision = await self._handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.warning("hbone.handler_failed", error=repr(exc), authority=request.authority)
            decision = InboundDecision(status=503)
        upstream_end: RelayEnd | None = None
        if decision.status == 200 and decision.upstream is not None:
            upstream_end = await self._wrap_upstream(decision.upstream)
            if upstream_end is None:
                decision = InboundDecision(status=503)
        self._tasks.pop(request.stream_id, None)
        if stream.is_closing():  # reset while we were deciding
            if upstream_end is not None and upstream_end.transport is not None:
                upstream_end.transport.abort()
            return
        self._answer(stream, decision, upstream_end)

    async def _wrap_upstream(self, sock: socket.socket) -> RelayEnd | None:
        loop = asyncio.get_running_loop()
        try:
            _, end = await loop.create_connection(RelayEnd, sock=sock)
        except OSError as exc:
            sock.close()
            self.log.warning("hbone.upstream_failed", error=str(exc))
            return None
        return end

    def _answer(self, stream: HboneStream, decision: InboundDecision, upstream_end: RelayEnd | None) -> None:
        ok = decision.status == 200 and (upstream_end is not None or decision.protocol is not None)
        try:
            self.h2.send_response(
                stream.stream_id,
                decision.status if ok else _refusal(decision),
                decision.headers,
                end_stream=not ok,
            )
        except H2ProtocolError:
            if upstream_end is not None and upstream_end.transport is not None:
                upstream_end.transport.abort()
            return
        if not ok:
            stream.refuse()  # drops what the client sent early; it never reaches anyone
        elif upstream_end is not None:
            splice(upstream_end, stream)
        elif decision.protocol is not None:
            stream.attach(decision.protocol)
        self.flush_soon()  # answers decided in the same loop pass share one TLS write

    def connection_lost(self, exc: BaseException | None) -> None:
        """Stops every handler still deciding."""
        super().connection_lost(exc)
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()


def _refusal(decision: InboundDecision) -> int:
    return 503 if decision.status == 200 else decision.status


class HboneServer:
    """Accepts HBONE connections on a listening socket with the current credentials.

    ``credentials`` is called per accepted connection, so rotated certificates or roots apply to new
    connections at once (each distinct material gets a fresh context: no resumption across changes).
    """

    def __init__(
        self,
        handler: InboundHandler,
        *,
        credentials: Callable[[], TlsMaterial],
        config: HboneConfig | None = None,
        scheduler: Scheduler | None = None,
        log: EventLog | None = None,
    ) -> None:
        self._handler = handler
        self._credentials = credentials
        self.config = config or HboneConfig()
        self._scheduler = scheduler or LoopScheduler()
        self.log = log or default_log()
        self._contexts = ContextCache(capacity=4)
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self.connections: set[HboneServerConnection] = set()
        self.handshake_failures = 0
        """TLS handshakes that failed or timed out."""
        self.peer_rejections = 0
        """Handshakes that succeeded with a client we then refused (identity, trust domain, ALPN)."""

    @property
    def address(self) -> tuple[str, int]:
        """The listening address (useful after binding port 0)."""
        assert self._listener is not None, "start the server first"
        host, port = self._listener.getsockname()[:2]
        return host, port

    async def listen(self, host: str, port: int = 0, *, backlog: int = 1024) -> tuple[str, int]:
        """Binds, listens and starts accepting; returns the bound address."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        set_keepalive(sock)  # accepted sockets inherit it
        try:
            sock.bind((host, port))
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        self.start(sock)
        return self.address

    def start(self, listener: socket.socket) -> None:
        """Starts accepting on an already listening socket (e.g. one opened inside a pod netns)."""
        listener.setblocking(False)
        self._listener = listener
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop(listener))

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:
                self.log.warning("hbone.accept_failed", error=str(exc))
                await asyncio.sleep(0.05)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_stream_carrier_timers(sock)
            task = loop.create_task(self._handshake(sock))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn: HboneServerConnection | None = None

        def factory() -> HboneServerConnection:
            nonlocal conn
            conn = self._new_connection(material.identity.trust_domain)
            return conn

        try:
            material = self._credentials()
            context = self._contexts.server(material)
            await loop.connect_accepted_socket(
                factory,
                sock,
                ssl=context,
                ssl_handshake_timeout=self.config.handshake_timeout,
                ssl_shutdown_timeout=self.config.close_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, MeshError) as exc:  # MeshError: no
            sock.close()  # valid certificate to present (fail closed)
            if conn is not None:  # made for the handshake, never connected: it would stay tracked
                self.connections.discard(conn)
            self.handshake_failures += 1
            self.log.debug("hbone.handshake_failed", error=repr(exc))

    def _new_connection(self, trust_domain: str) -> HboneServerConnection:
        conn = HboneServerConnection(
            handler=self._handler,
            trust_domain=trust_domain,
            config=self.config,
            scheduler=self._scheduler,
            log=self.log,
        )
        self.connections.add(conn)
        conn.closed.add_done_callback(lambda _: self.connections.discard(conn))
        conn.ready.add_done_callback(self._count_rejection)
        return conn

    def _count_rejection(self, ready: asyncio.Future[None]) -> None:
        if ready.cancelled() or ready.exception() is not None:
            self.peer_rejections += 1

    def stop_accepting(self) -> None:
        """Closes the listener: new connections are refused from now on."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
        for task in self._handshakes:
            task.cancel()

    async def drain(self, *, deadline: float) -> int:
        """Stops accepting, sends GOAWAY everywhere, lets streams finish until ``deadline`` seconds.

        Returns the number of streams that were still open at the deadline and got closed.
        """
        self.stop_accepting()
        results = await asyncio.gather(*(c.drain(deadline=deadline) for c in list(self.connections)))
        return sum(results)

    async def close(self) -> None:
        """Stops accepting and drops every connection now."""
        self.stop_accepting()
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
        if conns:  # one second for all of them together, not one each
            await asyncio.wait([c.closed for c in conns], timeout=1.0)  # wait() cancels nothing
