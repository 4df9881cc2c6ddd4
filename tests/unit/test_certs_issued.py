"""Parsing the CA's answer into an IssuedCertificate, and the CSR the client sends."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.certs import IssuedCertificate, load_pem_chain, parse_cert_chain
from mesh.errors import ConfigError
from mesh.identity import WorkloadIdentity
from mesh.rt.ca_client import CaClient, build_csr, token_from_file
from mesh.testing.pki import TestPki, cert_pem, chain_pem

_BROKEN_PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
_ID = WorkloadIdentity("cluster.local", "demo", "server")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _answer(pki: TestPki, key: ec.EllipticCurvePrivateKey) -> tuple[list[str], x509.Certificate]:
    inter = pki.issue_intermediate()
    leaf = pki.issue_leaf(_ID.uri, issuer=inter, key=key)
    other_root = TestPki.create().root.cert
    roots = chain_pem([pki.root.cert, other_root]).decode()
    return [cert_pem(leaf.cert).decode(), cert_pem(inter.cert).decode(), roots], leaf.cert


def test_parse_splits_leaf_intermediates_and_a_multi_root_bundle() -> None:
    pki, key = TestPki.create(), _key()
    answer, leaf = _answer(pki, key)
    issued = parse_cert_chain(answer, identity=_ID, key=key)
    assert issued.leaf == leaf
    assert len(issued.intermediates) == 1
    assert len(issued.roots) == 2
    assert issued.roots[0] == pki.root.cert
    assert issued.not_after == leaf.not_valid_after_utc.timestamp()
    assert issued.not_after - issued.not_before == 24 * 3600 + 60  # pki backdates by a minute
    assert issued.serial == leaf.serial_number


def test_pem_exports_load_into_an_ssl_context(tmp_path: Path) -> None:
    pki, key = TestPki.create(), _key()
    answer, _ = _answer(pki, key)
    issued = parse_cert_chain(answer, identity=_ID, key=key)
    assert len(load_pem_chain(issued.chain_pem(), what="chain")) == 2
    assert len(load_pem_chain(issued.roots_pem(), what="roots")) == 2
    base = tmp_path
    (base / "chain.pem").write_bytes(issued.chain_pem())
    (base / "key.pem").write_bytes(issued.key_pem())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(base / "chain.pem", base / "key.pem")  # fails if key and leaf do not match
    context.load_verify_locations(cadata=issued.roots_pem().decode())
    assert len(context.get_ca_certs()) == 2


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda a: a[:1], "holds 1 PEM elements"),
        (lambda a: [], "holds 0 PEM elements"),
        (lambda a: [a[0] + a[1], a[2]], "element 0 holds 2 certificates"),
        (lambda a: ["garbage", a[2]], "element 0 holds 0 certificates"),
        (lambda a: [a[0], a[1], "no pem here"], "root bundle \\(last element\\) holds no certificate"),
        (
            lambda a: [a[0], "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", a[2]],
            "not valid PEM",
        ),
    ],
)
def test_parse_rejects_malformed_answers(mangle: Callable[[list[str]], list[str]], message: str) -> None:
    pki, key = TestPki.create(), _key()
    answer, _ = _answer(pki, key)
    with pytest.raises(ValueError, match=message):
        parse_cert_chain(mangle(answer), identity=_ID, key=key)


def test_parse_rejects_a_leaf_for_another_key() -> None:
    pki = TestPki.create()
    answer, _ = _answer(pki, _key())
    with pytest.raises(ValueError, match="another public key"):
        parse_cert_chain(answer, identity=_ID, key=_key())


def test_csr_is_p256_sha256_with_only_the_identity_uri() -> None:
    key, pem = build_csr(_ID)
    csr = x509.load_pem_x509_csr(pem.encode())
    assert csr.is_signature_valid
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert csr.signature_hash_algorithm is not None and csr.signature_hash_algorithm.name == "sha256"
    sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    assert sans == [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/demo/sa/server")]
    assert csr.subject == x509.Name([])
    other_key, _ = build_csr(_ID)
    assert other_key.private_numbers() != key.private_numbers(), "a fresh key per request"


def test_issued_certificate_is_frozen() -> None:
    pki, key = TestPki.create(), _key()
    issued: IssuedCertificate = parse_cert_chain(_answer(pki, key)[0], identity=_ID, key=key)
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
