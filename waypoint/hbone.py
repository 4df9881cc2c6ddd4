"""HBONE at both ends of the waypoint.

In: ztunnel sends a client's traffic for a Service that uses this waypoint as an HBONE CONNECT
stream to its 15008, authority = the Service's ``VIP:port``. Each stream carries one client
connection's HTTP/1.1; the proxy serves it as it serves a plain TCP client, with the virtual host
chosen by that authority (the Host header may say anything) and the peer's verified SPIFFE identity
as the request's source principal.

Out: an endpoint reached over HBONE (an enrolled pod) gets a CONNECT stream to its ztunnel,
``pod IP:15008``, authority ``pod IP:target port``, presenting the waypoint's own identity; the
stream then carries HTTP/1.1 to the app like a TCP connection would.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from mesh.identity.spiffe import WorkloadIdentity
from mesh.ports import INBOUND_HBONE_PORT
from mesh.rt.hbone.pool import HbonePool, PoolKey
from mesh.rt.hbone.server import HboneServer, InboundDecision, InboundRequest
from mesh.rt.tls import TlsMaterial
from waypoint.body import UpstreamError
from waypoint.proxy import WaypointProxy

__all__ = ["HboneFront", "HboneUpstream"]


class HboneFront:
    """The waypoint's HBONE listener: every CONNECT stream becomes an HTTP/1.1 client connection."""

    def __init__(self, proxy: WaypointProxy, credentials: Callable[[], TlsMaterial]) -> None:
        self._proxy = proxy
        self.server = HboneServer(self.on_connect, credentials=credentials)

    async def on_connect(self, request: InboundRequest) -> InboundDecision:
        """Accepts the stream; its bytes go to the proxy's HTTP/1.1 handling."""
        serve = functools.partial(
            self._proxy.serve_connection,
            tunnel_authority=request.authority,
            source_principal=request.peer_identity.uri,
            source_addr=request.peer_address[0],
        )
        reader = asyncio.StreamReader()
        return InboundDecision(200, protocol=asyncio.StreamReaderProtocol(reader, serve))

    async def listen(self, host: str, port: int = INBOUND_HBONE_PORT) -> tuple[str, int]:
        """Starts listening; returns the bound address."""
        return await self.server.listen(host, port)

    async def close(self) -> None:
        """Stops listening and ends the connections."""
        await self.server.close()


class HboneUpstream:
    """Opens HTTP/1.1 connections to endpoints over HBONE (the ``connect`` of :class:`Upstreams`)."""

    def __init__(
        self,
        pool: HbonePool,
        identity: WorkloadIdentity,
        expected: Callable[[str], frozenset[WorkloadIdentity]],
        *,
        source_ip: str = "",
    ) -> None:
        self._pool = pool
        self._identity = identity
        self._expected = expected
        self._source_ip = source_ip

    async def connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A CONNECT stream to ``host``'s ztunnel for ``host:port``, as a reader and writer;
        raises UpstreamError(connect=True) when the tunnel cannot be opened or is refused."""
        key = PoolKey(self._identity, self._source_ip, (host, INBOUND_HBONE_PORT), self._expected(host))
        try:
            status, stream = await self._pool.open_stream(key, f"{host}:{port}")
        except Exception as exc:  # TLS, identity or HTTP/2 failure: the connect failed
            raise UpstreamError(connect=True, detail=f"HBONE to {host}: {exc}") from None
        if status != 200:
            stream.close()
            raise UpstreamError(connect=True, detail=f"HBONE to {host}:{port} answered {status}")
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        stream.attach(protocol)
        return reader, asyncio.StreamWriter(stream, protocol, reader, loop)
