"""Our HBONE client against our HBONE server on loopback: bytes, half-close, resets, backpressure."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from typing import cast

import pytest

from mesh.h2.errors import ErrorCode
from mesh.rt.hbone import HboneStream, InboundDecision, InboundRequest, StreamResetError
from mesh.rt.net.relay import RelayEnd
from mesh.testing.hbone import Collector, EchoProtocol, TcpTunnelEntry, hbone_rig
from mesh.testing.polling import wait_until

MiB = 1024 * 1024


async def _echo_once(stream: HboneStream, payload: bytes) -> bytes:
    collector = Collector()
    stream.attach(collector)
    for i in range(0, len(payload), 65536):
        stream.write(payload[i : i + 65536])
    stream.write_eof()
    await collector.eof
    await collector.lost
    return bytes(collector.data)


async def test_many_concurrent_streams_echo_byte_exact() -> None:
    async with hbone_rig() as rig:
        conn = await rig.client()
        payloads = [os.urandom(50_000 + 7919 * i) for i in range(60)]

        async def one(payload: bytes) -> bytes:
            status, stream = await conn.open_stream(rig.echo_authority)
            assert status == 200
            return await _echo_once(stream, payload)

        async with asyncio.timeout(20):
            echoed = await asyncio.gather(*(one(p) for p in payloads))
        assert echoed == payloads
        assert conn.streams == {}
        assert len(rig.server.connections) == 1
        conn.close()


async def test_short_streams_give_their_whole_window_back() -> None:
    """600 streams of 31 KiB each way: below the ack batch, so only the release at stream end returns
    their window. A leak would exhaust the 16 MiB connection window after ~520 streams and stall."""
    async with hbone_rig() as rig:
        conn = await rig.client()
        payload = os.urandom(31 * 1024)

        async def one() -> bytes:
            status, stream = await conn.open_stream(rig.echo_authority)
            assert status == 200
            return await _echo_once(stream, payload)

        async with asyncio.timeout(20):  # about 1 s when the window comes back
            for _ in range(30):
                assert await asyncio.gather(*(one() for _ in range(20))) == [payload] * 20
        conn.close()


async def test_request_headers_and_peer_identity_reach_the_handler() -> None:
    async with hbone_rig() as rig:
        conn = await rig.client()
        status, stream = await conn.open_stream(rig.echo_authority, (("baggage", "k8s.namespace.name=a"),))
        stream.abort()
        assert status == 200
        request = rig.handler.requests[0]
        assert request.authority == rig.echo_authority
        assert request.headers == (("baggage", "k8s.namespace.name=a"),)
        assert request.peer_identity == rig.client_material.identity
        assert request.local_address == rig.address
        conn.close()


class _HalfCloseServer(asyncio.Protocol):
    """Reads until EOF, then answers with what it got and closes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        assert self.transport is not None
        self.transport.write(b"got:" + self.data)
        self.transport.close()
        return True


async def test_half_close_travels_both_ways() -> None:
    async with hbone_rig() as rig:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_HalfCloseServer, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        conn = await rig.client()
        status, stream = await conn.open_stream(f"{host}:{port}")
        assert status == 200
        collector = Collector()
        stream.attach(collector)
        stream.write(b"hello")
        stream.write_eof()  # END_STREAM -> upstream sees EOF, still able to answer
        async with asyncio.timeout(5):
            await collector.eof
            assert await collector.lost is None
        assert bytes(collector.data) == b"got:hello"
        server.close()
        conn.close()


async def test_tcp_client_half_close_through_a_tunnel_entry() -> None:
    async with hbone_rig() as rig:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_HalfCloseServer, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        conn = await rig.client()
        entry = TcpTunnelEntry(lambda: conn.open_stream(f"{host}:{port}"))
        entry_address = await entry.listen()
        reader, writer = await asyncio.open_connection(*entry_address)
        writer.write(b"x" * 100_000)
        writer.write_eof()
        async with asyncio.timeout(5):
            answer = await reader.read()  # until EOF
        assert answer == b"got:" + b"x" * 100_000
        writer.close()
        await entry.close()
        server.close()
        conn.close()


