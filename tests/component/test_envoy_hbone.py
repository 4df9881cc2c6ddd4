"""Interop with a real Envoy: Envoy as the HBONE client of our server, and our client to Envoy's server.

Many concurrent streams, byte-exact payloads both ways, half-close carried end to end.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mesh.rt.hbone import HandshakeError, HboneStream
from mesh.testing.envoy_hbone import hbone_client_config, hbone_server_config, running_envoy
from mesh.testing.hbone import Collector, hbone_rig, material_for, start_echo_server

pytestmark = pytest.mark.envoy

STREAMS = 40


def _payloads() -> list[bytes]:
    return [os.urandom(20_000 + 9973 * i) for i in range(STREAMS)]


async def _tcp_echo(address: tuple[str, int], payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()  # half-close: the far end still answers
    echoed = await reader.read()  # until EOF
    writer.close()
    return echoed


async def test_envoy_tunnels_tcp_to_our_hbone_server(tmp_path: Path) -> None:
    async with hbone_rig() as rig:
        envoy_material = material_for(rig.pki, "envoy-ns", "envoy-client")
        config = hbone_client_config(
            material=envoy_material,
            server=rig.address,
            expected=frozenset({rig.server_material.identity}),
            authority=rig.echo_authority,
        )
        async with running_envoy(config, tmp_path, name="hbone-client") as envoy:
            payloads = _payloads()
            async with asyncio.timeout(30):
                echoed = await asyncio.gather(*(_tcp_echo(envoy.listener, p) for p in payloads))
            assert echoed == payloads, envoy.log_tail()
        assert len(rig.handler.requests) == STREAMS
        assert {r.authority for r in rig.handler.requests} == {rig.echo_authority}
        assert {r.peer_identity for r in rig.handler.requests} == {envoy_material.identity}


async def _stream_echo(stream: HboneStream, payload: bytes) -> bytes:
    collector = Collector()
    stream.attach(collector)
    for i in range(0, len(payload), 32768):
        stream.write(payload[i : i + 32768])
    stream.write_eof()
    await collector.eof
    await collector.lost
    return bytes(collector.data)


async def test_our_client_tunnels_through_envoy_terminating_connect(tmp_path: Path) -> None:
    async with hbone_rig() as rig:
        echo, echo_address = await start_echo_server()
        envoy_material = material_for(rig.pki, "envoy-ns", "envoy-server")
        config = hbone_server_config(
            material=envoy_material, upstream=echo_address, clients=frozenset({rig.client_material.identity})
        )
        async with running_envoy(config, tmp_path, name="hbone-server") as envoy:
            rig.address = envoy.listener
            conn = await rig.client(expected=frozenset({envoy_material.identity}))
            payloads = _payloads()

            async def one(payload: bytes) -> bytes:
                status, stream = await conn.open_stream(f"{echo_address[0]}:{echo_address[1]}")
                assert status == 200
                return await _stream_echo(stream, payload)

            async with asyncio.timeout(30):
                echoed = await asyncio.gather(*(one(p) for p in payloads))
            assert echoed == payloads, envoy.log_tail()
            assert conn.streams == {}
            conn.close()
        echo.close()


async def test_envoy_refuses_our_client_with_an_unexpected_identity(tmp_path: Path) -> None:
    async with hbone_rig() as rig:
        echo, echo_address = await start_echo_server()
        envoy_material = material_for(rig.pki, "envoy-ns", "envoy-server")
        someone = material_for(rig.pki, "client-ns", "someone")
        config = hbone_server_config(
            material=envoy_material, upstream=echo_address, clients=frozenset({someone.identity})
        )
        async with running_envoy(config, tmp_path, name="hbone-server-strict") as envoy:
            rig.address = envoy.listener
            with pytest.raises(HandshakeError):
                await rig.client(expected=frozenset({envoy_material.identity}))
        echo.close()
