"""Test PKI: roots, intermediates, SPIFFE leaves and CSRs, with every knob a malformed-certificate test needs.

Typical use::

    pki = TestPki.create(trust_domain="cluster.local")
    inter = pki.issue_intermediate()
    leaf = pki.issue_leaf("spiffe://cluster.local/ns/default/sa/sleep", issuer=inter)
    chain = pki.chain_for(leaf, inter)            # [leaf, intermediate]
    files = write_pem_files(tmp_path, leaf, chain=chain, roots=pki.roots)   # for ssl.SSLContext

Defaults follow Istio: ECDSA P-256 / SHA-256, a 24 h leaf with one critical URI SAN, key usage
digitalSignature + keyEncipherment, EKU serverAuth + clientAuth, CA certs with keyCertSign + cRLSign.
Times default to the real clock (TLS stacks check it); pass ``now=`` for fake-clock tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

__all__ = [
    "CA_KEY_USAGE",
    "LEAF_EXTENDED_KEY_USAGE",
    "LEAF_KEY_USAGE",
    "CsrAndKey",
    "IssuedCert",
    "KeyType",
    "PemFiles",
    "PrivateKey",
    "SignatureHash",
    "TestPki",
    "build_certificate",
    "build_crl",
    "build_csr",
    "cert_pem",
    "chain_pem",
    "corrupt_signature",
    "csr_pem",
    "generate_key",
    "key_pem",
    "raw_san",
    "write_pem_files",
]

KeyType = Literal["ec-p256", "ec-p384", "ec-secp256k1", "rsa-2048", "rsa-1024"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
SignatureHash = hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512

LEAF_KEY_USAGE: frozenset[str] = frozenset({"digital_signature", "key_encipherment"})
CA_KEY_USAGE: frozenset[str] = frozenset({"key_cert_sign", "crl_sign"})
LEAF_EXTENDED_KEY_USAGE: tuple[x509.ObjectIdentifier, ...] = (
    ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsageOID.CLIENT_AUTH,
)
_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
_SAN_TAGS = {"email": 0x81, "dns": 0x82, "uri": 0x86, "ip": 0x87}
_BACKDATE = dt.timedelta(minutes=1)


class IssuedCert(NamedTuple):
    """A certificate and its private key; unpacks as ``cert, key = pki.issue_leaf(...)``."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The certificate in PEM."""
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        """The private key in unencrypted PKCS#8 PEM."""
        return key_pem(self.key)


class CsrAndKey(NamedTuple):
    """A certificate signing request and the private key it was made with."""

    csr: x509.CertificateSigningRequest
    key: PrivateKey

    @property
    def csr_pem(self) -> bytes:
        """The CSR in PEM (what Istio's CreateCertificate carries)."""
        return csr_pem(self.csr)


class PemFiles(NamedTuple):
    """Paths written by :func:`write_pem_files`."""

    cert_chain: Path
    key: Path
    roots: Path


def generate_key(key_type: KeyType = "ec-p256") -> PrivateKey:
    """A fresh private key of ``key_type``."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ec-secp256k1":
        return ec.generate_private_key(ec.SECP256K1())
    bits = {"rsa-2048": 2048, "rsa-1024": 1024}[key_type]
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def cert_pem(cert: x509.Certificate) -> bytes:
    """One certificate in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def chain_pem(certs: Sequence[x509.Certificate]) -> bytes:
    """Several certificates concatenated in PEM, in the given order."""
    return b"".join(cert_pem(c) for c in certs)


