"""A lean gRPC client on our own HTTP/2 engine: unary calls and bidirectional streams.

The data plane talks gRPC to istiod for two things only, Delta ADS and the CA, and grpcio costs the
process about 12 MB of mapped library plus its threads; this client costs a few hundred kilobytes.
One :class:`RpcChannel` keeps one HTTP/2 connection (TLS verified against the given roots and server
name, ALPN ``h2``; plaintext only when no TLS context is given, for tests) and opens a new one when
the old one died. The connection sends an HTTP/2 PING every 30 s (10 s to answer) and has TCP
keepalive, so a vanished server is noticed. gRPC servers refuse PINGs that come too often (istiod
allows one per 15 s; grpc's default is one per 5 minutes without data) with GOAWAY ENHANCE_YOUR_CALM.

    channel = RpcChannel("istiod:15012", tls=client_tls(roots_pem), server_name="istiod.istio-system.svc")
    answer = await channel.unary("/pkg.Service/Method", request_bytes, metadata=..., timeout=10.0)
    call = await channel.stream("/pkg.Service/Stream", metadata=...)
    await call.write(message); reply = await call.read()  # None: the server ended the call with OK
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Iterator
from typing import cast

from mesh.hbone.config import H2Config
from mesh.hbone.connection import H2Connection
from mesh.hbone.errors import ErrorCode, H2ProtocolError
from mesh.hbone.events import (
    ConnectionTerminated,
    DataReceived,
    PingAcked,
    Response,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from mesh.rpc import (
    MessageReader,
    RpcError,
    StatusCode,
    frame_message,
    status_for_http,
    status_for_reset,
    status_of,
    timeout_value,
)
from mesh.rt.hbone.keepalive import Keepalive
from mesh.rt.hbone.sockets import set_keepalive
from mesh.rt.hbone.timers import LoopScheduler, Scheduler

__all__ = ["RpcCall", "RpcChannel", "RpcError", "StatusCode", "client_tls", "parse_target"]

DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024
PING_INTERVAL = 30.0
PING_TIMEOUT = 10.0
_USER_AGENT = "ambient-mesh-rpc/0.1"


def client_tls(roots_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts only ``roots_pem`` and checks the server's name; ALPN ``h2``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=roots_pem.decode("ascii"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    return ctx


def parse_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); ValueError names what is wrong."""
    host, sep, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"gRPC target {target!r} is not host:port (e.g. istiod.istio-system.svc:15012)")
    return host, int(port)


