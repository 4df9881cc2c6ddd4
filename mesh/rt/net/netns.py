"""Sockets inside a pod's network namespace: ztunnel's in-pod mode.

A socket belongs to the namespace it was created in, so ztunnel switches its thread into the pod's
namespace (setns with the fd the node agent passed), creates the socket and switches back at once.
Every socket carries SO_MARK 0x539 so the pod's capture rules let it through.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import ipaddress
import os
import random
import socket
import struct
import threading
from collections.abc import Iterator

from mesh.errors import MeshError
from mesh.model import IpAddress
from mesh.ports import MESH_MARK
from mesh.rt.net.sockets import ConnectError, set_keepalive

__all__ = [
    "InPodSocketFactory",
    "NetnsError",
    "in_netns",
    "ip_text",
    "listen_in_netns",
    "local_of",
    "original_destination",
    "parse_ip",
    "peer_of",
    "unmap",
]

_CLONE_NEWNET = 0x40000000
_SO_ORIGINAL_DST = 80
_IP_TRANSPARENT = 19
_IP_BIND_ADDRESS_NO_PORT = 24
_SPOOF_PORTS = (1024, 32768)
"""Where spoofed plaintext connections take their ports: above the privileged ports and below every
common default range of kernel-chosen client ports (Linux 32768-60999; Windows and macOS
49152-65535), so that a client's live connection does not have the spoofed tuple (issue 16)."""
_SPOOF_PORT_ATTEMPTS = 8
_PORT_TAKEN = (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
_rng = random.Random()
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(MeshError):
    """Entering a network namespace or making a socket in it failed."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(
            f"setns into netns fd {fd} failed: {os.strerror(err)}", hint="ztunnel needs CAP_SYS_ADMIN"
        )


_home_fds: dict[int, int] = {}
"""Per thread: a descriptor of the namespace it started in, opened once (sockets are made often)."""


def _home_fd() -> int:
    tid = threading.get_ident()
    fd = _home_fds.get(tid)
    if fd is None:
        fd = _home_fds[tid] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return fd


@contextlib.contextmanager
def in_netns(netns_fd: int) -> Iterator[None]:
    """Runs the body with this thread inside the namespace ``netns_fd``, then returns."""
    home = _home_fd()
    _setns(netns_fd)
    try:
        yield
    finally:
        _setns(home)


def listen_in_netns(
    netns_fd: int, port: int, *, transparent: bool = False, backlog: int = 1024
) -> socket.socket:
    """A listening TCP socket on ``[::]:port`` (dual stack) inside the pod, with SO_REUSEPORT and the mark."""
    with in_netns(netns_fd):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MESH_MARK)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
        set_keepalive(sock)  # likewise
        if transparent:
            sock.setsockopt(socket.SOL_IP, _IP_TRANSPARENT, 1)
        sock.bind(("::", port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise NetnsError(f"cannot listen on port {port} in the pod: {exc}") from None
    return sock


def original_destination(sock: socket.socket) -> tuple[IpAddress, int]:
    """The address a REDIRECTed connection was sent to (SO_ORIGINAL_DST)."""
    raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return _packed_ipv4(raw[4:8]), port


@functools.lru_cache(maxsize=4096)
def _packed_ipv4(raw: bytes) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(raw)


@functools.lru_cache(maxsize=4096)
def ip_text(address: IpAddress) -> str:
    """``str(address)``, cached: formatting an address costs microseconds, and a pod's connections
    go to and come from a handful of them."""
    return str(address)


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IpAddress:
    """``ipaddress.ip_address``, cached: a pod's connections come from a handful of addresses."""
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=4096)
def unmap(host: str) -> str:
    """An address as text, with IPv4-mapped IPv6 (``::ffff:a.b.c.d``) turned back into IPv4."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class InPodSocketFactory:
    """Outbound sockets created inside a pod's namespace, marked 0x539.

    With ``spoof_source`` the socket is transparent and binds the given source IP (the original
    client's address on the inbound side), which the pod's connmark rules route back to ztunnel.
    """

    def __init__(self, netns_fd: int, *, spoof_source: bool = False, connect_timeout: float = 10.0) -> None:
        self._netns_fd = netns_fd
        self._spoof = spoof_source
        self._timeout = connect_timeout

    async def connect(
        self, address: tuple[str, int], *, source_ip: str | None = None, client_port: int | None = None
    ) -> socket.socket:
        """A connected non-blocking socket to ``address`` from inside the pod.

        ``client_port``: the port of a plaintext client whose own connection to ``address`` was
        redirected to ztunnel in this pod; the spoofed socket then takes a port of its own choosing
        (:func:`_spoofed_port`) instead of the kernel's, which is often that very port, outside the
        range the client's own kernel picks ports from."""
        host, port = address
        family = socket.AF_INET6 if parse_ip(host).version == 6 else socket.AF_INET
        spoofed = self._spoof and source_ip is not None
        attempts_left = _SPOOF_PORT_ATTEMPTS if spoofed and client_port is not None else 1
        while True:
            attempts_left -= 1
            source = None
            if spoofed:
                source = (str(source_ip), 0 if client_port is None else _spoofed_port(client_port))
            try:
                return await self._open(family, address, source)
            except OSError as exc:
                if exc.errno in _PORT_TAKEN and attempts_left:
                    continue  # the port we chose is in use for this peer: another one
                raise ConnectError(f"TCP connect to {host}:{port} from the pod failed: {exc}") from exc
            except TimeoutError as exc:
                raise ConnectError(f"TCP connect to {host}:{port} from the pod failed: timed out") from exc

    async def _open(
        self, family: socket.AddressFamily, address: tuple[str, int], source: tuple[str, int] | None
    ) -> socket.socket:
        """One connect attempt from the pod (from ``source`` when spoofing); the socket is closed on
        any failure."""
        with in_netns(self._netns_fd):
            sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_keepalive(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MESH_MARK)
            if source is not None:
                _bind_spoofed(sock, *source)
            async with asyncio.timeout(self._timeout):
                await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock


def _spoofed_port(client_port: int) -> int:
    """A source port for a plaintext client's spoofed connection: outside the client's ephemeral
    range (:data:`_SPOOF_PORTS`), and not the client's.

    The spoofed SYN (client IP:port -> server) has the original tuple of any connection the client
    opens from that port; the client's are redirected to 15006 in the pod, and conntrack matches
    the spoofed SYN onto a live one: it is NATed to 15006 too, marks that connection as ztunnel's
    (its replies are routed back into the pod), and the handshake ends in a reset of the client's
    connection. Letting ``connect()`` choose often took the client's own port (its hash is keyed
    by a secret every namespace shares); a random port of the client's ephemeral range still hit
    one of its other live connections about once per thousand once the client's even ports were
    in TIME_WAIT and it took odd ones ("Connection reset by peer" in redis-benchmark -k 0).
    """
    while True:
        port = _rng.randrange(*_SPOOF_PORTS)
        if port != client_port:
            return port


def _bind_spoofed(sock: socket.socket, source_ip: str, port: int = 0) -> None:
    """Binds a transparent socket to the client's IP, leaving the port to ``connect`` (``port``
    0) or taking the one given.

    Istio's ztunnel sets IP_TRANSPARENT and IP_FREEBIND and binds ``(client_ip, 0)``, which makes
    the kernel pick a port at bind time, among every port bound to that address, TIME_WAIT ones
    included: with all of one client's connections sharing its IP, that search grew to milliseconds
    per call once thousands of TIME_WAIT sockets piled up in the server pod (issue 16). With
    IP_BIND_ADDRESS_NO_PORT the port is chosen at ``connect`` by the 4-tuple alone, where the pod's
    ``net.ipv4.tcp_tw_reuse=1`` (``ztunnel.cni.rules.POD_SYSCTLS``) lets a TIME_WAIT tuple be
    reused; the two together keep the rate flat. The client's source port is not kept: the HBONE
    peer's address carries the client's IP, not its port (the outer connection's port belongs to the
    client's ztunnel and is shared by many streams).
    """
    sock.setsockopt(socket.SOL_IP, _IP_TRANSPARENT, 1)
    if port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # over our own TIME_WAIT ones
    else:
        sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source_ip, port))


def peer_of(sock: socket.socket) -> tuple[str, int]:
    """The peer address of an accepted dual-stack socket, IPv4-mapped addresses unmapped."""
    host, port = sock.getpeername()[:2]
    return unmap(host), port


def local_of(sock: socket.socket) -> tuple[str, int]:
    """The local address of an accepted dual-stack socket, IPv4-mapped addresses unmapped."""
    host, port = sock.getsockname()[:2]
    return unmap(host), port
