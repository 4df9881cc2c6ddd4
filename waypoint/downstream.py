"""The waypoint's side towards clients: how one response goes back, head first, then its body piece
by piece as the upstream sends it (never held whole), then its trailers; or a reset when it
cannot complete (a timeout or an upstream failure after the head left: Envoy resets the HTTP/2
stream or closes the HTTP/1.1 connection, since a status can no longer be changed).

:class:`Responder` is what the proxy writes to; :class:`H1Responder` serves an HTTP/1.1 client
(Content-Length when the length is known, else chunked, or close-delimited for HTTP/1.0), and
``waypoint.h2`` has the HTTP/2 one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from mesh.http1 import LAST_CHUNK, encode_chunk, serialize_response_head
from mesh.rt.hbone.errors import StreamResetError
from waypoint.body import DownstreamGoneError

__all__ = ["H1Responder", "Responder", "send_whole"]


class Responder(Protocol):
    """One response on its way to the client."""

    head_sent: bool
    sent: int
    """Body bytes sent so far."""

    async def head(
        self, status: int, headers: list[tuple[str, str]], *, length: int | None, end: bool
    ) -> None:
        """Sends the head (``length``: the body's, when known); ``end``: there is no body or
        trailer. Raises DownstreamGoneError when the client left."""
        ...

    async def data(self, piece: bytes) -> None:
        """Sends a body piece once the client can take it (backpressure); raises DownstreamGoneError."""
        ...

    async def finish(self, trailers: list[tuple[str, str]]) -> None:
        """Ends the response (with a trailer block where the protocol carries one)."""
        ...

    def reset(self) -> None:
        """The response cannot complete: the client must not take it for whole."""
        ...


async def send_whole(
    responder: Responder, status: int, headers: list[tuple[str, str]], body: bytes,
    trailers: list[tuple[str, str]] | None = None,
) -> None:  # fmt: skip
    """Sends a response the waypoint made itself (a fault, a redirect, a 503...)."""
    end = not body and not trailers
    await responder.head(status, headers, length=len(body), end=end)
    if end:
        return
    if body:
        await responder.data(body)
    await responder.finish(trailers or [])


class H1Responder:
    """A response to an HTTP/1.1 client; ``keep_alive`` False closes the connection after it."""

    def __init__(
        self, writer: asyncio.StreamWriter, *, keep_alive: bool, http10: bool, head_only: bool
    ) -> None:
        self._writer = writer
        self._keep_alive = keep_alive
        self._http10 = http10
        self._head_only = head_only
        self._chunked = False
        self._bodyless = False
        self._head = b""
        """A head not written yet: it goes out with the first piece, or at the end of this turn
        of the event loop (never later: a client may wait on it)."""
        self.head_sent = False
        self.sent = 0
        self.closed = False
        """The connection is done (closed after the response, or reset)."""

    async def head(
        self, status: int, headers: list[tuple[str, str]], *, length: int | None, end: bool
    ) -> None:
        """Content-Length when known, else chunked (HTTP/1.0: the body runs to the close)."""
        if end and length is None:
            length = 0
        self._bodyless = self._head_only or status < 200 or status in (204, 304)
        close_delimited = length is None and self._http10 and not self._bodyless
        self._chunked = length is None and not close_delimited and not self._bodyless
        if close_delimited:
            self._keep_alive = False
        self.head_sent = True
        self._head = serialize_response_head(
            status, "", headers, length=length, keep_alive=self._keep_alive, close_delimited=close_delimited
        )
        if end:
            await self.finish([])
        else:
            asyncio.get_running_loop().call_soon(self._write, b"")

    async def data(self, piece: bytes) -> None:
        """Writes a piece (a chunk when chunked) and waits for the socket to drain."""
        if self._bodyless or not piece:
            return
        self._write(encode_chunk(piece) if self._chunked else piece)
        self.sent += len(piece)
        await self._drain()

    async def finish(self, trailers: list[tuple[str, str]]) -> None:
        """Ends the body; HTTP/1.1 trailers are not forwarded (a gRPC client speaks HTTP/2)."""
        self._write(LAST_CHUNK if self._chunked else b"")
        await self._drain()
        if not self._keep_alive:
            self.closed = True
            with contextlib.suppress(Exception):
                self._writer.close()

    def reset(self) -> None:
        """Closes the connection at once: the client sees a body cut short."""
        self.closed = True
        with contextlib.suppress(Exception):
            self._writer.transport.abort()

    def _write(self, data: bytes) -> None:
        """Writes ``data``, after the head if that is still waiting (one write, not two)."""
        if self._head:
            data, self._head = self._head + data, b""
        if data and not self.closed:
            self._writer.write(data)

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (OSError, StreamResetError) as exc:
            raise DownstreamGoneError(f"the client closed the connection: {exc}") from None
