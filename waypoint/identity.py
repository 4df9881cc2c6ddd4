"""The waypoint's own identity and certificate: ``spiffe://<td>/ns/<namespace>/sa/<service
account>`` of its pod (the Gateway's service account), from the CA with the pod's token (no
impersonation: the waypoint asks for itself), renewed at half life. It presents this certificate
on 15008 to ztunnels and to the endpoints' ztunnels it tunnels to."""

from __future__ import annotations

import random

from mesh.certs import IssuedCertificate
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.ca_client import CaClient
from mesh.rt.certs import CertificateManager
from mesh.rt.clock import SystemClock
from mesh.rt.tls import TlsMaterial

__all__ = ["WaypointCredentials"]


class WaypointCredentials:
    """The waypoint's certificate, as server credentials and as the HBONE pool's certificate source."""

    def __init__(self, identity: WorkloadIdentity, ca: CaClient, *, ttl_seconds: int = 24 * 3600) -> None:
        self.identity = identity
        self._ca = ca

        async def fetch(wanted: WorkloadIdentity) -> IssuedCertificate:
            return await ca.fetch(wanted, impersonate=False, ttl_seconds=ttl_seconds)

        self.certs = CertificateManager(fetcher=fetch, clock=SystemClock(), rng=random.Random())
        self.certs.prefetch([identity])

    @property
    def ready(self) -> bool:
        """True once a valid certificate is in."""
        return self.certs.usable(self.identity)

    def server_material(self) -> TlsMaterial:
        """Credentials for a handshake on 15008 now; raises when there is no valid certificate."""
        return _material(self.certs.current(self.identity))

    async def client_material(self, identity: WorkloadIdentity) -> TlsMaterial:
        """Credentials for a new HBONE connection to an endpoint's ztunnel (waits for the first)."""
        return _material(await self.certs.get(identity))

    async def close(self) -> None:
        """Stops renewing and closes the CA channel."""
        await self.certs.close()
        await self._ca.close()


def _material(cert: IssuedCertificate) -> TlsMaterial:
    return TlsMaterial(
        identity=cert.identity, key_pem=cert.key_pem, chain_pem=cert.chain_pem, roots_pem=cert.roots_pem
    )
