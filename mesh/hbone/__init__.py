"""mesh.hbone: the sans-I/O HTTP/2 CONNECT engine HBONE tunnels run on (RFC 9113, both roles)."""

from mesh.hbone.config import H2Config
from mesh.hbone.connection import H2Connection
from mesh.hbone.errors import (
    ErrorCode,
    H2ConnectionError,
    H2ProtocolError,
    H2StreamClosedError,
    H2StreamError,
    H2StreamLimitError,
    H2UsageError,
)
from mesh.hbone.events import (
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

__all__ = [
    "ConnectRequest",
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCode",
    "Event",
    "H2Config",
    "H2Connection",
    "H2ConnectionError",
    "H2ProtocolError",
    "H2StreamClosedError",
    "H2StreamError",
    "H2StreamLimitError",
    "H2UsageError",
    "InvalidRequest",
    "PingAcked",
    "Response",
    "SettingsAcknowledged",
    "StreamEnded",
    "StreamReset",
    "WindowUpdated",
]
