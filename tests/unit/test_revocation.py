"""CRLs: parsing the revoked serials (against CRLs built by ``cryptography``), OpenSSL's checks in
a handshake with CRLs loaded, and ztunnel's CRL file watcher keeping the last good file."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from mesh.certs import IssuedCertificate
from mesh.identity.spiffe import WorkloadIdentity
from mesh.revocation import NO_REVOCATION, parse_crls
from mesh.rt.certs import CertificateManager
from mesh.rt.metrics import build_registry
from mesh.rt.tcp_metrics import TcpMetrics
from mesh.rt.tls import PeerRejectedError, TlsMaterial, self_check
from mesh.testing.clock import FakeClock
from mesh.testing.pki import TestPki, build_crl, chain_pem
from ztunnel.context import NodeContext
from ztunnel.revocation import CrlWatcher

_ID = WorkloadIdentity("cluster.local", "demo", "server")


def test_revoked_serials_of_several_crls_are_read() -> None:
    pki, other = TestPki.create(), TestPki.create()
    pem = build_crl(pki.root.cert, pki.root.key, [1, 2**127 + 5]) + build_crl(
        other.root.cert, other.root.key, [7]
    )
    revocation = parse_crls(pem, what="the CRL file")
    assert revocation.serials == {1, 2**127 + 5, 7}
    assert revocation.revokes(7) and not revocation.revokes(8) and not revocation.revokes(None)
    assert revocation.crl_pem.count(b"BEGIN X509 CRL") == 2


def test_an_empty_crl_and_an_empty_file_revoke_nothing() -> None:
    pki = TestPki.create()
    assert parse_crls(build_crl(pki.root.cert, pki.root.key, []), what="f").serials == frozenset()
    assert parse_crls(b"", what="f") == NO_REVOCATION


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", "holds a CERTIFICATE block"),
        (b"-----BEGIN X509 CRL-----\nAA!A\n-----END X509 CRL-----\n", "not base64"),
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "does not hold one DER structure"),
        (
            b"-----BEGIN X509 CRL-----\nMAMCAQE=\n-----END X509 CRL-----\n",
            "CRL 1 of the CRL file is not a valid",
        ),
    ],
)
def test_a_malformed_crl_file_says_what_is_wrong(content: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_crls(content, what="the CRL file")


def _material(pki: TestPki, crl: bytes) -> tuple[TlsMaterial, int]:
    leaf = pki.issue_leaf(_ID.uri)
    material = TlsMaterial(_ID, leaf.key_pem, chain_pem([leaf.cert]), chain_pem(pki.roots), crl_pem=crl)
    return material, leaf.cert.serial_number


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("revoked", "certificate revoked"),
        ("no-crl-from-its-issuer", "unable to get certificate CRL"),
        ("forged-crl", "CRL signature failure"),
    ],
)
def test_handshakes_check_the_peer_against_the_crls(case: str, message: str) -> None:
    pki, other = TestPki.create(), TestPki.create()
    material, serial = _material(pki, b"")
    crl = {
        "revoked": build_crl(pki.root.cert, pki.root.key, [serial]),
        "no-crl-from-its-issuer": build_crl(other.root.cert, other.root.key, []),
        "forged-crl": build_crl(pki.root.cert, other.root.key, []),  # right issuer name, wrong key
    }[case]
    with pytest.raises(PeerRejectedError, match=message):
        self_check(dataclasses.replace(material, crl_pem=crl))
    self_check(material)  # the same certificate without the CRL is fine
    others_revoked = dataclasses.replace(material, crl_pem=build_crl(pki.root.cert, pki.root.key, [1]))
    assert self_check(others_revoked).serial == serial, "a CRL that revokes others leaves this one alone"


async def _no_fetch(identity: WorkloadIdentity) -> IssuedCertificate:
    raise AssertionError("not used")


def test_the_watcher_applies_good_files_and_keeps_the_last_one_when_a_file_is_bad(tmp_path: Path) -> None:
    clock, rng = FakeClock(), random.Random(1)
    ctx = NodeContext(
        node="n1",
        trust_domain="cluster.local",
        certs=CertificateManager(fetcher=_no_fetch, clock=clock, rng=rng),
        metrics=TcpMetrics(build_registry(component="ztunnel")),
        clock=clock,
        rng=rng,
        access_log=structlog.get_logger("access"),
        log=structlog.get_logger("ztunnel"),
    )
    path = tmp_path / "ca-crl.pem"
    watcher = CrlWatcher(path, ctx, lambda: [])
    watcher.check()
    assert ctx.revocation == NO_REVOCATION  # no file: nothing revoked
    pki = TestPki.create()
    path.write_bytes(build_crl(pki.root.cert, pki.root.key, [42]))
    watcher.check()
    assert ctx.revocation.serials == {42}
    path.write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with capture_logs() as logs:
        watcher.check()
        watcher.check()  # unchanged since: not re-read, not re-logged
    assert [e["event"] for e in logs] == ["revocation.crl_refused"]
    assert "does not hold one DER structure" in logs[0]["error"] and logs[0]["log_level"] == "error"
    assert ctx.revocation.serials == {42}, "the CRLs in force stay"
    path.unlink()
    watcher.check()
    assert ctx.revocation == NO_REVOCATION
