"""Verifying a presented workload certificate chain against a trust bundle.

The checks run in a fixed order so that a refused chain names the most fundamental problem first:
shape -> links and signatures up to a trusted root -> validity windows -> algorithms and keys ->
CA constraints -> the leaf's SPIFFE ID and X509-SVID rules -> trust domain. Finally the chain is
re-verified by ``cryptography``'s own path validator (RFC 5280 / CABF-style), so what we check by
hand is never the only line of defence.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification
from cryptography.x509.oid import SignatureAlgorithmOID

from mesh.identity.certs import check_ca_constraints, check_leaf_constraints, identity_from_certificate
from mesh.identity.errors import CertificateRejected, Reason
from mesh.identity.spiffe import WorkloadIdentity, validate_trust_domain

__all__ = ["MAX_INTERMEDIATES", "verify_workload_chain"]

MAX_INTERMEDIATES = 4

_SIGNATURE_ALGORITHMS = frozenset(
    {
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
        SignatureAlgorithmOID.RSA_WITH_SHA256,
        SignatureAlgorithmOID.RSA_WITH_SHA384,
        SignatureAlgorithmOID.RSA_WITH_SHA512,
    }
)
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_MIN_RSA_BITS = 2048


def _reject(message: str, reason: Reason, position: int | None, hint: str) -> CertificateRejected:
    return CertificateRejected(message, reason=reason, position=position, hint=hint)


def _check_arguments(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], now: dt.datetime
) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise _reject(
            "'now' has no time zone", Reason.NAIVE_TIME, None, "pass an aware datetime, e.g. in UTC"
        )
    if not chain:
        raise _reject(
            "the peer presented no certificate", Reason.EMPTY_CHAIN, None, "a workload must present one"
        )
    if not roots:
        raise _reject(
            "the trust bundle is empty", Reason.NO_TRUST_ROOTS, None, "load the mesh root certificates first"
        )
    if len(chain) > MAX_INTERMEDIATES + 2:  # leaf + intermediates + possibly the root itself
        raise _too_long(len(chain) - 1)


def _too_long(intermediates: int) -> CertificateRejected:
    return _reject(
        f"the chain has {intermediates} certificates after the leaf",
        Reason.CHAIN_TOO_LONG,
        None,
        f"at most {MAX_INTERMEDIATES} intermediates are accepted",
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _strip_presented_root(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """Istio's cert_chain ends with the root; drop a trailing certificate identical to a trusted root."""
    path = list(chain)
    if len(path) > 1 and _der(path[-1]) in {_der(r) for r in roots}:
        path.pop()
    if len(path) - 1 > MAX_INTERMEDIATES:
        raise _too_long(len(path) - 1)
    return path


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _valid_at(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _link_path(
    path: list[x509.Certificate], roots: Sequence[x509.Certificate], now: dt.datetime
) -> x509.Certificate:
    """Checks that each certificate is signed by the next one and the last by a root; returns that root."""
    for position, (cert, issuer) in enumerate(itertools.pairwise(path)):
        if cert.issuer != issuer.subject:
            raise _reject(
                f"certificate {position} was issued by {cert.issuer.rfc4514_string()!r}, "
                f"but the next certificate is {issuer.subject.rfc4514_string()!r}",
                Reason.CHAIN_NOT_LINKED,
                position,
                "present the chain in order: leaf first, then each issuer",
            )
        if not _signed_by(cert, issuer):
            raise _reject(
                f"the signature of certificate {position} does not verify with its issuer's key",
                Reason.BAD_SIGNATURE,
                position,
                "the certificate was altered or signed by a different key; re-issue it",
            )
    return _anchor(path[-1], len(path) - 1, roots, now)


def _anchor(
    last: x509.Certificate, position: int, roots: Sequence[x509.Certificate], now: dt.datetime
) -> x509.Certificate:
    """The trusted root that signed ``last`` (several roots may share a name during a rotation)."""
    candidates = sorted(
        (r for r in roots if r.subject == last.issuer), key=lambda r: not _valid_at(r, now)
    )  # time-valid roots first
    if not candidates:
        raise _reject(
            f"certificate {position} was issued by {last.issuer.rfc4514_string()!r}, "
            "which is not a trusted root",
            Reason.UNTRUSTED_ROOT,
            position,
            "the peer belongs to another CA; trust its root only if it is part of this mesh",
        )
    for root in candidates:
        if _signed_by(last, root):
            return root
    raise _reject(
        f"the signature of certificate {position} does not verify with any trusted root named "
        f"{last.issuer.rfc4514_string()!r}",
        Reason.BAD_SIGNATURE,
        position,
        "the certificate was altered or signed by another CA that uses the same name",
    )


def _check_times(path: list[x509.Certificate], root: x509.Certificate, now: dt.datetime) -> None:
    stamp = now.astimezone(dt.UTC).isoformat()
    for position, cert in [*enumerate(path), (-1, root)]:
        kind = "leaf" if position == 0 else "root" if position < 0 else "intermediate"
        if now > cert.not_valid_after_utc:
            reason = {"leaf": Reason.EXPIRED, "intermediate": Reason.INTERMEDIATE_EXPIRED}.get(kind)
            raise _reject(
                f"the {kind} certificate expired at {cert.not_valid_after_utc.isoformat()} (now {stamp})",
                reason or Reason.ROOT_EXPIRED,
                position,
                "renew it; if the time looks wrong, check the node clock",
            )
        if now < cert.not_valid_before_utc:
            reason = {"leaf": Reason.NOT_YET_VALID, "intermediate": Reason.INTERMEDIATE_NOT_YET_VALID}.get(
                kind
            )
            raise _reject(
                f"the {kind} certificate is valid only from "
                f"{cert.not_valid_before_utc.isoformat()} (now {stamp})",
                reason or Reason.ROOT_NOT_YET_VALID,
                position,
                "check the clocks of the CA and of this node",
            )


def _check_key(cert: x509.Certificate, position: int) -> None:
    key = cert.public_key()
    weak = isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS
    weak |= isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, _CURVES)
    weak |= not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    if weak:
        raise _reject(
            f"certificate {position} has a weak or unsupported public key",
            Reason.WEAK_KEY,
            position,
            "use ECDSA P-256 (Istio's default), P-384 or RSA >= 2048 bits",
        )


