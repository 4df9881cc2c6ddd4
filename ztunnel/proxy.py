"""One pod's proxy: listeners 15001, 15006 and 15008 inside its network namespace.

Outbound (15001): the original destination, ``plan_outbound``, then an HBONE stream from the pool
(presenting the pod's certificate) or plain TCP to a destination outside the mesh. Inbound HBONE
(15008): ``plan_inbound_hbone`` on the verified peer, then a connection to the app from inside the
pod with the client's address. Inbound plaintext (15006): allowed unless policy (STRICT) denies.
Each connection writes one access-log line and the ``istio_tcp_*`` metrics when it ends.

This module holds the listeners and the outbound path; the inbound paths are in
:mod:`ztunnel.inbound` and the relay steps both share in :mod:`ztunnel.relays`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mesh.identity.spiffe import WorkloadIdentity
from mesh.model import Workload
from mesh.ports import INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT
from mesh.revocation import Revocation
from mesh.rt.certs import NoValidCertificate
from mesh.rt.hbone.connection import HboneConnection
from mesh.rt.hbone.pool import HbonePool, PoolKey
from mesh.rt.hbone.server import HboneServer
from mesh.rt.net.netns import (
    InPodSocketFactory,
    ip_text,
    listen_in_netns,
    original_destination,
    parse_ip,
    peer_of,
)
from mesh.rt.net.relay import RelayEnd, link, splice
from mesh.rt.net.sockets import ConnectError
from mesh.rt.tls import PeerRejectedError
from mesh.telemetry import ConnectionRecord
from mesh.tunnel_headers import baggage_for, forwarded_for, traceparent
from ztunnel.context import NodeContext
from ztunnel.inbound import PodInbound
from ztunnel.plan import DirectTcp, HboneTunnel, Refuse, plan_outbound
from ztunnel.relays import refuse, relay_end, report_when_closed, reset_end, socket_of

__all__ = ["PodInfo", "PodProxy", "same_namespace"]


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the node agent told us about the pod (ZDS ``workload_info``)."""

    uid: str
    name: str
    namespace: str
    service_account: str


