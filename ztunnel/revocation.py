"""Certificate revocation (reliability catalogue 11): the CRL file, watched and applied.

As Istio's ztunnel does with a plugged-in CA's CRL (``--crl-file``, a mounted ConfigMap), ztunnel
re-reads the file when it changes and then, at once:

- every new TLS handshake checks the peer's certificate against the CRLs (OpenSSL, in the contexts
  built from :meth:`NodeContext.material`);
- live HBONE connections whose peer certificate is revoked are dropped, with their streams;
- a local pod's own certificate that is revoked is dropped and fetched anew.

A file that cannot be read or parsed, or whose CRLs do not verify against the trust roots (checked
with a TLS handshake of one of this node's own certificates, as peers will check), is refused with an
error and the CRLs in force stay. A missing file means no revocation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from mesh.errors import MeshError
from mesh.identity.spiffe import WorkloadIdentity
from mesh.revocation import NO_REVOCATION, Revocation, parse_crls
from mesh.rt.metrics import CounterFamily, GaugeFamily, MetricFamily
from mesh.rt.tls import PeerRejectedError, self_check
from ztunnel.context import NodeContext
from ztunnel.manager import ServedPod

__all__ = ["CrlWatcher"]

_FileStamp = tuple[int, int, int] | None


class CrlWatcher:
    """Applies ``path``'s CRLs to ``ctx`` and the pod proxies ``proxies()`` returns; also a metrics
    collector (``ztunnel_crl_revoked_serials``, ``ztunnel_crl_connections_closed_total``)."""

    def __init__(
        self,
        path: Path,
        ctx: NodeContext,
        proxies: Callable[[], Iterable[ServedPod]],
        *,
        report_serials: bool = True,
    ) -> None:
        self.path = path
        self._ctx = ctx
        self._proxies = proxies
        self._report_serials = report_serials
        """False in a worker process: the parent reports the serials in force once for the node."""
        self._stamp: _FileStamp = None
        self.closed_total = 0

    async def run(self, *, interval: float = 1.0) -> None:
        """Checks the file every ``interval`` seconds until cancelled."""
        while True:
            self.check()
            await asyncio.sleep(interval)

    def check(self) -> None:
        """Re-reads the file if it changed since the last check, and applies what it holds."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            revocation = self._read() if stamp is not None else NO_REVOCATION
            self._verify(revocation)
        except (OSError, ValueError, MeshError) as exc:
            self._ctx.log.error(
                "revocation.crl_refused",
                path=str(self.path),
                error=str(exc),
                hint="fix the file; the CRLs in force stay until then",
            )
            return
        self.apply(revocation)

    def apply(self, revocation: Revocation) -> int:
        """Puts ``revocation`` in force; returns how many live connections it closed."""
        ctx = self._ctx
        ctx.revocation = revocation
        proxies = list(self._proxies())
        closed = sum(proxy.close_revoked(revocation) for proxy in proxies)
        self.closed_total += closed
        for identity in _identities(proxies):
            if ctx.certs.usable(identity) and revocation.revokes(ctx.certs.current(identity).serial):
                ctx.log.warning("revocation.own_certificate_revoked", identity=identity.uri)
                ctx.certs.forget(identity)
                ctx.certs.prefetch([identity])
        ctx.log.info("revocation.applied", revoked=len(revocation.serials), connections_closed=closed)
        return closed

    def collect(self) -> list[MetricFamily]:
        """The revoked serials in force and the connections closed for revocation."""
        serials = GaugeFamily(
            "ztunnel_crl_revoked_serials", "Certificate serial numbers the CRLs in force revoke."
        )
        serials.add_metric((), len(self._ctx.revocation.serials))
        closed = CounterFamily(
            "ztunnel_crl_connections_closed", "Live HBONE connections closed because the peer was revoked."
        )
        closed.add_metric((), self.closed_total)
        return [serials, closed] if self._report_serials else [closed]

    def _read(self) -> Revocation:
        return parse_crls(self.path.read_bytes(), what=f"the CRL file {self.path}")

    def _verify(self, revocation: Revocation) -> None:
        """The CRLs must verify against the roots: a handshake of a local certificate with them."""
        cert = next(
            (self._ctx.certs.current(i) for i in _identities(self._proxies()) if self._ctx.certs.usable(i)),
            None,
        )
        if not revocation.crl_pem or cert is None:
            return  # nothing to check, or no local certificate yet: new handshakes check the CRLs
        material = dataclasses.replace(self._ctx.material(cert), crl_pem=revocation.crl_pem)
        try:
            self_check(material)
        except PeerRejectedError as exc:
            if exc.reason != "revoked":  # our own revoked certificate is replaced in apply
                raise


def _stamp(path: Path) -> _FileStamp:
    """What changes when the file is replaced or rewritten (a ConfigMap update swaps a symlink)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _identities(proxies: Iterable[ServedPod]) -> set[WorkloadIdentity]:
    return {proxy.identity for proxy in proxies}