class RpcCall:
    """One call: write request messages, read response messages; the status ends it."""

    def __init__(self, conn: _RpcConnection, stream_id: int, *, max_message_bytes: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._reader = MessageReader(max_message_bytes=max_message_bytes)
        self._max_send = max_message_bytes
        self._messages: deque[bytearray] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.status: RpcError | None = None
        """None while the call runs; then OK (an RpcError whose code is OK) or the error it ended with."""
        self._http_status = 0

    async def write(self, message: bytes) -> None:
        """Sends one message, waiting while HTTP/2 flow control holds it back."""
        if len(message) > self._max_send:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"a request of {len(message)} bytes is larger than the limit of {self._max_send}",
            )
        await self._conn.send(self, memoryview(frame_message(message)))

    async def done_writing(self) -> None:
        """Half-closes the call: the server sees the end of the requests."""
        self._conn.end(self)

    async def read(self) -> bytearray | None:
        """The next response message (the caller owns it); None once the call ended with OK.
        Raises RpcError otherwise."""
        while not self._messages:
            if self.status is not None:
                if self.status.code == StatusCode.OK:
                    return None
                raise self.status
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.popleft()

    def cancel(self) -> None:
        """Ends the call from this side (RST_STREAM CANCEL); reads then fail with CANCELLED."""
        if self.status is None:
            self._conn.cancel(self)
            self.finish(StatusCode.CANCELLED, "the call was cancelled by this client")

    # -- fed by the connection ----------------------------------------------------------------------

    def on_headers(self, event: Response) -> None:
        """Response headers; a trailers-only answer carries the status here."""
        self._http_status = event.status
        if event.status != 200:
            self.finish(status_for_http(event.status), f"the server answered HTTP {event.status}")
            return
        status = status_of(event.headers)
        if status is not None:
            self.finish(*status)

    def on_data(self, data: bytes | memoryview) -> None:
        """Body bytes: complete messages are queued for ``read``."""
        if self.status is not None:
            return
        try:
            self._messages.extend(self._reader.feed(data))
        except RpcError as err:
            self._conn.cancel(self)
            self.finish(err.code, err.details)
            return
        self._wake()

    def on_trailers(self, event: TrailersReceived) -> None:
        """The trailers: the call's status."""
        status = status_of(event.headers)
        if status is None:
            self.finish(StatusCode.INTERNAL, "the server ended the call without a grpc-status")
        else:
            self.finish(*status)

    def on_end(self) -> None:
        """The server's side ended without a status so far: the call failed."""
        if self._reader.pending:
            self.finish(StatusCode.INTERNAL, "the server ended the call in the middle of a message")
        else:
            self.finish(StatusCode.INTERNAL, "the server ended the call without a grpc-status")

    def finish(self, code: StatusCode, details: str) -> None:
        """Records the status (the first one counts) and wakes a waiting ``read``."""
        if self.status is None:
            self.status = RpcError(code, details)
            self._conn.forget(self)
        self._wake()

    def raise_if_ended(self) -> None:
        """Writing to an ended call fails with its status (or FAILED_PRECONDITION after OK)."""
        if self.status is not None and self.status.code != StatusCode.OK:
            raise self.status
        if self.status is not None:
            raise RpcError(StatusCode.FAILED_PRECONDITION, "the call already ended")

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@contextlib.contextmanager
def _stream_of(call: RpcCall) -> Iterator[None]:
    """Engine calls on a stream the server already closed end the call instead of raising H2 errors."""
    try:
        yield
    except H2ProtocolError as err:
        call.finish(StatusCode.UNAVAILABLE, f"the call's stream is closed: {err}")
        raise RpcError(StatusCode.UNAVAILABLE, f"the call's stream is closed: {err}") from err


