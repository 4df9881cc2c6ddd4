"""HTTP/2 error codes (RFC 9113 section 7) and the engine's typed errors."""

from __future__ import annotations

from enum import IntEnum

from mesh.errors import MeshError

__all__ = [
    "ErrorCode",
    "H2ConnectionError",
    "H2ProtocolError",
    "H2StreamClosedError",
    "H2StreamError",
    "H2StreamLimitError",
    "H2UsageError",
]


class ErrorCode(IntEnum):
    """RFC 9113 section 7 error codes, as carried by RST_STREAM and GOAWAY."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class H2ProtocolError(MeshError):
    """Root of the HBONE engine's errors; ``error_code`` is the HTTP/2 code that fits."""

    def __init__(self, message: str, *, error_code: int = ErrorCode.PROTOCOL_ERROR, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.error_code = int(error_code)


class H2ConnectionError(H2ProtocolError):
    """The peer broke the protocol for the whole connection: the engine sends GOAWAY and stops.

    ``receive_data`` never lets it escape; it becomes a ``ConnectionTerminated(remote=False)`` event."""

    def __init__(self, message: str, *, error_code: int = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message, error_code=error_code, hint="the connection is closed; open a new one")


class H2StreamError(H2ProtocolError):
    """The peer broke the protocol on one stream: the engine resets that stream only.

    ``receive_data`` never lets it escape; it becomes a ``StreamReset(remote=False)`` event."""

    def __init__(self, stream_id: int, message: str, *, error_code: int = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(
            f"stream {stream_id}: {message}",
            error_code=error_code,
            hint="the stream is reset; close whatever the stream was carrying",
        )
        self.stream_id = stream_id


class H2StreamClosedError(H2ProtocolError):
    """A call named a stream that is closed, reset or was never opened."""

    def __init__(self, stream_id: int, *, what: str = "is not open") -> None:
        super().__init__(
            f"stream {stream_id} {what}",
            error_code=ErrorCode.STREAM_CLOSED,
            hint="drop the data buffered for this stream; a StreamReset or StreamEnded event said why",
        )
        self.stream_id = stream_id


class H2StreamLimitError(H2ProtocolError):
    """No new stream can be opened on this connection (peer limit, GOAWAY, or stream ids used up)."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            error_code=ErrorCode.REFUSED_STREAM,
            hint="open the stream on another (new) connection",
        )


class H2UsageError(H2ProtocolError):
    """The caller used the engine wrongly (wrong role, invalid header, negative size)."""

    def __init__(self, message: str, *, hint: str = "fix the calling code") -> None:
        super().__init__(message, error_code=ErrorCode.INTERNAL_ERROR, hint=hint)
