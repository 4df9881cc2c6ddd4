"""The HBONE pool against our server: reuse, the stream limit, idle release, dead-connection eviction,
a draining peer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest

from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.hbone import HbonePool, HboneStream, PoolConfig, PoolKey
from mesh.rt.net.sockets import PlainSocketFactory
from mesh.rt.tls import PeerRejectedError
from mesh.testing.clock import FakeClock
from mesh.testing.hbone import (
    Collector,
    FakeScheduler,
    HboneRig,
    StaticCertificates,
    hbone_rig,
    material_for,
)
from mesh.testing.polling import wait_until


@dataclass
class PoolRig:
    rig: HboneRig
    pool: HbonePool
    scheduler: FakeScheduler
    certs: StaticCertificates
    key: PoolKey

    async def echo(self, key: PoolKey | None = None) -> tuple[HboneStream, Collector]:
        status, stream = await self.pool.open_stream(key or self.key, self.rig.echo_authority)
        assert status == 200
        collector = Collector()
        stream.attach(collector)
        return stream, collector


@asynccontextmanager
async def pool_rig(*, max_streams: int = 100) -> AsyncIterator[PoolRig]:
    clock = FakeClock()
    scheduler = FakeScheduler(clock)
    async with hbone_rig() as rig:
        certs = StaticCertificates({rig.client_material.identity: rig.client_material})
        pool = HbonePool(
            sockets=PlainSocketFactory(),
            certs=certs,
            clock=clock,
            scheduler=scheduler,
            config=PoolConfig(max_streams_per_connection=max_streams),
        )
        key = PoolKey(
            source=rig.client_material.identity,
            source_ip="127.0.0.1",
            destination=rig.address,
            expected=frozenset({rig.server_material.identity}),
        )
        try:
            yield PoolRig(rig, pool, scheduler, certs, key)
        finally:
            await pool.close()


async def _finish(stream: HboneStream, collector: Collector) -> None:
    stream.write(b"bye")
    stream.write_eof()
    async with asyncio.timeout(5):
        await collector.lost
    assert bytes(collector.data) == b"bye"


async def test_streams_for_one_key_share_one_connection() -> None:
    async with pool_rig() as p:
        for _ in range(5):
            await _finish(*await p.echo())
        opened = await asyncio.gather(*(p.echo() for _ in range(20)))
        assert p.pool.connections_opened == 1
        assert p.pool.stream_counts(p.key) == [20]
        await asyncio.gather(*(_finish(s, c) for s, c in opened))
        assert p.pool.stream_counts(p.key) == [0]


async def test_concurrent_first_requests_share_the_connection_being_set_up() -> None:
    async with pool_rig() as p:
        opened = await asyncio.gather(*(p.echo() for _ in range(30)))
        assert p.pool.connections_opened == 1
        assert p.certs.fetches == 1
        assert len(p.rig.server.connections) == 1
        await asyncio.gather(*(_finish(s, c) for s, c in opened))


async def test_a_connection_at_the_stream_limit_makes_the_next_stream_open_a_new_one() -> None:
    async with pool_rig(max_streams=3) as p:
        opened = [await p.echo() for _ in range(7)]
        assert p.pool.connections_opened == 3
        assert p.pool.stream_counts(p.key) == [3, 3, 1]
        await _finish(*opened[0])  # a slot frees up on the first connection
        await p.echo()
        assert p.pool.connections_opened == 3
        assert p.pool.stream_counts(p.key) == [3, 3, 1]


async def test_different_source_identities_never_share_a_connection() -> None:
    async with pool_rig() as p:
        other_material = material_for(p.rig.pki, "client-ns", "other")
        p.certs.by_identity[other_material.identity] = other_material
        other_key = replace(p.key, source=other_material.identity)
        await p.echo()
        await p.echo(other_key)
        assert p.pool.connections_opened == 2
        clients = {c.peer_identity for c in p.rig.server.connections}
        assert clients == {p.rig.client_material.identity, other_material.identity}


async def _advance(p: PoolRig, seconds: float) -> None:
    """Moves fake time in 5 s steps and lets keepalive PINGs be answered over the wire in between."""
    for _ in range(int(seconds // 5)):
        p.scheduler.advance(5)
        await wait_until(
            lambda: all(c.keepalive.outstanding is None for c in p.pool.connections(p.key)), within=5
        )
    p.scheduler.advance(seconds % 5)


async def test_idle_connection_is_released_after_five_minutes() -> None:
    async with pool_rig() as p:
        await _finish(*await p.echo())
        (conn,) = p.pool.connections(p.key)
        await _advance(p, 299)
        assert not conn.is_closed
        stream, collector = await p.echo()  # in use again: the idle clock restarts
        await _finish(stream, collector)
        await _advance(p, 299)
        assert not conn.is_closed
        await _advance(p, 2)
        assert conn.is_closed
        assert p.pool.connections(p.key) == []
        async with asyncio.timeout(5):
            await conn.closed
            await wait_until(lambda: not p.rig.server.connections)  # GOAWAY + close reached the server
        await _finish(*await p.echo())
        assert p.pool.connections_opened == 2


async def test_a_dead_connection_is_evicted_and_the_next_stream_uses_a_fresh_one() -> None:
    async with pool_rig() as p:
        _, collector = await p.echo()
        (conn,) = p.pool.connections(p.key)
        for server_conn in list(p.rig.server.connections):
            server_conn.abort()  # the peer dies
        async with asyncio.timeout(5):
            await conn.closed
            assert await collector.lost is not None
        assert p.pool.connections(p.key) == []
        await _finish(*await p.echo())
        assert p.pool.connections_opened == 2


async def test_a_draining_peer_s_connection_keeps_its_streams_while_new_ones_go_to_a_fresh_one() -> None:
    async with pool_rig() as p:
        old = await p.echo()
        (conn,) = p.pool.connections(p.key)
        (server_conn,) = p.rig.server.connections
        drain = asyncio.ensure_future(server_conn.drain(deadline=5))  # GOAWAY, as a rolled ztunnel sends
        await wait_until(lambda: conn.going_away, within=5)
        new = await p.echo()  # after the GOAWAY: a new connection, and the old one is left alone
        assert p.pool.connections_opened == 2
        assert not conn.is_closed
        await _finish(*old)  # the stream open on the old connection finishes there
        async with asyncio.timeout(5):
            assert await drain == 0
            await conn.closed  # closed by itself after its last stream
        await _finish(*new)


async def test_a_stream_opened_while_the_peer_s_goaway_is_on_the_way_is_opened_again_elsewhere() -> None:
    async with pool_rig() as p:
        old = await p.echo()
        (conn,) = p.pool.connections(p.key)
        (server_conn,) = p.rig.server.connections
        assert conn.transport is not None
        conn.transport.pause_reading()  # the GOAWAY is still on the way when the next stream opens
        drain = asyncio.ensure_future(server_conn.drain(deadline=5))
        await asyncio.sleep(0.1)
        opening = asyncio.ensure_future(p.echo())
        await asyncio.sleep(0.1)
        conn.transport.resume_reading()  # GOAWAY, then the refusal of the stream opened after it
        async with asyncio.timeout(5):
            new = await opening
        assert p.pool.connections_opened == 2
        assert len(p.rig.handler.requests) == 2  # the refused stream never reached the handler
        await _finish(*old)
        await _finish(*new)
        async with asyncio.timeout(5):
            assert await drain == 0


async def test_a_failed_connect_fails_every_waiter_and_is_not_pooled() -> None:
    async with pool_rig() as p:
        wrong = replace(
            p.key, expected=frozenset({WorkloadIdentity.parse(p.rig.pki.workload_uri("x", "impostor"))})
        )
        results = await asyncio.gather(
            *(p.pool.open_stream(wrong, "1.2.3.4:80") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, PeerRejectedError) for r in results)
        assert p.pool.connections(wrong) == []
        assert p.pool.stream_counts(wrong) == []
        assert p.rig.handler.requests == []


@pytest.mark.parametrize("status", [401, 503])
async def test_refused_streams_release_their_slot(status: int) -> None:
    async with pool_rig() as p:
        p.rig.handler.deny[p.rig.client_material.identity] = status
        for _ in range(3):
            got, _ = await p.pool.open_stream(p.key, p.rig.echo_authority)
            assert got == status
        await wait_until(lambda: p.pool.stream_counts(p.key) == [0], within=5)
