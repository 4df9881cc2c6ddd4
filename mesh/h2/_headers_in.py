"""Receiving HEADERS and CONTINUATION: assembling, decoding and judging header blocks (private)."""

from __future__ import annotations

from mesh.h2 import frames as fr
from mesh.h2._control import ControlFrames
from mesh.h2._stream import CLOSED_LOCAL_RESET, CLOSED_REMOTE_RESET, Stream
from mesh.h2.errors import ErrorCode, H2ConnectionError, H2StreamError
from mesh.h2.events import ConnectRequest, InvalidRequest, RequestReceived, Response, TrailersReceived
from mesh.h2.headers import (
    Fields,
    MalformedHeadersError,
    parse_request,
    parse_response,
    parse_trailers,
)

__all__ = ["HeaderFrames"]


class HeaderFrames(ControlFrames):
    """HEADERS/CONTINUATION handling with the CONTINUATION-flood and header-list bounds."""

    def _on_headers(self, flags: int, sid: int, payload: memoryview) -> None:
        if sid == 0:
            raise H2ConnectionError("HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & fr.PADDED:
            if not end:
                raise H2ConnectionError(
                    "padded HEADERS without a pad length", error_code=ErrorCode.FRAME_SIZE_ERROR
                )
            start, end = 1, end - payload[0]
        if flags & fr.PRIORITY_FLAG:
            start += 5
        if start > end:
            raise H2ConnectionError("HEADERS padding or priority longer than the frame")
        fragment = bytes(payload[start:end])
        self._hb_end_stream = bool(flags & fr.END_STREAM)
        if flags & fr.END_HEADERS:
            self._header_block(sid, fragment)
            return
        self._hb_sid, self._hb_parts, self._hb_size, self._hb_count = sid, [fragment], 0, 0
        self._grow_block(len(fragment))

    def _on_continuation(self, flags: int, sid: int, payload: memoryview) -> None:
        if self._hb_sid == 0 or sid != self._hb_sid:
            raise H2ConnectionError(f"CONTINUATION on stream {sid} without a header block in progress")
        self._hb_count += 1
        if self._hb_count > self.config.max_continuation_frames:
            raise H2ConnectionError(
                f"more than {self.config.max_continuation_frames} CONTINUATION frames in one header block",
                error_code=ErrorCode.ENHANCE_YOUR_CALM,
            )
        self._hb_parts.append(bytes(payload))
        self._grow_block(len(payload))
        if flags & fr.END_HEADERS:
            block = b"".join(self._hb_parts)
            self._hb_sid, self._hb_parts = 0, []
            self._header_block(sid, block)

    def _grow_block(self, n: int) -> None:
        self._hb_size += n
        if self._hb_size > self.config.max_header_list_size:
            raise H2ConnectionError(
                f"header block above {self.config.max_header_list_size} bytes",
                error_code=ErrorCode.ENHANCE_YOUR_CALM,
            )

    def _header_block(self, sid: int, block: bytes) -> None:
        fields = self._codec.decode(block)  # always, to keep the HPACK state in step with the peer
        end_stream = self._hb_end_stream
        stream = self._streams.get(sid)
        if stream is not None:
            self._headers_on_stream(stream, fields, end_stream)
        elif self._is_local_id(sid):
            self._headers_on_closed(sid, local=True)
        elif sid <= self._highest_peer_stream:
            self._headers_on_closed(sid, local=False)
        elif self.client_side:
            raise H2ConnectionError(f"server opened stream {sid}; push is disabled")
        else:
            self._highest_peer_stream = sid
            self._count_peer_stream()
            self._open_peer_stream(sid, fields, end_stream)

    def _headers_on_closed(self, sid: int, *, local: bool) -> None:
        if local and sid >= self._next_stream_id:
            raise H2ConnectionError(f"HEADERS on stream {sid} that we never opened")
        reason = self._closed.get(sid)
        if reason == CLOSED_LOCAL_RESET:
            return
        if reason == CLOSED_REMOTE_RESET:
            raise H2StreamError(sid, "HEADERS after RST_STREAM", error_code=ErrorCode.STREAM_CLOSED)
        if reason is None:
            raise H2ConnectionError(f"HEADERS on stream {sid}, lower than a stream already opened")
        raise H2ConnectionError(f"HEADERS on closed stream {sid}", error_code=ErrorCode.STREAM_CLOSED)

    def _open_peer_stream(self, sid: int, fields: Fields, end_stream: bool) -> None:
        try:
            head = parse_request(fields)
        except MalformedHeadersError as err:
            raise H2StreamError(sid, f"malformed request: {err.message}") from err
        if self._goaway_sent_last is not None and sid > self._goaway_sent_last:
            raise H2StreamError(sid, "stream opened after GOAWAY", error_code=ErrorCode.REFUSED_STREAM)
        if self._peer_open >= self.config.max_concurrent_streams:
            raise H2StreamError(
                sid,
                f"more than {self.config.max_concurrent_streams} concurrent streams",
                error_code=ErrorCode.REFUSED_STREAM,
            )
        stream = self._new_stream(sid, local=False)
        if head.method == "CONNECT" and head.authority:
            self._events.append(ConnectRequest(sid, head.authority, head.headers))
        elif head.method != "CONNECT" and self.config.accept_requests:
            authority = head.authority or _host(head.headers)
            self._events.append(
                RequestReceived(sid, head.method, head.scheme, authority, head.path, head.headers)
            )
        else:
            reason = (
                "missing :authority" if head.method == "CONNECT" else f"method {head.method} is not CONNECT"
            )
            self._events.append(InvalidRequest(sid, head.method, reason, head.headers))
        if end_stream:
            self._end_remote(stream)

    def _headers_on_stream(self, stream: Stream, fields: Fields, end_stream: bool) -> None:
        sid = stream.stream_id
        if not stream.remote_open:
            raise H2StreamError(sid, "HEADERS after END_STREAM", error_code=ErrorCode.STREAM_CLOSED)
        try:
            if stream.headers_received:
                if not end_stream:
                    raise MalformedHeadersError("trailers without END_STREAM")
                self._events.append(TrailersReceived(sid, parse_trailers(fields)))
            else:
                status, headers = parse_response(fields)
                if status < 200:
                    if end_stream:
                        raise MalformedHeadersError("informational response with END_STREAM")
                    return
                stream.headers_received = True
                self._events.append(Response(sid, status, headers))
        except MalformedHeadersError as err:
            raise H2StreamError(sid, f"malformed header block: {err.message}") from err
        if end_stream:
            self._end_remote(stream)


def _host(headers: tuple[tuple[str, str], ...]) -> str:
    """A request's ``host`` header, for one without ``:authority`` (RFC 9113 section 8.3.1)."""
    return next((value for name, value in headers if name == "host"), "")
