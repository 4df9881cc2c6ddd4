"""mesh.h2: the sans-I/O HTTP/2 engine (RFC 9113, both roles): HBONE CONNECT streams, gRPC requests.

The contract with a transport, in short:

- ``initiate_connection()`` once, then loop: ``events = conn.receive_data(chunk)``; write
  ``conn.data_to_send()`` (or ``data_to_send_pieces()`` with ``writelines``) after every call.
- ``receive_data`` never raises on bad input. A connection error queues GOAWAY and ends the event list
  with ``ConnectionTerminated(remote=False)``: flush the output, then close the socket.
- ``DataReceived.data`` may be a view of the chunk passed in; consume it before reusing that buffer.
  Call ``acknowledge_received_data(stream_id, event.flow_controlled_length)`` only once the bytes have
  left the process (upstream write buffer drained): the windows are the memory bound per stream.
- ``send_data`` returns how many bytes it took (0 when a window is shut); keep the rest and retry on
  ``WindowUpdated`` (``stream_id`` 0 is the connection window, which unblocks every stream).
- ``StreamReset(remote=False)`` means the engine reset a stream for a peer's protocol error: close the
  upstream socket of that stream. ``InvalidRequest`` asks for a 400 answer.
- A client may also open ordinary requests (``send_request``, as gRPC needs); their trailer block
  arrives as ``TrailersReceived`` before ``StreamEnded``. A server configured with
  ``accept_requests`` gets ordinary requests as ``RequestReceived`` and may end its answer with
  ``send_trailers``.
- Calls on closed streams raise ``H2StreamClosedError``; ``send_connect`` raises ``H2StreamLimitError``
  when this connection cannot take another stream (``can_open_stream``)."""

from mesh.h2.config import H2Config
from mesh.h2.connection import Http2Engine
from mesh.h2.errors import (
    ErrorCode,
    H2ConnectionError,
    H2ProtocolError,
    H2StreamClosedError,
    H2StreamError,
    H2StreamLimitError,
    H2UsageError,
)
from mesh.h2.events import (
    ConnectionTerminated,
    ConnectRequest,
    DataReceived,
    Event,
    InvalidRequest,
    PingAcked,
    RequestReceived,
    Response,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

__all__ = [
    "ConnectRequest",
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCode",
    "Event",
    "H2Config",
    "Http2Engine",
    "H2ConnectionError",
    "H2ProtocolError",
    "H2StreamClosedError",
    "H2StreamError",
    "H2StreamLimitError",
    "H2UsageError",
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
