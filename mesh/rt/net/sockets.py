"""Where HBONE's outbound TCP sockets come from.

ztunnel creates its sockets inside a pod's network namespace and marks them (SO_MARK 0x539) so the
capture rules let them through; that is a :class:`SocketFactory` the pool is given. The default
:class:`PlainSocketFactory` opens an ordinary socket in the current namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from typing import Protocol

from mesh.errors import MeshError

__all__ = [
    "ConnectError",
    "PlainSocketFactory",
    "SocketFactory",
    "set_keepalive",
    "set_stream_carrier_timers",
]

_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_KEEPALIVE = ((socket.TCP_KEEPIDLE, 180), (socket.TCP_KEEPINTVL, 180), (socket.TCP_KEEPCNT, 9))
_TCP_THIN_LINEAR_TIMEOUTS = 16  # linux/tcp.h; Python's socket module does not name these two
_TCP_RTO_MIN_US = 45
_CARRIER_TIMERS = ((_TCP_RTO_MIN_US, 50_000), (_TCP_THIN_LINEAR_TIMEOUTS, 1))


def set_keepalive(sock: socket.socket) -> None:
    """TCP keepalive as ztunnel sets it (180 s idle, then 9 probes 180 s apart), so a connection whose
    peer vanished is noticed even when idle. Accepted sockets inherit it from their listener."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in _KEEPALIVE:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)


def set_stream_carrier_timers(sock: socket.socket) -> None:
    """Retransmission timers for a TCP connection that carries many streams (an HBONE connection).

    One lost segment stalls every stream on it until it is retransmitted, and when no later segment
    reveals the loss that takes the retransmission timeout: at least 200 ms on Linux, doubled per
    lost retry, while a round trip inside a cluster takes well under a millisecond. Here the
    minimum is 50 ms (``TCP_RTO_MIN_US``, recent kernels) and, while few segments are in flight,
    the timeout is not doubled for the first retries (``TCP_THIN_LINEAR_TIMEOUTS``). A kernel
    without an option keeps its default for it."""
    for option, value in _CARRIER_TIMERS:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class ConnectError(MeshError):
    """A TCP connection to an HBONE peer could not be made."""


class SocketFactory(Protocol):
    """Opens connected, non-blocking TCP sockets for the transport."""

    async def connect(self, address: tuple[str, int], *, source_ip: str | None = None) -> socket.socket:
        """A non-blocking socket connected to ``address``, optionally bound to ``source_ip``."""
        ...


class PlainSocketFactory:
    """Sockets in the current network namespace, with TCP_NODELAY and optionally SO_MARK.

    ``mark`` needs CAP_NET_ADMIN; ``bind_source`` binds to the key's source IP before connecting
    (with IP_BIND_ADDRESS_NO_PORT, so the port is only picked at connect time).
    """

    def __init__(
        self, *, mark: int | None = None, bind_source: bool = False, connect_timeout: float = 10.0
    ) -> None:
        self._mark = mark
        self._bind_source = bind_source
        self._timeout = connect_timeout

    async def connect(self, address: tuple[str, int], *, source_ip: str | None = None) -> socket.socket:
        """Connects within the timeout or raises :class:`ConnectError`."""
        host, port = address
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._prepare(sock, source_ip)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self._timeout):
                await loop.sock_connect(sock, (host, port))
        except (OSError, TimeoutError) as exc:
            sock.close()
            what = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise ConnectError(
                f"TCP connect to {host}:{port} failed: {what}",
                hint="check that the peer listens on this port and is reachable",
            ) from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def _prepare(self, sock: socket.socket, source_ip: str | None) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_keepalive(sock)
        if self._mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self._mark)
        if self._bind_source and source_ip is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_ip, 0))
