"""HBONE connection lifecycle: keepalive on a fake clock, GOAWAY and graceful drain with a deadline."""

from __future__ import annotations

import asyncio
import os

import pytest

from mesh.rt.hbone import HboneStream, KeepaliveTimeoutError
from mesh.rt.net.sockets import ConnectError, PlainSocketFactory
from mesh.testing.clock import FakeClock
from mesh.testing.hbone import Collector, FakeScheduler, hbone_rig
from mesh.testing.polling import wait_until


async def _attach(stream: HboneStream) -> Collector:
    collector = Collector()
    stream.attach(collector)
    return collector


async def test_keepalive_pings_a_live_peer_and_keeps_the_connection() -> None:
    scheduler = FakeScheduler(FakeClock())
    async with hbone_rig() as rig:
        conn = await rig.client(scheduler=scheduler)
        for round_trip in range(1, 4):
            scheduler.advance(10)  # a PING goes out
            assert conn.keepalive.sent == round_trip
            async with asyncio.timeout(5):
                await wait_until(
                    lambda: conn.keepalive.outstanding is None, within=None
                )  # answered over the wire
            scheduler.advance(19.9)  # the timeout was cancelled by the answer
        assert not conn.is_closed
        conn.close()


async def test_keepalive_detects_a_dead_peer_and_ends_its_streams() -> None:
    scheduler = FakeScheduler(FakeClock())
    async with hbone_rig() as rig:
        conn = await rig.client(scheduler=scheduler)
        status, stream = await conn.open_stream(rig.echo_authority)
        assert status == 200
        collector = await _attach(stream)
        (server_conn,) = rig.server.connections
        assert server_conn.transport is not None
        server_conn.transport.pause_reading()  # the peer stops answering (a partition)
        scheduler.advance(10)
        assert conn.keepalive.outstanding is not None
        await asyncio.sleep(0.05)
        scheduler.advance(19.9)
        assert not conn.is_closed  # not yet: 20 s without an answer are needed
        scheduler.advance(0.2)
        async with asyncio.timeout(2):
            await conn.closed
            error = await collector.lost
        assert isinstance(error, KeepaliveTimeoutError)
        assert not conn.usable


async def test_drain_sends_goaway_refuses_new_connections_and_lets_streams_finish() -> None:
    async with hbone_rig() as rig:
        conn = await rig.client()
        status, stream = await conn.open_stream(rig.echo_authority)
        assert status == 200
        collector = await _attach(stream)
        drain = asyncio.create_task(rig.server.drain(deadline=30))
        await wait_until(lambda: conn.going_away, within=5)  # GOAWAY received
        assert not conn.usable
        with pytest.raises(ConnectError):
            await PlainSocketFactory(connect_timeout=1).connect(rig.address)  # the listener is closed
        payload = os.urandom(300_000)
        stream.write(payload)  # the open stream still works during the drain
        stream.write_eof()
        async with asyncio.timeout(5):
            await collector.eof
            assert await drain == 0  # finished early: nothing was left open
            await conn.closed  # the client closes an idle connection after GOAWAY
        assert bytes(collector.data) == payload
        assert rig.server.connections == set()  # drain returns once the connections are gone


async def test_drain_closes_what_is_left_at_the_deadline() -> None:
    scheduler = FakeScheduler(FakeClock())
    async with hbone_rig(scheduler=scheduler) as rig:
        conn = await rig.client()
        streams = [await conn.open_stream(rig.echo_authority) for _ in range(3)]
        collectors = [await _attach(stream) for _, stream in streams]
        drain = asyncio.create_task(rig.server.drain(deadline=5))
        await wait_until(lambda: conn.going_away, within=5)
        assert not drain.done()
        scheduler.advance(5)
        async with asyncio.timeout(5):
            assert await drain == 3
            for collector in collectors:
                assert await collector.lost is not None
            await conn.closed


async def test_client_stream_refused_after_goaway_opens_nothing() -> None:
    async with hbone_rig() as rig:
        conn = await rig.client()
        (server_conn,) = rig.server.connections
        server_conn.h2.close()  # graceful GOAWAY from the server
        server_conn.flush()
        async with asyncio.timeout(5):
            await wait_until(lambda: conn.going_away, within=None)
            await conn.closed  # no streams: the client lets the connection go
        assert rig.handler.requests == []


async def test_an_idle_connection_gives_its_bulk_read_buffers_back_and_grows_them_when_busy() -> None:
    scheduler = FakeScheduler(FakeClock())
    async with hbone_rig() as rig:
        conn = await rig.client(scheduler=scheduler)
        payload = os.urandom(4 * 1024 * 1024)
        for _ in range(2):  # busy, idle for a keepalive interval, busy again
            status, stream = await conn.open_stream(rig.echo_authority)
            assert status == 200
            collector = await _attach(stream)
            stream.write(payload)
            stream.write_eof()
            async with asyncio.timeout(10):
                await collector.eof
            assert bytes(collector.data) == payload
            assert conn.read_buffer_bytes >= 256 * 1024, "bulk reads use the full-size buffer"
            await wait_until(lambda: not conn.streams, within=5)
            scheduler.advance(10)  # a keepalive interval without streams
            assert conn.read_buffer_bytes == 4096
            async with asyncio.timeout(5):
                await wait_until(
                    lambda: conn.keepalive.outstanding is None, within=None
                )  # the PING answer fits
        conn.close()
