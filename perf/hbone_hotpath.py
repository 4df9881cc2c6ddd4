"""The Python cost of one small message through an HBONE relay, without sockets or a kernel in the way.

    .venv/bin/python -m perf.hbone_hotpath [--messages 100000] [--size 100] [--profile]

A server-side :class:`~mesh.rt.hbone.server.HboneServerConnection` relays one stream to a fake TCP
transport, as relay B of the benchmark does. "inbound" is a DATA frame arriving over TLS (the bytes
are copied into the connection's read buffer as uvloop would) and written to TCP; "outbound" is bytes
read from TCP, framed and written to TLS. The client engine that produces and consumes the frames runs
outside the timed sections. Use it to find and check hot-path work; ``--profile`` prints cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

from mesh.h2 import Http2Engine
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.hbone import HboneServerConnection, InboundDecision, InboundRequest
from mesh.rt.net.relay import RelayEnd, link

__all__ = ["main", "measure"]

_PEER = WorkloadIdentity.parse("spiffe://cluster.local/ns/a/sa/client")


class _FakeTransport:
    """Enough of a transport for the hot path: counts what is written."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.written = 0
        self.ssl = False

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)
        self.out.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object" and self.ssl:
            return object()  # _Server.verify_peer does not look at it
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 15008)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def is_closing(self) -> bool:
        return False

    def set_protocol(self, protocol: object) -> None:
        return None

    def drain(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data


class _Server(HboneServerConnection):
    def verify_peer(self, ssl_object: Any) -> WorkloadIdentity:
        return _PEER


async def _setup() -> tuple[Http2Engine, _Server, _FakeTransport, RelayEnd, int]:
    tls, tcp = _FakeTransport(), _FakeTransport()
    upstream = RelayEnd()
    upstream.connection_made(tcp)  # type: ignore[arg-type]

    async def handler(request: InboundRequest) -> InboundDecision:
        stream_end = RelayEnd()
        decision = InboundDecision(status=200, protocol=stream_end)
        asyncio.get_running_loop().call_soon(link, stream_end, upstream)
        return decision

    server = _Server(handler=handler, trust_domain="cluster.local")
    tls.ssl = True
    server.connection_made(tls)  # type: ignore[arg-type]
    client = Http2Engine(client_side=True)
    client.initiate_connection()
    sid = client.send_connect("127.0.0.1:8080")
    _feed(server, client.data_to_send())
    for _ in range(3):
        await asyncio.sleep(0)
    client.receive_data(tls.drain())
    return client, server, tls, upstream, sid


def _feed(server: _Server, wire: bytes) -> None:
    buf = server.get_buffer(len(wire))
    buf[: len(wire)] = wire
    server.buffer_updated(len(wire))


def measure(messages: int, size: int) -> tuple[float, float]:
    """Microseconds per message: (inbound TLS->TCP, outbound TCP->TLS), server side only."""
    return asyncio.run(_measure(messages, size))


async def _measure(messages: int, size: int) -> tuple[float, float]:
    client, server, tls, upstream, sid = await _setup()
    payload = bytes(size)
    inbound = outbound = 0.0
    clock = time.perf_counter
    for _ in range(messages):
        client.send_data(sid, payload)
        wire = client.data_to_send()
        start = clock()
        _feed(server, wire)
        middle = clock()
        upstream.data_received(payload)
        end = clock()
        inbound += middle - start
        outbound += end - middle
        for event in client.receive_data(tls.drain()):
            if type(event).__name__ == "DataReceived":
                client.acknowledge_received_data(sid, event.flow_controlled_length)  # type: ignore[union-attr]
        client.data_to_send()
    return inbound / messages * 1e6, outbound / messages * 1e6


def main() -> None:
    """Prints µs per message in each direction (and a profile with ``--profile``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(measure, args.messages, args.size)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    inbound, outbound = measure(args.messages, args.size)
    print(f"{args.size}-byte messages: inbound {inbound:.2f} us, outbound {outbound:.2f} us per message")


if __name__ == "__main__":
    main()
