"""Events the HBONE engine returns from ``receive_data``: small frozen values, h2-style."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnectRequest",
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "InvalidRequest",
    "PingAcked",
    "RequestReceived",
    "Response",
    "SettingsAcknowledged",
    "StreamEnded",
    "StreamReset",
    "TrailersReceived",
    "WindowUpdated",
]


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """Server side: a peer opened a stream with a valid CONNECT request."""

    stream_id: int
    authority: str
    headers: tuple[tuple[str, str], ...]
    """Regular (non-pseudo) headers in arrival order, names lowercase."""


@dataclass(frozen=True, slots=True)
class InvalidRequest:
    """Server side: a well-formed request that is not a CONNECT we can serve (another method, or no
    ``:authority``). The stream is open; answer it, e.g. with
    ``send_response(stream_id, 400, end_stream=True)``."""

    stream_id: int
    method: str
    reason: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Server side, with ``H2Config(accept_requests=True)``: a peer opened a stream with an ordinary
    request (not CONNECT). Its body follows as ``DataReceived``, then ``TrailersReceived`` (if
    any) and ``StreamEnded``."""

    stream_id: int
    method: str
    scheme: str
    authority: str
    path: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Response:
    """Client side: the response headers for a CONNECT stream."""

    stream_id: int
    status: int
    headers: tuple[tuple[str, str], ...]


@dataclass(slots=True)  # not frozen: one per DATA frame, and a frozen __init__ costs about 3x
class DataReceived:
    """Payload for a stream. ``flow_controlled_length`` (payload plus padding) must be given back
    with ``acknowledge_received_data`` once the bytes left the process, which reopens the window."""

    stream_id: int
    data: bytes | memoryview
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class TrailersReceived:
    """The trailer block that ended the peer's side of a stream (gRPC's status travels in a
    response's); a ``StreamEnded`` follows."""

    stream_id: int
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (END_STREAM)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone: reset by the peer (``remote``) or by this engine on a stream error."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """Send window grew; ``stream_id`` 0 means the connection window."""

    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class PingAcked:
    """The peer answered one of our PINGs."""

    opaque: bytes


@dataclass(frozen=True, slots=True)
class SettingsAcknowledged:
    """The peer acknowledged our SETTINGS."""


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """GOAWAY received, or the engine ended the connection on a connection error (``remote`` False).

    After a graceful GOAWAY, streams up to ``last_stream_id`` may still finish."""

    error_code: int
    last_stream_id: int
    remote: bool
    additional_data: bytes = b""


Event = (
    ConnectRequest
    | InvalidRequest
    | RequestReceived
    | Response
    | DataReceived
    | TrailersReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | PingAcked
    | SettingsAcknowledged
    | ConnectionTerminated
)
