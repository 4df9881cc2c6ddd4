"""A TCP echo server, like Istio's tcp-echo sample: it sends back what it receives, each line
prefixed with ``--prefix`` when one is given.

    python -m meshctl.apps.tcpecho --port 9000 --prefix hello
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import cast

from mesh.rt.loop import run as run_loop

__all__ = ["LinePrefixer", "main"]

_BACKLOG = 4096


class LinePrefixer:
    """Prefixes every complete line (pure; bytes in, bytes out)."""

    def __init__(self, prefix: bytes) -> None:
        self._prefix = prefix
        self._partial = bytearray()

    def feed(self, data: bytes) -> bytes:
        """The output for ``data``: each completed line with the prefix."""
        self._partial += data
        *lines, rest = bytes(self._partial).split(b"\n")
        self._partial = bytearray(rest)
        return b"".join(self._prefix + b" " + line + b"\n" for line in lines)

    def flush(self) -> bytes:
        """The unfinished last line, prefixed (at end of input)."""
        if not self._partial:
            return b""
        out = self._prefix + b" " + bytes(self._partial)
        self._partial.clear()
        return out


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, prefix: bytes) -> None:
        self._transform = LinePrefixer(prefix) if prefix else None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(self._transform.feed(data) if self._transform else data)

    def eof_received(self) -> bool:
        if self._transport is not None and self._transform is not None:
            self._transport.write(self._transform.flush())
        return False


async def serve(host: str, port: int, prefix: bytes) -> None:
    """Serves until the process is stopped."""
    loop = asyncio.get_running_loop()
    # A deep accept queue, as Go servers (Istio's tcp-echo) get from the kernel's somaxconn: a burst
    # of connections waits to be accepted instead of being refused.
    server = await loop.create_server(
        lambda: _EchoProtocol(prefix), host, port, reuse_address=True, backlog=_BACKLOG
    )
    print(f"tcpecho: listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshctl.apps.tcpecho [--host H] [--port P] [--prefix TEXT]``."""
    parser = argparse.ArgumentParser(prog="tcpecho", description="TCP echo server")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    parser.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    parser.add_argument("--prefix", default="", help="prefix each echoed line with this text")
    args = parser.parse_args(argv)
    run_loop(serve(args.host, args.port, args.prefix.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
