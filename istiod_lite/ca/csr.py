"""Certificate signing request validation (pure).

A CSR is accepted only when its PEM holds exactly one request, its self-signature verifies, its
key is ECDSA P-256 or RSA 2048..8192 bits, and its only SAN is one URI: a SPIFFE workload ID in
this CA's trust domain. Whether the caller may have that identity is decided elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from istiod_lite.ca.errors import InvalidRequestError
from mesh.identity import IdentityError, WorkloadIdentity

__all__ = ["MAX_CSR_BYTES", "LeafPublicKey", "ValidatedCsr", "validate_csr"]

MAX_CSR_BYTES = 16 * 1024
_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 8192
_BEGIN = "-----BEGIN CERTIFICATE REQUEST-----"

LeafPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True, slots=True)
class ValidatedCsr:
    """The parts of a valid CSR the CA uses: the key to certify and the identity it asks for."""

    public_key: LeafPublicKey
    identity: WorkloadIdentity


def validate_csr(pem: str, *, trust_domain: str) -> ValidatedCsr:
    """Parses and checks ``pem``; raises InvalidRequestError saying what is wrong."""
    if not pem.strip():
        raise InvalidRequestError("the request carries no CSR", hint="put a PEM CSR in the csr field")
    if len(pem) > MAX_CSR_BYTES:
        raise InvalidRequestError(
            f"the CSR is {len(pem)} bytes", hint=f"a CSR must be at most {MAX_CSR_BYTES} bytes"
        )
    blocks = pem.count(_BEGIN)
    if blocks != 1:
        raise InvalidRequestError(
            f"the csr field holds {blocks} PEM certificate requests",
            hint=f"send exactly one block starting with {_BEGIN}",
        )
    try:
        csr = x509.load_pem_x509_csr(pem.encode("utf-8"))
    except ValueError as err:
        raise InvalidRequestError(
            f"the CSR is not valid PEM/DER ({err})", hint="send a PKCS#10 CSR in PEM"
        ) from err
    key = _public_key(csr)
    if not csr.is_signature_valid:
        raise InvalidRequestError(
            "the CSR signature does not verify", hint="sign the CSR with the key it carries"
        )
    return ValidatedCsr(public_key=key, identity=_san_identity(csr, trust_domain=trust_domain))


def _public_key(csr: x509.CertificateSigningRequest) -> LeafPublicKey:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as err:
        raise InvalidRequestError(
            f"the CSR's public key is unreadable ({err})", hint="use ECDSA P-256 or RSA >= 2048 bits"
        ) from err
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidRequestError(f"the CSR key uses curve {key.curve.name}", hint="use ECDSA P-256")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not _MIN_RSA_BITS <= key.key_size <= _MAX_RSA_BITS:
            raise InvalidRequestError(
                f"the CSR has a {key.key_size}-bit RSA key",
                hint=f"use ECDSA P-256 or RSA of {_MIN_RSA_BITS}..{_MAX_RSA_BITS} bits",
            )
        return key
    raise InvalidRequestError(
        f"the CSR carries a {type(key).__name__} key", hint="use ECDSA P-256 or RSA >= 2048 bits"
    )


def _san_identity(csr: x509.CertificateSigningRequest, *, trust_domain: str) -> WorkloadIdentity:
    try:
        names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        raise InvalidRequestError(
            "the CSR has no subjectAltName", hint="add one URI SAN holding the SPIFFE ID"
        ) from None
    except (ValueError, x509.DuplicateExtension) as err:
        raise InvalidRequestError(f"the CSR's extensions are malformed ({err})") from err
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        kinds = ", ".join(type(n).__name__ for n in names) or "none"
        raise InvalidRequestError(
            f"the CSR has {len(names)} SANs ({kinds})",
            hint="a workload CSR carries exactly one SAN: the SPIFFE ID as a URI",
        )
    uri = names[0].value
    try:
        identity = WorkloadIdentity.parse(uri)
    except IdentityError as err:
        raise InvalidRequestError(f"the CSR SAN {uri!r} is not a SPIFFE workload ID: {err}") from err
    if identity.trust_domain != trust_domain:
        raise InvalidRequestError(
            f"the CSR asks for trust domain {identity.trust_domain!r}",
            hint=f"this CA only issues for trust domain {trust_domain!r}",
        )
    return identity
