"""HTTP/2 with prior knowledge (h2c) at both ends of the waypoint, on ``mesh.h2``'s engine.

Downstream (:class:`H2Front`): a client connection (or HBONE stream) that starts with the HTTP/2
preface; each request is handled as soon as its headers arrive (routing, faults, retries,
timeouts, telemetry: ``WaypointProxy.handle``), concurrently, its body streaming in as the
client sends it, and is answered with headers, DATA as the upstream sends it, and trailers
(gRPC's ``grpc-status``): server-streaming and bidirectional RPCs flow message by message.

Upstream (:class:`H2Upstream`): one multiplexed HTTP/2 connection per endpoint for clusters whose
protocol options say HTTP/2 (gRPC and ``http2`` ports), or say "as downstream" when the client
spoke HTTP/2.

Flow control is the backpressure: received DATA is acknowledged (WINDOW_UPDATE) only once the
other side took it, so a slow reader holds each stream to its window (:data:`WAYPOINT_H2`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from mesh.h2 import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    H2Config,
    H2ProtocolError,
    Http2Engine,
    RequestReceived,
    Response,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from mesh.http1 import Message
from mesh.rt.hbone.errors import StreamResetError
from waypoint.body import (
    BodyCursor,
    BodyStream,
    DownstreamGoneError,
    NotReplayableError,
    RequestBody,
    UpstreamError,
)
from waypoint.downstream import Responder

__all__ = ["H2_PREFACE", "WAYPOINT_H2", "H2Front", "H2Upstream"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WAYPOINT_H2 = H2Config(initial_window_size=1024 * 1024)
"""A stream holds at most 1 MiB in flight towards the waypoint (the connection 16 MiB)."""
_READ = 65536
_COALESCE = 65536
"""Frames up to this size wait for the end of the loop turn to go out together."""
_IDLE_TIMEOUT = 3600.0
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)

Handler = Callable[[Message, RequestBody, Responder], Awaitable[None]]


class _Wire:
    """An engine and its transport: writes what the engine queued; waits for send windows."""

    def __init__(self, engine: Http2Engine, writer: asyncio.StreamWriter) -> None:
        self.engine = engine
        self.writer = writer
        self.window = asyncio.Event()
        self._flush_scheduled = False

    def flush(self) -> None:
        data = self.engine.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def flush_soon(self) -> None:
        """Flushes at the end of this turn of the event loop: the frames queued meanwhile (a
        response's HEADERS, DATA and END_STREAM) go out in one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def acknowledge(self, stream_id: int, n: int) -> None:
        """Gives ``n`` bytes of receive window back: the other side took them."""
        with contextlib.suppress(H2ProtocolError):
            self.engine.acknowledge_received_data(stream_id, n)
            self.flush()

    async def send_body(self, stream_id: int, body: bytes) -> None:
        """Sends ``body`` as the windows allow (waiting for WINDOW_UPDATEs), then for the socket."""
        view = memoryview(body)
        while True:
            sent = self.engine.send_data(stream_id, view)
            view = view[sent:]
            if not view:
                break
            self.flush()
            self.window.clear()
            await self.window.wait()
        if self.engine.bytes_to_send_pending() < _COALESCE:
            self.flush_soon()
        else:
            self.flush()
            await self.writer.drain()


def _headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response or request headers fit for HTTP/2 (no connection-specific fields, RFC 9113 8.2.2)."""
    return [
        (k, v) for k, v in headers if k not in _CONNECTION_SPECIFIC and not (k == "te" and v != "trailers")
    ]


class _H2Responder:
    """A response on one stream of a downstream connection."""

    def __init__(self, wire: _Wire, stream_id: int) -> None:
        self._wire = wire
        self._sid = stream_id
        self.head_sent = False
        self.done = False
        self.sent = 0

    async def head(
        self, status: int, headers: list[tuple[str, str]], *, length: int | None, end: bool
    ) -> None:
        """The response HEADERS (with content-length when known and a body follows)."""
        fields = _headers(headers)
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
                engine.send_trailers(self._sid, _headers(trailers))
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
        engine = Http2Engine(client_side=False, config=_front_config())
        engine.initiate_connection()
        wire = _Wire(engine, writer)
        bodies: dict[int, BodyStream] = {}
        answering: dict[int, asyncio.Task[None]] = {}
        data = first
        try:
            while True:
                if not data:
                    data = await asyncio.wait_for(reader.read(_READ), _IDLE_TIMEOUT)
                    if not data:
                        break
                events = engine.receive_data(data)
                data = b""
                started: list[tuple[int, Message, BodyStream]] = []
                for event in events:
                    if isinstance(event, RequestReceived):
                        body = bodies[event.stream_id] = BodyStream(
                            on_taken=functools.partial(wire.acknowledge, event.stream_id)
                        )
                        started.append((event.stream_id, _message(event), body))
                    elif isinstance(event, DataReceived):
                        _deliver(wire, bodies.get(event.stream_id), event)
                    elif isinstance(event, TrailersReceived) and event.stream_id in bodies:
                        bodies.pop(event.stream_id).end(list(event.headers))
                    elif isinstance(event, StreamEnded) and event.stream_id in bodies:
                        bodies.pop(event.stream_id).end()
                    elif isinstance(event, StreamReset):
                        _client_reset(event.stream_id, bodies, answering)
                    elif isinstance(event, WindowUpdated):
                        wire.window.set()
                    elif isinstance(event, ConnectionTerminated):
                        wire.flush()
                        return
                for stream_id, message, body in started:
                    task = asyncio.ensure_future(self._answer(wire, stream_id, message, body))
                    answering[stream_id] = task
                    task.add_done_callback(functools.partial(_forget, answering, stream_id))
                wire.flush()
                await writer.drain()
        except (TimeoutError, ConnectionError, OSError, StreamResetError):
            pass
        finally:
            for body in bodies.values():
                body.fail(DownstreamGoneError("the client connection closed"))
            for task in list(answering.values()):
                task.cancel()
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, wire: _Wire, stream_id: int, message: Message, stream: BodyStream) -> None:
        responder = _H2Responder(wire, stream_id)
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


def _deliver(wire: _Wire, body: BodyStream | None, event: DataReceived) -> None:
    """A request's DATA goes to its body; the window comes back as the upstream takes it."""
    if body is None:  # nobody wants it (the stream was answered or reset): give the window back now
        wire.acknowledge(event.stream_id, event.flow_controlled_length)
    else:
        body.feed(bytes(event.data))


def _client_reset(
    stream_id: int, bodies: dict[int, BodyStream], answering: dict[int, asyncio.Task[None]]
) -> None:
    body = bodies.pop(stream_id, None)
    if body is not None:
        body.fail(DownstreamGoneError(f"the client reset stream {stream_id}"))
    running = answering.get(stream_id)
    if running is not None:
        running.cancel()


def _front_config() -> H2Config:
    return H2Config(initial_window_size=WAYPOINT_H2.initial_window_size, accept_requests=True)


def _forget(tasks: dict[int, asyncio.Task[None]], stream_id: int, _: object) -> None:
    tasks.pop(stream_id, None)


def _message(event: RequestReceived) -> Message:
    headers = [("host", event.authority), *((k, v) for k, v in event.headers if k != "host")]
    return Message(method=event.method, target=event.path, version="2", headers=headers)


@dataclass(slots=True)
class _Call:
    head: asyncio.Future[Message]
    body: BodyStream
    trailers: list[tuple[str, str]] = field(default_factory=list)
    pump: asyncio.Task[None] | None = None


class H2Upstream:
    """One client HTTP/2 connection to an endpoint; many requests at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._engine = Http2Engine(client_side=True, config=WAYPOINT_H2)
        self._engine.initiate_connection()
        self._wire = _Wire(self._engine, writer)
        self._reader = reader
        self._calls: dict[int, _Call] = {}
        self._task = asyncio.ensure_future(self._read())
        self.closed = False

    @property
    def usable(self) -> bool:
        """Whether a new request may go on this connection."""
        return not self.closed and self._engine.can_open_stream

    async def request(
        self, method: str, authority: str, path: str, headers: Sequence[tuple[str, str]], body: BodyCursor
    ) -> _H2Response:
        """Sends one request, its body streaming from ``body``; returns once the response head
        arrived. Raises UpstreamError (stream reset, connection closed) or DownstreamGoneError."""
        empty = body.body.length == 0
        sid = self._engine.send_request(
            method, scheme="http", authority=authority, path=path, headers=_headers(headers), end_stream=empty
        )
        call = _Call(
            asyncio.get_running_loop().create_future(),
            BodyStream(on_taken=functools.partial(self._wire.acknowledge, sid)),
        )
        self._calls[sid] = call
        self._wire.flush_soon()
        if not empty:
            call.pump = asyncio.ensure_future(self._pump(sid, body, call))
        try:
            head = await call.head
        except BaseException:
            self.abandon(sid, call)
            raise
        return _H2Response(self, sid, call, head)

    async def _pump(self, sid: int, cursor: BodyCursor, call: _Call) -> None:
        """Sends the request body as the client sends it, then END_STREAM (or its trailers)."""
        try:
            while piece := await cursor.read():
                await self._wire.send_body(sid, piece)
            if cursor.body.trailers:
                self._engine.send_trailers(sid, _headers(cursor.body.trailers))
            else:
                self._engine.end_stream(sid)
            self._wire.flush_soon()
        except (DownstreamGoneError, NotReplayableError) as exc:
            gone = DownstreamGoneError(str(exc))
            if not call.head.done():
                call.head.set_exception(gone)
            call.body.fail(gone)
            call.pump = None  # this task: it ends here
            self.abandon(sid, call)
        except (H2ProtocolError, OSError, StreamResetError):
            pass  # the stream or connection ended: the response side reports it

    async def _read(self) -> None:
        try:
            while data := await self._reader.read(_READ):
                for event in self._engine.receive_data(data):
                    self._event(event)
                self._wire.flush()
        except (ConnectionError, OSError, StreamResetError):
            pass
        finally:
            self.closed = True
            for call in self._calls.values():
                _fail(call, UpstreamError(connect=False, detail="the upstream HTTP/2 connection closed"))
            self._calls.clear()

    def _event(self, event: object) -> None:
        if isinstance(event, WindowUpdated):
            self._wire.window.set()
            return
        if isinstance(event, ConnectionTerminated):
            self.closed = True
            return
        sid = getattr(event, "stream_id", -1)
        call = self._calls.get(sid)
        if call is None:
            if isinstance(event, DataReceived):
                self._wire.acknowledge(sid, event.flow_controlled_length)
            return
        if isinstance(event, Response) and event.status >= 200 and not call.head.done():
            call.head.set_result(Message(status=event.status, version="2", headers=list(event.headers)))
        elif isinstance(event, DataReceived):
            call.body.feed(bytes(event.data))
        elif isinstance(event, TrailersReceived):
            call.trailers = list(event.headers)
        elif isinstance(event, StreamEnded):
            call.body.end(call.trailers)
        elif isinstance(event, StreamReset):
            detail = f"the upstream reset stream {sid} (error code {event.error_code})"
            _fail(call, UpstreamError(connect=False, detail=detail, reset=True))
            self._calls.pop(sid, None)

    def forget(self, sid: int) -> None:
        """A request that went through whole both ways."""
        self._calls.pop(sid, None)

    def abandon(self, sid: int, call: _Call) -> None:
        """Gives a request up: its stream is reset (CANCEL) if still open, its body dropped."""
        self._calls.pop(sid, None)
        if call.pump is not None and not call.pump.done():
            call.pump.cancel()
        call.body.abandon()
        with contextlib.suppress(H2ProtocolError):
            self._engine.reset_stream(sid, ErrorCode.CANCEL)
            self._wire.flush()

    def close(self) -> None:
        """Closes the connection."""
        self.closed = True
        self._task.cancel()
        with contextlib.suppress(Exception):
            self._wire.writer.close()


def _fail(call: _Call, error: Exception) -> None:
    if not call.head.done():
        call.head.set_exception(error)
    call.body.fail(error)


class _H2Response:
    """The response on one upstream stream (see ``waypoint.upstream.UpstreamResponse``)."""

    def __init__(self, connection: H2Upstream, sid: int, call: _Call, head: Message) -> None:
        self._connection = connection
        self._sid = sid
        self._call = call
        length = head.header("content-length")
        self.length = int(length) if length is not None and length.isdigit() else None
        head.headers = [(k, v) for k, v in head.headers if k != "content-length"]
        self.head = head

    @property
    def trailers(self) -> list[tuple[str, str]]:
        """The trailer block (gRPC's status), once the body ended."""
        return self._call.trailers

    @property
    def empty(self) -> bool:
        """The stream ended with the head (a gRPC trailers-only answer)."""
        body = self._call.body
        return body.ended and not body.received and not self._call.trailers

    async def read(self) -> bytes:
        """The next DATA piece, ``b""`` after END_STREAM (then a request still sending is reset)."""
        try:
            piece = await self._call.body.read()
        except BaseException:
            self.abort()
            raise
        if not piece:
            pump = self._call.pump
            if pump is None or pump.done():
                self._connection.forget(self._sid)
            else:
                self.abort()
        return piece

    def abort(self) -> None:
        """Gives the response up."""
        self._connection.abandon(self._sid, self._call)
