"""CSR validation: every malformed request is refused with a message naming what is wrong."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from istiod_lite.ca.csr import MAX_CSR_BYTES, validate_csr
from istiod_lite.ca.errors import InvalidRequestError
from mesh.identity import WorkloadIdentity
from mesh.testing.pki import TestPki, build_csr, csr_pem, generate_key, raw_san

TD = "cluster.local"
URI = "spiffe://cluster.local/ns/default/sa/sleep"


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.create(trust_domain=TD)


def _pem(pki: TestPki, **kwargs: object) -> str:
    return pki.new_csr(**kwargs).csr_pem.decode()  # type: ignore[arg-type]


def _tampered(pki: TestPki) -> str:
    """A CSR whose last signature byte is flipped (the DER still parses)."""
    der = bytearray(pki.new_csr(URI).csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    b64 = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n"


def _unknown_oid(pki: TestPki, oid_der: str) -> str:
    """A CSR where the DER-encoded OID ``oid_der`` ends in 0x7f instead, an arc no library knows
    (as a fuzzer's one-character change produced: cryptography raises UnsupportedAlgorithm)."""
    der = pki.new_csr(URI).csr.public_bytes(serialization.Encoding.DER)
    oid = bytes.fromhex(oid_der)
    assert oid in der
    der = der.replace(oid, oid[:-1] + b"\x7f", 1)
    b64 = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n"


@pytest.mark.parametrize(
    ("key_type", "key_class"),
    [("ec-p256", ec.EllipticCurvePublicKey), ("rsa-2048", rsa.RSAPublicKey)],
)
def test_accepts_p256_and_rsa2048(pki: TestPki, key_type: str, key_class: type) -> None:
    csr = pki.new_csr(URI, key_type=key_type)  # type: ignore[arg-type]
    got = validate_csr(csr.csr_pem.decode(), trust_domain=TD)
    assert got.identity == WorkloadIdentity.parse(URI)
    assert isinstance(got.public_key, key_class)
    assert got.public_key.public_numbers() == csr.key.public_key().public_numbers()


BAD: list[tuple[str, Callable[[TestPki], str], str]] = [
    ("empty", lambda p: "", "no CSR"),
    ("blank", lambda p: "   \n", "no CSR"),
    ("garbage", lambda p: "hello world", "0 PEM certificate requests"),
    ("a certificate instead", lambda p: p.root_pem.decode(), "0 PEM certificate requests"),
    ("two requests", lambda p: _pem(p, identity_uri=URI) * 2, "2 PEM certificate requests"),
    (
        "truncated base64",
        lambda p: (
            _pem(p, identity_uri=URI).replace("\n", "", 3)[:200] + "\n-----END CERTIFICATE REQUEST-----\n"
        ),
        "not valid PEM",
    ),
    ("bad signature", _tampered, "signature does not verify"),
    (  # id-ecPublicKey -> 1.2.840.10045.2.127
        "unknown key algorithm",
        lambda p: _unknown_oid(p, "06072a8648ce3d0201"),
        "public key is unreadable",
    ),
    (  # ecdsa-with-SHA256 -> 1.2.840.10045.4.3.127: an unknown signature algorithm does not verify
        "unknown signature algorithm",
        lambda p: _unknown_oid(p, "06082a8648ce3d040302"),
        "signature does not verify",
    ),
    ("rsa 1024", lambda p: _pem(p, identity_uri=URI, key_type="rsa-1024"), "1024-bit RSA"),
    ("secp256k1", lambda p: _pem(p, identity_uri=URI, key_type="ec-secp256k1"), "curve secp256k1"),
    ("p384", lambda p: _pem(p, identity_uri=URI, key_type="ec-p384"), "curve secp384r1"),
    ("no san", lambda p: _pem(p, uri_sans=[]), "no subjectAltName"),
    ("two uri sans", lambda p: _pem(p, uri_sans=[URI, URI.replace("sleep", "web")]), "2 SANs"),
    ("uri and dns", lambda p: _pem(p, uri_sans=[URI], dns_sans=["sleep.default.svc"]), "2 SANs"),
    ("dns only", lambda p: _pem(p, uri_sans=[], dns_sans=[URI.replace("spiffe://", "")]), "1 SANs (DNSName)"),
    ("foreign trust domain", lambda p: _pem(p, identity_uri="spiffe://evil.local/ns/a/sa/b"), "'evil.local'"),
    (
        "not a workload path",
        lambda p: _pem(p, identity_uri="spiffe://cluster.local/admin"),
        "not a SPIFFE workload",
    ),
    ("https uri", lambda p: _pem(p, identity_uri="https://cluster.local/ns/a/sa/b"), "not a SPIFFE workload"),
    (
        "upper-case td",
        lambda p: _pem(p, identity_uri="spiffe://Cluster.local/ns/a/sa/b"),
        "not a SPIFFE workload",
    ),
    (
        "nul in san",
        lambda p: csr_pem(
            build_csr(generate_key(), raw_san=raw_san(("uri", URI.encode() + b"\x00x")))
        ).decode(),
        "NUL byte",
    ),
    ("oversized", lambda p: "A" * (MAX_CSR_BYTES + 1), f"at most {MAX_CSR_BYTES}"),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD, ids=[b[0] for b in BAD])
def test_rejects_malformed_csr(pki: TestPki, name: str, make: Callable[[TestPki], str], message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_csr(make(pki), trust_domain=TD)
    assert message in str(caught.value), f"{name}: {caught.value}"