class _RpcConnection(asyncio.Protocol):
    """One HTTP/2 connection carrying calls; every call fails with UNAVAILABLE when it ends."""

    def __init__(
        self,
        *,
        authority: str,
        scheme: str,
        config: H2Config,
        scheduler: Scheduler,
        ping: tuple[float, float],
    ) -> None:
        self.h2 = H2Connection(client_side=True, config=config)
        self._authority = authority
        self._scheme = scheme
        self.calls: dict[int, RpcCall] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.draining = False
        """The server sent a graceful GOAWAY: calls running here finish, new ones go elsewhere."""
        self._why = "the connection to the server closed"
        self._window = asyncio.Event()  # set on every window update or write drain
        self._writable = True
        self.keepalive = Keepalive(
            scheduler=scheduler, interval=ping[0], timeout=ping[1], send_ping=self._ping, on_dead=self._dead
        )

    @property
    def usable(self) -> bool:
        """True while new calls may start here."""
        return not self.closed and self.h2.can_open_stream

    def open(self, path: str, headers: list[tuple[str, str]], *, max_message_bytes: int) -> RpcCall:
        """Starts a call (the request headers leave at once)."""
        sid = self.h2.send_request(
            "POST", scheme=self._scheme, authority=self._authority, path=path, headers=headers
        )
        call = RpcCall(self, sid, max_message_bytes=max_message_bytes)
        self.calls[sid] = call
        self._write_out()
        return call

    async def send(self, call: RpcCall, data: memoryview) -> None:
        """Hands ``data`` to the engine as flow control and the socket buffer allow."""
        while data:
            call.raise_if_ended()
            taken = 0
            if self._writable:
                with _stream_of(call):
                    taken = self.h2.send_data(call.stream_id, data)
            if taken:
                data = data[taken:]
                self._write_out()
                continue
            self._window.clear()
            await self._window.wait()

    def end(self, call: RpcCall) -> None:
        """Sends END_STREAM on the call's stream."""
        call.raise_if_ended()
        with _stream_of(call):
            self.h2.end_stream(call.stream_id)
        self._write_out()

    def cancel(self, call: RpcCall) -> None:
        """Resets the call's stream with CANCEL (ignored once the stream is gone)."""
        with contextlib.suppress(H2ProtocolError):
            self.h2.reset_stream(call.stream_id, ErrorCode.CANCEL)
        self._write_out()

    def forget(self, call: RpcCall) -> None:
        """The call has its status: no more events go to it (a draining connection closes after its last)."""
        self.calls.pop(call.stream_id, None)
        if self.draining and not self.calls:
            self.close()

    def close(self) -> None:
        """GOAWAY, then closes the transport; calls still open fail with UNAVAILABLE."""
        if self.transport is not None and not self.closed:
            with contextlib.suppress(H2ProtocolError):
                for stream_id in self.calls:  # the server learns each call was cancelled, not just the socket
                    self.h2.reset_stream(stream_id, ErrorCode.CANCEL)
                self.h2.close()
            self._write_out()
            self.transport.close()
        self._end("the channel was closed")

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Sends the HTTP/2 preface and SETTINGS and starts the keepalive PINGs."""
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            set_keepalive(sock)
        self.h2.initiate_connection()
        self._write_out()
        self.keepalive.start()

    def data_received(self, data: bytes) -> None:
        """Feeds the engine and routes its events to the calls."""
        for event in self.h2.receive_data(data):
            self._on_event(event)
        self._write_out()

    def eof_received(self) -> bool | None:
        """The server closed its side: the connection is over."""
        return None

    def pause_writing(self) -> None:
        """The socket buffer is full: senders wait."""
        self._writable = False

    def resume_writing(self) -> None:
        """The socket buffer drained: senders go on."""
        self._writable = True
        self._window.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Every open call fails with UNAVAILABLE."""
        self._end(f"the connection to the server was lost: {exc}" if exc else self._why)

    # -- internals ----------------------------------------------------------------------------------

    def _on_event(self, event: object) -> None:
        if isinstance(event, DataReceived):
            self.h2.acknowledge_received_data(event.stream_id, event.flow_controlled_length)  # messages are
            # bounded by max_message_bytes instead: a call's bytes are buffered until a message is whole
            call = self.calls.get(event.stream_id)
            if call is not None:
                call.on_data(event.data)
            return
        if isinstance(event, WindowUpdated):
            self._window.set()
        elif isinstance(event, PingAcked):
            self.keepalive.acked(event.opaque)
        elif isinstance(event, ConnectionTerminated):
            self._why = f"the server ended the connection (HTTP/2 error code {event.error_code:#x})"
            self._window.set()
            if event.error_code != ErrorCode.NO_ERROR or not event.remote:
                self._abort()
            elif self.calls:
                self.draining = True
            else:
                self.close()
        else:
            self._on_stream_event(event)

    def _on_stream_event(self, event: object) -> None:
        call = self.calls.get(getattr(event, "stream_id", 0))
        if call is None:
            return
        if isinstance(event, Response):
            call.on_headers(event)
        elif isinstance(event, TrailersReceived):
            call.on_trailers(event)
        elif isinstance(event, StreamEnded):
            call.on_end()
        elif isinstance(event, StreamReset):
            call.finish(
                status_for_reset(event.error_code),
                f"the server reset the call (HTTP/2 error code {event.error_code:#x})",
            )

    def _write_out(self) -> None:
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.closed:
            self.transport.write(out)

    def _ping(self, opaque: bytes) -> None:
        self.h2.ping(opaque)
        self._write_out()

    def _dead(self) -> None:
        self._why = "the server did not answer an HTTP/2 PING in time"
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._end(self._why)

    def _end(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.keepalive.stop()
        for call in list(self.calls.values()):
            call.finish(StatusCode.UNAVAILABLE, why)
        self.calls.clear()
        self._window.set()


class RpcChannel:
    """Calls to one server over one HTTP/2 connection, re-opened on demand after it ends."""

    def __init__(
        self,
        target: str,
        *,
        tls: ssl.SSLContext | None,
        server_name: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        connect_timeout: float = 10.0,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        config: H2Config | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.target = target
        self._host, self._port = parse_target(target)
        self._tls = tls
        self._server_name = server_name or self._host
        self._max_message = max_message_bytes
        self._connect_timeout = connect_timeout
        self._ping = (ping_interval, ping_timeout)
        self._config = config or H2Config()
        self._scheduler = scheduler or LoopScheduler()
        self._conn: _RpcConnection | None = None
        self._draining: set[_RpcConnection] = set()
        self._lock = asyncio.Lock()

    async def stream(self, method: str, *, metadata: tuple[tuple[str, str], ...] = ()) -> RpcCall:
        """Starts a streaming call of ``method`` (``/package.Service/Method``)."""
        conn = await self._connection()
        return conn.open(method, self._headers(metadata, None), max_message_bytes=self._max_message)

    async def unary(
        self,
        method: str,
        request: bytes,
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        timeout: float | None = None,  # noqa: ASYNC109 - also sent to the server, as grpc-timeout
    ) -> bytearray:
        """One request, one response; DEADLINE_EXCEEDED after ``timeout`` seconds (connecting included)."""
        call: RpcCall | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection()
                call = conn.open(
                    method, self._headers(metadata, timeout), max_message_bytes=self._max_message
                )
                await call.write(request)
                await call.done_writing()
                response = await call.read()
                if response is None:
                    raise RpcError(StatusCode.INTERNAL, "the server ended a unary call without a response")
                while await call.read() is not None:  # the status follows; an error after the answer counts
                    pass
                return response
        except TimeoutError as err:
            raise RpcError(
                StatusCode.DEADLINE_EXCEEDED, f"no answer from {self.target} within {timeout} s"
            ) from err
        finally:
            if call is not None:
                call.cancel()  # a no-op once the call ended; else (deadline, task cancelled) resets it

    async def close(self) -> None:
        """Closes the connection (idempotent); calls still open fail with UNAVAILABLE."""
        for conn in (self._conn, *self._draining):
            if conn is not None:
                conn.close()
        self._conn = None
        self._draining.clear()

    async def _connection(self) -> _RpcConnection:
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if conn is not None and not conn.closed:
                self._draining.add(conn)
            self._draining = {old for old in self._draining if not old.closed}
            self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> _RpcConnection:
        loop = asyncio.get_running_loop()
        authority = self._server_name if self._tls is not None else self.target
        scheme = "https" if self._tls is not None else "http"

        def factory() -> _RpcConnection:
            return _RpcConnection(
                authority=authority,
                scheme=scheme,
                config=self._config,
                scheduler=self._scheduler,
                ping=self._ping,
            )

        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    factory,
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._server_name if self._tls is not None else None,
                )
        except (OSError, ssl.SSLError, TimeoutError) as err:
            raise RpcError(
                StatusCode.UNAVAILABLE,
                f"cannot connect to {self.target}: {err or type(err).__name__}",
                hint="check that the server runs, is reachable, and that its certificate matches "
                f"the roots and the name {self._server_name!r}",
            ) from err
        if self._tls is not None:
            ssl_object = conn.transport.get_extra_info("ssl_object") if conn.transport else None
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                conn.close()
                raise RpcError(StatusCode.UNAVAILABLE, f"{self.target} did not agree to HTTP/2 (ALPN h2)")
        return conn

    def _headers(self, metadata: tuple[tuple[str, str], ...], timeout: float | None) -> list[tuple[str, str]]:
        headers = [("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", _USER_AGENT)]
        if timeout is not None:
            headers.append(("grpc-timeout", timeout_value(timeout)))
        headers.extend(metadata)
        return headers
