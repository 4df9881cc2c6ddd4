"""Per-stream state of the engine (mutable, private) and how a closed stream is remembered."""

from __future__ import annotations

__all__ = ["CLOSED_LOCAL_RESET", "CLOSED_NORMAL", "CLOSED_REMOTE_RESET", "Stream"]

CLOSED_NORMAL = 0
"""Both sides sent END_STREAM."""
CLOSED_LOCAL_RESET = 1
"""We sent RST_STREAM: frames the peer had in flight are dropped silently."""
CLOSED_REMOTE_RESET = 2
"""The peer sent RST_STREAM: further frames from it are a stream error (STREAM_CLOSED)."""


class Stream:
    """One open (or half-closed) stream: the state machine is the two ``*_open`` flags.

    open = both True; half-closed (local) = ``local_open`` False; half-closed (remote) =
    ``remote_open`` False; closed streams are removed from the engine's table."""

    __slots__ = (
        "headers_received",
        "headers_sent",
        "local_initiated",
        "local_open",
        "recv_owed",
        "recv_unacked",
        "recv_window",
        "remote_open",
        "send_window",
        "stream_id",
    )

    def __init__(self, stream_id: int, *, local_initiated: bool, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.local_initiated = local_initiated
        self.local_open = True
        self.remote_open = True
        self.headers_sent = local_initiated
        self.headers_received = not local_initiated
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_unacked = 0
        """Bytes delivered in DataReceived events and not yet acknowledged by the consumer."""
        self.recv_owed = 0
        """Bytes acknowledged (or discarded) whose WINDOW_UPDATE is still batched."""
