"""One HBONE CONNECT stream, seen as an ``asyncio.Transport`` by the protocol that carries its bytes.

Protocols receive ``bytes``, or zero-copy ``memoryview`` slices if they declare
``accepts_memoryview = True`` (views of an immutable read buffer, safe to keep).

Flow control is end to end:

- inbound, bytes are handed to the protocol at once unless it paused us; their HTTP/2 window is given
  back (``acknowledge_received_data``) only while we are not paused, i.e. once the far side's transport
  drained below its low-water mark. While paused (or before a protocol is attached) bytes wait here,
  bounded by the stream window the peer must respect;
- outbound, ``write`` hands bytes to the engine as far as the send windows allow; the rest waits here
  and the protocol is told ``pause_writing`` until window updates drain it.

Half-close: ``write_eof`` sends END_STREAM; END_STREAM from the peer becomes ``eof_received``.
A reset (either side) ends the stream at once with :class:`StreamResetError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mesh.h2.errors import ErrorCode, H2ProtocolError
from mesh.rt.hbone.errors import StreamResetError
from mesh.rt.net.relay import StreamTransport

if TYPE_CHECKING:
    from mesh.rt.hbone.connection import HboneConnection

__all__ = ["ACK_BATCH", "WRITELINES_MIN", "HboneStream", "StreamResetError"]

WRITELINES_MIN = 64 * 1024
"""Writes this big go to TLS as frame headers plus the payload itself (``writelines``): TLS encrypts
straight from the caller's bytes, one copy less (about 5 % of relay CPU in bulk). Smaller writes are
joined, so a small message stays one TLS record."""

ACK_BATCH = 32 * 1024
"""Window given back per stream in steps of at least this much: small messages do not each cost an
engine call. 100 streams hold back at most 3.2 MiB of the 16 MiB connection window."""


class HboneStream(StreamTransport):
    """The transport of one CONNECT stream on an :class:`~mesh.rt.hbone.connection.HboneConnection`."""

    def __init__(self, conn: HboneConnection, stream_id: int, *, extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._conn = conn
        self.stream_id = stream_id
        self._protocol: asyncio.BaseProtocol | None = None
        self._proto: asyncio.Protocol | None = None
        self._views_ok = False
        self._inbox: deque[tuple[bytes | memoryview, int]] = deque()
        self._inbox_bytes = 0
        self._unacked = 0  # delivered while paused: acknowledged on resume
        self._owed = 0  # delivered and drained, acknowledged in batches of ACK_BATCH
        self._reading_paused = False
        self._remote_ended = False
        self._eof_delivered = False
        self._outbox: deque[bytes | memoryview] = deque()
        self._outbox_bytes = 0
        self._eof_requested = False
        self._local_ended = False
        self._writing_paused = False
        self._closing = False
        self._finished = False
        self.reset_error: StreamResetError | None = None
        self.response_headers: tuple[tuple[str, str], ...] = ()
        self.bytes_sent = 0
        """Bytes written to the stream (for telemetry)."""
        self.bytes_received = 0
        """Bytes (with padding) the peer sent on the stream and that were delivered."""
        self._done_callbacks: list[Callable[[], None]] = []

    # -- asyncio.Transport --------------------------------------------------------------------------

    def attach(self, protocol: asyncio.Protocol) -> None:
        """Connects ``protocol`` (calls its ``connection_made``) and hands it anything already received."""
        self._protocol = self._proto = protocol
        self._views_ok = bool(getattr(protocol, "accepts_memoryview", False))
        protocol.connection_made(self)
        if self._finished:
            protocol.connection_lost(self.reset_error)
            return
        if self._outbox:
            self._set_writing_paused(True)
        self._deliver_backlog()
        self._conn.flush()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replaces the protocol (no callbacks are made)."""
        self._protocol = protocol
        self._proto = protocol if isinstance(protocol, asyncio.Protocol) else None
        self._views_ok = bool(getattr(protocol, "accepts_memoryview", False))

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The attached protocol."""
        assert self._protocol is not None, "no protocol attached to this stream yet"
        return self._protocol

    def is_reading(self) -> bool:
        """False while paused."""
        return not self._reading_paused

    def pause_reading(self) -> None:
        """Stops delivering bytes and stops giving the peer window back."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        """Gives back the window of bytes the protocol took while paused and delivers the backlog."""
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._unacked:
            self._conn.ack(self.stream_id, self._unacked)
            self._unacked = 0
        self._deliver_backlog()
        self._conn.flush()

    def is_closing(self) -> bool:
        """True once closed, aborted, reset or ended both ways."""
        return self._closing or self._finished

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet handed to the engine (waiting for window)."""
        return self._outbox_bytes

    def can_write_eof(self) -> bool:
        """END_STREAM carries the half-close."""
        return True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Sends ``data`` as DATA frames, as far as the windows allow; the rest waits here."""
        if self._eof_requested or self._finished:
            return  # like a closed socket transport: late writes are dropped
        conn = self._conn
        if len(data) < WRITELINES_MIN and not (self._outbox or conn.write_blocked or conn._closed):
            if conn._in_batch or len(conn.streams) > 1:  # leaves with the batch, or once per loop pass
                if conn.h2.queue_small_data(self.stream_id, data):
                    self.bytes_sent += len(data)
                    if not conn._in_batch:
                        conn.flush_soon()
                    return
            else:  # a lone stream's small write: one frame, now
                frame = conn.h2.frame_data(self.stream_id, data)
                if frame:
                    self.bytes_sent += len(data)
                    conn.transport.write(frame)  # type: ignore[union-attr]
                    return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer
        self.bytes_sent += len(data)
        if self._outbox or conn.write_blocked:
            if data:
                self._queue(data)
        elif data:
            try:
                sent = conn.h2.send_data(self.stream_id, data)
            except H2ProtocolError:
                return  # the stream was reset; the event arrives with the next read
            if sent < len(data):
                self._queue(memoryview(data)[sent:])
        if conn._in_batch or conn.write_blocked or conn._closed:
            return
        if len(data) >= WRITELINES_MIN:  # frame headers and payload as they are: no joined copy
            conn.transport.writelines(conn.h2.data_to_send_pieces())  # type: ignore[union-attr]
            return
        if len(conn.streams) > 1:
            conn.flush_soon()  # small writes of this loop pass, from all streams, leave together
            return
        out = conn.h2.data_to_send()  # a lone stream has nothing to wait for: write now
        if out:
            conn.transport.write(out)  # type: ignore[union-attr]

    def write_eof(self) -> None:
        """Half-closes: END_STREAM after the bytes already written."""
        if self._eof_requested or self._finished:
            return
        self._eof_requested = True
        if not self._outbox:
            self._send_end()
            self._conn.flush()

    def close(self) -> None:
        """Sends what is buffered and END_STREAM; a peer that still sends is then cancelled."""
        if self._closing or self._finished:
            return
        self._closing = True
        self._reading_paused = True
        self.write_eof()
        if self._local_ended and not self._finished:
            self._cancel_remote()

    def abort(self) -> None:
        """Resets the stream (CANCEL) and drops anything buffered."""
        self.reset(ErrorCode.CANCEL)

    def reset_stream(self) -> None:
        """Resets the stream with CONNECT_ERROR: what a TCP reset becomes (RFC 9113 section 8.5)."""
        self.reset(ErrorCode.CONNECT_ERROR)

    def reset(self, error_code: int) -> None:
        """Resets the stream with ``error_code`` (CONNECT_ERROR for a TCP reset, RFC 9113 section 8.5)."""
        if self._finished:
            return
        self._conn.reset_stream(self.stream_id, error_code)
        self.on_reset(error_code, remote=False)
        self._conn.flush()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Runs ``callback`` once the stream is over (at once if it already is)."""
        if self._finished:
            callback()
        else:
            self._done_callbacks.append(callback)

    def refuse(self) -> None:
        """After a final response with END_STREAM: drop what the peer sent, ask it to stop (NO_ERROR)."""
        if self._finished:
            return
        self._local_ended = self._eof_requested = True
        if not self._remote_ended:
            self._conn.reset_stream(self.stream_id, ErrorCode.NO_ERROR)
        self._drop_inbox()
        self._finish(None)

    # -- engine side: called by the connection --------------------------------------------------------

    def on_data(self, data: bytes | memoryview, flow_length: int) -> None:
        """Bytes arrived for this stream."""
        proto = self._proto
        if self._reading_paused or proto is None or self._inbox:
            if self._closing:  # we stopped reading for good: give the window back, drop the bytes
                self._conn.ack(self.stream_id, flow_length)
                return
            self._inbox.append((data, flow_length))
            self._inbox_bytes += len(data)
            self._conn.buffered_bytes += len(data)
            return
        self.bytes_received += flow_length
        proto.data_received(data if self._views_ok else bytes(data))  # type: ignore[arg-type]
        if self._reading_paused:
            self._unacked += flow_length
            return
        owed = self._owed + flow_length
        if owed >= ACK_BATCH:
            self._conn.ack(self.stream_id, owed)
            owed = 0
        self._owed = owed

    def on_end(self) -> None:
        """The peer sent END_STREAM."""
        self._remote_ended = True
        if not self._inbox and not self._reading_paused:
            self._deliver_eof()

    def on_reset(self, error_code: int, *, remote: bool) -> None:
        """The stream is gone; the protocol learns at once (MadeYouReset: its upstream closes now)."""
        if self._finished:
            return
        self.reset_error = StreamResetError(self.stream_id, error_code, remote=remote)
        self._drop_inbox()
        self._outbox.clear()
        self._outbox_bytes = 0
        self._finish(self.reset_error)

    def on_window(self) -> bool:
        """The send window grew: sends what waits. True once nothing waits any more."""
        while self._outbox and not self._conn.write_blocked:
            chunk = self._outbox[0]
            try:
                sent = self._conn.h2.send_data(self.stream_id, chunk)
            except H2ProtocolError:
                return True  # the stream went away; its reset event follows
            self._outbox_bytes -= sent
            if sent < len(chunk):
                self._outbox[0] = memoryview(chunk)[sent:]
                return False
            self._outbox.popleft()
        if self._outbox:
            return False
        if self._eof_requested and not self._local_ended:
            self._send_end()
            if self._closing and not self._finished:
                self._cancel_remote()
        self._set_writing_paused(False)
        return True

    def on_connection_lost(self, exc: BaseException | None) -> None:
        """The HTTP/2 connection under this stream ended."""
        if not self._finished:
            self._drop_inbox()
            self._finish(exc or StreamResetError(self.stream_id, ErrorCode.CANCEL, remote=True))

    # -- internals ----------------------------------------------------------------------------------

    def _queue(self, data: bytes | memoryview) -> None:
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        self._conn.stream_blocked(self)
        self._set_writing_paused(True)

    def _send_end(self) -> None:
        self._local_ended = True
        try:
            self._conn.h2.end_stream(self.stream_id)
        except H2ProtocolError:
            return
        if self._eof_delivered:
            self._finish(None)

    def _cancel_remote(self) -> None:
        if self._remote_ended:
            self._drop_inbox()
            if not self._eof_delivered:
                self._eof_delivered = True
                self._finish(None)
            return
        self._conn.reset_stream(self.stream_id, ErrorCode.CANCEL)
        self._drop_inbox()
        self._finish(None)

    def _deliver_backlog(self) -> None:
        proto = self._proto
        while self._inbox and not self._reading_paused and proto is not None and not self._finished:
            data, flow_length = self._inbox.popleft()
            self._inbox_bytes -= len(data)
            self._conn.buffered_bytes -= len(data)
            self.bytes_received += flow_length
            proto.data_received(data if self._views_ok else bytes(data))  # type: ignore[arg-type]
            if self._reading_paused:
                self._unacked += flow_length
            else:
                self._conn.ack(self.stream_id, flow_length)
        if not self._inbox and self._remote_ended and not self._reading_paused:
            self._deliver_eof()

    def _deliver_eof(self) -> None:
        if self._eof_delivered or self._proto is None or self._finished:
            return
        self._eof_delivered = True
        self._proto.eof_received()
        if self._local_ended:
            self._finish(None)

    def _drop_inbox(self) -> None:
        flow = sum(n for _, n in self._inbox) + self._unacked + self._owed
        self._conn.buffered_bytes -= self._inbox_bytes
        self._inbox.clear()
        self._inbox_bytes = 0
        self._unacked = self._owed = 0
        if flow:
            self._conn.ack(self.stream_id, flow)  # the connection window must come back

    def _set_writing_paused(self, paused: bool) -> None:
        if paused == self._writing_paused:
            return
        self._writing_paused = paused
        if self._protocol is None or self._finished:
            return
        if paused:
            self._protocol.pause_writing()
        else:
            self._protocol.resume_writing()

    def _finish(self, exc: BaseException | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._drop_inbox()  # every byte's window goes back to the connection
        self._conn.stream_finished(self)
        if self._protocol is not None:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback()