async def test_denied_request_leaks_no_early_data_upstream() -> None:
    async with hbone_rig() as rig:
        rig.handler.deny[rig.client_material.identity] = 401
        rig.handler.delay = 0.05  # early DATA arrives while the handler decides
        conn = await rig.client()
        stream_id = conn.h2.send_connect(rig.echo_authority)
        # CONNECT followed at once by 64 KiB of DATA, before any response
        stream = HboneStream(conn, stream_id, extra={})
        conn.streams[stream_id] = stream
        waiter: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        conn._pending[stream_id] = waiter  # type: ignore[assignment]
        conn.h2._streams[stream_id].headers_sent = True  # let the engine send DATA before the response
        stream.write(os.urandom(65536))
        async with asyncio.timeout(5):
            response = await waiter
        assert response.status == 401  # type: ignore[attr-defined]
        assert rig.handler.upstream_connects == 0
        conn.close()


async def test_handler_failure_answers_503() -> None:
    async with hbone_rig() as rig:
        conn = await rig.client()
        status, _ = await conn.open_stream("127.0.0.1:1")  # nothing listens on port 1: connect fails
        assert status == 503
        status, stream = await conn.open_stream(rig.echo_authority)  # the connection lives on
        assert status == 200
        assert await _echo_once(stream, b"still fine") == b"still fine"
        conn.close()


class _Upstream(asyncio.Protocol):
    def __init__(self, registry: list[_Upstream]) -> None:
        registry.append(self)
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