def _check_algorithms(path: list[x509.Certificate], root: x509.Certificate) -> None:
    _check_key(root, -1)
    for position, cert in enumerate(path):
        if cert.signature_algorithm_oid not in _SIGNATURE_ALGORITHMS:
            raise _reject(
                f"certificate {position} is signed with {cert.signature_algorithm_oid.dotted_string}",
                Reason.WEAK_SIGNATURE_ALGORITHM,
                position,
                "sign with ECDSA or RSA PKCS#1 v1.5 over SHA-256/384/512",
            )
        _check_key(cert, position)


def _library_verify(
    path: list[x509.Certificate], roots: Sequence[x509.Certificate], now: dt.datetime
) -> None:
    """Defence in depth: ``cryptography``'s RFC 5280 path validation over the same chain."""
    ee_policy = verification.ExtensionPolicy.permit_all()
    ca_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(roots)))
        .time(now)
        .max_chain_depth(MAX_INTERMEDIATES + 1)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(path[0], path[1:])
    except verification.VerificationError as exc:
        raise _reject(
            f"the chain fails RFC 5280 path validation: {exc}",
            Reason.CHAIN_POLICY,
            None,
            "re-issue the chain with standard CA certificates (name constraints on URIs are not supported)",
        ) from exc


def verify_workload_chain(
    chain: Sequence[x509.Certificate],
    *,
    roots: Sequence[x509.Certificate],
    now: dt.datetime,
    trust_domain: str | None = None,
) -> WorkloadIdentity:
    """Verifies a presented chain (``chain[0]`` is the leaf, then its intermediates) and returns its identity.

    ``roots`` is the trust bundle (several roots during a rotation). A trailing copy of a trusted root in
    ``chain`` is accepted and ignored. ``now`` must be timezone-aware. With ``trust_domain`` the leaf's
    trust domain must equal it. Raises :class:`CertificateRejected` whose ``reason`` names the broken rule.
    """
    _check_arguments(chain, roots, now)
    expected_domain = validate_trust_domain(trust_domain) if trust_domain is not None else None
    path = _strip_presented_root(chain, roots)
    root = _link_path(path, roots, now)
    _check_times(path, root, now)
    _check_algorithms(path, root)
    intermediates = len(path) - 1
    for position in range(1, len(path)):
        check_ca_constraints(path[position], position=position, cas_below=position - 1)
    check_ca_constraints(root, position=-1, cas_below=intermediates)
    identity = identity_from_certificate(path[0])
    check_leaf_constraints(path[0])
    if expected_domain is not None and identity.trust_domain != expected_domain:
        raise _reject(
            f"the peer's trust domain is {identity.trust_domain!r}, expected {expected_domain!r}",
            Reason.TRUST_DOMAIN_MISMATCH,
            0,
            "the peer belongs to another mesh; configure trust-domain aliases only if that is intended",
        )
    _library_verify(path, roots, now)
    return identity
