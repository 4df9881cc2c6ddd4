"""Relays between two TCP sockets (ztunnel's plaintext inbound on 15006 and passthrough to
destinations outside the mesh): bytes and half-closes travel both ways, and once both directions
have ended both sockets are closed, so the connection is counted, logged and its descriptors freed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mesh.rt.net.relay import RelayEnd, link

pytestmark = pytest.mark.timeout(20)

App = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Client = Callable[[int], Awaitable[bytes]]


async def relay_once(app: App, client: Client, *, link_after: float = 0.0) -> tuple[bytes, list[object]]:
    """Relays one connection from ``client`` to ``app``; returns what the client read and how each
    end's ``closed`` future ended (it must end: a relay that never closes leaks its sockets)."""
    loop = asyncio.get_running_loop()
    app_server = await asyncio.start_server(app, "127.0.0.1", 0)
    app_port = app_server.sockets[0].getsockname()[1]
    linked: asyncio.Future[tuple[RelayEnd, RelayEnd]] = loop.create_future()
    tasks: list[asyncio.Task[None]] = []

    async def connect(accepted: RelayEnd) -> None:
        _, upstream = await loop.create_connection(lambda: RelayEnd(count_bytes=True), "127.0.0.1", app_port)
        await asyncio.sleep(link_after)
        link(accepted, upstream)
        linked.set_result((accepted, upstream))

    class Accepted(RelayEnd):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            tasks.append(loop.create_task(connect(self)))

    listener = await loop.create_server(lambda: Accepted(count_bytes=True), "127.0.0.1", 0)
    try:
        got = await client(listener.sockets[0].getsockname()[1])
        ends = await asyncio.wait_for(linked, 5)
        closed = await asyncio.wait_for(asyncio.gather(*(end.closed for end in ends)), 5)
    finally:
        listener.close()
        app_server.close()
    return got, list(closed)


async def _answer_then_close_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(7)
    writer.write(b"answer")
    await writer.drain()
    await reader.read()  # the client's EOF
    writer.close()


async def _answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(7)
    writer.write(b"answer")
    writer.close()


async def _request_then_close(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"request")
    got = await reader.readexactly(6)
    writer.close()
    return got


async def _request_half_close_read_all(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"request")
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got


async def test_client_closes_first_then_the_app_and_both_sockets_close() -> None:
    got, closed = await relay_once(_answer_then_close_after_eof, _request_then_close)
    assert got == b"answer" and closed == [None, None]


async def test_app_closes_first_then_the_client_and_both_sockets_close() -> None:
    got, closed = await relay_once(_answer_and_close, _request_half_close_read_all)
    assert got == b"answer" and closed == [None, None]


async def test_both_ends_closed_before_the_link_still_close() -> None:
    """The client half-closes and the app answers and closes while the relay is still connecting."""
    got, closed = await relay_once(_answer_and_close, _request_half_close_read_all, link_after=0.3)
    assert got == b"answer" and closed == [None, None]
