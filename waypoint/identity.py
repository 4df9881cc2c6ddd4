"""The waypoint's own identity and certificate: ``spiffe://<td>/ns/<namespace>/sa/<service
account>`` of its pod (the Gateway's service account), from the CA with the pod's token (no
impersonation: the waypoint asks for itself), renewed at half life. It presents this certificate
on 15008 to ztunnels and to the endpoints' ztunnels it tunnels to.

Run alone (``--local-config``), the waypoint can instead read its certificate from PEM files, as
Istio's proxies read mounted ones (``cert-chain.pem``, ``key.pem``, ``root-cert.pem``): see
:class:`FileCredentials`.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
from pathlib import Path

from mesh.certs import IssuedCertificate, split_pem_certificates
from mesh.clock import Clock
from mesh.errors import ConfigError
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.ca_client import CaClient
from mesh.rt.certs import CertificateManager, NoValidCertificate
from mesh.rt.clock import SystemClock
from mesh.rt.tls import PeerRejectedError, TlsMaterial, TlsSetupError, VerifiedLeaf, self_check

__all__ = ["FileCredentials", "WaypointCredentials"]


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


class FileCredentials:
    """The waypoint's certificate read once from PEM files: the chain (leaf first), its key and the
    trust roots peers' chains are checked against. The identity is the leaf's SPIFFE URI SAN. Used
    until it expires, never after (fail closed: handshakes are refused and readiness says why);
    a renewed certificate needs a restart."""

    def __init__(self, material: TlsMaterial, leaf: VerifiedLeaf, *, clock: Clock | None = None) -> None:
        self.identity = material.identity
        self._material = material
        self._leaf = leaf
        self._clock = clock or SystemClock()

    @classmethod
    def load(
        cls, *, cert_chain: Path, key: Path, root_cert: Path, trust_domain: str, clock: Clock | None = None
    ) -> FileCredentials:
        """Reads and checks the three files: the key must match the leaf, the chain must verify
        against the roots now, and the leaf must carry one workload SPIFFE ID of ``trust_domain``
        (clients from other trust domains are refused, so the waypoint must be in this one).
        Raises :class:`ConfigError` naming the file and what is wrong."""
        pems = {flag: _read_pem(flag, path) for flag, path in
                (("--cert-chain", cert_chain), ("--key", key), ("--root-cert", root_cert))}  # fmt: skip
        # self_check reads the identity out of the verified leaf; until then only its trust domain
        # (the server side's check of the client) matters.
        unknown = WorkloadIdentity(trust_domain, "unknown", "unknown")
        material = TlsMaterial(
            unknown, key_pem=pems["--key"], chain_pem=pems["--cert-chain"], roots_pem=pems["--root-cert"]
        )
        files = f"--cert-chain {cert_chain} with --key {key} and --root-cert {root_cert}"
        try:
            leaf = self_check(material)
        except PeerRejectedError as exc:
            why = (
                f"its SPIFFE ID is outside --trust-domain {trust_domain!r}"
                if exc.reason == "trust_domain_mismatch"
                else _cause(exc)
            )
            raise ConfigError(
                f"the HBONE certificate of {files} is refused: {why}",
                hint=_REFUSED_HINTS.get(exc.reason, "the leaf must carry one spiffe://<td>/ns/<ns>/sa/<sa>"),
            ) from None
        except TlsSetupError as exc:
            raise ConfigError(
                f"the HBONE certificate of {files} cannot be loaded: {_cause(exc)}",
                hint="--key must be the PEM private key of the first certificate in --cert-chain",
            ) from None
        return cls(dataclasses.replace(material, identity=leaf.identity), leaf, clock=clock)

    @property
    def ready(self) -> bool:
        """True while the certificate is valid."""
        return self._leaf.not_before <= self._clock.now() < self._leaf.not_after

    def server_material(self) -> TlsMaterial:
        """Credentials for a handshake now; raises :class:`NoValidCertificate` outside the validity."""
        if not self.ready:
            raise NoValidCertificate(
                f"the certificate of {self.identity.uri} from files is not valid now",
                hint="give the waypoint a current certificate (--cert-chain, --key) and restart it",
            )
        return self._material


_REFUSED_HINTS = {
    "chain": "--cert-chain must chain to a root in --root-cert and be valid now",
    "trust_domain_mismatch": "give the mesh's trust domain as --trust-domain",
}


def _read_pem(flag: str, path: Path) -> bytes:
    """The file's bytes once it holds what ``flag`` takes: certificates, or a private key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {flag} {path}: {exc.strerror}", hint=f"check the path given to {flag}"
        ) from None
    if flag == "--key":
        if b"PRIVATE KEY-----" not in data:
            raise ConfigError(f"{flag} {path} holds no PEM private key", hint="give the leaf's key.pem")
        return data
    try:
        certificates = split_pem_certificates(data, what=f"{flag} {path}")
    except ValueError as exc:
        raise ConfigError(str(exc), hint=f"{flag} takes PEM certificates only") from None
    if not certificates:
        raise ConfigError(f"{flag} {path} holds no PEM certificate", hint=f"{flag} takes PEM certificates")
    return data


def _cause(exc: PeerRejectedError | TlsSetupError) -> str:
    """What OpenSSL said, without the placeholder identity the check ran under."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return str(cause.verify_message)
    if isinstance(cause, ssl.SSLError):
        return str(cause.reason or cause)
    return exc.message
