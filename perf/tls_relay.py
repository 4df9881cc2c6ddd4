"""A plain mTLS relay pair (no HTTP/2): the floor any Python uvloop relay starts from.

The benchmark's ``py-tls`` reference path: relay A takes plain TCP and opens one mTLS connection per
client connection to relay B, which checks the SPIFFE identity and forwards plain TCP. It uses the
same pieces as the HBONE relays (``mesh.rt.tls`` contexts, ``RelayEnd`` pipes with backpressure) minus
HTTP/2, so the gap between this path and ``ours`` is the cost of HBONE framing and flow control.
TLS has no half-close in asyncio (calibration trap 11): a FIN closes the pair.

    .venv/bin/python -m perf.tls_relay server --certs DIR --name server --identity ID --ready-file F \
        --target 127.0.0.1:PORT
    .venv/bin/python -m perf.tls_relay client --certs DIR --name client --identity ID --ready-file F \
        --server 127.0.0.1:PORT --expect SPIFFE_ID
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.loop import run
from mesh.rt.net.memory import tune_malloc
from mesh.rt.net.relay import RelayEnd, link, reset_transport
from mesh.rt.tls import (
    PeerRejectedError,
    client_context,
    server_context,
    verify_client_peer,
    verify_server_peer,
)
from perf.hbone_relay import load_material, parse_address, until_signalled, write_ready

__all__ = ["main"]


class _Accepted(RelayEnd):
    """An accepted connection that dials the next hop as soon as it exists."""

    def __init__(self, start: Callable[[RelayEnd], Coroutine[Any, Any, None]]) -> None:
        super().__init__()
        self._start = start
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._task = asyncio.get_running_loop().create_task(self._start(self))


async def _dial(end: RelayEnd, host: str, port: int, *, context: ssl.SSLContext | None = None,
                expect: frozenset[WorkloadIdentity] = frozenset()) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    try:
        if context is None:
            transport, out = await loop.create_connection(RelayEnd, host, port)
        else:
            transport, out = await loop.create_connection(
                RelayEnd, host, port, ssl=context, server_hostname=""
            )
            verify_server_peer(transport.get_extra_info("ssl_object"), expect)
    except (OSError, ssl.SSLError, PeerRejectedError):
        if end.transport is not None:
            reset_transport(end.transport)
        return
    if end.transport is None or end.transport.is_closing():
        transport.close()
        return
    link(end, out)


async def _client(args: argparse.Namespace) -> None:
    material = load_material(args.certs, args.name, args.identity)
    context = client_context(material)
    host, port = parse_address(args.server)
    expect = frozenset({WorkloadIdentity.parse(args.expect)})

    def factory() -> _Accepted:
        return _Accepted(lambda end: _dial(end, host, port, context=context, expect=expect))

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    write_ready(args.ready_file, server.sockets[0].getsockname()[1])
    await until_signalled()
    server.close()


async def _server(args: argparse.Namespace) -> None:
    material = load_material(args.certs, args.name, args.identity)
    host, port = parse_address(args.target)
    trust_domain = material.identity.trust_domain

    async def start(end: RelayEnd) -> None:
        assert end.transport is not None
        try:
            verify_client_peer(end.transport.get_extra_info("ssl_object"), trust_domain=trust_domain)
        except PeerRejectedError:
            end.transport.abort()
            return
        await _dial(end, host, port)

    server = await asyncio.get_running_loop().create_server(
        lambda: _Accepted(start), "127.0.0.1", 0, ssl=server_context(material)
    )
    write_ready(args.ready_file, server.sockets[0].getsockname()[1])
    await until_signalled()
    server.close()


def main() -> None:
    """Runs one TLS relay until SIGTERM."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("role", choices=["client", "server"])
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--server", help="client: relay B's ip:port")
    parser.add_argument("--expect", help="client: relay B's SPIFFE ID")
    parser.add_argument("--target", help="server: where to forward, ip:port")
    args = parser.parse_args()
    tune_malloc()
    run(_client(args) if args.role == "client" else _server(args))


if __name__ == "__main__":
    main()
