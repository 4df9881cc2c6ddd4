"""What every pod proxy on a node shares: the config state, certificates, telemetry, randomness."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from mesh.certs import IssuedCertificate
from mesh.clock import Clock
from mesh.identity.spiffe import WorkloadIdentity
from mesh.model import TunnelProtocol
from mesh.revocation import NO_REVOCATION, Revocation
from mesh.rt.certs import CertificateStatus
from mesh.rt.hbone.config import HboneConfig
from mesh.rt.tcp_metrics import TcpMetrics
from mesh.rt.tls import TlsMaterial
from mesh.telemetry import ConnectionRecord, access_log_fields
from ztunnel.connections import ConnectionBudget, ConnectionRegistry
from ztunnel.state import ProxyState

__all__ = ["DEFAULT_MAX_CONNECTIONS", "Certificates", "NodeContext"]

DEFAULT_MAX_CONNECTIONS = 65536
"""Downstream connections served at once when nothing else is configured (``ztunnel`` itself derives
its default from the open-files limit)."""


class Certificates(Protocol):
    """Where pod proxies get their certificates: the CA's :class:`mesh.rt.certs.CertificateManager`
    in ztunnel, or the certificates ztunnel hands to a worker process (:mod:`ztunnel.workers.certs`)."""

    async def get(self, identity: WorkloadIdentity) -> IssuedCertificate:
        """The usable certificate, fetched first if needed; raises NoValidCertificate."""
        ...

    def current(self, identity: WorkloadIdentity) -> IssuedCertificate:
        """The usable certificate right now; raises NoValidCertificate."""
        ...

    def usable(self, identity: WorkloadIdentity) -> bool:
        """Whether a certificate may be presented now."""
        ...

    def prefetch(self, identities: Iterable[WorkloadIdentity]) -> None:
        """Starts getting certificates for identities not held yet."""
        ...

    def forget(self, identity: WorkloadIdentity) -> None:
        """Drops the identity's certificate."""
        ...

    def snapshot(self) -> tuple[CertificateStatus, ...]:
        """Every identity's certificate state, for the admin dump."""
        ...

    async def close(self) -> None:
        """Stops; later requests fail."""
        ...


@dataclass(slots=True)
class NodeContext:
    """Shared by all pod proxies of one ztunnel. ``state`` is swapped whole on every config update."""

    node: str
    trust_domain: str
    certs: Certificates
    metrics: TcpMetrics
    clock: Clock
    rng: random.Random
    access_log: structlog.typing.FilteringBoundLogger
    log: structlog.typing.FilteringBoundLogger
    hbone: HboneConfig = field(default_factory=HboneConfig)
    state: ProxyState = field(default_factory=ProxyState.build)
    registry: ConnectionRegistry = field(default_factory=ConnectionRegistry)
    on_state: list[Callable[[ProxyState], None]] = field(default_factory=list)
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    revocation: Revocation = NO_REVOCATION
    """The CRLs in force (``--crl-file``); swapped whole by :mod:`ztunnel.revocation`."""
    budget: ConnectionBudget = field(init=False)

    def __post_init__(self) -> None:
        self.budget = ConnectionBudget(self.max_connections, log=self.log, clock=self.clock)

    def apply_state(self, state: ProxyState) -> int:
        """Swaps in a new state, prefetches the certificates of this node's enrolled pods and closes
        connections that the new policies deny; returns how many were closed."""
        self.state = state
        local = {
            WorkloadIdentity(w.trust_domain, w.namespace, w.service_account)
            for w in state.workloads_on_node(self.node)
            if w.protocol is TunnelProtocol.HBONE  # only enrolled pods ever present a certificate
        }
        self.certs.prefetch(local)
        for callback in self.on_state:
            callback(state)
        closed = self.registry.recheck(state)
        if closed:
            self.log.info("policy.connections_closed", count=closed)
        return closed

    def server_material(self, identity: WorkloadIdentity) -> TlsMaterial:
        """Credentials for a TLS handshake right now; raises when there is no valid certificate."""
        return self.material(self.certs.current(identity))

    async def client_material(self, identity: WorkloadIdentity) -> TlsMaterial:
        """Credentials for a new outbound connection (the pool's certificate source)."""
        return self.material(await self.certs.get(identity))

    def material(self, cert: IssuedCertificate) -> TlsMaterial:
        """``cert`` as TLS credentials, with the CRLs in force (peers' certificates are checked)."""
        return TlsMaterial(
            identity=cert.identity,
            key_pem=cert.key_pem,
            chain_pem=cert.chain_pem,
            roots_pem=cert.roots_pem,
            crl_pem=self.revocation.crl_pem,
        )

    def connection_done(
        self,
        record: ConnectionRecord,
        *,
        bytes_from_client: int,
        bytes_to_client: int,
        started: float,
        flags: str = "-",
        error: str = "",
    ) -> None:
        """Counts a finished connection and writes its access-log line."""
        self.metrics.connection_closed(
            record, bytes_from_client=bytes_from_client, bytes_to_client=bytes_to_client, response_flags=flags
        )
        duration_ms = (self.clock.monotonic() - started) * 1000
        outbound = record.reporter == "source"
        fields = access_log_fields(
            record,
            bytes_sent=bytes_from_client if outbound else bytes_to_client,
            bytes_recv=bytes_to_client if outbound else bytes_from_client,
            duration_ms=duration_ms,
            error=error,
        )
        self.access_log.info("connection complete", **fields)

    def connection_refused(self, record: ConnectionRecord, *, started: float, flags: str, error: str) -> None:
        """Counts and logs a connection that was refused or failed before any byte was relayed."""
        self.connection_done(
            record, bytes_from_client=0, bytes_to_client=0, started=started, flags=flags, error=error
        )
