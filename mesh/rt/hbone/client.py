"""The HBONE client role: one mTLS HTTP/2 connection to a peer's port 15008 carrying CONNECT streams."""

from __future__ import annotations

import asyncio
import socket
import ssl

from mesh.h2.errors import H2ProtocolError, H2StreamLimitError
from mesh.h2.events import Response
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.hbone._log import EventLog
from mesh.rt.hbone.config import HboneConfig
from mesh.rt.hbone.connection import HboneConnection
from mesh.rt.hbone.errors import ConnectionClosedError, HandshakeError, StreamLimitError
from mesh.rt.hbone.stream import HboneStream
from mesh.rt.net.sockets import set_stream_carrier_timers
from mesh.rt.net.timers import Scheduler
from mesh.rt.tls import PeerRejectedError, verify_server_peer

__all__ = ["HandshakeError", "HboneClientConnection", "StreamLimitError", "connect"]


class HboneClientConnection(HboneConnection):
    """Client role: accepts the server only if its SPIFFE ID is one of ``expected``."""

    client_side = True
    ready_on_settings_ack = True

    def __init__(
        self,
        *,
        expected: frozenset[WorkloadIdentity],
        config: HboneConfig | None = None,
        scheduler: Scheduler | None = None,
        log: EventLog | None = None,
    ) -> None:
        super().__init__(config=config, scheduler=scheduler, log=log)
        self.expected = expected
        self._pending: dict[int, asyncio.Future[Response]] = {}

    def verify_peer(self, ssl_object: ssl.SSLObject) -> WorkloadIdentity:
        """The server's identity must be one of the expected ones."""
        return verify_server_peer(ssl_object, self.expected)

    @property
    def usable(self) -> bool:
        """True while new streams may be opened here."""
        return not self.is_closed and not self.going_away and self.ready.done() and not self.ready.exception()

    async def open_stream(
        self, authority: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> tuple[int, HboneStream]:
        """Sends CONNECT ``authority`` and waits for the response.

        Returns the status and the stream. On 200, attach a protocol with :meth:`HboneStream.attach`
        (bytes that arrive first wait there). On any other status the stream is already ended.
        """
        if not self.usable:
            raise ConnectionClosedError(
                "this HBONE connection is closed or going away", hint="use a new connection"
            )
        try:
            stream_id = self.h2.send_connect(authority, headers)
        except H2StreamLimitError as exc:
            raise StreamLimitError(str(exc), hint="open the stream on a new connection") from exc
        stream = HboneStream(self, stream_id, extra=self._extra(authority))
        self.streams[stream_id] = stream
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = waiter
        self.flush_soon()  # streams opened in the same loop pass share one TLS write
        try:
            response = await waiter
        except asyncio.CancelledError:
            stream.abort()
            raise
        stream.response_headers = response.headers
        if response.status != 200:
            stream.abort()
        return response.status, stream

    def on_response(self, event: Response) -> None:
        """Wakes the ``open_stream`` waiting for this response."""
        waiter = self._pending.pop(event.stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(event)

    def on_stream_finished(self, stream: HboneStream) -> None:
        """A stream that ended before its response fails its ``open_stream``."""
        waiter = self._pending.pop(stream.stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                stream.reset_error
                or ConnectionClosedError(
                    f"stream {stream.stream_id} ended before a response", hint="retry on a new connection"
                )
            )

    def connection_lost(self, exc: BaseException | None) -> None:
        """Fails every ``open_stream`` still waiting."""
        super().connection_lost(exc)
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionClosedError("the HBONE connection closed", hint="retry"))
        self._pending.clear()

    def _extra(self, authority: str) -> dict[str, object]:
        transport = self.transport
        assert transport is not None
        return {
            "authority": authority,
            "peer_identity": self.peer_identity,
            "peername": transport.get_extra_info("peername"),
            "sockname": transport.get_extra_info("sockname"),
        }


async def connect(
    sock: socket.socket,
    *,
    context: ssl.SSLContext,
    expected: frozenset[WorkloadIdentity],
    config: HboneConfig | None = None,
    scheduler: Scheduler | None = None,
    log: EventLog | None = None,
) -> HboneClientConnection:
    """Runs TLS (no SNI) over the connected ``sock`` and checks the server's identity.

    Raises :class:`HandshakeError` or :class:`~mesh.rt.tls.PeerRejectedError`; ``sock`` is closed then.
    """
    config = config or HboneConfig()
    loop = asyncio.get_running_loop()
    set_stream_carrier_timers(sock)

    def factory() -> HboneClientConnection:
        return HboneClientConnection(expected=expected, config=config, scheduler=scheduler, log=log)

    try:
        _, conn = await loop.create_connection(
            factory,
            sock=sock,
            ssl=context,
            server_hostname="",  # no SNI
            ssl_handshake_timeout=config.handshake_timeout,
            ssl_shutdown_timeout=config.close_timeout,
        )
    except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
        where = _peer(sock)
        sock.close()
        raise HandshakeError(
            f"TLS handshake with {where} failed: {exc or type(exc).__name__}",
            hint="check that the peer speaks HBONE (TLS 1.3, ALPN h2) and trusts our CA",
        ) from exc
    try:
        async with asyncio.timeout(config.handshake_timeout):
            await conn.ready
    except PeerRejectedError:
        raise
    except (ConnectionClosedError, H2ProtocolError, OSError, TimeoutError) as exc:
        conn.abort()
        raise HandshakeError(
            f"HBONE connection set-up failed: {exc or 'no SETTINGS acknowledgement in time'}",
            hint="the server refused our certificate or does not speak HTTP/2; check its logs",
        ) from exc
    return conn


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "the peer"
    return f"{host}:{port}"
