"""In-pod sockets: listeners made inside a pod netns catch redirected traffic with its original
destination, and marked sockets bypass the capture rules."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from ipaddress import ip_address

import pytest

from mesh.rt.net.netns import InPodSocketFactory, in_netns, listen_in_netns, original_destination, peer_of
from ztunnel.cni.apply import ensure_routing
from ztunnel.cni.rules import plan_capture

pytestmark = pytest.mark.netns


def _ip(*argv: str, ns: str | None = None, stdin: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    subprocess.run([*prefix, *argv], input=stdin, text=True, check=True, capture_output=True, timeout=20)


@pytest.fixture
def pod_netns() -> Iterator[tuple[str, int]]:
    """A pod-like netns with an address, a default route and the capture rules installed."""
    name = f"mtest-pod-{os.getpid()}"
    _ip("ip", "netns", "add", name)
    try:
        _ip("ip", "link", "set", "lo", "up", ns=name)
        _ip("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", ns=name)
        _ip("ip", "link", "set", "peer0", "up", ns=name)
        _ip("ip", "addr", "add", "10.244.9.2/24", "dev", "eth0", ns=name)
        _ip("ip", "link", "set", "eth0", "up", ns=name)
        _ip("ip", "route", "add", "default", "dev", "eth0", ns=name)
        _ip("iptables-restore", "--noflush", ns=name, stdin=plan_capture().iptables_restore)
        fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            yield name, fd
        finally:
            os.close(fd)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


async def test_redirected_connection_reveals_original_destination(pod_netns: tuple[str, int]) -> None:
    name, fd = pod_netns
    listener = listen_in_netns(fd, 15001)
    loop = asyncio.get_running_loop()
    client = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", name, "python3", "-c",
        "import socket; s=socket.create_connection(('10.96.0.10', 80), 5); s.sendall(b'hi'); s.recv(1)",
    )  # fmt: skip
    try:
        async with asyncio.timeout(10):
            conn, _ = await loop.sock_accept(listener)
        with conn:
            assert original_destination(conn) == (ip_address("10.96.0.10"), 80)
            assert peer_of(conn)[0] == "10.244.9.2"
            assert await loop.sock_recv(conn, 2) == b"hi"
            await loop.sock_sendall(conn, b"!")
    finally:
        listener.close()
        await asyncio.wait_for(client.wait(), 10)


@contextlib.asynccontextmanager
async def _connected_in_pod(fd: int) -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    """A socket ztunnel connects inside the pod to its app port 8080, and the app's accepted end."""
    app = listen_in_netns(fd, 8080)
    try:
        with await InPodSocketFactory(fd).connect(("10.244.9.2", 8080)) as sock:
            async with asyncio.timeout(5):
                accepted, _ = await asyncio.get_running_loop().sock_accept(app)
            with accepted:
                yield sock, accepted
    finally:
        app.close()


async def test_marked_socket_bypasses_capture(pod_netns: tuple[str, int]) -> None:
    """A socket ztunnel makes (mark 0x539) reaches the app port directly, not 15006/15001."""
    _, fd = pod_netns
    inbound_capture = listen_in_netns(fd, 15006)
    try:
        async with _connected_in_pod(fd):
            pass
        with pytest.raises(BlockingIOError):
            inbound_capture.accept()
    finally:
        inbound_capture.close()


async def test_a_plaintext_clients_spoofed_connection_never_takes_the_clients_port(
    pod_netns: tuple[str, int],
) -> None:
    """ztunnel relays a plaintext client's connection from the client's address (spoofed): it takes
    a port that is not the client's and outside the range clients' kernels pick ports from, where
    the kernel's own choice is often the client's port (its tuple then collides with the client's
    redirected connection in the pod's conntrack), and a port of that range often one of the
    client's other connections."""
    name, fd = pod_netns
    ensure_routing(f"/var/run/netns/{name}", plan_capture().ip_rule)  # replies to the spoofed address
    app, loop = listen_in_netns(fd, 8080), asyncio.get_running_loop()
    factory = InPodSocketFactory(fd, spoof_source=True)
    try:
        for client_port in (40001, 40002, 1025, 32767) * 10:
            with await factory.connect(
                ("10.244.9.2", 8080), source_ip="10.244.7.7", client_port=client_port
            ) as sock:
                async with asyncio.timeout(5):
                    accepted, _ = await loop.sock_accept(app)
                with accepted:
                    host, port = peer_of(accepted)
                    assert host == "10.244.7.7" and 1024 <= port < 32768 and port != client_port
                    assert sock.getsockname()[1] == port
    finally:
        app.close()


def test_listeners_share_the_port_with_reuseport(pod_netns: tuple[str, int]) -> None:
    """A second ztunnel can bind next to the first one (upgrade handover)."""
    _, fd = pod_netns
    first = listen_in_netns(fd, 15008)
    second = listen_in_netns(fd, 15008)
    try:
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x539
        assert second.getsockname()[1] == 15008
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(("migrate_req", "all_moved"), [("0", False), ("1", True)])
def test_a_closing_listener_hands_its_queue_over_with_migrate_req(
    pod_netns: tuple[str, int], migrate_req: str, all_moved: bool
) -> None:
    """What ``net.ipv4.tcp_migrate_req`` (set by the node agent, ``POD_SYSCTLS``) is for: the old
    ztunnel closes its listener while connections still wait in its accept queue. With 1 they move
    to the new ztunnel's listener of the same port; with the kernel's default 0 they are reset."""
    name, fd = pod_netns
    _ip("sysctl", "-w", f"net.ipv4.tcp_migrate_req={migrate_req}", ns=name)
    old, new = listen_in_netns(fd, 15001), listen_in_netns(fd, 15001)
    with contextlib.ExitStack() as stack:
        stack.callback(new.close)
        with in_netns(fd):
            clients = [
                stack.enter_context(socket.create_connection(("127.0.0.1", 15001), 2)) for _ in range(32)
            ]
        old.close()  # nothing accepted: about half of the clients were queued on it
        new.settimeout(0.5)
        accepted: list[socket.socket] = []
        with contextlib.suppress(TimeoutError):
            while len(accepted) < len(clients):
                accepted.append(stack.enter_context(new.accept()[0]))
        assert (len(accepted) == len(clients)) is all_moved, f"{len(accepted)} of {len(clients)} moved"


def _keepalive(sock: socket.socket) -> tuple[int, int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
    )


async def test_in_pod_sockets_both_ways_have_ztunnels_tcp_keepalive(pod_netns: tuple[str, int]) -> None:
    """180 s idle, 9 probes 180 s apart, no Nagle: on what ztunnel connects and what it accepts."""
    _, fd = pod_netns
    async with _connected_in_pod(fd) as (sock, accepted):
        assert _keepalive(sock) == _keepalive(accepted) == (1, 180, 180, 9, 1)
