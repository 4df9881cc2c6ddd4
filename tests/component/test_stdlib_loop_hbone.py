"""HBONE on the standard asyncio loop too (the binaries use uvloop; the transport must not depend on it).

CPython 3.11's SSL transport fills a large read in pieces through ``buf[offset:]``; a regression
here (e.g. handing it a bytearray, whose slice is a copy) loses bytes and fails the echo.
"""

from __future__ import annotations

import asyncio
import os

from mesh.rt.hbone import HboneStream
from mesh.testing.hbone import Collector, hbone_rig


async def _echo(stream: HboneStream, payload: bytes) -> bytes:
    collector = Collector()
    stream.attach(collector)
    for i in range(0, len(payload), 256 * 1024):
        stream.write(payload[i : i + 256 * 1024])
    stream.write_eof()
    await collector.eof
    await collector.lost
    return bytes(collector.data)


async def test_large_streams_echo_byte_exact_on_the_standard_loop() -> None:
    assert "uvloop" not in type(asyncio.get_running_loop()).__module__
    async with hbone_rig() as rig:
        conn = await rig.client()
        payloads = [os.urandom(3 * 1024 * 1024 + 4099 * i) for i in range(4)]

        async def one(payload: bytes) -> bytes:
            status, stream = await conn.open_stream(rig.echo_authority)
            assert status == 200
            return await _echo(stream, payload)

        async with asyncio.timeout(30):
            assert await asyncio.gather(*(one(p) for p in payloads)) == payloads
        conn.close()
