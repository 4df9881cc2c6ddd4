"""One pod's inbound paths: HBONE CONNECT streams on 15008 and plaintext connections on 15006.

Each decides with the pure planner (:mod:`ztunnel.inbound_plan`), then connects to the app from inside
the pod with the client's address, registers the connection so that a policy change can close it,
and reports it when it ends. :class:`~ztunnel.proxy.PodProxy` owns the listeners and the outbound
path and hands accepted connections and streams to this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mesh.identity.spiffe import WorkloadIdentity
from mesh.model import IpAddress, Workload
from mesh.policy import ConnectionAttributes
from mesh.ports import INBOUND_HBONE_PORT
from mesh.rt.hbone.server import InboundDecision, InboundRequest
from mesh.rt.net.netns import InPodSocketFactory, ip_text, original_destination, parse_ip, peer_of, unmap
from mesh.rt.net.relay import RelayEnd, link, reset_transport
from mesh.rt.net.sockets import ConnectError
from mesh.telemetry import ConnectionRecord
from mesh.tunnel_headers import parse_forwarded_for, parse_forwarded_host
from ztunnel.connections import PolicyHold
from ztunnel.context import NodeContext
from ztunnel.inbound_plan import Admit, plan_inbound_hbone, plan_inbound_plaintext
from ztunnel.relays import refuse, relay_end, report_when_closed, socket_of

__all__ = ["PodInbound"]


class PodInbound:
    """Admits or refuses what arrives for the pod, and relays what it admits to the app."""

    def __init__(
        self,
        ctx: NodeContext,
        *,
        identity: WorkloadIdentity,
        sockets: InPodSocketFactory,
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self.ctx = ctx
        self.identity = identity
        self._app_sockets = sockets
        self._spawn = spawn  # the proxy's: its stop() waits for the stream relays

    async def on_connect(self, request: InboundRequest) -> InboundDecision:
        """Decides a CONNECT stream on 15008 and, when admitted, connects it to the app."""
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
        client = parse_forwarded_for(forwarded)
        # The tunnel's own source port is the pooled HBONE connection's, the same for every stream;
        # the client's ztunnel names the app's address in Forwarded. Trusted for the log only when
        # its IP is the tunnel's (which the sending ztunnel cannot spoof).
        source_port = client[1] if client is not None and client[0] == peer_host else request.peer_address[1]
        record = ConnectionRecord(
            reporter="destination",
            source=state.workload_at(peer_ip),
            source_principal=request.peer_identity.uri,
            destination=decision.workload,
            destination_principal=self.identity.uri,
            service=state.service_by_host(host) if host else None,
            mtls=True,
            source_addr=f"{peer_host}:{source_port}",
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
            upstream_end = await relay_end(upstream)
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

    async def on_plaintext(self, client_end: RelayEnd) -> None:
        """Decides a plaintext connection accepted on 15006 and, when admitted, relays it to the app."""
        ctx = self.ctx
        started = ctx.clock.monotonic()
        sock = socket_of(client_end)
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
            return refuse(ctx, client_end, record, started=started, flag=decision.flag, error=decision.reason)
        try:
            upstream = await self._app_sockets.connect(
                (ip_text(dst_ip), dst_port), source_ip=peer_host, client_port=peer_port
            )
        except ConnectError as exc:
            return refuse(ctx, client_end, record, started=started, flag="CONNECT", error=exc.message)
        ctx.metrics.connection_opened(record)
        upstream_end = await relay_end(upstream)
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

        hold = PolicyHold(workload.uid, attributes, close)
        await report_when_closed(record, self.ctx, started, client_end, upstream_end, policy=hold)


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
