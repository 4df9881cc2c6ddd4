"""Identity from a single certificate, PEM loading, and the test PKI kit (including a real TLS handshake)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from mesh.identity import (
    CertificateRejected,
    Reason,
    WorkloadIdentity,
    identity_from_certificate,
    identity_from_der,
    load_pem_certificates,
    verify_workload_chain,
)
from mesh.testing.pki import TestPki, chain_pem, corrupt_signature, raw_san, write_pem_files

URI = "spiffe://cluster.local/ns/default/sa/sleep"
SLEEP = WorkloadIdentity("cluster.local", "default", "sleep")


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.create(trust_domain="cluster.local")


def test_identity_from_certificate_and_der(pki: TestPki) -> None:
    cert, _ = pki.issue_leaf(URI)
    assert identity_from_certificate(cert) == SLEEP
    assert identity_from_der(cert.public_bytes(Encoding.DER)) == SLEEP


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"uri_sans": [URI, URI]}, Reason.TWO_URI_SANS),
        ({"uri_sans": []}, Reason.NO_SAN),
        ({"uri_sans": ["spiffe://cluster.local/ns/default/sa/sleep/x"]}, Reason.NOT_WORKLOAD_PATH),
        ({"raw_san": raw_san(("uri", URI.encode() + b"\x00"))}, Reason.NUL_IN_SAN),
    ],
)
def test_identity_from_certificate_refuses_bad_sans(
    pki: TestPki, options: dict[str, object], reason: Reason
) -> None:
    cert, _ = pki.issue_leaf(**options)  # type: ignore[arg-type]
    with pytest.raises(CertificateRejected) as caught:
        identity_from_certificate(cert)
    assert caught.value.reason == reason


def test_identity_from_der_refuses_garbage() -> None:
    with pytest.raises(CertificateRejected) as caught:
        identity_from_der(b"\x30\x03junk")
    assert caught.value.reason == Reason.MALFORMED_CERTIFICATE


def test_pem_bundle_round_trip_keeps_order(pki: TestPki) -> None:
    inter = pki.issue_intermediate()
    leaf = pki.issue_leaf(URI, issuer=inter)
    chain = pki.chain_for(leaf, inter)
    loaded = load_pem_certificates(chain_pem([*chain, pki.root.cert]).decode())
    assert loaded == [*chain, pki.root.cert]
    assert verify_workload_chain(loaded, roots=pki.roots, now=pki.now) == SLEEP


@pytest.mark.parametrize(
    "data", [b"", b"not pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_load_pem_refuses_garbage(data: bytes) -> None:
    with pytest.raises(CertificateRejected) as caught:
        load_pem_certificates(data)
    assert caught.value.reason == Reason.MALFORMED_CERTIFICATE


def test_long_raw_san_uses_long_form_lengths(pki: TestPki) -> None:
    uri = "spiffe://cluster.local/ns/default/sa/" + "s" * 300
    cert, _ = pki.issue_leaf(raw_san=raw_san(("uri", uri.encode())))
    assert identity_from_certificate(cert).service_account == "s" * 300


def test_key_types(pki: TestPki) -> None:
    assert isinstance(pki.issue_leaf(key_type="ec-p384").key.public_key(), ec.EllipticCurvePublicKey)
    cert, key = pki.issue_leaf(key_type="rsa-2048")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert cert.public_key() == key.public_key()


def test_corrupt_signature_changes_only_the_signature(pki: TestPki) -> None:
    cert = pki.issue_leaf().cert
    broken = corrupt_signature(cert)
    assert broken.tbs_certificate_bytes == cert.tbs_certificate_bytes
    assert broken.signature != cert.signature


def test_csr_carries_the_identity_and_key(pki: TestPki) -> None:
    csr, key = pki.new_csr(URI)
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [URI]
    assert b"BEGIN CERTIFICATE REQUEST" in pki.new_csr().csr_pem


def test_issue_leaf_refuses_two_identity_arguments(pki: TestPki) -> None:
    with pytest.raises(ValueError, match="not both"):
        pki.issue_leaf(URI, uri_sans=[URI])


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A TLS handshake over memory BIOs (no sockets), bounded to a few round trips."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_side=False)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return c, s
    raise AssertionError("TLS handshake did not finish")


def _context(side: int, files_dir: Path, pki: TestPki, uri: str, name: str) -> ssl.SSLContext:
    files = write_pem_files(files_dir, pki.issue_leaf(uri), roots=pki.roots, name=name)
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.cert_chain, files.key)
    ctx.load_verify_locations(cafile=files.roots)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False
    return ctx


def test_kit_certificates_work_for_mutual_tls(pki: TestPki, tmp_path: Path) -> None:
    client_uri = "spiffe://cluster.local/ns/default/sa/sleep"
    server_uri = "spiffe://cluster.local/ns/default/sa/httpbin"
    client_ctx = _context(ssl.PROTOCOL_TLS_CLIENT, tmp_path, pki, client_uri, "client")
    server_ctx = _context(ssl.PROTOCOL_TLS_SERVER, tmp_path, pki, server_uri, "server")
    c, s = _handshake(client_ctx, server_ctx)
    server_der = c.getpeercert(binary_form=True)
    client_der = s.getpeercert(binary_form=True)
    assert server_der is not None and client_der is not None
    assert identity_from_der(server_der).service_account == "httpbin"
    assert identity_from_der(client_der) == SLEEP
    assert (tmp_path / "client-key.pem").stat().st_mode & 0o077 == 0


def test_fixed_now_makes_certificates_for_fake_clocks() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    pki = TestPki.create(now=now)
    cert = pki.issue_leaf().cert
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc == now + dt.timedelta(hours=24)
