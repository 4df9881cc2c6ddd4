"""HTTP/2 to endpoints (:class:`H2Upstream`): one multiplexed connection per endpoint for clusters
whose protocol options say HTTP/2 (gRPC and ``http2`` ports), or say "as downstream" when the
client spoke HTTP/2. A request's body streams up as the client sends it; the response comes back
as its head, then DATA acknowledged (WINDOW_UPDATE) only as the client takes it, then trailers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from mesh.h2 import (
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    H2ProtocolError,
    Http2Engine,
    Response,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from mesh.http1 import Message
from mesh.rt.hbone.errors import StreamResetError
from waypoint.body import BodyCursor, BodyStream, DownstreamGoneError, NotReplayableError, UpstreamError
from waypoint.h2wire import READ, WAYPOINT_H2, Wire, h2_fields

__all__ = ["H2Upstream"]


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
        self._wire = Wire(self._engine, writer)
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
            method,
            scheme="http",
            authority=authority,
            path=path,
            headers=h2_fields(headers),
            end_stream=empty,
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
                self._engine.send_trailers(sid, h2_fields(cursor.body.trailers))
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
            while data := await self._reader.read(READ):
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