class PodProxy:
    """The in-pod listeners and the per-pod connection pool."""

    def __init__(self, info: PodInfo, netns_fd: int, ctx: NodeContext) -> None:
        self.info = info
        self.ctx = ctx
        self.identity = WorkloadIdentity(ctx.trust_domain, info.namespace, info.service_account or "default")
        self._netns_fd = netns_fd
        self._outbound_sockets = InPodSocketFactory(netns_fd)
        self._pool = HbonePool(sockets=self._outbound_sockets, certs=ctx, clock=ctx.clock, log=ctx.log)
        self._inbound = PodInbound(
            ctx,
            identity=self.identity,
            sockets=InPodSocketFactory(netns_fd, spoof_source=True),
            spawn=self._spawn,
        )
        self._server = HboneServer(
            self._inbound.on_connect,
            credentials=lambda: ctx.server_material(self.identity),
            config=ctx.hbone,
            log=ctx.log,
        )
        self._listeners: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.active = 0

    def serves_namespace_of(self, netns_fd: int) -> bool:
        """Whether ``netns_fd`` is the network namespace this proxy listens in (same inode)."""
        return same_namespace(netns_fd, self._netns_fd)

    async def start(self) -> None:
        """Binds the three listeners inside the pod and starts serving."""
        self.ctx.certs.prefetch([self.identity])
        try:
            outbound = listen_in_netns(self._netns_fd, OUTBOUND_PORT)
            self._listeners.append(outbound)
            plaintext = listen_in_netns(self._netns_fd, INBOUND_PLAINTEXT_PORT)
            self._listeners.append(plaintext)
            hbone = listen_in_netns(self._netns_fd, INBOUND_HBONE_PORT)
            self._listeners.append(hbone)
        except BaseException:
            self._close_listeners()
            raise
        self._server.start(hbone)
        loop = asyncio.get_running_loop()
        for listener, handle in ((outbound, self._outbound), (plaintext, self._inbound.on_plaintext)):
            # The loop accepts and builds the transport itself (no sock_accept round trip, no second
            # transport set-up); each connection's handler then runs as a task.
            factory = functools.partial(_Accepted, self, handle)
            self._servers.append(await loop.create_server(factory, sock=listener))

    async def stop(self, *, deadline: float = 5.0) -> int:
        """Stops accepting, lets connections finish until ``deadline`` (one deadline for inbound and
        outbound together), then closes everything. Returns how many connections were still open at
        the deadline and were cut."""
        self._close_listeners()
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        goaway = asyncio.ensure_future(self._server.drain(deadline=deadline))  # inbound HBONE peers
        pending: set[asyncio.Task[None]] = set()
        if self._tasks:  # every relay (inbound streams too) is one of these tasks
            _, pending = await asyncio.wait(self._tasks, timeout=deadline)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(0.0, until - loop.time()) + 1.0):
                await goaway
        await self._server.close()
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        await self._pool.close()
        with contextlib.suppress(OSError):
            os.close(self._netns_fd)
        return len(pending)

    def close_revoked(self, revocation: Revocation) -> int:
        """Drops this pod's HBONE connections (inbound and pooled outbound) whose peer certificate
        ``revocation`` revokes; their streams end at once. Returns how many were dropped."""
        connections: list[HboneConnection] = [*self._server.connections, *self._pool.all_connections()]
        revoked = [conn for conn in connections if revocation.revokes(conn.peer_serial)]
        for conn in revoked:
            conn.abort(PeerRejectedError("the peer's certificate was revoked", reason="revoked"))
        return len(revoked)

    def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, handle: Callable[[RelayEnd], Awaitable[None]], end: RelayEnd) -> None:
        """Runs one downstream connection's handler; it holds a place of the node's budget."""
        self.active += 1
        try:
            await handle(end)
        except Exception as exc:  # one connection's failure never takes the proxy down
            self.ctx.log.warning("connection.failed", error=repr(exc), pod=self.info.name)
            reset_end(end)
        finally:
            self.active -= 1
            self.ctx.budget.release()

    # -- outbound ---------------------------------------------------------------------------------

    async def _outbound(self, client_end: RelayEnd) -> None:
        ctx = self.ctx
        started = ctx.clock.monotonic()
        sock = socket_of(client_end)
        dst_ip, dst_port = original_destination(sock)
        src_host, src_port = peer_of(sock)
        src_ip = parse_ip(src_host)
        state = ctx.state
        source = state.workload_at(src_ip) or self._self_workload(src_ip)
        plan = plan_outbound(state, source=source, destination=dst_ip, port=dst_port, rng=ctx.rng)
        record = ConnectionRecord(
            reporter="source",
            source=source,
            source_principal=self.identity.uri,
            destination=None if isinstance(plan, Refuse) else plan.workload,
            destination_principal=(plan.identities[0] if isinstance(plan, HboneTunnel) else ""),
            service=None if isinstance(plan, Refuse) else plan.service,
            mtls=isinstance(plan, HboneTunnel),
            source_addr=f"{src_host}:{src_port}",
            destination_addr=f"{ip_text(dst_ip)}:{dst_port}",
            hbone_addr=f"{ip_text(plan.address)}:{plan.port}" if isinstance(plan, HboneTunnel) else "",
        )
        if isinstance(plan, Refuse):
            return refuse(ctx, client_end, record, started=started, flag="CONNECT", error=plan.reason)
        # Counted opened once the upstream answers, as inbound does: a refusal counts opened and
        # closed together, so counting it here too would count a refused connection open twice.
        if isinstance(plan, DirectTcp):
            await self._relay_direct(client_end, plan, record, started)
        else:
            await self._relay_hbone(client_end, plan, record, started, src_host=src_host, src_port=src_port)

    async def _relay_direct(
        self, client_end: RelayEnd, plan: DirectTcp, record: ConnectionRecord, started: float
    ) -> None:
        try:
            upstream = await self._outbound_sockets.connect((ip_text(plan.address), plan.port))
        except ConnectError as exc:
            refuse(self.ctx, client_end, record, started=started, flag="CONNECT", error=exc.message)
            return
        self.ctx.metrics.connection_opened(record)
        upstream_end = await relay_end(upstream)
        link(client_end, upstream_end)
        await report_when_closed(record, self.ctx, started, client_end, upstream_end)

    async def _relay_hbone(
        self,
        client_end: RelayEnd,
        plan: HboneTunnel,
        record: ConnectionRecord,
        started: float,
        *,
        src_host: str,
        src_port: int,
    ) -> None:
        ctx = self.ctx
        key = PoolKey(
            source=self.identity,
            source_ip=src_host,
            destination=(ip_text(plan.address), plan.port),
            expected=_expected(plan.identities),
        )
        source = record.source
        headers = [
            (
                "forwarded",
                forwarded_for(
                    parse_ip(src_host),
                    src_port,
                    service_host=plan.service.hostname if plan.service else "",
                ),
            ),
            ("traceparent", traceparent(ctx.rng)),
        ]
        if source is not None:
            headers.insert(0, ("baggage", baggage_for(source)))
        try:
            status, stream = await self._pool.open_stream(key, plan.authority, tuple(headers))
        except NoValidCertificate as exc:
            return refuse(ctx, client_end, record, started=started, flag="IDENTITY_ERROR", error=exc.message)
        except ConnectError as exc:
            return refuse(ctx, client_end, record, started=started, flag="CONNECT", error=exc.message)
        except Exception as exc:  # TLS or HTTP/2 failure: never fall back to plaintext
            return refuse(ctx, client_end, record, started=started, flag="TLS_FAILURE", error=str(exc))
        if status != 200:
            flag = "DENY" if status == 401 else "CONNECT"
            return refuse(
                ctx, client_end, record, started=started, flag=flag, error=f"peer answered {status}"
            )
        ctx.metrics.connection_opened(record)
        stream_end = splice(client_end, stream)
        await report_when_closed(record, ctx, started, client_end, stream_end)
        return None

    def _self_workload(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Workload:
        """The pod as ZDS described it, while xDS does not know it yet."""
        info = self.info
        return Workload(
            uid=info.uid,
            name=info.name,
            namespace=info.namespace,
            addresses=(ip,),
            service_account=self.identity.service_account,
            trust_domain=self.identity.trust_domain,
            node=self.ctx.node,
        )


class _Accepted(RelayEnd):
    """An accepted connection's end: ready as soon as the loop accepted it, then handled as a task.

    Bytes that arrive before the handler linked the other side wait in the end's bounded backlog."""

    def __init__(self, proxy: PodProxy, handle: Callable[[RelayEnd], Awaitable[None]]) -> None:
        super().__init__(count_bytes=True)
        self._proxy = proxy
        self._handle = handle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._proxy.ctx.budget.try_acquire():
            reset_end(self)  # over --max-connections: refused at once, before any work
            return
        self._proxy._spawn(self._proxy._guard(self._handle, self))


def same_namespace(netns_fd: int, other_fd: int) -> bool:
    """Whether two netns file descriptors name the same namespace (same inode)."""
    theirs, ours = os.fstat(netns_fd), os.fstat(other_fd)
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


@functools.lru_cache(maxsize=1024)
def _expected(identities: tuple[str, ...]) -> frozenset[WorkloadIdentity]:
    """The identities a tunnel's peer may have (parsed once per distinct destination)."""
    return frozenset(WorkloadIdentity.parse(uri) for uri in identities)
