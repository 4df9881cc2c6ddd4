"""Plain HTTP GETs to the mesh's admin, debug and readiness ports, optionally from inside a
network namespace (the lab's nodes and control plane live in their own namespaces)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from mesh.errors import MeshError
from mesh.rt.net.netns import in_netns

__all__ = ["http_get", "http_request", "socket_in"]

_MAX_BODY = 64 * 1024 * 1024


@contextlib.contextmanager
def socket_in(netns: str | None) -> Iterator[socket.socket]:
    """A TCP socket created inside the named network namespace (or here when None)."""
    if netns is None:
        with socket.socket() as sock:
            yield sock
        return
    try:
        fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    except OSError as exc:
        raise MeshError(f"no network namespace {netns}: {exc.strerror}", hint="is the lab up?") from None
    try:
        with in_netns(fd):
            sock = socket.socket()
    finally:
        os.close(fd)
    with sock:
        yield sock


def http_get(
    host: str, port: int, path: str, *, netns: str | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """GETs ``path``; returns (status, body). Raises OSError when nothing answers."""
    return http_request("GET", host, port, path, netns=netns, timeout=timeout)


def http_request(
    method: str, host: str, port: int, path: str, *, netns: str | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """Sends a body-less ``method`` request for ``path``; returns (status, body). Raises OSError
    when nothing answers."""
    length = "" if method == "GET" else "Content-Length: 0\r\n"
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}Connection: close\r\n\r\n"
    with socket_in(netns) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(request.encode())
        chunks, size = [], 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_BODY:
                raise MeshError(f"the answer from {host}:{port}{path} is larger than {_MAX_BODY} bytes")
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise MeshError(f"{host}:{port} did not answer HTTP", hint="is this the right port?")
    return int(parts[1]), body
