"""TLS for HBONE: ``ssl.SSLContext`` factories and the SPIFFE peer checks that ``ssl`` cannot do.

What the contexts enforce (istio-ambient-facts section 2):

- TLS 1.3 only; suites ``TLS_AES_128_GCM_SHA256`` (preferred: RFC 8446's mandatory suite, and 10 AES
  rounds instead of 14 make bulk transfers about 6 % cheaper) and ``TLS_AES_256_GCM_SHA384`` (rustls's
  first choice, so Istio's ztunnel may pick it) only, no ChaCha20; our server's order decides;
- ALPN ``h2``; the client sends no SNI (callers pass ``server_hostname=""`` to the loop);
- no session tickets and no resumption (``OP_NO_TICKET``, ``num_tickets = 0``), so a trust change is
  never bypassed by an old session; contexts are rebuilt when certificates or roots change
  (:class:`ContextCache`);
- certificates required in both directions, trust = the root bundle only.

``ssl`` cannot match URI SANs (calibration trap 12), so after the handshake the caller runs
:func:`verify_server_peer` (client side: the SPIFFE ID must be one of the expected identities) or
:func:`verify_client_peer` (server side: same trust domain as ours) on the verified peer certificate.
There is no plaintext fallback anywhere.

Python 3.11 has no ``SSLContext.set_ciphersuites``; the TLS 1.3 suites are restricted with OpenSSL's
``SSL_CTX_set_ciphersuites`` through ctypes on the context's own ``SSL_CTX`` pointer, checked first by
reading the options back, and the result is verified with ``get_ciphers()``. Where that is not possible
(another Python or libssl), :func:`restrict_tls13_suites` raises rather than run with other suites.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from mesh.errors import MeshError
from mesh.identity.errors import IdentityError
from mesh.identity.spiffe import WorkloadIdentity
from mesh.rt._openssl import openssl

__all__ = [
    "ALPN_H2",
    "TLS13_SUITES",
    "ContextCache",
    "PeerRejectedError",
    "TlsMaterial",
    "TlsSetupError",
    "VerifiedLeaf",
    "client_context",
    "peer_identity",
    "peer_serial",
    "restrict_tls13_suites",
    "self_check",
    "server_context",
    "verify_client_peer",
    "verify_server_peer",
]

ALPN_H2 = "h2"
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")


class TlsSetupError(MeshError):
    """A TLS context could not be built as HBONE requires."""


class PeerRejectedError(MeshError):
    """The TLS peer is not acceptable: no verified certificate, a bad SPIFFE ID, or the wrong identity."""

    def __init__(self, message: str, *, reason: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """A workload's credentials as PEM: its private key, its chain (leaf first) and the trust roots;
    ``crl_pem``, when not empty, the CRLs a peer's certificate is checked against (see
    :mod:`mesh.revocation`)."""

    identity: WorkloadIdentity
    key_pem: bytes
    chain_pem: bytes
    roots_pem: bytes
    crl_pem: bytes = b""

    def __repr__(self) -> str:  # never print key material
        return f"TlsMaterial(identity={self.identity.uri!s})"


def server_context(material: TlsMaterial) -> ssl.SSLContext:
    """A server context presenting ``material``'s chain and requiring a client certificate."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, material)
    ctx.num_tickets = 0
    return ctx


def client_context(material: TlsMaterial) -> ssl.SSLContext:
    """A client context presenting ``material``'s chain (the source workload's, ztunnel impersonates it)."""
    return _base_context(ssl.PROTOCOL_TLS_CLIENT, material)


def _base_context(protocol: ssl._SSLMethod, material: TlsMaterial) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.check_hostname = False  # identities are SPIFFE URI SANs, checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN_H2])
    try:
        ctx.load_verify_locations(cadata=material.roots_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise TlsSetupError(
            f"the trust roots for {material.identity} are not valid PEM: {exc}",
            hint="pass the CA's root certificates as PEM",
        ) from exc
    _load_chain(ctx, material)
    if material.crl_pem:
        _load_crls(ctx, material)
    restrict_tls13_suites(ctx)
    ctx.sslobject_class = _DirectSSLObject
    return ctx


class _DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose read/write/pending are the C methods themselves.

    uvloop binds ``read``, ``write`` and ``pending`` once per connection and calls them for every
    record; ``ssl.SSLObject``'s versions are Python wrappers that only forward to ``_sslobj``. Binding
    the C methods on the instance skips one Python frame per call on the hot path.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> _DirectSSLObject:
        obj: _DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        inner = getattr(obj, "_sslobj", None)
        if inner is not None:  # CPython's layout; otherwise keep the wrappers
            obj.read = inner.read  # type: ignore[method-assign]
            obj.write = inner.write  # type: ignore[method-assign]
            obj.pending = inner.pending  # type: ignore[method-assign]
        return obj


def _load_chain(ctx: ssl.SSLContext, material: TlsMaterial) -> None:
    with _private_pem_file(material.key_pem + b"\n" + material.chain_pem) as path:
        try:
            ctx.load_cert_chain(path)
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"the certificate chain or key for {material.identity} is not usable: {exc}",
                hint="the key must be PEM and match the leaf, which comes first in the chain",
            ) from exc


