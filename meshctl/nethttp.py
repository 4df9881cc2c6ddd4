"""Plain HTTP GETs to the mesh's admin, debug and readiness ports, optionally from inside a
network namespace (the lab's nodes and control plane live in their own namespaces)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from mesh.errors import MeshError
from mesh.http1 import Http1Error, Message, ResponseParser
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
    parser = ResponseParser(max_body=_MAX_BODY, head_only=method == "HEAD")
    responses: list[Message] = []
    try:
        with socket_in(netns) as sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.sendall(request.encode())
            while not responses:
                chunk = sock.recv(65536)
                responses = parser.feed(chunk) if chunk else parser.finish()
                if not chunk:
                    break
    except Http1Error as exc:
        raise MeshError(
            f"{host}:{port}{path} did not answer HTTP/1.1: {exc.message}", hint="is this the right port?"
        ) from None
    if not responses:
        raise MeshError(f"{host}:{port}{path} closed the connection before a whole answer", hint="try again")
    return responses[0].status, responses[0].body
