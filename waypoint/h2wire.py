"""What both of the waypoint's HTTP/2 ends share: their engine settings, the writer that
coalesces frames and waits for send windows, and the header filter of RFC 9113 section 8.2.2."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from mesh.h2 import H2Config, H2ProtocolError, Http2Engine

__all__ = ["READ", "WAYPOINT_H2", "Wire", "h2_fields"]

WAYPOINT_H2 = H2Config(initial_window_size=1024 * 1024)
"""A stream holds at most 1 MiB in flight towards the waypoint (the connection 16 MiB): received
DATA is acknowledged only once the other side took it, so this is the memory bound per stream."""
READ = 65536
_COALESCE = 65536
"""Frames up to this size wait for the end of the loop turn to go out together."""
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)


class Wire:
    """An engine and its transport: writes what the engine queued; waits for send windows."""

    def __init__(self, engine: Http2Engine, writer: asyncio.StreamWriter) -> None:
        self.engine = engine
        self.writer = writer
        self.window = asyncio.Event()
        self._flush_scheduled = False

    def flush(self) -> None:
        data = self.engine.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def flush_soon(self) -> None:
        """Flushes at the end of this turn of the event loop: the frames queued meanwhile (a
        response's HEADERS, DATA and END_STREAM) go out in one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def acknowledge(self, stream_id: int, n: int) -> None:
        """Gives ``n`` bytes of receive window back: the other side took them."""
        with contextlib.suppress(H2ProtocolError):
            self.engine.acknowledge_received_data(stream_id, n)
            self.flush()

    async def send_body(self, stream_id: int, body: bytes) -> None:
        """Sends ``body`` as the windows allow (waiting for WINDOW_UPDATEs), then for the socket."""
        view = memoryview(body)
        while True:
            sent = self.engine.send_data(stream_id, view)
            view = view[sent:]
            if not view:
                break
            self.flush()
            self.window.clear()
            await self.window.wait()
        if self.engine.bytes_to_send_pending() < _COALESCE:
            self.flush_soon()
        else:
            self.flush()
            await self.writer.drain()


def h2_fields(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Response or request headers fit for HTTP/2 (no connection-specific fields, RFC 9113 8.2.2)."""
    return [
        (k, v) for k, v in headers if k not in _CONNECTION_SPECIFIC and not (k == "te" and v != "trailers")
    ]
