"""One HBONE relay process for the benchmark, on uvloop, built from ``mesh.rt.hbone`` alone.

- ``client``: plain TCP in; each accepted connection becomes a CONNECT stream to ``--target`` on a
  pooled mTLS HTTP/2 connection to ``--server`` (relay A);
- ``server``: HBONE in (mTLS, client certificate required); each CONNECT is relayed to its authority
  (relay B).

Credentials come from PEM files in ``--certs`` (``<name>-key.pem``, ``<name>-chain.pem``, ``roots.pem``).
The bound port is written to ``--ready-file`` once the relay accepts connections.

    .venv/bin/python -m perf.hbone_relay server --certs DIR --name server --ready-file F
    .venv/bin/python -m perf.hbone_relay client --certs DIR --name client --ready-file F \
        --server 127.0.0.1:PORT --expect spiffe://... --target 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
from pathlib import Path

from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.clock import SystemClock
from mesh.rt.hbone import (
    HbonePool,
    HboneServer,
    HboneStream,
    InboundDecision,
    InboundRequest,
    PoolKey,
)
from mesh.rt.loop import run
from mesh.rt.net.memory import tune_malloc
from mesh.rt.net.relay import RelayEnd, reset_transport, splice
from mesh.rt.net.sockets import PlainSocketFactory
from mesh.rt.tls import TlsMaterial

__all__ = ["load_material", "main", "parse_address", "until_signalled", "write_ready"]


def load_material(certs: Path, name: str, identity: str) -> TlsMaterial:
    """Reads ``<name>-key.pem``, ``<name>-chain.pem`` and ``roots.pem`` from ``certs``."""
    return TlsMaterial(
        identity=WorkloadIdentity.parse(identity),
        key_pem=(certs / f"{name}-key.pem").read_bytes(),
        chain_pem=(certs / f"{name}-chain.pem").read_bytes(),
        roots_pem=(certs / "roots.pem").read_bytes(),
    )


class _Certs:
    def __init__(self, material: TlsMaterial) -> None:
        self._material = material

    async def client_material(self, identity: WorkloadIdentity) -> TlsMaterial:
        return self._material


def parse_address(text: str) -> tuple[str, int]:
    """``ip:port`` (IPv6 in brackets) as a tuple."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class _Inbound(RelayEnd):
    """An accepted plain TCP connection; opens its stream as soon as it exists."""

    def __init__(self, relay: _ClientRelay) -> None:
        super().__init__()
        self._relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self._relay.tunnel(self))
        self._relay.tasks.add(task)
        task.add_done_callback(self._relay.tasks.discard)


class _ClientRelay:
    def __init__(self, pool: HbonePool, key: PoolKey, target: str) -> None:
        self.pool, self.key, self.target = pool, key, target
        self.tasks: set[asyncio.Task[None]] = set()

    async def tunnel(self, end: RelayEnd) -> None:
        stream: HboneStream | None = None
        try:
            status, stream = await self.pool.open_stream(self.key, self.target)
        except Exception:
            status = 503
        if stream is None or status != 200:
            if end.transport is not None:
                reset_transport(end.transport)
            return
        splice(end, stream)


async def _client(args: argparse.Namespace) -> None:
    material = load_material(args.certs, args.name, args.identity)
    pool = HbonePool(sockets=PlainSocketFactory(), certs=_Certs(material), clock=SystemClock())
    key = PoolKey(
        source=material.identity,
        source_ip="127.0.0.1",
        destination=parse_address(args.server),
        expected=frozenset({WorkloadIdentity.parse(args.expect)}),
    )
    relay = _ClientRelay(pool, key, args.target)
    server = await asyncio.get_running_loop().create_server(lambda: _Inbound(relay), "127.0.0.1", 0)
    write_ready(args.ready_file, server.sockets[0].getsockname()[1])
    await until_signalled()
    server.close()
    await pool.close()


async def _server(args: argparse.Namespace) -> None:
    material = load_material(args.certs, args.name, args.identity)
    sockets = PlainSocketFactory()

    async def handler(request: InboundRequest) -> InboundDecision:
        sock = await sockets.connect(parse_address(request.authority))
        return InboundDecision(status=200, upstream=sock)

    server = HboneServer(handler, credentials=lambda: material)
    _, port = await server.listen("127.0.0.1")
    write_ready(args.ready_file, port)
    await until_signalled()
    await server.drain(deadline=1.0)


def write_ready(path: Path, port: int) -> None:
    """Publishes the bound port for the parent process (atomically), once set-up is done.

    Start-up objects (modules, contexts) are frozen out of the cyclic GC's generations first, so
    collections during traffic only look at what traffic allocates.
    """
    gc.collect()
    gc.freeze()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.rename(path)


async def until_signalled() -> None:
    """Returns on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    """Runs one relay until SIGTERM."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", choices=["client", "server"])
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--server", help="client: the HBONE server ip:port")
    parser.add_argument("--expect", help="client: the server's SPIFFE ID")
    parser.add_argument("--target", help="client: the CONNECT authority ip:port")
    parser.add_argument("--profile", type=Path, help="write cProfile stats here on exit")
    args = parser.parse_args()
    tune_malloc()
    main_coro = _client(args) if args.role == "client" else _server(args)
    if args.profile is None:
        run(main_coro)
        return
    import cProfile  # noqa: PLC0415 - only when profiling

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run(main_coro)
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
