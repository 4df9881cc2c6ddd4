"""What a waypoint does with a tunnelled connection that is not HTTP: passes it through to an
endpoint of the Service port's TCP cluster, as Istio's waypoint does for TCP ports.

The CONNECT authority (the Service's ``VIP:port``) names the port. istiod_lite gives a waypoint an
HTTP cluster (``inbound-vip|<port>|http|<host>``) for an HTTP port, a TCP cluster (``...|tcp|...``)
for a TCP one (redis, mysql, ``tcp-*``), and both for a port of unknown protocol: then the first
bytes decide (an HTTP/1.1 request line or the HTTP/2 preface: HTTP), waiting at most
:data:`SNIFF_TIMEOUT` for a client that speaks first (a server-first protocol sends nothing: TCP).
Passed-through connections are counted with ``istio_tcp_*`` and ``reporter="waypoint"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mesh.l7.balancing import Endpoint
from mesh.rt.hbone.errors import StreamResetError
from mesh.rt.tcp_metrics import TcpMetrics
from mesh.telemetry import ConnectionRecord
from waypoint.config import WaypointConfig
from waypoint.telemetry import AddressBook

__all__ = ["SNIFF_TIMEOUT", "PortRoute", "TcpPassthrough", "looks_like_http", "pipe"]

SNIFF_TIMEOUT = 0.1
"""Seconds to wait for a client's first bytes on a port of unknown protocol (Istio's old default)."""
_REQUEST_LINE = re.compile(rb"^(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|TRACE|CONNECT) \S")
_H2_PREFACE = b"PRI * HTTP/2.0"
_READ = 65536


def looks_like_http(first: bytes) -> bool:
    """Whether a connection's first bytes start an HTTP/1.1 request or the HTTP/2 preface."""
    return bool(_REQUEST_LINE.match(first)) or first.startswith(_H2_PREFACE)


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    first: bytes = b"",
) -> tuple[int, int]:
    """Relays bytes both ways (``first``: client bytes already read) with half-close, until both
    sides are done; closes both; returns (bytes from the client, bytes to the client)."""
    received = sent = 0

    async def client_to_upstream() -> None:
        nonlocal received
        received += len(first)
        up_writer.write(first)
        while data := await reader.read(_READ):
            received += len(data)
            up_writer.write(data)
            await up_writer.drain()
        if up_writer.can_write_eof():
            up_writer.write_eof()

    async def upstream_to_client() -> None:
        nonlocal sent
        while data := await up_reader.read(_READ):
            sent += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    with contextlib.suppress(ConnectionError, OSError, StreamResetError):
        await asyncio.gather(client_to_upstream(), upstream_to_client())
    for side in (up_writer, writer):
        with contextlib.suppress(Exception):
            side.close()
    return received, sent


@dataclass(frozen=True, slots=True)
class PortRoute:
    """How a Service port is served: ``http``, ``tcp`` or ``sniff``; the TCP cluster and host."""

    kind: str
    tcp_cluster: str = ""
    hostname: str = ""


Opener = Callable[[Endpoint], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Opens a connection to an endpoint (over HBONE to an enrolled pod)."""


class TcpPassthrough:
    """Classifies tunnelled connections by their Service port and relays the TCP ones."""

    def __init__(
        self,
        config: Callable[[], WaypointConfig],
        book: AddressBook,
        metrics: TcpMetrics,
        open_connection: Opener,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._book = book
        self._metrics = metrics
        self._open = open_connection
        self._rng = rng or random.Random()

    def route(self, authority: str) -> PortRoute:
        """How the Service port ``authority`` (``VIP:port``) is served (``http`` when unknown)."""
        host, _, port = authority.rpartition(":")
        service = self._book.service_at(host.strip("[]"))
        if service is None:
            return PortRoute("http")
        clusters = self._config().clusters
        tcp = f"inbound-vip|{port}|tcp|{service.hostname}"
        http = f"inbound-vip|{port}|http|{service.hostname}"
        if tcp not in clusters:
            return PortRoute("http")
        return PortRoute("sniff" if http in clusters else "tcp", tcp, service.hostname)

    async def relay(
        self,
        route: PortRoute,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: bytes,
        *,
        source_principal: str,
        source_addr: str,
    ) -> None:
        """Relays the client's bytes (``first`` already read) to an endpoint of the TCP cluster and
        back, until both sides are done; counts the connection."""
        picker = self._config().clusters.get(route.tcp_cluster)
        endpoint = picker.pick(self._rng) if picker else None
        book = self._book
        destination = book.workload_at(endpoint.host) if endpoint else None
        record = ConnectionRecord(
            reporter="waypoint", source=book.workload_at(source_addr), source_principal=source_principal,
            destination=destination, destination_principal=destination.spiffe_uri if destination else "",
            service=book.service_named(route.hostname), mtls=bool(source_principal), source_addr=source_addr,
        )  # fmt: skip
        if endpoint is None:
            self._metrics.connection_closed(
                record, bytes_from_client=0, bytes_to_client=0, response_flags="UH"
            )
            writer.close()
            return
        try:
            up_reader, up_writer = await self._open(endpoint)
        except Exception:  # any failure to open the upstream (TCP, TLS, HBONE) is a connect failure: UF
            self._metrics.connection_closed(
                record, bytes_from_client=0, bytes_to_client=0, response_flags="UF"
            )
            writer.close()
            return
        self._metrics.connection_opened(record)
        received, sent = await pipe(reader, writer, up_reader, up_writer, first)
        self._metrics.connection_closed(
            record, bytes_from_client=received, bytes_to_client=sent, response_flags="-"
        )