def key_pem(key: PrivateKey) -> bytes:
    """A private key in unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    """A CSR in PEM."""
    return csr.public_bytes(serialization.Encoding.PEM)


def _der_tlv(tag: int, value: bytes) -> bytes:
    size = len(value)
    if size < 0x80:
        return bytes([tag, size]) + value
    size_bytes = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size_bytes)]) + size_bytes + value


def raw_san(*entries: tuple[str, bytes]) -> bytes:
    """DER of a GeneralNames value from raw bytes, bypassing all validation.

    ``entries`` are ``("uri" | "dns" | "email" | "ip", raw_bytes)``; e.g. ``raw_san(("uri", b"spiffe://td/\\0x"))``.
    Pass the result as ``raw_san=`` to the builders to get a SAN extension holding exactly those bytes.
    """
    body = b"".join(_der_tlv(_SAN_TAGS[kind], value) for kind, value in entries)
    return _der_tlv(0x30, body)


def corrupt_signature(cert: x509.Certificate) -> x509.Certificate:
    """A copy of ``cert`` whose signature no longer verifies (the last signature byte is flipped)."""
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_certificate(bytes(der))


def _key_usage(names: Collection[str]) -> x509.KeyUsage:
    unknown = set(names) - set(_KEY_USAGE_FLAGS)
    if unknown:
        raise ValueError(f"unknown key usage {sorted(unknown)}; use names from {_KEY_USAGE_FLAGS}")
    flags = {name: name in names for name in _KEY_USAGE_FLAGS}
    return x509.KeyUsage(**flags)


def _san_extensions(
    uri_sans: Sequence[str], dns_sans: Sequence[str], raw: bytes | None, critical: bool
) -> list[tuple[x509.ExtensionType, bool]]:
    if raw is not None:
        return [(x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, raw), critical)]
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uri_sans]
    names += [x509.DNSName(d) for d in dns_sans]
    return [(x509.SubjectAlternativeName(names), critical)] if names else []


def _key_id(key: PrivateKey) -> str:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex()[:8]


def _name(common_name: str, organization: str) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if common_name:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _extensions(
    *,
    ca: bool | None,
    path_length: int | None,
    key_usage: Collection[str] | None,
    extended_key_usage: Sequence[x509.ObjectIdentifier] | None,
) -> list[tuple[x509.ExtensionType, bool]]:
    out: list[tuple[x509.ExtensionType, bool]] = []
    if ca is not None:
        out.append((x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True))
    if key_usage is not None:
        out.append((_key_usage(key_usage), True))
    if extended_key_usage is not None:
        out.append((x509.ExtendedKeyUsage(list(extended_key_usage)), False))
    return out


def build_certificate(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    subject: x509.Name,
    issuer_name: x509.Name,
    signing_key: PrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    ca: bool | None,
    path_length: int | None = None,
    key_usage: Collection[str] | None = None,
    extended_key_usage: Sequence[x509.ObjectIdentifier] | None = None,
    uri_sans: Sequence[str] = (),
    dns_sans: Sequence[str] = (),
    raw_san: bytes | None = None,
    san_critical: bool = True,
    serial: int | None = None,
    hash_algorithm: SignatureHash = hashes.SHA256(),  # noqa: B008 - immutable value
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """Signs any certificate; ``ca``, ``key_usage`` or ``extended_key_usage`` = None omits that extension."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False
        )
    )
    extensions = _extensions(
        ca=ca, path_length=path_length, key_usage=key_usage, extended_key_usage=extended_key_usage
    )
    extensions += _san_extensions(uri_sans, dns_sans, raw_san, san_critical)
    for extension, critical in [*extensions, *extra_extensions]:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hash_algorithm)


