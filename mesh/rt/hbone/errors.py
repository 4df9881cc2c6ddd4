"""The HBONE transport's typed errors (peer identity errors live in :mod:`mesh.rt.tls`)."""

from __future__ import annotations

from mesh.errors import MeshError

__all__ = [
    "ConnectionClosedError",
    "HandshakeError",
    "KeepaliveTimeoutError",
    "StreamLimitError",
    "StreamResetError",
]


class ConnectionClosedError(MeshError):
    """The HBONE connection ended (or was going away) before the operation could complete."""


class KeepaliveTimeoutError(ConnectionClosedError):
    """The peer did not answer a PING within the keepalive timeout: it is presumed dead."""


class HandshakeError(ConnectionClosedError):
    """The TLS handshake with the HBONE peer failed or timed out."""


class StreamLimitError(ConnectionClosedError):
    """This connection cannot carry another stream; open one on a new connection."""


class StreamResetError(MeshError):
    """The stream was reset (``remote``: by the peer; otherwise by us or our engine)."""

    def __init__(self, stream_id: int, error_code: int, *, remote: bool) -> None:
        by = "the peer" if remote else "this side"
        super().__init__(
            f"HBONE stream {stream_id} was reset by {by} with error code {error_code:#x}",
            hint="the tunnel is gone; close the connection it carried",
        )
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote
