"""A worker's certificates: ztunnel (the parent) fetches and renews them once for all workers.

The worker keeps the chain and key the parent pushed for each identity it asked for, and presents
it until it expires; the parent pushes the replacement when it renews one (at half life). An
identity the worker lacks is asked for once; every caller waits for the same answer. No answer, or
an expired certificate, means no connection (fail closed), as with :class:`CertificateManager`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from mesh.certs import CertPhase, IssuedCertificate
from mesh.clock import Clock
from mesh.identity.errors import InvalidSpiffeId
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt.certs import CertificateStatus, NoValidCertificate
from ztunnel.workers.channel import WorkerChannelError

__all__ = ["ParentCertificates", "certificate_fields", "certificate_from_fields"]


def certificate_fields(cert: IssuedCertificate) -> dict[str, Any]:
    """``cert`` as JSON values for the worker channel (PEM is ASCII)."""
    return {
        "identity": cert.identity.uri,
        "key_pem": cert.key_pem.decode(),
        "chain_pem": cert.chain_pem.decode(),
        "roots_pem": cert.roots_pem.decode(),
        "serial": cert.serial,
        "not_before": cert.not_before,
        "not_after": cert.not_after,
    }


def certificate_from_fields(fields: dict[str, Any]) -> IssuedCertificate:
    """The certificate :func:`certificate_fields` described; raises WorkerChannelError if malformed."""
    try:
        return IssuedCertificate(
            identity=WorkloadIdentity.parse(fields["identity"]),
            key_pem=fields["key_pem"].encode(),
            chain_pem=fields["chain_pem"].encode(),
            roots_pem=fields["roots_pem"].encode(),
            serial=int(fields["serial"]),
            not_before=float(fields["not_before"]),
            not_after=float(fields["not_after"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError, InvalidSpiffeId) as exc:
        raise WorkerChannelError(f"a certificate from ztunnel is malformed: {exc!r}") from None


class ParentCertificates:
    """The certificate source of a worker's :class:`NodeContext` (same methods as the manager's).

    ``ask(identity)`` sends the request to the parent; :meth:`install` and :meth:`failed` take its
    answers and its pushes."""

    def __init__(self, *, ask: Callable[[WorkloadIdentity], None], clock: Clock) -> None:
        self._ask = ask
        self._clock = clock
        self._certs: dict[WorkloadIdentity, IssuedCertificate] = {}
        self._asked: dict[WorkloadIdentity, asyncio.Future[IssuedCertificate]] = {}
        self._errors: dict[WorkloadIdentity, str] = {}
        self._closed = False

    def install(self, cert: IssuedCertificate) -> None:
        """Takes a certificate the parent issued or renewed; wakes whoever waits for it."""
        self._certs[cert.identity] = cert
        self._errors.pop(cert.identity, None)
        waiting = self._asked.pop(cert.identity, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(cert)

    def failed(self, identity: WorkloadIdentity, error: str) -> None:
        """The parent could not get ``identity`` a certificate; whoever waits gets the error."""
        self._errors[identity] = error
        waiting = self._asked.pop(identity, None)
        if waiting is not None and not waiting.done():
            waiting.set_exception(
                NoValidCertificate(
                    f"no certificate for {identity.uri}: {error}",
                    hint="ztunnel retries the CA with backoff; see its certs.fetch_failed log",
                )
            )

    async def get(self, identity: WorkloadIdentity) -> IssuedCertificate:
        """The usable certificate of ``identity``, asking the parent first if there is none."""
        cert = self._usable(identity)
        if cert is not None:
            return cert
        return await asyncio.shield(self._request(identity))

    def current(self, identity: WorkloadIdentity) -> IssuedCertificate:
        """The usable certificate right now; raises NoValidCertificate (and asks) when there is none."""
        cert = self._usable(identity)
        if cert is not None:
            return cert
        self._request(identity)
        raise NoValidCertificate(
            f"no valid certificate for {identity.uri} in this worker yet",
            hint="it was asked of ztunnel, which fetches it from the CA; check its certs logs if it persists",
        )

    def usable(self, identity: WorkloadIdentity) -> bool:
        """Whether a certificate may be presented now (only reads)."""
        return self._usable(identity) is not None

    def prefetch(self, identities: Iterable[WorkloadIdentity]) -> None:
        """Asks the parent for the identities this worker holds no certificate for."""
        for identity in identities:
            if identity not in self._certs:
                self._request(identity)

    def forget(self, identity: WorkloadIdentity) -> None:
        """Drops ``identity``'s certificate."""
        self._certs.pop(identity, None)

    def snapshot(self) -> tuple[CertificateStatus, ...]:
        """The held certificates (the parent's dump is the one operators read)."""
        now = self._clock.now()
        return tuple(
            CertificateStatus(
                identity=identity.uri,
                state=CertPhase.VALID if now < cert.not_after else CertPhase.UNAVAILABLE,
                serial=f"{cert.serial:x}",
                not_before=cert.not_before,
                not_after=cert.not_after,
                next_attempt=cert.not_after,
                failures=0,
                last_error=self._errors.get(identity, ""),
            )
            for identity, cert in sorted(self._certs.items(), key=lambda kv: kv[0].uri)
        )

    async def close(self) -> None:
        """Fails every wait; later requests raise NoValidCertificate."""
        self._closed = True
        for identity in list(self._asked):
            self.failed(identity, "the worker is shutting down")

    def _usable(self, identity: WorkloadIdentity) -> IssuedCertificate | None:
        cert = self._certs.get(identity)
        if cert is not None and self._clock.now() < cert.not_after:
            return cert
        return None

    def _request(self, identity: WorkloadIdentity) -> asyncio.Future[IssuedCertificate]:
        if self._closed:
            raise NoValidCertificate(
                f"no certificate for {identity.uri}: the worker is shutting down",
                hint="do not start new connections while draining",
            )
        waiting = self._asked.get(identity)
        if waiting is None:
            waiting = asyncio.get_running_loop().create_future()
            waiting.add_done_callback(_consume)
            self._asked[identity] = waiting
            self._ask(identity)
        return waiting


def _consume(future: asyncio.Future[IssuedCertificate]) -> None:
    """Marks a failed request as seen: ``current`` callers never await it."""
    if not future.cancelled():
        future.exception()
