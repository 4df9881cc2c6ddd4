"""One pod's proxy: listeners 15001, 15006 and 15008 inside its network namespace.

Outbound (15001): the original destination, ``plan_outbound``, then an HBONE stream from the pool
(presenting the pod's certificate) or plain TCP to a destination outside the mesh. Inbound HBONE
(15008): ``plan_inbound_hbone`` on the verified peer, then a connection to the app from inside the
pod with the client's address. Inbound plaintext (15006): allowed unless policy (STRICT) denies.
Each connection writes one access-log line and the ``istio_tcp_*`` metrics when it ends.
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
from mesh.model import IpAddress, Workload
from mesh.policy import ConnectionAttributes
from mesh.revocation import Revocation
from mesh.rt.certs import NoValidCertificate
from mesh.rt.hbone.connection import HboneConnection
from mesh.rt.hbone.pool import HbonePool, PoolKey
from mesh.rt.hbone.relay import RelayEnd, link, reset_transport, splice
from mesh.rt.hbone.server import HboneServer, InboundDecision, InboundRequest
from mesh.rt.hbone.sockets import ConnectError
from mesh.rt.tls import PeerRejectedError
from ztunnel.context import NodeContext
from ztunnel.headers import baggage_for, forwarded_for, parse_forwarded_host, traceparent
from ztunnel.inbound_plan import Admit, plan_inbound_hbone, plan_inbound_plaintext
from ztunnel.netns import (
    InPodSocketFactory,
    ip_text,
    listen_in_netns,
    original_destination,
    parse_ip,
    peer_of,
    unmap,
)
from ztunnel.plan import DirectTcp, HboneTunnel, Refuse, plan_outbound
from ztunnel.telemetry import ConnectionRecord

__all__ = ["PodInfo", "PodProxy"]

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
INBOUND_HBONE_PORT = 15008


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
        self._app_sockets = InPodSocketFactory(netns_fd, spoof_source=True)
        self._pool = HbonePool(sockets=self._outbound_sockets, certs=ctx, clock=ctx.clock, log=ctx.log)
        self._server = HboneServer(
            self._on_connect,
            credentials=lambda: ctx.server_material(self.identity),
            config=ctx.hbone,
            log=ctx.log,
        )
        self._listeners: list[socket.socket] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.active = 0

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
        for listener, handle in ((outbound, self._outbound), (plaintext, self._inbound_plaintext)):
            # The loop accepts and builds the transport itself (no sock_accept round trip, no second
            # transport set-up); each connection's handler then runs as a task.
            factory = functools.partial(_Accepted, self, handle)
            self._servers.append(await loop.create_server(factory, sock=listener))

    async def stop(self, *, deadline: float = 5.0) -> None:
        """Stops accepting, lets connections finish until ``deadline``, then closes everything."""
        self._close_listeners()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.drain(deadline=deadline), deadline + 1)
        await self._server.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self._pool.close()
        with contextlib.suppress(OSError):
            os.close(self._netns_fd)

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
            _reset(end)
        finally:
            self.active -= 1
            self.ctx.budget.release()

    # -- outbound ---------------------------------------------------------------------------------

    async def _outbound(self, client_end: RelayEnd) -> None:
        ctx = self.ctx
        started = ctx.clock.monotonic()
        sock = _socket_of(client_end)
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
            _reset(client_end)
            ctx.connection_refused(record, started=started, flags="CONNECT", error=plan.reason)
            return
        ctx.metrics.connection_opened(record)
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
            self._failed(client_end, record, started, "CONNECT", exc.message)
            return
        upstream_end = await _wrap(upstream)
        link(client_end, upstream_end)
        await _finished(record, self.ctx, started, client_end, upstream_end)

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
            return self._failed(client_end, record, started, "IDENTITY_ERROR", exc.message)
        except ConnectError as exc:
            return self._failed(client_end, record, started, "CONNECT", exc.message)
        except Exception as exc:  # TLS or HTTP/2 failure: never fall back to plaintext
            return self._failed(client_end, record, started, "TLS_FAILURE", str(exc))
        if status != 200:
            flag = "DENY" if status == 401 else "CONNECT"
            return self._failed(client_end, record, started, flag, f"peer answered {status}")
        stream_end = splice(client_end, stream)
        await _finished(record, ctx, started, client_end, stream_end)
        return None

    def _failed(
        self, client_end: RelayEnd, record: ConnectionRecord, started: float, flag: str, error: str
    ) -> None:
        _reset(client_end)
        self.ctx.connection_refused(record, started=started, flags=flag, error=error)

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

    # -- inbound ----------------------------------------------------------------------------------

    async def _on_connect(self, request: InboundRequest) -> InboundDecision:
        ctx = self.ctx
        started = ctx.clock.monotonic()
        local_ip = parse_ip(unmap(request.local_address[0]))
        peer_host = unmap(request.peer_address[0])
        peer_ip = parse_ip(peer_host)
        state = ctx.state
        decision = plan_inbound_hbone(
            state,
            authority=request.authority,
            arrived_on=local_ip,
            source_ip=peer_ip,
            peer=request.peer_identity,
        )
        forwarded = next((value for name, value in request.headers if name == "forwarded"), "")
        host = parse_forwarded_host(forwarded)
        record = ConnectionRecord(
            reporter="destination",
            source=state.workload_at(peer_ip),
            source_principal=request.peer_identity.uri,
            destination=decision.workload,
            destination_principal=self.identity.uri,
            service=state.service_by_host(host) if host else None,
            mtls=True,
            source_addr=f"{peer_host}:{request.peer_address[1]}",
            destination_addr=request.authority,
            hbone_addr=f"{ip_text(local_ip)}:{INBOUND_HBONE_PORT}",
        )
        if not isinstance(decision, Admit):
            ctx.connection_refused(record, started=started, flags=decision.flag, error=decision.reason)
            return InboundDecision(status=decision.status)
        if not ctx.budget.try_acquire():
            ctx.connection_refused(record, started=started, flags="OM", error="too many connections")
            return InboundDecision(status=503)
        return await self._open_stream(request, decision, record, started, peer=(peer_host, peer_ip))

    async def _open_stream(
        self,
        request: InboundRequest,
        decision: Admit,
        record: ConnectionRecord,
        started: float,
        *,
        peer: tuple[str, IpAddress],
    ) -> InboundDecision:
        """Connects an admitted stream to the app, from the peer's address (text, parsed). The stream
        holds a place of the node's budget: its relay gives it back at the end, or this does if the
        stream cannot start."""
        ctx = self.ctx
        peer_host, peer_ip = peer
        handed_over = False
        try:
            try:
                upstream = await self._app_sockets.connect(
                    (ip_text(decision.address), decision.port), source_ip=peer_host
                )
            except ConnectError as exc:
                ctx.connection_refused(record, started=started, flags="CONNECT", error=exc.message)
                return InboundDecision(status=503)
            ctx.metrics.connection_opened(record)
            upstream_end = await _wrap(upstream)
            stream_end = _LinkOnAttach(upstream_end)
            identity = request.peer_identity
            attributes = ConnectionAttributes(
                source_ip=peer_ip,
                destination_ip=decision.address,
                destination_port=decision.port,
                source_trust_domain=identity.trust_domain,
                source_namespace=identity.namespace,
                source_service_account=identity.service_account,
            )
            tracked = self._track_inbound(
                record,
                started=started,
                upstream_end=upstream_end,
                client_end=stream_end,
                attributes=attributes,
                workload=decision.workload,
            )
            self._spawn(_releasing(ctx, tracked))
            handed_over = True
            return InboundDecision(status=200, protocol=stream_end)
        finally:
            if not handed_over:
                ctx.budget.release()

    async def _inbound_plaintext(self, client_end: RelayEnd) -> None:
        ctx = self.ctx
        started = ctx.clock.monotonic()
        sock = _socket_of(client_end)
        dst_ip, dst_port = original_destination(sock)
        peer_host, peer_port = peer_of(sock)
        peer_ip = parse_ip(peer_host)
        state = ctx.state
        decision = plan_inbound_plaintext(state, destination=dst_ip, port=dst_port, source_ip=peer_ip)
        record = ConnectionRecord(
            reporter="destination",
            source=state.workload_at(peer_ip),
            source_principal="",
            destination=decision.workload,
            destination_principal=self.identity.uri,
            service=None,
            mtls=False,
            source_addr=f"{peer_host}:{peer_port}",
            destination_addr=f"{ip_text(dst_ip)}:{dst_port}",
        )
        if not isinstance(decision, Admit):
            _reset(client_end)
            ctx.connection_refused(record, started=started, flags=decision.flag, error=decision.reason)
            return
        try:
            upstream = await self._app_sockets.connect((ip_text(dst_ip), dst_port), source_ip=peer_host)
        except ConnectError as exc:
            return self._failed(client_end, record, started, "CONNECT", exc.message)
        ctx.metrics.connection_opened(record)
        upstream_end = await _wrap(upstream)
        link(client_end, upstream_end)
        attributes = ConnectionAttributes(source_ip=peer_ip, destination_ip=dst_ip, destination_port=dst_port)
        await self._track_inbound(
            record,
            started=started,
            upstream_end=upstream_end,
            client_end=client_end,
            attributes=attributes,
            workload=decision.workload,
        )
        return None

    async def _track_inbound(
        self,
        record: ConnectionRecord,
        *,
        started: float,
        upstream_end: RelayEnd,
        client_end: RelayEnd,
        attributes: ConnectionAttributes,
        workload: Workload,
    ) -> None:
        def close(reason: str) -> None:
            self.ctx.log.info(
                "connection.closed_by_policy", reason=reason, **{"src.addr": record.source_addr}
            )
            if upstream_end.transport is not None:
                reset_transport(upstream_end.transport)

        conn_id = self.ctx.registry.add(workload_uid=workload.uid, attributes=attributes, close=close)
        try:
            await _finished(record, self.ctx, started, client_end, upstream_end)
        finally:
            self.ctx.registry.remove(conn_id)


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
            _reset(self)  # over --max-connections: refused at once, before any work
            return
        self._proxy._spawn(self._proxy._guard(self._handle, self))


class _LinkOnAttach(RelayEnd):
    """The stream side of an inbound relay: links to the upstream once the stream attaches it."""

    def __init__(self, upstream: RelayEnd) -> None:
        super().__init__(count_bytes=True)
        self._upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        link(self._upstream, self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.peer is None and self._upstream.transport is not None:
            reset_transport(self._upstream.transport)  # the stream died before it was linked
        super().connection_lost(exc)


async def _releasing(ctx: NodeContext, connection: Awaitable[None]) -> None:
    """Runs an inbound stream's relay, then gives its place of the node's budget back."""
    try:
        await connection
    finally:
        ctx.budget.release()


@functools.lru_cache(maxsize=1024)
def _expected(identities: tuple[str, ...]) -> frozenset[WorkloadIdentity]:
    """The identities a tunnel's peer may have (parsed once per distinct destination)."""
    return frozenset(WorkloadIdentity.parse(uri) for uri in identities)


async def _wrap(sock: socket.socket) -> RelayEnd:
    loop = asyncio.get_running_loop()
    _, end = await loop.create_connection(lambda: RelayEnd(count_bytes=True), sock=sock)
    return end


async def _finished(
    record: ConnectionRecord, ctx: NodeContext, started: float, client_end: RelayEnd, server_end: RelayEnd
) -> None:
    results = await asyncio.gather(client_end.closed, server_end.closed, return_exceptions=True)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    ctx.connection_done(
        record,
        bytes_from_client=client_end.bytes_in,
        bytes_to_client=server_end.bytes_in,
        started=started,
        error=str(failed) if failed else "",
    )


def _socket_of(end: RelayEnd) -> socket.socket:
    """The accepted socket under ``end`` (the loop's view of it: getsockopt and addresses work)."""
    assert end.transport is not None, "an accepted end has its transport"
    sock: socket.socket = end.transport.get_extra_info("socket")
    return sock


def _reset(end: RelayEnd) -> None:
    """Refuses an accepted connection with a TCP RST."""
    if end.transport is not None and not end.transport.is_closing():
        reset_transport(end.transport)
