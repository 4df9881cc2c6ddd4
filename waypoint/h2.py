"""HTTP/2 with prior knowledge (h2c) at both ends of the waypoint, on ``mesh.h2``'s engine.

Downstream (:class:`H2Front`): a client connection (or HBONE stream) that starts with the HTTP/2
preface; each request goes through the same routing, faults, retries, timeouts and telemetry as
an HTTP/1.1 one (``WaypointProxy.handle``), concurrently, and is answered with its headers, body
and trailers (gRPC's ``grpc-status``). Bodies are buffered, as for HTTP/1.1 (unary gRPC; streaming
RPCs are delivered once they end).

Upstream (:class:`H2Upstream`): one multiplexed HTTP/2 connection per endpoint for clusters whose
protocol options say HTTP/2 (gRPC and ``http2`` ports), or say "as downstream" when the client
spoke HTTP/2.
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
    Http2Engine,
    RequestReceived,
    Response,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from mesh.http1 import DEFAULT_MAX_BODY, Message
from mesh.rt.hbone.errors import StreamResetError

__all__ = ["H2_PREFACE", "H2Front", "H2Upstream"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_READ = 65536
_IDLE_TIMEOUT = 3600.0
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)

Handler = Callable[[Message], Awaitable["H2Answer"]]


@dataclass(slots=True)
class H2Answer:
    """What to send back on a stream."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)


class _Wire:
    """An engine and its transport: writes what the engine queued; waits for send windows."""

    def __init__(self, engine: Http2Engine, writer: asyncio.StreamWriter) -> None:
        self.engine = engine
        self.writer = writer
        self.window = asyncio.Event()

    def flush(self) -> None:
        data = self.engine.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def send_body(self, stream_id: int, body: bytes, *, end_stream: bool) -> None:
        """Sends ``body`` as the windows allow (waiting for WINDOW_UPDATEs)."""
        view = memoryview(body)
        while True:
            sent = self.engine.send_data(stream_id, view, end_stream=end_stream)
            view = view[sent:]
            self.flush()
            if not view:
                return
            self.window.clear()
            await self.window.wait()


def _headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response or request headers fit for HTTP/2 (no connection-specific fields, RFC 9113 8.2.2)."""
    return [
        (k, v) for k, v in headers if k not in _CONNECTION_SPECIFIC and not (k == "te" and v != "trailers")
    ]


class H2Front:
    """Serves one downstream h2c connection with ``handle`` for each request."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        """Serves the connection (``first``: bytes already read, the preface's start) until it ends."""
        engine = Http2Engine(client_side=False, config=H2Config(accept_requests=True))
        engine.initiate_connection()
        wire = _Wire(engine, writer)
        requests: dict[int, Message] = {}
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
                for event in events:
                    if isinstance(event, RequestReceived):
                        requests[event.stream_id] = _message(event)
                    elif isinstance(event, DataReceived):
                        request = requests.get(event.stream_id)
                        if request is not None and len(request.body) + len(event.data) <= DEFAULT_MAX_BODY:
                            request.body += bytes(event.data)
                        elif request is not None:
                            engine.reset_stream(event.stream_id, ErrorCode.REFUSED_STREAM)
                            requests.pop(event.stream_id)
                        engine.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
                    elif isinstance(event, StreamEnded) and event.stream_id in requests:
                        request = requests.pop(event.stream_id)
                        task = asyncio.ensure_future(self._answer(wire, event.stream_id, request))
                        answering[event.stream_id] = task
                        task.add_done_callback(functools.partial(_forget, answering, event.stream_id))
                    elif isinstance(event, StreamReset):
                        requests.pop(event.stream_id, None)
                        running = answering.get(event.stream_id)
                        if running is not None:
                            running.cancel()
                    elif isinstance(event, WindowUpdated):
                        wire.window.set()
                    elif isinstance(event, ConnectionTerminated):
                        wire.flush()
                        return
                wire.flush()
                await writer.drain()
        except (TimeoutError, ConnectionError, OSError, StreamResetError):
            pass
        finally:
            for task in list(answering.values()):
                task.cancel()
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, wire: _Wire, stream_id: int, request: Message) -> None:
        answer = await self._handle(request)
        engine = wire.engine
        with contextlib.suppress(Exception):  # the stream may have been reset meanwhile
            headers = _headers(answer.headers)
            if not answer.body and not answer.trailers:
                engine.send_response(stream_id, answer.status, headers, end_stream=True)
                wire.flush()
                return
            engine.send_response(stream_id, answer.status, headers)
            await wire.send_body(stream_id, answer.body, end_stream=not answer.trailers)
            if answer.trailers:
                engine.send_trailers(stream_id, _headers(answer.trailers))
            wire.flush()


def _forget(tasks: dict[int, asyncio.Task[None]], stream_id: int, _: object) -> None:
    tasks.pop(stream_id, None)


def _message(event: RequestReceived) -> Message:
    headers = [("host", event.authority), *((k, v) for k, v in event.headers if k != "host")]
    return Message(method=event.method, target=event.path, version="2", headers=headers)


@dataclass(slots=True)
class _Call:
    done: asyncio.Future[Message]
    response: Message = field(default_factory=Message)


class H2Upstream:
    """One client HTTP/2 connection to an endpoint; many requests at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._engine = Http2Engine(client_side=True)
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
        self, method: str, authority: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Message:
        """Sends one request and returns the whole response (``trailers`` included); raises
        StreamResetError or ConnectionError when the stream or connection fails."""
        sid = self._engine.send_request(
            method,
            scheme="http",
            authority=authority,
            path=path,
            headers=_headers(headers),
            end_stream=not body,
        )
        call = _Call(asyncio.get_running_loop().create_future())
        self._calls[sid] = call
        try:
            if body:
                await self._wire.send_body(sid, body, end_stream=True)
            self._wire.flush()
            return await call.done
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self._engine.reset_stream(sid, ErrorCode.CANCEL)
                self._wire.flush()
            raise
        finally:
            self._calls.pop(sid, None)

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
                if not call.done.done():
                    call.done.set_exception(ConnectionError("the upstream HTTP/2 connection closed"))

    def _event(self, event: object) -> None:
        if isinstance(event, WindowUpdated):
            self._wire.window.set()
            return
        if isinstance(event, ConnectionTerminated):
            self.closed = True
            return
        call = self._calls.get(getattr(event, "stream_id", -1))
        if call is None:
            return
        response = call.response
        if isinstance(event, Response):
            response.status, response.headers = event.status, list(event.headers)
        elif isinstance(event, DataReceived):
            response.body += bytes(event.data)
            self._engine.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, TrailersReceived):
            response.trailers = list(event.headers)
        elif isinstance(event, StreamEnded) and not call.done.done():
            call.done.set_result(response)
        elif isinstance(event, StreamReset) and not call.done.done():
            call.done.set_exception(StreamResetError(event.stream_id, event.error_code, remote=event.remote))

    def close(self) -> None:
        """Closes the connection."""
        self.closed = True
        self._task.cancel()
        with contextlib.suppress(Exception):
            self._wire.writer.close()
