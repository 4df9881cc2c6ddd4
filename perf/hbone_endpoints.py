"""The load generator and the server of the HBONE benchmark: blocking sockets, no event loop.

Blocking ``sendall``/``recv_into`` loops run in C between two syscalls, so on the direct path these
tools cost a few microseconds per round trip and move several GB/s: they are not the bottleneck of
any proxied path (the direct path is measured in the same run and shows the margin).

Protocol (one connection, the first byte says what it is for):

- ``P``: ping-pong: the client sends 100-byte messages, the server echoes each; EOF ends it;
- ``B`` + 8-byte big-endian N: N bytes of the seeded pattern; the server checks every byte against
  the pattern and answers ``OK`` or ``ER`` (the client's timer stops on that answer).

    .venv/bin/python -m perf.hbone_endpoints --ready-file PATH   # runs the server
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import threading
import time
from pathlib import Path

__all__ = ["Pattern", "bulk", "ping_pong", "serve"]

MESSAGE = 100
CHUNK = 256 * 1024


class Pattern:
    """A seeded 1 MiB random block repeated forever; slices of it at any offset are cheap."""

    SIZE = 1 << 20

    def __init__(self, seed: int = 1337) -> None:
        block = random.Random(seed).randbytes(self.SIZE)
        self._twice = block + block

    def at(self, offset: int, length: int) -> bytes:
        """``length`` (at most 1 MiB) pattern bytes starting at stream offset ``offset``."""
        start = offset % self.SIZE
        return self._twice[start : start + length]


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def _serve_ping_pong(sock: socket.socket) -> None:
    buf = bytearray(MESSAGE)
    view = memoryview(buf)
    while _recv_exact(sock, view):
        sock.sendall(buf)


def _serve_bulk(sock: socket.socket, pattern: Pattern) -> None:
    header = bytearray(8)
    if not _recv_exact(sock, memoryview(header)):
        return
    remaining = struct.unpack(">Q", header)[0]
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    offset = 0
    ok = True
    while remaining:
        n = sock.recv_into(view, min(CHUNK, remaining))
        if n == 0:
            ok = False
            break
        if ok and (buf if n == CHUNK else buf[:n]) != pattern.at(offset, n):
            ok = False
        offset += n
        remaining -= n
    sock.sendall(b"OK" if ok else b"ER")


def _handle(sock: socket.socket, pattern: Pattern) -> None:
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = sock.recv(1)
        if mode == b"P":
            _serve_ping_pong(sock)
        elif mode == b"B":
            _serve_bulk(sock, pattern)


def serve(ready_file: Path, *, host: str = "127.0.0.1") -> None:
    """Serves connections (a thread each) forever; writes the bound port to ``ready_file``."""
    pattern = Pattern()
    listener = socket.create_server((host, 0), backlog=128)
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(str(listener.getsockname()[1]))
    tmp.rename(ready_file)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=_handle, args=(sock, pattern), daemon=True).start()


def _connect(address: tuple[str, int], mode: bytes) -> socket.socket:
    sock = socket.create_connection(address, timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(mode)
    return sock


def ping_pong(address: tuple[str, int], *, rounds: int, warmup: int = 200) -> list[float]:
    """Round-trip times in microseconds of ``rounds`` 100-byte ping-pongs (after ``warmup``)."""
    message = os.urandom(MESSAGE)
    buf = bytearray(MESSAGE)
    view = memoryview(buf)
    samples: list[float] = []
    clock = time.perf_counter_ns
    with _connect(address, b"P") as sock:
        for i in range(warmup + rounds):
            start = clock()
            sock.sendall(message)
            if not _recv_exact(sock, view):
                raise ConnectionError("the ping-pong peer closed the connection")
            if i >= warmup:
                samples.append((clock() - start) / 1000)
        if buf != message:
            raise ValueError("ping-pong echo does not match what was sent")
    return samples


def bulk(address: tuple[str, int], *, nbytes: int) -> float:
    """Sends ``nbytes`` of the pattern; returns seconds until the server confirmed every byte."""
    pattern = Pattern()
    with _connect(address, b"B") as sock:
        start = time.perf_counter()
        sock.sendall(struct.pack(">Q", nbytes))
        sent = 0
        while sent < nbytes:
            n = min(CHUNK, nbytes - sent)
            sock.sendall(pattern.at(sent, n))
            sent += n
        answer = sock.recv(2)
        elapsed = time.perf_counter() - start
    if answer != b"OK":
        raise ValueError(f"bulk transfer corrupted or cut short (server said {answer!r})")
    return elapsed


def main() -> None:
    """Runs the benchmark server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    serve(args.ready_file)


if __name__ == "__main__":
    main()
