"""Test kit for the HBONE transport: a fake-time scheduler, credentials from the test PKI, an echo
server and simple inbound handlers. Production code never imports it."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from mesh.http1 import ResponseParser
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.hbone.client import HboneClientConnection, connect
from mesh.rt.hbone.config import HboneConfig
from mesh.rt.hbone.server import HboneServer, InboundDecision, InboundHandler, InboundRequest
from mesh.rt.hbone.stream import HboneStream
from mesh.rt.net.relay import RelayEnd, reset_transport, splice
from mesh.rt.net.sockets import PlainSocketFactory
from mesh.rt.net.timers import Scheduler
from mesh.rt.tls import TlsMaterial, client_context
from mesh.testing.clock import FakeClock
from mesh.testing.pki import IssuedCert, TestPki, chain_pem

__all__ = [
    "Collector",
    "EchoProtocol",
    "FakeScheduler",
    "ForwardingHandler",
    "HboneRig",
    "TcpTunnelEntry",
    "hbone_rig",
    "StaticCertificates",
    "material_for",
    "request_over_hbone",
    "start_echo_server",
]


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeScheduler:
    """A :class:`~mesh.rt.net.timers.Scheduler` on a :class:`FakeClock`: timers fire in ``advance``."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> _FakeTimer:
        """Schedules ``callback`` at ``clock.monotonic() + delay``."""
        timer = _FakeTimer(self.clock.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> int:
        """Moves the clock forward, running each due timer at its time, in order; returns how many ran."""
        target = self.clock.monotonic() + seconds
        ran = 0
        while self._heap and self._heap[0][0] <= target:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self.clock.advance(max(0.0, when - self.clock.monotonic()))
            timer.callback()
            ran += 1
        self.clock.advance(target - self.clock.monotonic())
        return ran

    @property
    def pending(self) -> int:
        """Timers scheduled and not cancelled."""
        return sum(1 for _, _, t in self._heap if not t.cancelled)


def material_for(
    pki: TestPki,
    namespace: str = "default",
    service_account: str = "default",
    *,
    leaf: IssuedCert | None = None,
    roots_pem: bytes | None = None,
) -> TlsMaterial:
    """TLS material for ``spiffe://<td>/ns/<namespace>/sa/<service_account>`` issued by ``pki``.

    ``leaf`` overrides the certificate (e.g. a wrong SAN); ``roots_pem`` overrides the trust bundle.
    """
    uri = pki.workload_uri(namespace, service_account)
    issued = leaf or pki.issue_leaf(uri)
    return TlsMaterial(
        identity=WorkloadIdentity.parse(uri),
        key_pem=issued.key_pem,
        chain_pem=chain_pem([issued.cert]),
        roots_pem=roots_pem if roots_pem is not None else pki.root_pem,
    )


async def request_over_hbone(
    address: tuple[str, int],
    *,
    client: TlsMaterial,
    server: WorkloadIdentity,
    authority: str,
    request: bytes,
) -> tuple[int, bytes]:
    """One HBONE connection to ``address`` as ``client`` (``server`` must be the peer's identity),
    one CONNECT stream to ``authority`` carrying the raw HTTP/1.1 ``request``: the answer's status
    and body. Fails when the CONNECT is refused, the stream ends before a whole answer, or a read
    waits more than 10 s."""
    sock = await PlainSocketFactory().connect(address)
    conn = await connect(sock, context=client_context(client), expected=frozenset({server}))
    try:
        status, stream = await conn.open_stream(authority)
        assert status == 200, f"CONNECT {authority} answered {status}"
        reader = asyncio.StreamReader()
        stream.attach(asyncio.StreamReaderProtocol(reader))
        stream.write(request)
        parser = ResponseParser()
        while True:
            async with asyncio.timeout(10):
                data = await reader.read(65536)
            responses = parser.feed(data) if data else parser.finish()
            if responses:
                return responses[0].status, responses[0].body
            assert data, "the stream closed before a whole answer"
    finally:
        conn.close()


@dataclass
class StaticCertificates:
    """A :class:`~mesh.rt.hbone.pool.CertificateSource` over a fixed map; counts fetches."""

    by_identity: dict[WorkloadIdentity, TlsMaterial]
    fetches: int = 0

    async def client_material(self, identity: WorkloadIdentity) -> TlsMaterial:
        """The material for ``identity`` (KeyError if the test did not provide it)."""
        self.fetches += 1
        return self.by_identity[identity]


class EchoProtocol(asyncio.Protocol):
    """Echoes bytes back with backpressure; echoes a half-close (EOF) as a half-close."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.received += len(data)
        self.transport.write(data)

    def eof_received(self) -> bool:
        """Echoes the half-close; keeps the transport only while our own side is still open (once both
        directions ended it closes, else its socket would stay open for good)."""
        assert self.transport is not None
        if self.transport.can_write_eof():
            self.transport.write_eof()
            return False
        return True

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()


async def start_echo_server(host: str = "127.0.0.1") -> tuple[asyncio.Server, tuple[str, int]]:
    """A plain TCP echo server on an ephemeral port."""
    server = await asyncio.get_running_loop().create_server(EchoProtocol, host, 0)
    address = server.sockets[0].getsockname()
    return server, (address[0], address[1])


@dataclass
class ForwardingHandler:
    """An inbound handler that connects to the CONNECT authority (``ip:port``) and answers 200.

    ``deny`` maps client identities to a status to answer instead; every request is recorded.
    """

    deny: dict[WorkloadIdentity, int] = field(default_factory=dict)
    delay: float = 0.0
    requests: list[InboundRequest] = field(default_factory=list)
    sockets: PlainSocketFactory = field(default_factory=PlainSocketFactory)
    upstream_connects: int = 0

    async def __call__(self, request: InboundRequest) -> InboundDecision:
        """Decides one request."""
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.deny.get(request.peer_identity)
        if status is not None:
            return InboundDecision(status=status)
        host, _, port = request.authority.rpartition(":")
        self.upstream_connects += 1
        sock: socket.socket = await self.sockets.connect((host.strip("[]"), int(port)))
        return InboundDecision(status=200, upstream=sock)


class Collector(asyncio.Protocol):
    """Collects what a transport (e.g. an HBONE stream) delivers; futures for EOF and the end."""

    accepts_memoryview = True

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.paused = 0
        self._want: tuple[int, asyncio.Future[None]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self._want is not None and len(self.data) >= self._want[0] and not self._want[1].done():
            self._want[1].set_result(None)

    def eof_received(self) -> bool:
        if not self.eof.done():
            self.eof.set_result(None)
        return True

    def pause_writing(self) -> None:
        self.paused += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait_bytes(self, n: int) -> bytes:
        """Waits until at least ``n`` bytes arrived (wrap it in ``asyncio.timeout``)."""
        if len(self.data) < n:
            self._want = (n, asyncio.get_running_loop().create_future())
            await self._want[1]
        return bytes(self.data)


class _EntryEnd(RelayEnd):
    def __init__(self, entry: TcpTunnelEntry) -> None:
        super().__init__()
        self._entry = entry

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._entry.start(self)


class TcpTunnelEntry:
    """Plain TCP in, one HBONE stream per accepted connection (the outbound half of a relay pair).

    ``open_stream`` returns ``(status, stream)`` (e.g. a pool's or a connection's ``open_stream``
    bound to a key and authority); anything but 200 resets the accepted connection.
    """

    def __init__(self, open_stream: Callable[[], Awaitable[tuple[int, HboneStream]]]) -> None:
        self._open = open_stream
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.statuses: list[int] = []

    async def listen(self, host: str = "127.0.0.1") -> tuple[str, int]:
        """Starts listening on an ephemeral port."""
        self._server = await asyncio.get_running_loop().create_server(lambda: _EntryEnd(self), host, 0)
        address = self._server.sockets[0].getsockname()
        return address[0], address[1]

    def start(self, end: RelayEnd) -> None:
        """Opens the stream for one accepted connection."""
        task = asyncio.get_running_loop().create_task(self._tunnel(end))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tunnel(self, end: RelayEnd) -> None:
        try:
            status, stream = await self._open()
        except Exception:
            status, stream = 503, None
        self.statuses.append(status)
        if stream is None or status != 200:
            if end.transport is not None:
                reset_transport(end.transport)
            return
        splice(end, stream)

    async def close(self) -> None:
        """Stops listening and cancels streams still being opened."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()


@dataclass
class HboneRig:
    """A server workload (HBONE server on loopback) and a client workload, from one test PKI."""

    pki: TestPki
    server_material: TlsMaterial
    client_material: TlsMaterial
    handler: ForwardingHandler
    server: HboneServer
    address: tuple[str, int]
    echo_address: tuple[str, int]

    @property
    def echo_authority(self) -> str:
        """``ip:port`` of the echo server, the CONNECT target."""
        return f"{self.echo_address[0]}:{self.echo_address[1]}"

    async def client(
        self,
        *,
        material: TlsMaterial | None = None,
        expected: frozenset[WorkloadIdentity] | None = None,
        config: HboneConfig | None = None,
        scheduler: Scheduler | None = None,
    ) -> HboneClientConnection:
        """A client connection to the rig's server (raises what ``connect`` raises)."""
        sock = await PlainSocketFactory().connect(self.address)
        return await connect(
            sock,
            context=client_context(material or self.client_material),
            expected=expected if expected is not None else frozenset({self.server_material.identity}),
            config=config,
            scheduler=scheduler,
        )


@contextlib.asynccontextmanager
async def hbone_rig(
    *,
    config: HboneConfig | None = None,
    scheduler: Scheduler | None = None,
    handler: InboundHandler | None = None,
) -> AsyncIterator[HboneRig]:
    """Starts an echo server and an HBONE server; stops both after.

    The server forwards each CONNECT to its authority (``rig.handler``), unless ``handler`` is given.
    """
    pki = TestPki.create()
    server_material = material_for(pki, "server-ns", "server")
    client_material = material_for(pki, "client-ns", "client")
    echo, echo_address = await start_echo_server()
    forwarding = ForwardingHandler()
    rigs: list[HboneRig] = []
    server = HboneServer(
        handler or forwarding,
        credentials=lambda: rigs[0].server_material,  # assign rig.server_material to rotate
        config=config,
        scheduler=scheduler,
    )
    address = await server.listen("127.0.0.1")
    rigs.append(HboneRig(pki, server_material, client_material, forwarding, server, address, echo_address))
    try:
        yield rigs[0]
    finally:
        await server.close()
        echo.close()
