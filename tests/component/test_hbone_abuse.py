"""Peers that misbehave at the transport level: a PING flood from a peer that never reads (catalogue
16), more streams than allowed (17), memory bounds when many streams stop reading, and the
retransmission timers that bound how long a lost segment stalls every stream of a connection."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from mesh.h2.config import H2Config
from mesh.rt.hbone import HboneConfig, HboneServer, StreamLimitError, connect
from mesh.rt.tls import client_context
from mesh.testing.hbone import Collector, ForwardingHandler, hbone_rig, material_for
from mesh.testing.pki import TestPki
from mesh.testing.polling import wait_until

MiB = 1024 * 1024


def _ping(n: int) -> bytes:
    return struct.pack(">BHBBL", 0, 8, 0x6, 0, 0) + n.to_bytes(8, "big")


async def test_a_peer_that_floods_pings_and_never_reads_is_cut_off() -> None:
    pki = TestPki.create()
    server_material, client_material = material_for(pki, "s", "server"), material_for(pki, "c", "client")
    config = HboneConfig(h2=H2Config(max_outbound_control_frames=2000))
    server = HboneServer(ForwardingHandler(), credentials=lambda: server_material, config=config)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # accepted sockets inherit it
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server.start(listener)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, listener.getsockname())
    conn = await connect(
        sock, context=client_context(client_material), expected=frozenset({server_material.identity})
    )
    assert conn.transport is not None
    conn.transport.pause_reading()  # from now on the client never reads
    (server_conn,) = server.connections
    peak = 0
    async with asyncio.timeout(20):
        for batch in range(400):
            if server_conn.is_closed:
                break
            conn.transport.write(b"".join(_ping(batch * 500 + i) for i in range(500)))
            await asyncio.sleep(0.001)
            if server_conn.transport is not None:
                peak = max(peak, server_conn.transport.get_write_buffer_size())
        await server_conn.closed
    assert server_conn.h2.terminated  # ENHANCE_YOUR_CALM: the peer does not read what it provokes
    assert peak <= 2 * MiB, f"the server buffered {peak} bytes for a peer that does not read"
    conn.abort()
    await server.close()


async def test_streams_beyond_the_limit_are_refused_and_never_reach_upstream() -> None:
    async with hbone_rig() as rig:
        conn = await rig.client()
        rig.handler.delay = 0.3  # keep the first streams open while the rest arrive
        limit = conn.h2.remote_max_concurrent_streams  # the server's SETTINGS (200, as ztunnel's)
        results = await asyncio.gather(
            *(conn.open_stream(rig.echo_authority) for _ in range(limit + 30)), return_exceptions=True
        )
        opened = [r for r in results if isinstance(r, tuple)]
        refused = [r for r in results if isinstance(r, StreamLimitError)]
        assert limit == 200 and len(opened) == limit and len(refused) == 30
        assert rig.handler.upstream_connects == limit
        conn.close()


async def test_paused_streams_past_the_read_cap_pause_the_whole_connection() -> None:
    config = HboneConfig(read_buffer_cap=2 * MiB)
    async with hbone_rig(config=config) as rig:
        conn = await rig.client(config=config)
        payload = os.urandom(3 * MiB)
        collectors = []
        for _ in range(2):
            status, stream = await conn.open_stream(rig.echo_authority)
            assert status == 200
            collector = Collector()
            stream.pause_reading()  # the client reads nothing on either stream
            stream.attach(collector)
            collectors.append((stream, collector))
        for stream, _ in collectors:  # both echo 3 MiB back: 6 MiB arrive for paused streams
            stream.write(payload)
        async with asyncio.timeout(10):
            await wait_until(
                lambda: conn._read_paused, within=None
            )  # more than 2 MiB held: TLS reading stops
        assert conn.buffered_bytes <= 2 * MiB + 512 * 1024  # one read past the cap at most
        for stream, _ in collectors:
            stream.resume_reading()
        async with asyncio.timeout(10):
            for _, collector in collectors:
                await collector.wait_bytes(len(payload))
        assert all(bytes(c.data) == payload for _, c in collectors)
        assert not conn._read_paused
        conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
async def test_socket_factory_marks_its_sockets() -> None:
    from mesh.ports import MESH_MARK  # noqa: PLC0415
    from mesh.rt.net.sockets import PlainSocketFactory  # noqa: PLC0415

    async with hbone_rig() as rig:
        sock = await PlainSocketFactory(mark=MESH_MARK).connect(rig.echo_address)
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x539
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            sock.close()


def _carrier_timers(sock: socket.socket) -> tuple[int, int]:
    """(minimum retransmission timeout in µs, linear timeouts on) as the kernel holds them."""
    return sock.getsockopt(socket.IPPROTO_TCP, 45), sock.getsockopt(socket.IPPROTO_TCP, 16)


async def test_both_ends_of_an_hbone_connection_retransmit_early() -> None:
    """One lost segment stalls every stream on the connection until it is retransmitted: both ends
    wait at least 50 ms (not Linux's 200 ms) and do not double the first retries' timeouts."""
    probe = socket.socket()
    default_rto_min = _carrier_timers(probe)[0]
    probe.close()
    async with hbone_rig() as rig:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, rig.address)
        conn = await connect(
            sock,
            context=client_context(rig.client_material),
            expected=frozenset({rig.server_material.identity}),
        )
        try:
            await wait_until(lambda: bool(rig.server.connections), within=5)
            (server_conn,) = rig.server.connections
            assert server_conn.transport is not None and conn.transport is not None
            for end in (conn.transport, server_conn.transport):
                rto_min, linear = _carrier_timers(end.get_extra_info("socket"))
                assert 50_000 <= rto_min < 60_000 < default_rto_min  # jiffies round it up
                assert linear == 1
        finally:
            conn.close()
