"""HTTP/1.1 clients of the waypoint (:class:`H1Connection`): requests are read as they come, each
handed on once its head is in while its body keeps arriving (the reader waits while the upstream
side lags: backpressure), and answered one at a time, in order (pipelining), by
:class:`H1Responder`: Content-Length when the length is known, else chunked (close-delimited for
an HTTP/1.0 client), the connection closed when a response cannot complete.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from mesh.http1 import (
    CONTINUE,
    LAST_CHUNK,
    BodyChunk,
    Http1Error,
    Message,
    MessageEnd,
    RequestParser,
    body_length,
    encode_chunk,
    serialize_response,
    serialize_response_head,
)
from mesh.rt.hbone.errors import StreamResetError
from waypoint.body import BodyStream, DownstreamGoneError, RequestBody
from waypoint.downstream import Responder

__all__ = ["HEADERS_TIMEOUT", "IDLE_TIMEOUT", "READ", "H1Connection", "H1Responder"]

READ = 65536
IDLE_TIMEOUT = 3600.0
"""Envoy's default HTTP connection idle timeout."""
HEADERS_TIMEOUT = 60.0
"""How long a client may take to send a request once it started (slowloris)."""

Handler = Callable[[Message, RequestBody, Responder], Awaitable[None]]
Upgrade = Callable[[Message, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class H1Connection:
    """One HTTP/1.1 client connection: reads requests and their bodies as they come (the body
    into the request being answered, waiting while the upstream side lags), answers them one at
    a time in order."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, handle: Handler,
        upgrade: Upgrade, buffer_limit: int,
    ) -> None:  # fmt: skip
        """``handle`` answers a request, ``upgrade`` serves one that asks for another protocol;
        ``buffer_limit`` is how much of a request body is kept to retry or mirror it."""
        self._reader = reader
        self._writer = writer
        self._handle = handle
        self._upgrade = upgrade
        self._buffer_limit = buffer_limit
        self._parser = RequestParser(stream=True)
        self._body: BodyStream | None = None
        """The body of the request being received."""
        self._current: asyncio.Task[bool] | None = None
        """The request being answered; its result says whether the connection goes on."""

    async def serve(self, first: bytes) -> None:
        """Serves requests until the client leaves, an answer closes the connection, or a limit."""
        data = first
        while True:
            if not data:
                timeout = HEADERS_TIMEOUT if self._parser.in_message else IDLE_TIMEOUT
                try:
                    async with asyncio.timeout(timeout):
                        data = await self._reader.read(READ)
                except TimeoutError:
                    break
                if not data:
                    break
            try:
                events = self._parser.events(data)
            except Http1Error as exc:
                await self._malformed(exc)
                return
            data = b""
            if self._parser.continue_wanted:  # the route's answer needs the body: ask for it
                self._parser.continue_wanted = False
                self._writer.write(CONTINUE)
            for event in events:
                if not await self._event(event):
                    return
        if self._body is not None:  # the client stopped sending midway
            self._body.fail(DownstreamGoneError("the client closed the connection mid-body"))
        if self._current is not None:
            await self._current  # a request whose client half-closed is still answered

    async def _event(self, event: object) -> bool:
        """Takes one parser event; False when the connection is over."""
        if isinstance(event, Message):
            if self._current is not None and not await self._current:
                return False  # answers go out in order: the previous one first
            self._current = None
            if event.upgrade:
                await self._upgrade(event, self._reader, self._writer)
                return False
            length = body_length(event)
            self._body = BodyStream() if length != 0 else None
            answer = self._answer(event, RequestBody(self._body, length=length, limit=self._buffer_limit))
            if length == 0:  # nothing more to read for it: answered here
                return await answer
            self._current = asyncio.ensure_future(answer)
        elif isinstance(event, BodyChunk) and self._body is not None:
            await self._body.put(event.data)
        elif isinstance(event, MessageEnd) and self._body is not None:
            self._body.end()
            self._body = None
        return True

    async def _answer(self, request: Message, body: RequestBody) -> bool:
        """Answers one request (its body, if any, arriving as the reader passes it on); whether
        the connection goes on."""
        responder = H1Responder(
            self._writer, keep_alive=request.keep_alive, http10=request.version == "1.0",
            head_only=request.method == "HEAD",
        )  # fmt: skip
        await self._handle(request, body, responder)
        return not responder.closed

    async def _malformed(self, exc: Http1Error) -> None:
        """A message the parser refuses: mid-body, the request being forwarded fails with the
        connection; else the client gets the status (400, 431)."""
        if self._current is not None and self._body is not None:
            self._body.fail(DownstreamGoneError(f"malformed request body: {exc.message}"))
            await self._current
            return
        if self._current is not None and not await self._current:
            return
        body = f"{exc.message}\n".encode()
        self._writer.write(
            serialize_response(exc.status, "", [("content-type", "text/plain")], body, keep_alive=False)
        )

    def close(self) -> None:
        """Ends what is still running and closes the connection."""
        if self._body is not None:
            self._body.fail(DownstreamGoneError("the client connection closed"))
        if self._current is not None and not self._current.done():
            self._current.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()


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