def _load_crls(ctx: ssl.SSLContext, material: TlsMaterial) -> None:
    """Peers' leaves are checked against the CRLs; a leaf whose issuer has no CRL there is refused
    too (OpenSSL's rule), so the CRL file must cover every CA that issues workload certificates."""
    with _private_pem_file(material.crl_pem) as path:  # CRLs load from a file only, not from cadata
        try:
            ctx.load_verify_locations(cafile=path)
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"the CRLs for {material.identity} are not usable: {exc}",
                hint="give the CA's CRLs as PEM (X509 CRL blocks)",
            ) from exc
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


@contextlib.contextmanager
def _private_pem_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from that no other user can: a memfd, else a 0600 temp file."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("hbone-pem", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="hbone-", suffix=".pem")  # mode 0600
    try:
        os.write(fd, data)
        os.close(fd)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def restrict_tls13_suites(ctx: ssl.SSLContext) -> None:
    """Limits ``ctx`` to :data:`TLS13_SUITES`; raises :class:`TlsSetupError` if that cannot be done."""
    setter = getattr(ctx, "set_ciphersuites", None)
    if setter is not None:  # a future Python
        setter(":".join(TLS13_SUITES))
    else:
        _set_ciphersuites_ctypes(ctx)
    tls13 = {c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"}
    if tls13 != set(TLS13_SUITES):
        raise TlsSetupError(
            f"the TLS 1.3 suites are {sorted(tls13)}, not only AES-GCM",
            hint="run on CPython with OpenSSL 3 (or a Python that has SSLContext.set_ciphersuites)",
        )


def _set_ciphersuites_ctypes(ctx: ssl.SSLContext) -> None:
    lib = openssl()
    # PySSLContext starts with PyObject_HEAD followed by the SSL_CTX pointer.
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr or lib.SSL_CTX_get_options(ptr) != ctx.options:
        raise TlsSetupError(
            "cannot reach the SSL_CTX behind this ssl.SSLContext",
            hint="this Python's ssl module has an unexpected layout; use CPython 3.11+ with OpenSSL 3",
        )
    if lib.SSL_CTX_set_ciphersuites(ptr, ":".join(TLS13_SUITES).encode()) != 1:
        raise TlsSetupError("OpenSSL refused the AES-GCM TLS 1.3 suites", hint="check the OpenSSL build")


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> WorkloadIdentity:
    """The SPIFFE identity of a verified peer certificate, checked per X509-SVID section 2.

    ``getpeercert()`` is only filled for a certificate that OpenSSL verified against our roots, so an
    empty answer means "not verified". Exactly one URI SAN, a workload SPIFFE ID, and no SPIFFE ID
    hiding in a DNS SAN.
    """
    if ssl_object.version() != "TLSv1.3" or ssl_object.selected_alpn_protocol() != ALPN_H2:
        raise PeerRejectedError(
            f"peer negotiated {ssl_object.version()} with ALPN {ssl_object.selected_alpn_protocol()!r}",
            reason="protocol",
            hint="HBONE needs TLS 1.3 and ALPN h2",
        )
    cert = ssl_object.getpeercert()
    if not cert:
        raise PeerRejectedError("the peer presented no verified certificate", reason="no_certificate")
    sans: tuple[tuple[str, str], ...] = cert.get("subjectAltName", ())  # type: ignore[assignment]
    uris = [value for kind, value in sans if kind == "URI"]
    if any(kind == "DNS" and value.lower().startswith("spiffe:") for kind, value in sans):
        raise PeerRejectedError("the peer hides a SPIFFE ID in a DNS SAN", reason="spiffe_id_in_dns_san")
    if len(uris) != 1:
        raise PeerRejectedError(
            f"the peer certificate has {len(uris)} URI SANs, a workload certificate has exactly one",
            reason="uri_san_count",
        )
    try:
        return WorkloadIdentity.parse(uris[0])
    except IdentityError as exc:
        raise PeerRejectedError(f"the peer's SPIFFE ID is invalid: {exc}", reason=str(exc.reason)) from exc


def peer_serial(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> int | None:
    """The serial number of the verified peer certificate (None without one)."""
    serial = (ssl_object.getpeercert() or {}).get("serialNumber")
    return int(str(serial), 16) if serial else None


def verify_server_peer(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: frozenset[WorkloadIdentity]
) -> WorkloadIdentity:
    """Client side: the server's identity, which must be one of ``expected``."""
    identity = peer_identity(ssl_object)
    if identity not in expected:
        wanted = ", ".join(sorted(i.uri for i in expected)) or "(none)"
        raise PeerRejectedError(
            f"the server is {identity.uri}, expected one of {wanted}",
            reason="identity_mismatch",
            hint="the destination's certificate does not match its workload or service identities",
        )
    return identity


def verify_client_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, *, trust_domain: str) -> WorkloadIdentity:
    """Server side: the client's identity, which must be in our trust domain."""
    identity = peer_identity(ssl_object)
    if identity.trust_domain != trust_domain:
        raise PeerRejectedError(
            f"the client is in trust domain {identity.trust_domain!r}, not {trust_domain!r}",
            reason="trust_domain_mismatch",
        )
    return identity


class VerifiedLeaf(NamedTuple):
    """What :func:`self_check` read from a leaf that verified. Times are Unix seconds."""

    identity: WorkloadIdentity
    serial: int
    not_before: float
    not_after: float


_SELF_CHECK_ROUNDS = 4
"""Flights a TLS 1.3 handshake with client certificates needs between two ends, with room to spare."""
_X509_V_ERR_CERT_REVOKED = 23


def self_check(material: TlsMaterial) -> VerifiedLeaf:
    """Proves ``material`` works as peers will see it: a TLS handshake of it with itself, in memory.

    Both ends are built by :func:`server_context` and :func:`client_context`, as for live connections,
    so OpenSSL verifies the chain against ``material``'s roots exactly as every peer will (signatures
    up to a root, validity now, CA constraints, key usage, the server and the client purposes) and
    the key must match the leaf; then both ends run the SPIFFE checks of :func:`peer_identity`.
    Raises :class:`PeerRejectedError` (the chain or the SPIFFE ID is refused) or
    :class:`TlsSetupError` (the key, chain or roots cannot be loaded).
    """
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context(material).wrap_bio(client_in, client_out)
    server = server_context(material).wrap_bio(server_in, server_out, server_side=True)
    pending = [client, server]
    for _ in range(_SELF_CHECK_ROUNDS):
        for end in list(pending):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLCertVerificationError as exc:
                raise PeerRejectedError(
                    f"the certificate of {material.identity} does not verify: {exc.verify_message}",
                    reason="revoked" if exc.verify_code == _X509_V_ERR_CERT_REVOKED else "chain",
                    hint="peers check the chain against the same roots; this one would be refused",
                ) from exc
            except ssl.SSLError as exc:
                raise PeerRejectedError(
                    f"a TLS handshake with the certificate of {material.identity} fails: {exc}",
                    reason="handshake",
                    hint="the CA's certificate cannot serve TLS 1.3 with ECDSA/AES-GCM; check its key type",
                ) from exc
            pending.remove(end)
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if not pending:
            break
    else:
        raise PeerRejectedError(
            f"a TLS handshake with the certificate of {material.identity} did not finish",
            reason="handshake",
            hint="this is a bug in the self-check; report it with the CA's answer",
        )
    identity = verify_client_peer(server, trust_domain=material.identity.trust_domain)
    verify_server_peer(client, frozenset({identity}))
    leaf = client.getpeercert() or {}  # filled: verify_server_peer just read it
    serial = peer_serial(client)
    assert serial is not None, "a verified leaf has a serial number"
    return VerifiedLeaf(
        identity,
        serial=serial,
        not_before=float(ssl.cert_time_to_seconds(str(leaf["notBefore"]))),
        not_after=float(ssl.cert_time_to_seconds(str(leaf["notAfter"]))),
    )


class ContextCache:
    """Builds contexts once per distinct :class:`TlsMaterial` and forgets old ones.

    A new certificate or a new root bundle is a new material and so a new context: nothing from an
    old trust configuration (sessions included) carries over.
    """

    def __init__(self, *, capacity: int = 64) -> None:
        self._capacity = capacity
        self._contexts: OrderedDict[tuple[bool, TlsMaterial], ssl.SSLContext] = OrderedDict()

    def server(self, material: TlsMaterial) -> ssl.SSLContext:
        """The server context for ``material``."""
        return self._get(True, material)

    def client(self, material: TlsMaterial) -> ssl.SSLContext:
        """The client context for ``material``."""
        return self._get(False, material)

    def _get(self, server_side: bool, material: TlsMaterial) -> ssl.SSLContext:
        key = (server_side, material)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = server_context(material) if server_side else client_context(material)
            self._contexts[key] = ctx
            while len(self._contexts) > self._capacity:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(key)
        return ctx
