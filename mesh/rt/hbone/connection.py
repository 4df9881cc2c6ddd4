"""One HBONE HTTP/2 connection over TLS: the engine driven by an ``asyncio.Protocol``.

Shared by both roles: feeding bytes to the engine and events to streams, one write per callback,
window acknowledgements batched per read, the read cap and TLS write backpressure. Closing, graceful
drain, GOAWAY and the keepalive callbacks are in :mod:`~mesh.rt.hbone._lifecycle` (cold code, kept
out of the hot loop's module). :mod:`~mesh.rt.hbone.client` and :mod:`~mesh.rt.hbone.server` add the
role-specific parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import ClassVar, cast

from mesh.h2.connection import Http2Engine
from mesh.h2.errors import ErrorCode, H2ProtocolError
from mesh.h2.events import (
    ConnectionTerminated,
    ConnectRequest,
    DataReceived,
    Event,
    InvalidRequest,
    PingAcked,
    Response,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from mesh.h2.frames import FRAME_HEADER
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.hbone._lifecycle import ConnectionLifecycle
from mesh.rt.hbone._log import EventLog, default_log
from mesh.rt.hbone.config import HboneConfig
from mesh.rt.hbone.errors import ConnectionClosedError, KeepaliveTimeoutError
from mesh.rt.hbone.stream import HboneStream
from mesh.rt.net.buffers import SpareBuffers
from mesh.rt.net.keepalive import Keepalive
from mesh.rt.net.timers import LoopScheduler, Scheduler
from mesh.rt.tls import PeerRejectedError, peer_serial

__all__ = ["ConnectionClosedError", "HboneConnection", "KeepaliveTimeoutError"]  # errors re-exported

_FRAME_HEADER = FRAME_HEADER.size
_READ_BUFFER = 256 * 1024 + 256
"""uvloop decrypts at most 256 KiB per read; one buffer of that size is reused across reads."""


class HboneConnection(ConnectionLifecycle, asyncio.BufferedProtocol):
    """Drives an engine over a TLS transport; subclasses verify the peer and handle their role's events."""

    client_side: ClassVar[bool]
    ready_on_settings_ack: ClassVar[bool] = False
    """Whether ``ready`` waits for the peer to acknowledge our SETTINGS: in TLS 1.3 a server refuses a
    client certificate only after the client's handshake finished, so a client knows it was accepted
    once the server speaks HTTP/2 to it."""

    def __init__(
        self,
        *,
        config: HboneConfig | None = None,
        scheduler: Scheduler | None = None,
        log: EventLog | None = None,
    ) -> None:
        self.config = config or HboneConfig()
        self._scheduler = scheduler or LoopScheduler()
        self.log = log or default_log()
        self.h2 = Http2Engine(client_side=self.client_side, config=self.config.h2)
        self.transport: asyncio.Transport | None = None
        self.peer_identity: WorkloadIdentity | None = None
        self.peer_serial: int | None = None
        """The serial number of the peer's verified certificate (to find it if it is revoked)."""
        self.streams: dict[int, HboneStream] = {}
        self.buffered_bytes = 0
        self.write_blocked = False
        self._acks: dict[int, int] = {}
        self._read_buffer = bytearray()  # sized once TLS is up: a handshake that fails costs nothing
        self._spares = SpareBuffers(size=_READ_BUFFER)
        self._blocked: dict[int, HboneStream] = {}
        self._in_batch = False
        self._flush_scheduled = False
        self._read_paused = False
        self._closed = False
        self._close_reason: BaseException | None = None
        self.going_away = False
        self._goaway_received = False
        self.keepalive = Keepalive(
            scheduler=self._scheduler,
            interval=self.config.keepalive_interval,
            timeout=self.config.keepalive_timeout,
            send_ping=self._send_ping,
            on_dead=self._peer_dead,
        )
        self._idle_waiters: list[asyncio.Future[None]] = []
        loop = self._loop = asyncio.get_running_loop()  # kept: get_running_loop() is a getpid() each call
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    # -- role hooks -----------------------------------------------------------------------------------

    def verify_peer(self, ssl_object: ssl.SSLObject) -> WorkloadIdentity:
        """Checks the TLS peer; raises :class:`~mesh.rt.tls.PeerRejectedError` to refuse it."""
        raise NotImplementedError

    def on_connect_request(self, event: ConnectRequest) -> None:
        """Server role: a new CONNECT stream."""
        self.reset_stream(event.stream_id, ErrorCode.REFUSED_STREAM)

    def on_response(self, event: Response) -> None:
        """Client role: response headers for one of our streams."""

    def on_stream_finished(self, stream: HboneStream) -> None:
        """A stream ended (both ways, or reset)."""

    # -- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """TLS is up: check the peer, then start HTTP/2 and keepalive."""
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            if ssl_object is None:
                raise PeerRejectedError("the connection is not TLS", reason="plaintext")
            self.peer_identity = self.verify_peer(ssl_object)
            self.peer_serial = peer_serial(ssl_object)
        except PeerRejectedError as exc:
            self.log.warning("hbone.peer_rejected", reason=exc.reason, error=str(exc), **self._where())
            self._close_reason = exc
            self._closed = True
            transport.abort()
            return
        self._read_buffer = bytearray(_READ_BUFFER)
        transport.set_write_buffer_limits(high=self.config.tls_write_high_water)
        self.h2.initiate_connection()
        self.flush()
        self.keepalive.start()
        if not self.ready_on_settings_ack and not self.ready.done():
            self.ready.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        """The buffer TLS decrypts into, reused while nothing still refers to the previous read.

        The engine hands out DATA as views of this buffer. A view that outlives its read (held by a
        transport's write queue, or a paused stream) keeps the buffer exported; a bytearray with
        exports cannot be resized, which is how we notice and switch to a fresh buffer instead.
        """
        buf = self._read_buffer
        try:
            buf.append(0)
            del buf[-1]
        except BufferError:
            buf = self._read_buffer = self._spares.swap(buf)
        if len(buf) < _READ_BUFFER and self.streams:  # busy again after an idle spell
            buf = self._read_buffer = bytearray(_READ_BUFFER)
        # A view, not the bytearray: CPython 3.11's SSL transport fills a large read in pieces
        # through ``buf[offset:]``, which for a bytearray would be a copy (the bytes would be lost).
        return memoryview(buf)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were decrypted into the read buffer: feed the engine, dispatch, write once."""
        if self._closed:
            return
        data = memoryview(self._read_buffer)[:nbytes]
        self._in_batch = True
        try:
            lone = self.h2.receive_data_frame(data)
            if lone:  # one DATA frame, the commonest read: no events to build
                stream = self.streams.get(lone)
                if stream is None:
                    self.ack(lone, nbytes - _FRAME_HEADER)
                else:
                    stream.on_data(data[_FRAME_HEADER:], nbytes - _FRAME_HEADER)
            else:
                self._dispatch(self.h2.receive_data(data))
        finally:
            self._in_batch = False
        if self._acks:
            self._flush_acks()
        if not self.write_blocked:  # a peer that does not read: the engine's control budget applies
            out = self.h2.data_to_send()
            if out and not self._closed:
                self.transport.write(out)  # type: ignore[union-attr]
        if self.buffered_bytes or self._read_paused:
            self._control_reading()

    def _dispatch(self, events: list[Event]) -> None:
        streams = self.streams
        for event in events:
            if type(event) is DataReceived:
                stream = streams.get(event.stream_id)
                if stream is None:
                    self.ack(event.stream_id, event.flow_controlled_length)
                else:
                    stream.on_data(event.data, event.flow_controlled_length)
            else:
                self._on_event(event)
        events.clear()  # the engine keeps the list: drop the views into the read buffer now

    def eof_received(self) -> bool | None:
        """The peer closed TLS: the connection ends (HTTP/2 has no half-closed connection)."""
        return None

    def pause_writing(self) -> None:
        """The TLS write buffer is full: streams stop handing bytes to the engine."""
        self.write_blocked = True

    def resume_writing(self) -> None:
        """The TLS write buffer drained: streams waiting for it send again."""
        self.write_blocked = False
        self._pump()
        self.flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Every stream on the connection ends with it."""
        self._closed = True
        self.keepalive.stop()
        reason = self._close_reason or exc
        if not self.ready.done():
            self.ready.set_exception(reason or ConnectionClosedError("the connection closed during set-up"))
        for stream in list(self.streams.values()):
            stream.on_connection_lost(reason)
        self.streams.clear()
        self._blocked.clear()
        self._wake_idle_waiters()
        if not self.closed.done():
            self.closed.set_result(None)

    # -- used by streams ------------------------------------------------------------------------------

    def ack(self, stream_id: int, length: int) -> None:
        """Queues a window acknowledgement; :meth:`flush` sends it."""
        self._acks[stream_id] = self._acks.get(stream_id, 0) + length

    def flush(self) -> None:
        """Hands queued acknowledgements to the engine and writes its output (not inside a read batch).

        While the TLS write buffer is over its high-water mark, output stays in the engine: what a
        non-reading peer provokes (PING and SETTINGS acks, resets) then runs into the engine's bound on
        queued control frames, which ends the connection with ENHANCE_YOUR_CALM (catalogue 16).
        """
        if self._in_batch or self._closed:
            return
        if self._acks:
            self._flush_acks()
        if not self.write_blocked:
            self._write_out()
        if self.buffered_bytes or self._read_paused:
            self._control_reading()

    def flush_soon(self) -> None:
        """Flushes once at the end of this event-loop pass: the DATA of every stream written meanwhile
        leaves in one TLS write (one record, one syscall) instead of one each."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def _write_out(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _flush_acks(self) -> None:
        for stream_id, length in self._acks.items():
            try:
                self.h2.acknowledge_received_data(stream_id, length)
            except H2ProtocolError:
                continue
        self._acks.clear()

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Resets one stream (the caller flushes)."""
        try:
            self.h2.reset_stream(stream_id, error_code)
        except H2ProtocolError:
            return

    def stream_blocked(self, stream: HboneStream) -> None:
        """``stream`` has bytes waiting for send window."""
        self._blocked[stream.stream_id] = stream

    def stream_finished(self, stream: HboneStream) -> None:
        """``stream`` is over; forget it."""
        self.streams.pop(stream.stream_id, None)
        self._blocked.pop(stream.stream_id, None)
        self.on_stream_finished(stream)
        if not self.streams:
            self._wake_idle_waiters()

    # -- internals ------------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if type(event) is StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_end()
        elif type(event) is WindowUpdated:
            if event.stream_id == 0:
                self._pump()
            else:
                blocked = self._blocked.get(event.stream_id)
                if blocked is not None and blocked.on_window():
                    self._blocked.pop(event.stream_id, None)
        elif type(event) is ConnectRequest:
            self.on_connect_request(event)
        elif type(event) is Response:
            self.on_response(event)
        elif type(event) is StreamReset:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_reset(event.error_code, remote=event.remote)
        elif type(event) is PingAcked:
            self.keepalive.acked(event.opaque)
        elif type(event) is SettingsAcknowledged:
            if not self.ready.done():
                self.ready.set_result(None)
        elif type(event) is ConnectionTerminated:
            self._on_terminated(event)
        elif type(event) is InvalidRequest:
            self._refuse_invalid(event)

    def _refuse_invalid(self, event: InvalidRequest) -> None:
        self.log.info("hbone.invalid_request", method=event.method, reason=event.reason, **self._where())
        with contextlib.suppress(H2ProtocolError):
            self.h2.send_response(event.stream_id, 400, end_stream=True)
        self.reset_stream(event.stream_id, ErrorCode.NO_ERROR)

    def _pump(self) -> None:
        if not self._blocked:
            return
        for stream_id, stream in list(self._blocked.items()):
            if self.write_blocked:
                break
            if stream.on_window():
                self._blocked.pop(stream_id, None)
            else:  # round robin: it goes to the back
                self._blocked[stream_id] = self._blocked.pop(stream_id)

    def _control_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        cap = self.config.read_buffer_cap
        if not self._read_paused and self.buffered_bytes > cap:
            self._read_paused = True
            transport.pause_reading()
        elif self._read_paused and self.buffered_bytes <= cap // 2:
            self._read_paused = False
            transport.resume_reading()
