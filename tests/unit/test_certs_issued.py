"""Checking the CA's answer into an IssuedCertificate, and the key and CSR the client sends.

``cryptography`` (the test PKI) is the independent reference here: it builds the answers and reads
back what our libcrypto-based CSR code wrote.
"""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.certs import IssuedCertificate, split_ca_answer, split_pem_certificates
from mesh.errors import ConfigError
from mesh.identity import WorkloadIdentity
from mesh.rt.ca_client import CaClient, CaResponseInvalid, token_from_file
from mesh.rt.csr import new_key_and_csr
from mesh.testing.pki import IssuedCert, TestPki, cert_pem, chain_pem

_BROKEN_PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
_ID = WorkloadIdentity("cluster.local", "demo", "server")
_OTHER_ID = WorkloadIdentity("cluster.local", "demo", "client")


def _key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, pem


def _answer(
    pki: TestPki, key: ec.EllipticCurvePrivateKey, *, identity: WorkloadIdentity = _ID, **leaf: object
) -> tuple[list[str], IssuedCert]:
    """leaf, intermediate, and a bundle of the PKI's root and a foreign one."""
    inter = pki.issue_intermediate()
    named = {} if "uri_sans" in leaf else {"identity_uri": identity.uri}
    issued = pki.issue_leaf(issuer=inter, key=key, **named, **leaf)  # type: ignore[arg-type]
    roots = chain_pem([pki.root.cert, TestPki.create().root.cert]).decode()
    return [cert_pem(issued.cert).decode(), cert_pem(inter.cert).decode(), roots], issued


def _client(pki: TestPki) -> CaClient:
    return CaClient("127.0.0.1:1", roots_pem=chain_pem(pki.roots), token=lambda: "t")  # never dialled


def test_split_answer_gives_the_presented_chain_and_a_multi_root_bundle() -> None:
    pki, (key, _) = TestPki.create(), _key()
    answer, issued = _answer(pki, key)
    chain, roots = split_ca_answer(answer)
    assert x509.load_pem_x509_certificates(chain)[0] == issued.cert
    assert len(x509.load_pem_x509_certificates(chain)) == 2
    assert x509.load_pem_x509_certificates(roots)[0] == pki.root.cert
    assert len(split_pem_certificates(roots, what="roots")) == 2


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda a: a[:1], "holds 1 PEM elements"),
        (lambda a: [], "holds 0 PEM elements"),
        (lambda a: [a[0] + a[1], a[2]], "element 0 holds 2 certificates"),
        (lambda a: ["garbage", a[2]], "element 0 holds 0 certificates"),
        (lambda a: [a[0], a[1], "no pem here"], "root bundle \\(last element\\) holds no certificate"),
        (lambda a: [a[0], _BROKEN_PEM, a[2]], "element 1 is not valid PEM"),
        (lambda a: [a[0], _BROKEN_PEM.replace("AAAA", "AA!A"), a[2]], "element 1 is not valid PEM"),
        (lambda a: [a[0], a[1].replace("CERTIFICATE", "PRIVATE KEY"), a[2]], "holds a PRIVATE KEY block"),
    ],
)
def test_split_answer_rejects_malformed_answers(
    mangle: Callable[[list[str]], list[str]], message: str
) -> None:
    pki, (key, _) = TestPki.create(), _key()
    answer, _ = _answer(pki, key)
    with pytest.raises(ValueError, match=message):
        split_ca_answer(mangle(answer))


def test_an_answer_that_verifies_becomes_the_issued_certificate() -> None:
    pki, (key, key_pem) = TestPki.create(), _key()
    answer, leaf = _answer(pki, key)
    issued = _client(pki).accept_answer(_ID, key_pem, answer)
    assert issued.identity == _ID
    assert issued.serial == leaf.cert.serial_number
    assert issued.not_before == leaf.cert.not_valid_before_utc.timestamp()
    assert issued.not_after == leaf.cert.not_valid_after_utc.timestamp()
    presented = [x509.load_pem_x509_certificate(pem.encode()) for pem in answer[:2]]
    assert x509.load_pem_x509_certificates(issued.chain_pem) == presented
    assert x509.load_pem_x509_certificates(issued.roots_pem)[0] == pki.root.cert
    assert "PRIVATE" not in repr(issued), "the key is never shown"