async def test_stream_protocol_error_closes_the_upstream_at_once() -> None:
    """MadeYouReset: a stream error the engine answers with RST_STREAM must close the upstream socket."""
    async with hbone_rig() as rig:
        upstreams: list[_Upstream] = []
        server = await asyncio.get_running_loop().create_server(lambda: _Upstream(upstreams), "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        conn = await rig.client()
        status, stream = await conn.open_stream(f"{host}:{port}")
        assert status == 200
        stream.attach(Collector())
        stream.write(b"abc")
        await wait_until(lambda: upstreams and upstreams[0].data == b"abc", within=5)
        # WINDOW_UPDATE with increment 0 on the stream: a stream error (RFC 9113 section 6.9)
        assert conn.transport is not None
        conn.transport.write(struct.pack(">BHBBLL", 0, 4, 0x8, 0, stream.stream_id, 0))
        async with asyncio.timeout(1):
            await upstreams[0].lost
            error = await stream_lost(stream)
        assert isinstance(error, StreamResetError)
        assert error.error_code == ErrorCode.PROTOCOL_ERROR
        server.close()
        conn.close()


async def stream_lost(stream: HboneStream) -> BaseException | None:
    protocol = stream.get_protocol()
    assert isinstance(protocol, Collector)
    return await protocol.lost


async def test_tcp_reset_becomes_connect_error_and_back() -> None:
    async with hbone_rig() as rig:
        upstreams: list[_Upstream] = []
        server = await asyncio.get_running_loop().create_server(lambda: _Upstream(upstreams), "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        conn = await rig.client()
        entry = TcpTunnelEntry(lambda: conn.open_stream(f"{host}:{port}"))
        entry_address = await entry.listen()
        client = socket.create_connection(entry_address)
        client.sendall(b"ping")
        await wait_until(lambda: upstreams and upstreams[0].data == b"ping", within=5)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        async with asyncio.timeout(2):
            error = await upstreams[0].lost
        assert isinstance(error, ConnectionResetError)  # RST_STREAM CONNECT_ERROR -> RST upstream
        await entry.close()
        server.close()
        conn.close()


class _Sink(asyncio.Protocol):
    """An upstream that does not read until told to; hashes what it eventually reads."""

    def __init__(self, registry: list[_Sink]) -> None:
        registry.append(self)
        self.transport: asyncio.Transport | None = None
        self.hash = hashlib.sha256()
        self.count = 0
        self.eof: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return False


async def _write_until_paused(stream: HboneStream, collector: Collector, chunk: bytes, *, limit: int) -> int:
    written = 0
    while written < limit and collector.paused == 0:
        stream.write(chunk)
        written += len(chunk)
        await asyncio.sleep(0)
    return written


async def test_slow_upstream_pauses_the_sender_and_bounds_memory() -> None:
    async with hbone_rig() as rig:
        sinks: list[_Sink] = []
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        listener.bind(("127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(lambda: _Sink(sinks), sock=listener)
        host, port = listener.getsockname()[:2]
        conn = await rig.client()
        status, stream = await conn.open_stream(f"{host}:{port}")
        assert status == 200
        collector = Collector()
        stream.attach(collector)
        chunk = os.urandom(256 * 1024)
        async with asyncio.timeout(10):
            written = await _write_until_paused(stream, collector, chunk, limit=64 * MiB)
        assert collector.paused == 1, "the sender was never paused"
        await asyncio.sleep(0.3)  # let everything in flight settle
        (server_conn,) = rig.server.connections
        (server_stream,) = server_conn.streams.values()
        upstream = server_stream.get_protocol()
        assert isinstance(upstream, RelayEnd) and upstream.peer is not None
        upstream_buffer = upstream.peer.transport.get_write_buffer_size()  # type: ignore[union-attr]
        # memory held by the server for this tunnel: at most one stream window plus one write chunk
        assert server_conn.buffered_bytes + upstream_buffer <= 4 * MiB + 512 * 1024
        assert written <= 12 * MiB, f"{written} bytes accepted before backpressure"
        # the reader wakes up: everything arrives, in order
        sinks[0].transport.resume_reading()  # type: ignore[union-attr]
        expected = hashlib.sha256(chunk * (written // len(chunk)))
        async with asyncio.timeout(10):
            await wait_until(lambda: not stream.get_write_buffer_size(), within=None)
            stream.write_eof()
            await sinks[0].eof
        assert sinks[0].count == written
        assert sinks[0].hash.digest() == expected.digest()
        server.close()
        conn.close()


class _Source(asyncio.Protocol):
    """An upstream that sends ``total`` bytes as fast as it is allowed, then closes."""

    def __init__(self, total: int, chunk: bytes) -> None:
        self.total, self.chunk = total, chunk
        self.sent = 0
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._pump()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        assert self.transport is not None
        while not self.paused and self.sent < self.total:
            self.transport.write(self.chunk)
            self.sent += len(self.chunk)
        if self.sent >= self.total:
            self.transport.close()


async def test_paused_client_reader_stops_the_upstream() -> None:
    chunk = os.urandom(64 * 1024)
    total = 48 * MiB
    async with hbone_rig() as rig:
        sources: list[_Source] = []

        def make() -> _Source:
            sources.append(_Source(total, chunk))
            return sources[-1]

        server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        conn = await rig.client()
        status, stream = await conn.open_stream(f"{host}:{port}")
        assert status == 200
        collector = Collector()
        stream.pause_reading()  # before attaching: not even bytes that came with the 200 are delivered
        stream.attach(collector)
        await asyncio.sleep(0.5)
        assert not collector.data  # nothing is delivered while paused
        assert 0 < conn.buffered_bytes <= 4 * MiB  # held here, one stream window at most
        assert sources[0].sent < total // 2, "the upstream was not slowed down"
        stream.resume_reading()
        async with asyncio.timeout(20):
            await collector.eof
        assert len(collector.data) == total
        assert bytes(collector.data) == chunk * (total // len(chunk))
        server.close()
        conn.close()


async def test_an_in_process_protocol_can_take_the_stream_as_its_transport() -> None:
    """The waypoint's way in: no upstream socket, the handler's protocol reads and writes the stream."""

    async def handler(request: InboundRequest) -> InboundDecision:
        return InboundDecision(status=200, headers=(("baggage", "k8s.pod.name=b"),), protocol=EchoProtocol())

    async with hbone_rig(handler=handler) as rig:
        conn = await rig.client()
        status, stream = await conn.open_stream(rig.echo_authority)
        assert status == 200
        assert stream.response_headers == (("baggage", "k8s.pod.name=b"),)
        payload = os.urandom(2 * MiB)
        async with asyncio.timeout(10):
            assert await _echo_once(stream, payload) == payload  # half-close echoed as END_STREAM
        conn.close()


@pytest.mark.parametrize("status", [400, 401, 503])
async def test_refusal_statuses_reach_the_client(status: int) -> None:
    async def handler(request: InboundRequest) -> InboundDecision:
        return InboundDecision(status=status)

    async with hbone_rig(handler=handler) as rig:
        conn = await rig.client()
        got, stream = await conn.open_stream(rig.echo_authority)
        assert got == status
        assert stream.is_closing()
        conn.close()