def build_csr(
    key: PrivateKey,
    *,
    uri_sans: Sequence[str] = (),
    dns_sans: Sequence[str] = (),
    raw_san: bytes | None = None,
    subject: x509.Name | None = None,
    hash_algorithm: SignatureHash = hashes.SHA256(),  # noqa: B008 - immutable value
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateSigningRequest:
    """A CSR like Istio's: empty subject unless given, SANs as an extension request."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    for extension, critical in [*_san_extensions(uri_sans, dns_sans, raw_san, True), *extra_extensions]:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hash_algorithm)


def build_crl(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    revoked: Sequence[int],
    *,
    now: dt.datetime | None = None,
    lifetime: dt.timedelta = dt.timedelta(hours=24),
) -> bytes:
    """A PEM CRL signed by ``issuer`` revoking the serial numbers ``revoked`` (SHA-256)."""
    start = now or _default_now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(start - _BACKDATE)
        .next_update(start + lifetime)
    )
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(start - _BACKDATE)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_pem_files(
    directory: Path,
    issued: IssuedCert,
    *,
    chain: Sequence[x509.Certificate] = (),
    roots: Sequence[x509.Certificate],
    name: str = "workload",
) -> PemFiles:
    """Writes ``<name>-chain.pem`` (``chain``, else the cert), ``<name>-key.pem``, ``<name>-roots.pem``."""
    files = PemFiles(
        directory / f"{name}-chain.pem", directory / f"{name}-key.pem", directory / f"{name}-roots.pem"
    )
    files.cert_chain.write_bytes(chain_pem(chain or [issued.cert]))
    files.key.write_bytes(issued.key_pem)
    files.key.chmod(0o600)
    files.roots.write_bytes(chain_pem(roots))
    return files


def _default_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class TestPki:
    """A root CA for one trust domain, and builders for everything below it."""

    __test__ = False  # not a pytest test class

    trust_domain: str
    root: IssuedCert
    now: dt.datetime = field(default_factory=_default_now)

    @classmethod
    def create(
        cls,
        *,
        trust_domain: str = "cluster.local",
        now: dt.datetime | None = None,
        key_type: KeyType = "ec-p256",
        common_name: str = "",
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        ca: bool | None = True,
        key_usage: Collection[str] | None = CA_KEY_USAGE,
    ) -> TestPki:
        """A self-signed root (10 years by default); its name is unique unless ``common_name`` is given."""
        now = now or _default_now()
        key = generate_key(key_type)
        name = _name(common_name or f"{trust_domain} root {_key_id(key)}", trust_domain)
        cert = build_certificate(
            key.public_key(),
            subject=name,
            issuer_name=name,
            signing_key=key,
            not_before=not_before or now - _BACKDATE,
            not_after=not_after or now + dt.timedelta(days=3650),
            ca=ca,
            key_usage=key_usage,
        )
        return cls(trust_domain, IssuedCert(cert, key), now)

    @property
    def roots(self) -> list[x509.Certificate]:
        """The trust bundle: ``[root certificate]``."""
        return [self.root.cert]

    @property
    def root_pem(self) -> bytes:
        """The root certificate in PEM."""
        return self.root.cert_pem

    def workload_uri(self, namespace: str = "default", service_account: str = "default") -> str:
        """``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""
        return f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"

    def chain_for(self, leaf: IssuedCert, *intermediates: IssuedCert) -> list[x509.Certificate]:
        """``[leaf, intermediates...]`` as a TLS peer presents it (the root is not included)."""
        return [leaf.cert, *(i.cert for i in intermediates)]

    def issue_intermediate(
        self,
        *,
        issuer: IssuedCert | None = None,
        common_name: str = "",
        ca: bool | None = True,
        path_length: int | None = None,
        key_usage: Collection[str] | None = CA_KEY_USAGE,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        lifetime: dt.timedelta = dt.timedelta(days=365),
        key_type: KeyType = "ec-p256",
        hash_algorithm: SignatureHash = hashes.SHA256(),  # noqa: B008 - immutable value
    ) -> IssuedCert:
        """A signing CA certificate under ``issuer`` (default: the root)."""
        parent = issuer or self.root
        key = generate_key(key_type)
        cert = build_certificate(
            key.public_key(),
            subject=_name(common_name or f"{self.trust_domain} ca {_key_id(key)}", self.trust_domain),
            issuer_name=parent.cert.subject,
            signing_key=parent.key,
            not_before=not_before or self.now - _BACKDATE,
            not_after=not_after or self.now + lifetime,
            ca=ca,
            path_length=path_length,
            key_usage=key_usage,
            hash_algorithm=hash_algorithm,
        )
        return IssuedCert(cert, key)

    def issue_leaf(
        self,
        identity_uri: str | None = None,
        *,
        uri_sans: Sequence[str] | None = None,
        dns_sans: Sequence[str] = (),
        raw_san: bytes | None = None,
        san_critical: bool = True,
        issuer: IssuedCert | None = None,
        issuer_name: x509.Name | None = None,
        ca: bool | None = None,
        key_usage: Collection[str] | None = LEAF_KEY_USAGE,
        extended_key_usage: Sequence[x509.ObjectIdentifier] | None = LEAF_EXTENDED_KEY_USAGE,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        lifetime: dt.timedelta = dt.timedelta(hours=24),
        key_type: KeyType = "ec-p256",
        key: PrivateKey | None = None,
        subject: x509.Name | None = None,
        serial: int | None = None,
        hash_algorithm: SignatureHash = hashes.SHA256(),  # noqa: B008 - immutable value
        extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> IssuedCert:
        """A workload leaf under ``issuer`` (default: the root) whose URI SAN is ``identity_uri``.

        ``identity_uri`` defaults to ``spiffe://<td>/ns/default/sa/default``; ``uri_sans`` replaces it with
        any list (empty, several, malformed). ``raw_san`` writes the SAN bytes verbatim (see :func:`raw_san`).
        ``issuer_name`` overrides the issuer field (to break chain linking); ``issuer`` still signs.
        """
        if identity_uri is not None and uri_sans is not None:
            raise ValueError("pass identity_uri or uri_sans, not both")
        sans = list(uri_sans) if uri_sans is not None else [identity_uri or self.workload_uri()]
        parent = issuer or self.root
        key = key or generate_key(key_type)
        cert = build_certificate(
            key.public_key(),
            subject=subject or x509.Name([]),
            issuer_name=issuer_name or parent.cert.subject,
            signing_key=parent.key,
            not_before=not_before or self.now - _BACKDATE,
            not_after=not_after or self.now + lifetime,
            ca=ca,
            key_usage=key_usage,
            extended_key_usage=extended_key_usage,
            uri_sans=sans,
            dns_sans=dns_sans,
            raw_san=raw_san,
            san_critical=san_critical,
            serial=serial,
            hash_algorithm=hash_algorithm,
            extra_extensions=extra_extensions,
        )
        return IssuedCert(cert, key)

    def new_csr(
        self,
        identity_uri: str | None = None,
        *,
        uri_sans: Sequence[str] | None = None,
        dns_sans: Sequence[str] = (),
        raw_san: bytes | None = None,
        key_type: KeyType = "ec-p256",
        key: PrivateKey | None = None,
    ) -> CsrAndKey:
        """A CSR (and its fresh key) for ``identity_uri`` (default ``.../ns/default/sa/default``)."""
        if identity_uri is not None and uri_sans is not None:
            raise ValueError("pass identity_uri or uri_sans, not both")
        sans = list(uri_sans) if uri_sans is not None else [identity_uri or self.workload_uri()]
        key = key or generate_key(key_type)
        return CsrAndKey(build_csr(key, uri_sans=sans, dns_sans=dns_sans, raw_san=raw_san), key)
