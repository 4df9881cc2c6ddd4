"""gRPC over HTTP/2, the pure parts: status codes, message framing, and reading a call's outcome.

The wire format (grpc/doc/PROTOCOL-HTTP2.md): each message is a 5-byte prefix (a compressed flag and a
big-endian length) and the message; the status travels in the response's trailers (``grpc-status``,
``grpc-message`` percent-encoded), or in its headers when the server answers with trailers only. The
I/O side is :mod:`mesh.rt.rpc`.
"""

from __future__ import annotations

import enum
import struct
import urllib.parse
from collections.abc import Iterable

from mesh.errors import MeshError

__all__ = [
    "StatusCode",
    "RpcError",
    "MessageReader",
    "frame_message",
    "status_of",
    "status_for_http",
    "status_for_reset",
    "timeout_value",
]

_PREFIX = struct.Struct(">BI")


class StatusCode(enum.IntEnum):
    """gRPC status codes, with grpc's names."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(MeshError):
    """A call ended with a status other than OK: ``code`` and ``details`` say which and why."""

    def __init__(self, code: StatusCode, details: str, *, hint: str = "") -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}", hint=hint)


def frame_message(message: bytes) -> bytes:
    """One uncompressed length-prefixed message."""
    return _PREFIX.pack(0, len(message)) + message


class MessageReader:
    """Cuts the bytes of a response body into messages; refuses compressed or oversized ones.

    Each message body is allocated once at its announced size and filled in place: a 3 MB xDS
    response costs one copy, not the five of a growing buffer sliced at the end."""

    def __init__(self, *, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        self._prefix = bytearray()
        self._body: bytearray | None = None
        self._filled = 0

    @property
    def pending(self) -> bool:
        """True while part of a message is buffered (a body that ends here was cut short)."""
        return bool(self._prefix) or self._body is not None

    def feed(self, data: bytes | memoryview) -> list[bytearray]:
        """The messages completed by ``data``; raises RpcError for a message this client cannot take."""
        view = memoryview(data)
        out: list[bytearray] = []
        pos, end = 0, len(view)
        while True:
            body = self._body
            if body is None:
                if pos == end:
                    return out
                take = min(_PREFIX.size - len(self._prefix), end - pos)
                self._prefix += view[pos : pos + take]
                pos += take
                if len(self._prefix) < _PREFIX.size:
                    return out
                body = self._body = bytearray(self._announced())
                self._prefix.clear()
                self._filled = 0
            n = min(len(body) - self._filled, end - pos)
            body[self._filled : self._filled + n] = view[pos : pos + n]
            self._filled += n
            pos += n
            if self._filled < len(body):
                return out
            out.append(body)
            self._body = None

    def _announced(self) -> int:
        flag, length = _PREFIX.unpack(self._prefix)
        if flag != 0:
            raise RpcError(
                StatusCode.INTERNAL,
                "the server sent a compressed message, which this client did not offer to accept",
            )
        if length > self._max:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"a message of {length} bytes is larger than this client's limit of {self._max}",
                hint="raise the client's max message size or make the server send less at once",
            )
        return int(length)


def status_of(headers: Iterable[tuple[str, str]]) -> tuple[StatusCode, str] | None:
    """The status a trailer (or trailers-only header) block carries, or None when it has none."""
    fields = dict(headers)
    raw = fields.get("grpc-status")
    if raw is None:
        return None
    try:
        code = StatusCode(int(raw))
    except ValueError:
        return StatusCode.UNKNOWN, f"the server sent an unknown grpc-status {raw!r}"
    return code, urllib.parse.unquote(fields.get("grpc-message", ""), errors="replace")


_HTTP_TO_STATUS = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}


def status_for_http(status: int) -> StatusCode:
    """The gRPC status of an HTTP status other than 200 (grpc/doc/http-grpc-status-mapping.md)."""
    return _HTTP_TO_STATUS.get(status, StatusCode.UNKNOWN)


_RESET_TO_STATUS = {
    0x7: StatusCode.UNAVAILABLE,  # REFUSED_STREAM: the server never processed it
    0x8: StatusCode.CANCELLED,  # CANCEL
    0xB: StatusCode.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: StatusCode.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


def status_for_reset(error_code: int) -> StatusCode:
    """The gRPC status of a stream the server reset (PROTOCOL-HTTP2.md, "Errors")."""
    return _RESET_TO_STATUS.get(error_code, StatusCode.INTERNAL)


def timeout_value(seconds: float) -> str:
    """A ``grpc-timeout`` value: at most 8 digits, in the finest unit that fits (rounded up)."""
    for unit, per_second in (("u", 1_000_000), ("m", 1_000), ("S", 1)):
        amount = -int(-seconds * per_second // 1)
        if amount < 100_000_000:
            return f"{max(amount, 1)}{unit}"
    return f"{min(-int(-seconds // 3600), 99_999_999)}H"
