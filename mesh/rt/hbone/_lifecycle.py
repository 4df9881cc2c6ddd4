"""The cold half of :class:`~mesh.rt.hbone.connection.HboneConnection`: ending it (abort, close, drain,
GOAWAY either way), the keepalive callbacks (PING, dead peer, idle read buffers given back) and the
log context.

A mixin, so that the code run once per connection lives apart while the hot paths (reads, dispatch,
flush, stream writes) stay in the connection class itself, with no extra call or lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

from mesh.h2.connection import Http2Engine
from mesh.h2.errors import ErrorCode, H2ProtocolError
from mesh.h2.events import ConnectionTerminated
from mesh.rt.hbone._log import EventLog
from mesh.rt.hbone.config import HboneConfig
from mesh.rt.hbone.errors import ConnectionClosedError, KeepaliveTimeoutError
from mesh.rt.net.buffers import SpareBuffers
from mesh.rt.net.keepalive import Keepalive
from mesh.rt.net.timers import Scheduler

if TYPE_CHECKING:
    from mesh.rt.hbone.stream import HboneStream

__all__ = ["ConnectionLifecycle"]

_IDLE_READ_BUFFER = 4096
"""What a connection without streams keeps for reading (PINGs, SETTINGS, the next HEADERS)."""


class ConnectionLifecycle:
    """Closing, draining and GOAWAY, the keepalive callbacks and the log context of a connection."""

    # The connection's state, set by HboneConnection.__init__ (declared for the type checker).
    client_side: ClassVar[bool]
    config: HboneConfig
    log: EventLog
    h2: Http2Engine
    transport: asyncio.Transport | None
    streams: dict[int, HboneStream]
    keepalive: Keepalive
    going_away: bool
    closed: asyncio.Future[None]
    _scheduler: Scheduler
    _loop: asyncio.AbstractEventLoop
    _read_buffer: bytearray
    _spares: SpareBuffers
    _closed: bool
    _close_reason: BaseException | None
    _goaway_received: bool
    _idle_waiters: list[asyncio.Future[None]]

    if TYPE_CHECKING:  # the connection's output path, defined by HboneConnection

        def flush(self) -> None: ...

        def _write_out(self) -> None: ...

    @property
    def is_closed(self) -> bool:
        """True once the transport is gone or going."""
        return self._closed

    def abort(self, reason: BaseException | None = None) -> None:
        """Drops the connection at once; streams end with ``reason``."""
        if self._close_reason is None:
            self._close_reason = reason
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def close(self, error_code: int = ErrorCode.NO_ERROR) -> None:
        """GOAWAY, then closes TLS (close_notify and FIN) once the output is written."""
        if self._closed:
            return
        self.going_away = True
        with contextlib.suppress(H2ProtocolError):
            self.h2.close(error_code)
        self.flush()
        self._write_out()  # GOAWAY goes out even to a peer that stopped reading
        self._closed = True
        self.keepalive.stop()
        if self.transport is not None:
            self.transport.close()

    async def drain(self, *, deadline: float) -> int:
        """Graceful drain: GOAWAY, let open streams finish for up to ``deadline`` seconds, then close.

        Returns how many streams were still open at the deadline (they end with the connection).
        """
        if self._closed:
            return 0
        if not self.going_away:
            self.going_away = True
            with contextlib.suppress(H2ProtocolError):
                self.h2.close(ErrorCode.NO_ERROR)
            self.flush()
        if self.streams:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._idle_waiters.append(waiter)
            timer = self._scheduler.call_later(deadline, lambda: _settle(waiter))
            try:
                await waiter
            finally:
                timer.cancel()
        left = len(self.streams)
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.close_timeout + 1.0):
                await asyncio.shield(self.closed)
        self.abort()
        return left

    @property
    def read_buffer_bytes(self) -> int:
        """The bytes of read buffers this connection holds (the current one and its spares)."""
        return len(self._read_buffer) + self._spares.held_bytes

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        self.going_away = True
        graceful = event.remote and event.error_code == ErrorCode.NO_ERROR
        self.log.info(
            "hbone.goaway",
            remote=event.remote,
            error_code=event.error_code,
            last_stream_id=event.last_stream_id,
            **self._where(),
        )
        if graceful:
            self._goaway_received = True
            if not self.streams:
                self._schedule_close()
            return
        self._close_reason = ConnectionClosedError(
            f"HTTP/2 connection terminated with error code {event.error_code:#x}"
            f" ({'by the peer' if event.remote else 'by this side'})",
            hint="open a new connection",
        )
        self._schedule_close()

    def _schedule_close(self) -> None:
        self._loop.call_soon(self._close_after_batch)

    def _close_after_batch(self) -> None:
        if self._closed:
            return
        self.flush()
        self._write_out()
        self._closed = True
        self.keepalive.stop()
        if self.transport is not None:
            self.transport.close()

    def _wake_idle_waiters(self) -> None:
        for waiter in self._idle_waiters:
            _settle(waiter)
        self._idle_waiters.clear()
        if self._goaway_received and not self.streams and not self._closed:
            self._schedule_close()

    def _send_ping(self, opaque: bytes) -> None:
        if not self._closed:
            if not self.streams:  # idle for a keepalive interval: give the bulk buffers back
                self._read_buffer = bytearray(_IDLE_READ_BUFFER)
                self._spares.clear()
            self.h2.ping(opaque)
            self.flush()

    def _peer_dead(self) -> None:
        if self._closed:
            return
        self.log.warning("hbone.keepalive_timeout", timeout=self.config.keepalive_timeout, **self._where())
        self.abort(
            KeepaliveTimeoutError(
                f"no PING answer within {self.config.keepalive_timeout} s",
                hint="the peer is unreachable or stuck; a new connection will be opened",
            )
        )

    def _where(self) -> dict[str, Any]:
        transport = self.transport
        if transport is None:
            return {}
        peer = transport.get_extra_info("peername")
        return {"peer.addr": f"{peer[0]}:{peer[1]}" if peer else "", "hbone.role": self._role}

    @property
    def _role(self) -> str:
        return "client" if self.client_side else "server"


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
