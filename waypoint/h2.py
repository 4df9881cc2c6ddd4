"""HTTP/2 with prior knowledge (h2c) from clients (:class:`H2Front`), on ``mesh.h2``'s engine: a
client connection (or HBONE stream) that starts with the HTTP/2 preface. Each request is handled
as soon as its headers arrive (routing, faults, retries, timeouts, telemetry:
``WaypointProxy.handle``), concurrently, its body streaming in as the client sends it, and is
answered with headers, DATA as the upstream sends it, and trailers (gRPC's ``grpc-status``):
server-streaming and bidirectional RPCs flow message by message. Request DATA is acknowledged
(WINDOW_UPDATE) only as the upstream side takes it (``waypoint.h2wire``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Awaitable, Callable

from mesh.h2 import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    H2ProtocolError,
    Http2Engine,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from mesh.http1 import Message
from mesh.rt.hbone.errors import StreamResetError
from waypoint.body import BodyStream, DownstreamGoneError, RequestBody
from waypoint.downstream import Responder
from waypoint.h2wire import READ, WAYPOINT_H2, Wire, h2_fields

__all__ = ["H2_PREFACE", "H2Front"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_IDLE_TIMEOUT = 3600.0
_FRONT = dataclasses.replace(WAYPOINT_H2, accept_requests=True)

Handler = Callable[[Message, RequestBody, Responder], Awaitable[None]]


class _H2Responder:
    """A response on one stream of a downstream connection."""

    def __init__(self, wire: Wire, stream_id: int) -> None:
        self._wire = wire
        self._sid = stream_id
        self.head_sent = False
        self.done = False
        self.sent = 0

    async def head(
        self, status: int, headers: list[tuple[str, str]], *, length: int | None, end: bool
    ) -> None:
        """The response HEADERS (with content-length when known and a body follows)."""
        fields = h2_fields(headers)
        if length is not None and not end and status not in (204, 304):
            fields.append(("content-length", str(length)))
        try:
            self._wire.engine.send_response(self._sid, status, fields, end_stream=end)
        except H2ProtocolError as exc:
            raise DownstreamGoneError(f"stream {self._sid}: {exc}") from None

    async def data(self, piece: bytes) -> None:
        """DATA as the client's window and the socket allow."""
        try:
            await self._wire.send_body(self._sid, piece)
        except (H2ProtocolError, OSError, StreamResetError) as exc:
            raise DownstreamGoneError(f"stream {self._sid}: {exc}") from None
        self.sent += len(piece)

    async def finish(self, trailers: list[tuple[str, str]]) -> None:
        """END_STREAM, on the trailer block when there is one."""
        engine = self._wire.engine
        try:
            if trailers:
                engine.send_trailers(self._sid, h2_fields(trailers))
            else:
                engine.end_stream(self._sid)
            self.done = True
            self._wire.flush_soon()
        except H2ProtocolError as exc:
            raise DownstreamGoneError(f"stream {self._sid}: {exc}") from None

    def reset(self) -> None:
        """RST_STREAM: the client sees the response fail."""
        self.done = True
        with contextlib.suppress(H2ProtocolError):
            self._wire.engine.reset_stream(self._sid, ErrorCode.INTERNAL_ERROR)
            self._wire.flush()


class H2Front:
    """Serves one downstream h2c connection with ``handle`` for each request."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        """Serves the connection (``first``: bytes already read, the preface's start) until it ends."""
        connection = _FrontConnection(self._handle, writer)
        data = first
        try:
            while True:
                if not data:
                    async with asyncio.timeout(_IDLE_TIMEOUT):
                        data = await reader.read(READ)
                    if not data:
                        break
                if not connection.receive(data):
                    return
                data = b""
                await writer.drain()
        except (TimeoutError, ConnectionError, OSError, StreamResetError):
            pass
        finally:
            connection.close()


class _FrontConnection:
    """One client connection's streams: request bodies on their way in, answers being written."""

    def __init__(self, handle: Handler, writer: asyncio.StreamWriter) -> None:
        engine = Http2Engine(client_side=False, config=_FRONT)
        engine.initiate_connection()
        self._handle = handle
        self._wire = Wire(engine, writer)
        self._bodies: dict[int, BodyStream] = {}
        """Request bodies still arriving, by stream."""
        self._answering: dict[int, asyncio.Task[None]] = {}

    def receive(self, data: bytes) -> bool:
        """Takes bytes from the client; starts answering the requests whose heads came (unless
        reset in the same read); False when the connection is over."""
        started: list[tuple[int, Message, BodyStream]] = []
        reset: set[int] = set()
        for event in self._wire.engine.receive_data(data):
            if isinstance(event, RequestReceived):
                body = BodyStream(on_taken=functools.partial(self._wire.acknowledge, event.stream_id))
                self._bodies[event.stream_id] = body
                started.append((event.stream_id, _message(event), body))
            elif isinstance(event, StreamReset):
                reset.add(event.stream_id)
                self._client_reset(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self._wire.flush()
                return False
            else:
                self._on_stream_event(event)
        for stream_id, message, body in started:
            if stream_id not in reset:
                task = asyncio.ensure_future(self._answer(stream_id, message, body))
                self._answering[stream_id] = task
                task.add_done_callback(functools.partial(_forget, self._answering, stream_id))
        self._wire.flush()
        return True

    def _on_stream_event(self, event: object) -> None:
        bodies = self._bodies
        if isinstance(event, DataReceived):
            body = bodies.get(event.stream_id)
            if body is None:  # nobody wants it (answered or reset): the window goes back now
                self._wire.acknowledge(event.stream_id, event.flow_controlled_length)
            else:  # acknowledged as the upstream side takes it
                body.feed(bytes(event.data))
        elif isinstance(event, TrailersReceived) and event.stream_id in bodies:
            bodies.pop(event.stream_id).end(list(event.headers))
        elif isinstance(event, StreamEnded) and event.stream_id in bodies:
            bodies.pop(event.stream_id).end()
        elif isinstance(event, WindowUpdated):
            self._wire.window.set()

    def _client_reset(self, stream_id: int) -> None:
        body = self._bodies.pop(stream_id, None)
        if body is not None:
            body.fail(DownstreamGoneError(f"the client reset stream {stream_id}"))
        running = self._answering.get(stream_id)
        if running is not None:
            running.cancel()

    async def _answer(self, stream_id: int, message: Message, stream: BodyStream) -> None:
        responder = _H2Responder(self._wire, stream_id)
        if stream.ended and not stream.received:
            body = RequestBody(None, length=0)
        elif stream.ended:  # the whole body came with the headers
            body = RequestBody(stream, length=stream.received)
        else:
            length = message.header("content-length")
            body = RequestBody(stream, length=int(length) if length and length.isdigit() else None)
        try:
            await self._handle(message, body, responder)
        finally:
            if not responder.done:
                responder.reset()

    def close(self) -> None:
        """The connection ended: every stream still open fails."""
        for body in self._bodies.values():
            body.fail(DownstreamGoneError("the client connection closed"))
        for task in list(self._answering.values()):
            task.cancel()
        with contextlib.suppress(Exception):
            self._wire.writer.close()


def _forget(tasks: dict[int, asyncio.Task[None]], stream_id: int, _: object) -> None:
    tasks.pop(stream_id, None)


def _message(event: RequestReceived) -> Message:
    headers = [("host", event.authority), *((k, v) for k, v in event.headers if k != "host")]
    return Message(method=event.method, target=event.path, version="2", headers=headers)
