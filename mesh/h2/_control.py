"""Receiving the control frames: SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY, PRIORITY,
PUSH_PROMISE (private)."""

from __future__ import annotations

import struct

from mesh.h2 import frames as fr
from mesh.h2._core import Core
from mesh.h2._stream import CLOSED_REMOTE_RESET
from mesh.h2.config import MAX_FRAME_SIZE_LIMIT, MAX_WINDOW, MIN_FRAME_SIZE
from mesh.h2.errors import ErrorCode, H2ConnectionError, H2StreamError
from mesh.h2.events import (
    ConnectionTerminated,
    PingAcked,
    SettingsAcknowledged,
    StreamReset,
    WindowUpdated,
)

__all__ = ["ControlFrames"]

_U32 = struct.Struct(">L")
_U32_PAIR = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")
_MAX_DEBUG_DATA = 1024


class ControlFrames(Core):
    """Handlers for every frame type except DATA, HEADERS and CONTINUATION."""

    # --- SETTINGS --------------------------------------------------------------------------------

    def _on_settings(self, flags: int, sid: int, payload: memoryview) -> None:
        if sid != 0:
            raise H2ConnectionError("SETTINGS on a stream")
        if flags & fr.ACK:
            if len(payload):
                raise H2ConnectionError("SETTINGS ACK with a payload", error_code=ErrorCode.FRAME_SIZE_ERROR)
            self._our_settings_acked()
            return
        if len(payload) % 6:
            raise H2ConnectionError(
                "SETTINGS length not a multiple of 6", error_code=ErrorCode.FRAME_SIZE_ERROR
            )
        grown: list[tuple[int, int]] = []
        for key, value in _SETTING.iter_unpack(payload):
            self._apply_setting(key, value, grown)
        self._queue_control(fr.settings_frame(ack=True))
        for stream_id, delta in grown:
            self._events.append(WindowUpdated(stream_id, delta))

    def _apply_setting(self, key: int, value: int, grown: list[tuple[int, int]]) -> None:
        if key == fr.SETTINGS_INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise H2ConnectionError(
                    f"SETTINGS_INITIAL_WINDOW_SIZE {value} above 2^31-1",
                    error_code=ErrorCode.FLOW_CONTROL_ERROR,
                )
            self._peer_window_changed(value - self._peer_initial_window, grown)
            self._peer_initial_window = value
        elif key == fr.SETTINGS_MAX_FRAME_SIZE:
            if not MIN_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                raise H2ConnectionError(f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
            self._peer_max_frame = value
        elif key == fr.SETTINGS_MAX_CONCURRENT_STREAMS:
            self._peer_max_streams = value
        elif key == fr.SETTINGS_HEADER_TABLE_SIZE:
            self._codec.peer_table_size(value)
        elif key == fr.SETTINGS_ENABLE_PUSH:
            if value > 1 or (value == 1 and self.client_side):
                raise H2ConnectionError(f"SETTINGS_ENABLE_PUSH {value} not allowed")
        elif key == fr.SETTINGS_ENABLE_CONNECT_PROTOCOL and value > 1:
            raise H2ConnectionError(f"SETTINGS_ENABLE_CONNECT_PROTOCOL {value} not allowed")

    def _peer_window_changed(self, delta: int, grown: list[tuple[int, int]]) -> None:
        if not delta:
            return
        for stream in self._streams.values():
            stream.send_window += delta
            if stream.send_window > MAX_WINDOW:
                raise H2ConnectionError(
                    f"stream {stream.stream_id} send window above 2^31-1 after SETTINGS",
                    error_code=ErrorCode.FLOW_CONTROL_ERROR,
                )
            if delta > 0:
                grown.append((stream.stream_id, delta))

    def _our_settings_acked(self) -> None:
        if self._settings_unacked == 0:
            return
        self._settings_unacked -= 1
        if self._recv_initial_window != self.config.initial_window_size:
            delta = self.config.initial_window_size - self._recv_initial_window
            self._recv_initial_window = self.config.initial_window_size
            for stream in self._streams.values():
                stream.recv_window += delta
        self._codec.allow_table_size(self.config.header_table_size)
        self._events.append(SettingsAcknowledged())

    # --- PING, WINDOW_UPDATE ---------------------------------------------------------------------

    def _on_ping(self, flags: int, sid: int, payload: memoryview) -> None:
        if len(payload) != 8:
            raise H2ConnectionError("PING length is not 8", error_code=ErrorCode.FRAME_SIZE_ERROR)
        if sid != 0:
            raise H2ConnectionError("PING on a stream")
        if flags & fr.ACK:
            self._events.append(PingAcked(bytes(payload)))
        else:
            self._queue_control(fr.ping_frame(bytes(payload), ack=True))

    def _on_window_update(self, flags: int, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise H2ConnectionError("WINDOW_UPDATE length is not 4", error_code=ErrorCode.FRAME_SIZE_ERROR)
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise H2ConnectionError("connection WINDOW_UPDATE with increment 0")
            self._send_conn_window += increment
            if self._send_conn_window > MAX_WINDOW:
                raise H2ConnectionError(
                    "connection send window above 2^31-1", error_code=ErrorCode.FLOW_CONTROL_ERROR
                )
            self._events.append(WindowUpdated(0, increment))
            return
        stream = self._streams.get(sid)
        if stream is None:
            if self._is_idle(sid):
                raise H2ConnectionError(f"WINDOW_UPDATE on idle stream {sid}")
            return
        if increment == 0:
            raise H2StreamError(sid, "WINDOW_UPDATE with increment 0")
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise H2StreamError(sid, "send window above 2^31-1", error_code=ErrorCode.FLOW_CONTROL_ERROR)
        self._events.append(WindowUpdated(sid, increment))

    # --- RST_STREAM, GOAWAY ----------------------------------------------------------------------

    def _on_rst_stream(self, flags: int, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise H2ConnectionError("RST_STREAM length is not 4", error_code=ErrorCode.FRAME_SIZE_ERROR)
        if sid == 0:
            raise H2ConnectionError("RST_STREAM on stream 0")
        stream = self._streams.get(sid)
        if stream is None:
            if self._is_idle(sid):
                raise H2ConnectionError(f"RST_STREAM on idle stream {sid}")
            return
        code = _U32.unpack(payload)[0]
        premature = not stream.local_initiated and not stream.headers_sent
        self._close_stream(stream, CLOSED_REMOTE_RESET)
        self._events.append(StreamReset(sid, code, remote=True))
        if premature:
            self._charge("peer resets before an answer (Rapid Reset)")

    def _on_goaway(self, flags: int, sid: int, payload: memoryview) -> None:
        if sid != 0:
            raise H2ConnectionError("GOAWAY on a stream")
        if len(payload) < 8:
            raise H2ConnectionError("GOAWAY shorter than 8 bytes", error_code=ErrorCode.FRAME_SIZE_ERROR)
        last, code = _U32_PAIR.unpack_from(payload)
        last &= 0x7FFFFFFF
        self._goaway_received = True
        debug = bytes(payload[8 : 8 + _MAX_DEBUG_DATA])
        self._events.append(ConnectionTerminated(code, last, remote=True, additional_data=debug))
        for stream in [s for s in self._streams.values() if s.local_initiated and s.stream_id > last]:
            self._close_stream(stream, CLOSED_REMOTE_RESET)
            self._events.append(StreamReset(stream.stream_id, ErrorCode.REFUSED_STREAM, remote=True))

    # --- PRIORITY, PUSH_PROMISE ------------------------------------------------------------------

    def _on_priority(self, flags: int, sid: int, payload: memoryview) -> None:
        if sid == 0:
            raise H2ConnectionError("PRIORITY on stream 0")
        if len(payload) != 5:
            if self._is_idle(sid):
                raise H2ConnectionError("PRIORITY length is not 5", error_code=ErrorCode.FRAME_SIZE_ERROR)
            raise H2StreamError(sid, "PRIORITY length is not 5", error_code=ErrorCode.FRAME_SIZE_ERROR)

    def _on_push_promise(self, flags: int, sid: int, payload: memoryview) -> None:
        raise H2ConnectionError("PUSH_PROMISE received but push is disabled")
