"""One HTTP/2 connection to a gRPC server, carrying :class:`~mesh.rt.rpc._call.RpcCall` streams."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from mesh.h2.config import H2Config
from mesh.h2.connection import Http2Engine
from mesh.h2.errors import ErrorCode, H2ProtocolError
from mesh.h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAcked,
    Response,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from mesh.rpc import StatusCode, status_for_reset
from mesh.rt.net.keepalive import Keepalive
from mesh.rt.net.sockets import set_keepalive
from mesh.rt.net.timers import Scheduler
from mesh.rt.rpc._call import RpcCall, stream_of

__all__ = ["RpcConnection"]


class RpcConnection(asyncio.Protocol):
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
        self.h2 = Http2Engine(client_side=True, config=config)
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
                with stream_of(call):
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
        with stream_of(call):
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
