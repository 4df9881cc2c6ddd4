"""Root of trust on disk: the persisted self-signed root, and Istio's plugged-in cacerts directory."""

from __future__ import annotations

import datetime as dt
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from istiod_lite.ca.authority import utc
from istiod_lite.ca.errors import RootOfTrustError
from istiod_lite.ca.store import load_cacerts, load_or_create_root
from mesh.testing.clock import FakeClock
from mesh.testing.pki import IssuedCert, TestPki, cert_pem, chain_pem, generate_key, key_pem

TD = "cluster.local"
NOW = FakeClock().now()


def test_first_start_creates_root_and_restart_reuses_it(tmp_path: Path) -> None:
    first = load_or_create_root(tmp_path, trust_domain=TD, now=NOW)
    key_file = tmp_path / "ca" / "root-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not [p for p in (tmp_path / "ca").iterdir() if p.name.startswith(".")], "no temp files left"
    again = load_or_create_root(tmp_path, trust_domain=TD, now=NOW + 86400)
    assert again.cert == first.cert
    assert again.roots == (first.cert,)
    assert again.intermediates == ()


@pytest.mark.parametrize("missing", ["root-cert.pem", "root-key.pem"])
def test_half_a_pair_is_an_error_not_a_new_root(tmp_path: Path, missing: str) -> None:
    load_or_create_root(tmp_path, trust_domain=TD, now=NOW)
    (tmp_path / "ca" / missing).unlink()
    with pytest.raises(RootOfTrustError, match="missing but its partner file exists"):
        load_or_create_root(tmp_path, trust_domain=TD, now=NOW)


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    load_or_create_root(tmp_path, trust_domain=TD, now=NOW)
    (tmp_path / "ca" / "root-key.pem").chmod(0o640)
    with pytest.raises(RootOfTrustError, match="chmod 600"):
        load_or_create_root(tmp_path, trust_domain=TD, now=NOW)


def test_key_not_matching_root_is_refused(tmp_path: Path) -> None:
    load_or_create_root(tmp_path, trust_domain=TD, now=NOW)
    key_file = tmp_path / "ca" / "root-key.pem"
    key_file.write_bytes(key_pem(generate_key()))
    with pytest.raises(RootOfTrustError, match="does not belong"):
        load_or_create_root(tmp_path, trust_domain=TD, now=NOW)


def _write_cacerts(
    directory: Path, *, ca: IssuedCert, chain: list[x509.Certificate], roots: list[x509.Certificate]
) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "ca-cert.pem").write_bytes(cert_pem(ca.cert))
    (directory / "ca-key.pem").write_bytes(ca.key_pem)
    (directory / "cert-chain.pem").write_bytes(chain_pem(chain))
    (directory / "root-cert.pem").write_bytes(chain_pem(roots))
    return directory


@pytest.fixture
def pki() -> TestPki:
    return TestPki.create(now=utc(NOW))


def test_cacerts_with_two_intermediates_and_two_roots(tmp_path: Path, pki: TestPki) -> None:
    upper = pki.issue_intermediate()
    lower = pki.issue_intermediate(issuer=upper)
    old_root = TestPki.create(now=utc(NOW)).root.cert
    # Istio's tooling writes cert-chain.pem as ca-cert + intermediates + root: the root is dropped.
    cacerts = _write_cacerts(
        tmp_path / "cacerts",
        ca=lower,
        chain=[lower.cert, upper.cert, pki.root.cert],
        roots=[pki.root.cert, old_root],
    )
    authority = load_cacerts(cacerts, now=NOW)
    assert authority.cert == lower.cert
    assert authority.intermediates == (upper.cert,)
    assert authority.roots == (pki.root.cert, old_root)
    assert [x509.load_pem_x509_certificate(p.encode()) for p in authority.chain_pems] == [
        lower.cert,
        upper.cert,
    ]


def test_cacerts_signing_with_the_root_itself(tmp_path: Path, pki: TestPki) -> None:
    cacerts = _write_cacerts(tmp_path / "cacerts", ca=pki.root, chain=[], roots=[pki.root.cert])
    authority = load_cacerts(cacerts, now=NOW)
    assert authority.chain_pems == ()


BROKEN: list[tuple[str, Callable[[Path, TestPki], object], str]] = [
    ("missing key", lambda d, p: (d / "ca-key.pem").unlink(), "lacks ca-key.pem"),
    (
        "garbage cert",
        lambda d, p: (d / "ca-cert.pem").write_text("nope"),
        "ca-cert.pem holds no readable PEM",
    ),
    ("garbage key", lambda d, p: (d / "ca-key.pem").write_text("nope"), "ca-key.pem holds no readable"),
    ("empty roots", lambda d, p: (d / "root-cert.pem").write_text(""), "root-cert.pem holds no readable PEM"),
    ("wrong key", lambda d, p: (d / "ca-key.pem").write_bytes(key_pem(generate_key())), "does not belong"),
    (
        "small rsa key",
        lambda d, p: (d / "ca-key.pem").write_bytes(key_pem(generate_key("rsa-1024"))),
        "1024 bits",
    ),
    (
        "foreign root",
        lambda d, p: (d / "root-cert.pem").write_bytes(TestPki.create(now=utc(NOW)).root_pem),
        "which no root in the trust bundle signed",
    ),
    (
        "chain not starting at ca-cert",
        lambda d, p: (d / "cert-chain.pem").write_bytes(
            TestPki.create(now=utc(NOW)).issue_intermediate().cert_pem
        ),
        "does not start with the certificate in ca-cert.pem",
    ),
    (
        "two certs in ca-cert",
        lambda d, p: (d / "ca-cert.pem").write_bytes(p.root_pem * 2),
        "holds 2 certificates",
    ),
    (
        "a leaf as signing cert",
        lambda d, p: _replace_ca(d, p.issue_leaf()),
        "is not a CA",
    ),
    (
        "expired intermediate",
        lambda d, p: _replace_ca(
            d,
            p.issue_intermediate(
                not_before=utc(NOW) - dt.timedelta(days=2), not_after=utc(NOW) - dt.timedelta(hours=1)
            ),
        ),
        "is not valid now",
    ),
]


def _replace_ca(directory: Path, issued: IssuedCert) -> None:
    (directory / "ca-cert.pem").write_bytes(issued.cert_pem)
    (directory / "ca-key.pem").write_bytes(issued.key_pem)
    (directory / "cert-chain.pem").write_bytes(issued.cert_pem)


@pytest.mark.parametrize(("name", "breakage", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_cacerts_name_the_file_and_the_fault(
    tmp_path: Path, pki: TestPki, name: str, breakage: Callable[[Path, TestPki], object], message: str
) -> None:
    inter = pki.issue_intermediate()
    cacerts = _write_cacerts(tmp_path / "cacerts", ca=inter, chain=[inter.cert], roots=[pki.root.cert])
    breakage(cacerts, pki)
    with pytest.raises(RootOfTrustError) as caught:
        load_cacerts(cacerts, now=NOW)
    assert message in str(caught.value), f"{name}: {caught.value}"
    assert str(cacerts) in str(caught.value), f"{name}: the error must name the directory or file"
