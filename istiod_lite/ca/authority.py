"""The signing authority: the CA key, its certificate, the chain up to the roots, the trust bundle.

Pure: building a new root takes ``now``; checking key material reads nothing from disk.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from istiod_lite.ca.errors import RootOfTrustError

__all__ = [
    "ROOT_VALIDITY",
    "CaPrivateKey",
    "SigningAuthority",
    "check_authority",
    "create_root",
    "pem_of",
    "utc",
]

ROOT_VALIDITY = dt.timedelta(days=3650)
_MIN_RSA_BITS = 2048

CaPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def utc(now: float) -> dt.datetime:
    """Epoch seconds (what ``Clock.now()`` returns) as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(now, tz=dt.UTC)


def pem_of(cert: x509.Certificate) -> str:
    """A certificate as PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True, slots=True)
class SigningAuthority:
    """What the CA signs with and what it hands out next to each leaf.

    ``cert``/``key`` sign the leaves. ``intermediates`` are the certificates above ``cert`` and
    below a root (empty when ``cert`` is itself a root). ``roots`` is the trust bundle: one or
    more self-signed roots (several during a root rotation).
    """

    cert: x509.Certificate
    key: CaPrivateKey
    intermediates: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]
    chain_pems: tuple[str, ...] = field(init=False)
    root_bundle_pem: str = field(init=False)

    def __post_init__(self) -> None:
        chain = () if self.cert in self.roots else (self.cert, *self.intermediates)
        object.__setattr__(self, "chain_pems", tuple(pem_of(c) for c in chain))
        object.__setattr__(self, "root_bundle_pem", "".join(pem_of(r) for r in self.roots))

    @property
    def not_after(self) -> dt.datetime:
        """When the signing certificate expires; no leaf outlives it."""
        return self.cert.not_valid_after_utc


def create_root(*, trust_domain: str, now: float, validity: dt.timedelta = ROOT_VALIDITY) -> SigningAuthority:
    """A fresh self-signed ECDSA P-256 root that signs leaves directly."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "istiod-lite root CA"),
        ]
    )
    start = utc(now) - dt.timedelta(minutes=5)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return SigningAuthority(cert=cert, key=key, intermediates=(), roots=(cert,))


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def check_authority(authority: SigningAuthority, *, now: float) -> None:
    """Raises RootOfTrustError unless the key material can sign leaves that verify to a root.

    Checks: key type and size, key matches the certificate, the certificate is a CA allowed to
    sign certificates and valid now, each link of the chain is signed by the next, the chain ends
    at one of the roots, and every root is self-signed.
    """
    _check_key(authority.key)
    if _spki(authority.key.public_key()) != _spki(authority.cert.public_key()):
        raise RootOfTrustError(
            "the CA private key does not belong to the CA certificate",
            hint="put the key that matches ca-cert.pem in ca-key.pem",
        )
    _check_is_ca(authority.cert, what="the CA certificate", now=now)
    if not authority.roots:
        raise RootOfTrustError(
            "the trust bundle holds no root certificate", hint="add the root to root-cert.pem"
        )
    for root in authority.roots:
        if not _signed_by(root, root):
            raise RootOfTrustError(
                f"trust bundle entry {root.subject.rfc4514_string()!r} is not a self-signed root",
                hint="root-cert.pem must hold only self-signed root certificates",
            )
    _check_links(authority, now=now)


def _check_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise RootOfTrustError(f"the CA key uses curve {key.curve.name}", hint="use P-256 or P-384")
        return
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise RootOfTrustError(f"the CA RSA key has {key.key_size} bits", hint="use at least 2048 bits")
        return
    raise RootOfTrustError(f"the CA key is a {type(key).__name__}", hint="use an ECDSA or RSA key")


def _check_is_ca(cert: x509.Certificate, *, what: str, now: float) -> None:
    subject = cert.subject.rfc4514_string()
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise RootOfTrustError(f"{what} {subject!r} is not a CA (basicConstraints CA=true missing)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise RootOfTrustError(f"{what} {subject!r} lacks keyUsage keyCertSign")
    moment = utc(now)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise RootOfTrustError(
            f"{what} {subject!r} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d})",
            hint="plug in a current CA certificate",
        )


def _check_links(authority: SigningAuthority, *, now: float) -> None:
    if authority.cert in authority.roots:
        return
    chain = (authority.cert, *authority.intermediates)
    for child, parent in itertools.pairwise(chain):
        _check_is_ca(parent, what="intermediate", now=now)
        if not _signed_by(child, parent):
            raise RootOfTrustError(
                f"{child.subject.rfc4514_string()!r} is not signed by the next certificate in the chain "
                f"{parent.subject.rfc4514_string()!r}",
                hint="cert-chain.pem must list ca-cert.pem and its intermediates in order, leaf side first",
            )
    top = chain[-1]
    if not any(_signed_by(top, root) for root in authority.roots):
        raise RootOfTrustError(
            f"the chain ends at {top.subject.rfc4514_string()!r}, which no root in the trust bundle signed",
            hint="root-cert.pem must hold the root that issued the top of cert-chain.pem",
        )


def _spki(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