def test_issued_pem_loads_into_an_ssl_context(tmp_path: Path) -> None:
    pki, (key, key_pem) = TestPki.create(), _key()
    issued = _client(pki).accept_answer(_ID, key_pem, _answer(pki, key)[0])
    (tmp_path / "chain.pem").write_bytes(issued.chain_pem)
    (tmp_path / "key.pem").write_bytes(issued.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    context.load_verify_locations(cadata=issued.roots_pem.decode())
    assert len(context.get_ca_certs()) == 2


_HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("leaf-for-another-key", "is refused: .*key values mismatch"),
        ("expired", "does not verify: certificate has expired"),
        ("not-yet-valid", "does not verify: certificate is not yet valid"),
        ("another-ca", "does not verify: unable to get local issuer certificate"),
        ("bundle-without-its-root", "does not verify: unable to get local issuer certificate"),
        ("no-client-auth", "does not verify: unsuitable certificate purpose"),
        ("two-uri-sans", "is refused: .*has 2 URI SANs"),
        ("another-identity", "returned a certificate for spiffe://cluster.local/ns/demo/sa/client, not the"),
    ],
)
def test_an_answer_that_does_not_verify_is_refused(case: str, message: str) -> None:
    pki, (key, key_pem) = TestPki.create(), _key()
    now = dt.datetime.now(dt.UTC)
    options: dict[str, dict[str, object]] = {
        "expired": {"not_before": now - 3 * _HOUR, "not_after": now - _HOUR},
        "not-yet-valid": {"not_before": now + _HOUR, "not_after": now + 3 * _HOUR},
        "no-client-auth": {"extended_key_usage": [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]},
        "two-uri-sans": {"uri_sans": [_ID.uri, _OTHER_ID.uri]},
    }
    leaf_options = options.get(case, {})
    signer = TestPki.create() if case == "another-ca" else pki
    answer, _ = _answer(
        signer, key, identity=_OTHER_ID if case == "another-identity" else _ID, **leaf_options
    )
    if case == "leaf-for-another-key":
        key_pem = _key()[1]
    if case == "bundle-without-its-root":
        answer[-1] = cert_pem(TestPki.create().root.cert).decode()
    with pytest.raises(CaResponseInvalid, match=message):
        _client(pki).accept_answer(_ID, key_pem, answer)


def test_csr_is_p256_sha256_with_only_the_identity_uri_and_a_fresh_key() -> None:
    key_pem, csr_text = new_key_and_csr(_ID)
    csr = x509.load_pem_x509_csr(csr_text.encode())
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----"), "PKCS#8"
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert csr.signature_hash_algorithm is not None and csr.signature_hash_algorithm.name == "sha256"
    extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(extension.value) == [
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/demo/sa/server")
    ]
    assert not extension.critical
    assert len(csr.extensions) == 1
    assert csr.subject == x509.Name([])
    assert new_key_and_csr(_ID)[0] != key_pem, "a fresh key per request"


def test_the_data_plane_side_of_certificates_loads_no_cryptography() -> None:
    code = (
        "import sys; import mesh.rt.ca_client, mesh.rt.certs, mesh.rt.csr; "
        "from mesh.identity import WorkloadIdentity; "
        "mesh.rt.csr.new_key_and_csr(WorkloadIdentity('cluster.local', 'a', 'b')); "
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_issued_certificate_is_frozen() -> None:
    pki, (key, key_pem) = TestPki.create(), _key()
    issued: IssuedCertificate = _client(pki).accept_answer(_ID, key_pem, _answer(pki, key)[0])
    with pytest.raises(AttributeError):
        issued.not_after = 0.0  # type: ignore[misc]


def test_token_file_is_read_on_every_call(tmp_path: Path) -> None:
    path = tmp_path / "istio-token"
    path.write_text("first\n", encoding="utf-8")
    read = token_from_file(path)
    assert read() == "first"
    path.write_text("rotated", encoding="utf-8")
    assert read() == "rotated"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read the CA token file"), ("  \n", "is empty")],
)
def test_token_file_errors_say_what_to_do(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "istio-token"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as caught:
        token_from_file(path)()
    assert caught.value.hint


@pytest.mark.parametrize(
    ("roots", "message"),
    [
        (b"", "holds no certificate"),
        (b"not pem", "holds no certificate"),
        (_BROKEN_PEM.encode(), "not valid PEM"),
    ],
)
def test_client_refuses_an_unusable_root_bundle(roots: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        CaClient("127.0.0.1:1", roots_pem=roots, token=lambda: "t")
    assert "root-cert.pem" in caught.value.hint
