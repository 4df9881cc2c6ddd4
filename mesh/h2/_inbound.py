"""Splitting received bytes into frames, with the DATA hot path (private).

DATA payloads are delivered as they arrive, as memoryview slices of the caller's buffer: a 1 MiB
frame read in 64 KiB pieces becomes 16 DataReceived events and is never copied. Only other frames
(and frame headers) that straddle two reads are assembled in a small tail buffer."""

from __future__ import annotations

from collections.abc import Callable

from mesh.h2 import frames as fr
from mesh.h2._headers_in import HeaderFrames
from mesh.h2._stream import CLOSED_LOCAL_RESET, Stream
from mesh.h2.config import H2Config
from mesh.h2.errors import ErrorCode, H2ConnectionError, H2StreamError
from mesh.h2.events import DataReceived, Event

__all__ = ["Inbound"]

_HEADER_LEN = 9
_unpack_header = fr.FRAME_HEADER.unpack_from
Handler = Callable[[int, int, memoryview], None]


class Inbound(HeaderFrames):
    """``receive_data``: bytes in, events out; connection errors become GOAWAY plus an event."""

    def __init__(self, *, client_side: bool, config: H2Config) -> None:
        super().__init__(client_side=client_side, config=config)
        self._handlers: dict[int, Handler] = {
            fr.HEADERS: self._on_headers,
            fr.PRIORITY: self._on_priority,
            fr.RST_STREAM: self._on_rst_stream,
            fr.SETTINGS: self._on_settings,
            fr.PUSH_PROMISE: self._on_push_promise,
            fr.PING: self._on_ping,
            fr.GOAWAY: self._on_goaway,
            fr.WINDOW_UPDATE: self._on_window_update,
            fr.CONTINUATION: self._on_continuation,
        }

    def _start(self) -> None:
        """Queues our preface; overridden by the connection class."""

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feeds bytes from the peer and returns the events they produce, in order.

        Never raises on bad input: a connection error queues GOAWAY and ends the list with
        ConnectionTerminated(remote=False); input after that is ignored. DataReceived payloads may be
        views of ``data``: consume them (or copy) before reusing a mutable input buffer."""
        if self._dead:
            return []
        if not self._initiated:
            self._start()
        events: list[Event] = []
        self._events = events
        try:
            self._feed(data)
        except H2ConnectionError as err:
            self._fail(err)
        return events

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        pos, end = 0, len(view)
        if self._preface_left:
            pos = self._eat_preface(view, end)
        while pos < end and not self._dead:
            if self._in_data:
                pos = self._continue_data(view, pos, end)
            elif self._tail:
                pos = self._feed_tail(view, pos, end)
            elif end - pos < _HEADER_LEN:
                self._tail += view[pos:end]
                return
            else:
                head = _unpack_header(view, pos)
                hi, lo, ftype, flags, _ = head
                if ftype == fr.DATA and not flags & fr.PADDED:
                    fast = self._data_fast(view, pos, end, head)
                    if fast >= 0:
                        pos = fast
                        continue
                need = self._frame_need(hi << 8 | lo, ftype, flags)
                if end - pos < need:
                    self._tail += view[pos:end]
                    return
                pos = self._frame(view, pos)

    def receive_data_frame(self, view: memoryview) -> int:
        """The shortest path for the commonest read: ``view`` (format "B") is exactly one unpadded
        DATA frame without END_STREAM for an open stream, within every limit. Then the frame is taken
        as ``receive_data`` would take it and its stream id is returned: the payload is
        ``view[9:]`` and counts as delivered (acknowledge it as a DataReceived). Otherwise returns 0
        and takes nothing: call ``receive_data`` with the same bytes."""
        if self._dead or self._preface_left or self._in_data or self._tail or not self._initiated:
            return 0
        length = len(view) - _HEADER_LEN
        if length <= 0:
            return 0
        sid: int
        hi, lo, ftype, flags, sid = _unpack_header(view, 0)
        if ftype != fr.DATA or flags or hi << 8 | lo != length:
            return 0
        sid &= 0x7FFFFFFF
        stream = self._take_data(sid, length)
        if stream is None:
            return 0
        stream.recv_unacked += length
        self._conn_unacked += length
        return sid

    def _take_data(self, sid: int, length: int) -> Stream | None:
        """Debits the receive windows for a non-empty DATA frame on an open stream within all limits
        and returns its stream; None (nothing debited) when the general path must judge the frame."""
        stream = self._streams.get(sid)
        if (
            stream is None
            or not length
            or length > stream.recv_window
            or length > self._recv_conn_window
            or length > self.config.max_frame_size
            or self._expect_settings
            or self._hb_sid
            or not stream.remote_open
            or not stream.headers_received
        ):
            return None
        self._recv_conn_window -= length
        stream.recv_window -= length
        self._empty_data = 0
        return stream

    def _data_fast(self, view: memoryview, pos: int, end: int, head: tuple[int, ...]) -> int:
        """The hot path: an unpadded DATA frame for an open stream within all limits. Returns the new
        position, or -1 when the frame needs the general path (errors, first frame, empty, ...)."""
        hi, lo, _, flags, sid = head
        length = hi << 8 | lo
        sid &= 0x7FFFFFFF
        stream = self._take_data(sid, length)
        if stream is None:
            return -1
        pos += _HEADER_LEN
        if end - pos < length:
            self._in_data, self._data_left, self._pad_left = True, length, 0
            self._data_sid, self._data_end, self._data_stream = sid, bool(flags & fr.END_STREAM), stream
            return pos
        self._events.append(DataReceived(sid, view[pos : pos + length], length))
        stream.recv_unacked += length
        self._conn_unacked += length
        if flags & fr.END_STREAM:
            self._end_remote(stream)
        return pos + length

    def _eat_preface(self, view: memoryview, end: int) -> int:
        done = len(fr.CONNECTION_PREFACE) - self._preface_left
        take = min(self._preface_left, end)
        if bytes(view[:take]) != fr.CONNECTION_PREFACE[done : done + take]:
            raise H2ConnectionError("invalid connection preface: the peer does not speak HTTP/2")
        self._preface_left -= take
        return take

    def _feed_tail(self, view: memoryview, pos: int, end: int) -> int:
        tail = self._tail
        if len(tail) < _HEADER_LEN:
            take = min(_HEADER_LEN - len(tail), end - pos)
            tail += view[pos : pos + take]
            pos += take
            if len(tail) < _HEADER_LEN:
                return pos
        hi, lo, ftype, flags, _ = _unpack_header(tail, 0)
        need = self._frame_need(hi << 8 | lo, ftype, flags)
        take = min(need - len(tail), end - pos)
        tail += view[pos : pos + take]
        pos += take
        if len(tail) >= need:
            whole = memoryview(bytes(tail))
            tail.clear()
            self._frame(whole, 0)
        return pos

    def _frame_need(self, length: int, ftype: int, flags: int) -> int:
        """Bytes needed before a frame can be handled: DATA only needs its header (and pad length)."""
        if length > self.config.max_frame_size:
            raise H2ConnectionError(
                f"frame of {length} bytes exceeds our SETTINGS_MAX_FRAME_SIZE {self.config.max_frame_size}",
                error_code=ErrorCode.FRAME_SIZE_ERROR,
            )
        if self._expect_settings and (ftype != fr.SETTINGS or flags & fr.ACK):
            raise H2ConnectionError(f"first frame is type {ftype}, not SETTINGS: invalid connection preface")
        if self._hb_sid and ftype != fr.CONTINUATION:
            raise H2ConnectionError(f"frame type {ftype} inside a header block (CONTINUATION expected)")
        if ftype == fr.DATA:
            return _HEADER_LEN + 1 if flags & fr.PADDED and length else _HEADER_LEN
        return _HEADER_LEN + length

    def _frame(self, view: memoryview, pos: int) -> int:
        hi, lo, ftype, flags, sid = _unpack_header(view, pos)
        length: int = hi << 8 | lo
        sid &= 0x7FFFFFFF
        self._expect_settings = False
        if ftype == fr.DATA:
            return self._data_start(view, pos, length, flags, sid)
        handler = self._handlers.get(ftype)
        if handler is not None:
            try:
                handler(flags, sid, view[pos + _HEADER_LEN : pos + _HEADER_LEN + length])
            except H2StreamError as err:
                self._stream_error(err)
        return pos + _HEADER_LEN + length

    def _data_start(self, view: memoryview, pos: int, length: int, flags: int, sid: int) -> int:
        if sid == 0:
            raise H2ConnectionError("DATA on stream 0")
        if length > self._recv_conn_window:
            raise H2ConnectionError(
                f"DATA of {length} bytes exceeds the connection window {self._recv_conn_window}",
                error_code=ErrorCode.FLOW_CONTROL_ERROR,
            )
        self._recv_conn_window -= length
        pad = -1
        if flags & fr.PADDED:
            if not length:
                raise H2ConnectionError(
                    "padded DATA without a pad length", error_code=ErrorCode.FRAME_SIZE_ERROR
                )
            pad = view[pos + _HEADER_LEN]
            if pad >= length:
                raise H2ConnectionError("DATA padding as long as the frame")
        payload = length - pad - 1 if pad >= 0 else length
        self._in_data, self._data_left, self._pad_left = True, payload, max(pad, 0)
        self._data_sid, self._data_end = sid, bool(flags & fr.END_STREAM)
        self._data_stream = None
        self._count_empty(payload)
        try:
            self._data_stream = self._data_target(sid, length)
        except H2StreamError as err:
            self._stream_error(err)
        if self._data_stream is None:
            self._owe_connection(length)
        elif pad >= 0:
            self._owe_connection(pad + 1)
            self._owe_stream(self._data_stream, pad + 1)
        pos += _HEADER_LEN + (1 if pad >= 0 else 0)
        if not payload and not self._pad_left:
            self._finish_data()
        return pos

    def _count_empty(self, payload: int) -> None:
        if payload or self._data_end:
            self._empty_data = 0
            return
        self._empty_data += 1
        if self._empty_data > self.config.max_empty_data_frames:
            raise H2ConnectionError(
                f"more than {self.config.max_empty_data_frames} empty DATA frames in a row",
                error_code=ErrorCode.ENHANCE_YOUR_CALM,
            )

    def _data_target(self, sid: int, length: int) -> Stream | None:
        """The stream that receives this DATA frame, None to drop it, or a stream error."""
        stream = self._streams.get(sid)
        if stream is None:
            if self._is_idle(sid):
                raise H2ConnectionError(f"DATA on idle stream {sid}")
            if self._closed.get(sid, CLOSED_LOCAL_RESET) != CLOSED_LOCAL_RESET:
                raise H2StreamError(sid, "DATA on a closed stream", error_code=ErrorCode.STREAM_CLOSED)
            return None
        if not stream.remote_open:
            raise H2StreamError(sid, "DATA after END_STREAM", error_code=ErrorCode.STREAM_CLOSED)
        if not stream.headers_received:
            raise H2StreamError(sid, "DATA before the response headers")
        if length > stream.recv_window:
            raise H2StreamError(
                sid,
                f"DATA of {length} bytes exceeds the stream window {stream.recv_window}",
                error_code=ErrorCode.FLOW_CONTROL_ERROR,
            )
        stream.recv_window -= length
        return stream

    def _continue_data(self, view: memoryview, pos: int, end: int) -> int:
        left = self._data_left
        if left:
            take = left if end - pos >= left else end - pos
            stream = self._data_stream
            if stream is not None:
                self._events.append(DataReceived(self._data_sid, view[pos : pos + take], take))
                stream.recv_unacked += take
                self._conn_unacked += take
            pos += take
            self._data_left = left = left - take
            if left:
                return pos
        pad = self._pad_left
        if pad:
            take = pad if end - pos >= pad else end - pos
            pos += take
            self._pad_left = pad = pad - take
            if pad:
                return pos
        self._finish_data()
        return pos

    def _finish_data(self) -> None:
        self._in_data = False
        stream, self._data_stream = self._data_stream, None
        if self._data_end and stream is not None and stream.stream_id in self._streams:
            self._end_remote(stream)
