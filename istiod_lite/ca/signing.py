"""Issuing certificates (pure: every function takes ``now``).

A workload leaf is an X.509-SVID: empty subject, the SPIFFE ID as its single (critical) URI
SAN, CA=false, digitalSignature+keyEncipherment, serverAuth+clientAuth, AKI/SKI, never
outliving the signing certificate. The answer to a request is
``[leaf, *intermediates, root_bundle]`` as Istio sends it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from istiod_lite.ca.authority import SigningAuthority, pem_of, utc
from istiod_lite.ca.csr import LeafPublicKey
from istiod_lite.ca.errors import InvalidRequestError, RootOfTrustError
from mesh.identity import WorkloadIdentity

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_MAX_TTL",
    "IssuedCertificate",
    "ServingCertificate",
    "cap_ttl",
    "issue_serving_certificate",
    "issue_workload_certificate",
]

DEFAULT_MAX_TTL = dt.timedelta(hours=24)
CLOCK_SKEW = dt.timedelta(minutes=1)
"""The most a leaf is backdated for clocks that run behind; short-lived leaves get a tenth of their TTL
so renewal at half life stays close to half of what was asked for (catalogue test 24)."""

_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A signed leaf and the chain to answer with (leaf first, root bundle last)."""

    leaf: x509.Certificate
    cert_chain: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServingCertificate:
    """The CA server's own TLS certificate: private key PEM and chain PEM (leaf + intermediates)."""

    key_pem: bytes
    chain_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime


def cap_ttl(requested_seconds: int, *, max_ttl: dt.timedelta = DEFAULT_MAX_TTL) -> dt.timedelta:
    """The lifetime to issue: the requested one, capped at ``max_ttl``; zero or less is refused."""
    if requested_seconds <= 0:
        raise InvalidRequestError(
            f"validity_duration is {requested_seconds} seconds",
            hint=f"ask for a positive lifetime (at most {int(max_ttl.total_seconds())} s)",
        )
    if requested_seconds >= max_ttl.total_seconds():
        return max_ttl
    return dt.timedelta(seconds=requested_seconds)


def issue_workload_certificate(
    authority: SigningAuthority,
    public_key: LeafPublicKey,
    *,
    identity: WorkloadIdentity,
    ttl: dt.timedelta,
    now: float,
) -> IssuedCertificate:
    """Signs a workload leaf for ``identity`` over ``public_key``, valid from ``now`` for ``ttl``."""
    moment = utc(now)
    builder = (
        _leaf_builder(authority, public_key, moment=moment, ttl=ttl)
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True
        )
    )
    leaf = builder.sign(authority.key, hashes.SHA256())
    return IssuedCertificate(
        leaf=leaf, cert_chain=(pem_of(leaf), *authority.chain_pems, authority.root_bundle_pem)
    )


def issue_serving_certificate(
    authority: SigningAuthority,
    *,
    dns_names: tuple[str, ...],
    uri: str,
    ttl: dt.timedelta,
    now: float,
) -> ServingCertificate:
    """A fresh P-256 key and a server certificate for it with the given DNS names and URI SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    moment = utc(now)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans.append(x509.UniformResourceIdentifier(uri))
    subject = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]) if dns_names else x509.Name([])
    )
    leaf = (
        _leaf_builder(authority, key.public_key(), moment=moment, ttl=ttl)
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), critical=not dns_names)
        .sign(authority.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain_pem = "".join((pem_of(leaf), *authority.chain_pems)).encode("ascii")
    return ServingCertificate(
        key_pem=key_pem,
        chain_pem=chain_pem,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


def _leaf_builder(
    authority: SigningAuthority, public_key: LeafPublicKey, *, moment: dt.datetime, ttl: dt.timedelta
) -> x509.CertificateBuilder:
    not_after = min(moment + ttl, authority.not_after)
    if not_after <= moment:
        raise RootOfTrustError(
            "the signing certificate has expired", hint="rotate the CA certificate (cacerts) and restart"
        )
    issuer_ski = _issuer_ski(authority.cert)
    return (
        x509.CertificateBuilder()
        .issuer_name(authority.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(moment - min(CLOCK_SKEW, ttl / 10), authority.cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EKU, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
    )


def _issuer_ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
