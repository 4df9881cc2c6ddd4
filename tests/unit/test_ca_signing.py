"""Issuing leaves: X509-SVID shape, TTL capping, chain order, and verification against the root."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from istiod_lite.ca.authority import SigningAuthority, check_authority, create_root, utc
from istiod_lite.ca.csr import validate_csr
from istiod_lite.ca.errors import InvalidRequestError, RootOfTrustError
from istiod_lite.ca.signing import (
    CLOCK_SKEW,
    cap_ttl,
    issue_serving_certificate,
    issue_workload_certificate,
)
from mesh.identity import WorkloadIdentity, verify_workload_chain
from mesh.testing.clock import FakeClock
from mesh.testing.pki import TestPki

TD = "cluster.local"
SLEEP = WorkloadIdentity(TD, "default", "sleep")
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def root(clock: FakeClock) -> SigningAuthority:
    return create_root(trust_domain=TD, now=clock.now())


def _issue(
    authority: SigningAuthority, *, now: float, ttl: dt.timedelta = HOUR, key_type: str = "ec-p256"
) -> x509.Certificate:
    csr = TestPki.create().new_csr(SLEEP.uri, key_type=key_type)  # type: ignore[arg-type]
    valid = validate_csr(csr.csr_pem.decode(), trust_domain=TD)
    issued = issue_workload_certificate(authority, valid.public_key, identity=SLEEP, ttl=ttl, now=now)
    assert x509.load_pem_x509_certificate(issued.cert_chain[0].encode()) == issued.leaf
    return issued.leaf


@pytest.mark.parametrize(
    ("requested", "max_ttl", "expected"),
    [
        (3600, dt.timedelta(hours=24), dt.timedelta(hours=1)),
        (86400, dt.timedelta(hours=24), dt.timedelta(hours=24)),
        (86401, dt.timedelta(hours=24), dt.timedelta(hours=24)),
        (2**62, dt.timedelta(hours=24), dt.timedelta(hours=24)),
        (1, dt.timedelta(hours=24), dt.timedelta(seconds=1)),
        (7200, dt.timedelta(hours=1), dt.timedelta(hours=1)),
    ],
)
def test_cap_ttl(requested: int, max_ttl: dt.timedelta, expected: dt.timedelta) -> None:
    assert cap_ttl(requested, max_ttl=max_ttl) == expected


@pytest.mark.parametrize("requested", [0, -1, -(2**63)])
def test_cap_ttl_refuses_zero_and_negative(requested: int) -> None:
    with pytest.raises(InvalidRequestError, match="positive lifetime"):
        cap_ttl(requested)


def test_root_is_a_p256_ca_valid_ten_years(root: SigningAuthority, clock: FakeClock) -> None:
    check_authority(root, now=clock.now())
    constraints = root.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert root.cert.not_valid_after_utc - utc(clock.now()) > dt.timedelta(days=3649)
    assert root.chain_pems == ()
    assert root.root_bundle_pem.count("BEGIN CERTIFICATE") == 1


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_leaf_is_an_x509_svid(root: SigningAuthority, clock: FakeClock, key_type: str) -> None:
    leaf = _issue(root, now=clock.now(), key_type=key_type)
    ext = leaf.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(SLEEP.uri)]
    assert leaf.subject == x509.Name([])
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier) is not None
    assert leaf.not_valid_before_utc == utc(clock.now()) - CLOCK_SKEW
    assert leaf.not_valid_after_utc == utc(clock.now()) + HOUR
    identity = verify_workload_chain([leaf], roots=[root.cert], now=utc(clock.now()), trust_domain=TD)
    assert identity == SLEEP


def test_serials_are_random(root: SigningAuthority, clock: FakeClock) -> None:
    serials = {_issue(root, now=clock.now()).serial_number for _ in range(5)}
    assert len(serials) == 5


def test_leaf_never_outlives_the_signing_certificate(clock: FakeClock) -> None:
    pki = TestPki.create(now=utc(clock.now()))
    inter = pki.issue_intermediate(lifetime=dt.timedelta(hours=2))
    authority = SigningAuthority(cert=inter.cert, key=inter.key, intermediates=(), roots=(pki.root.cert,))
    leaf = _issue(authority, now=clock.now(), ttl=dt.timedelta(hours=24))
    assert leaf.not_valid_after_utc == inter.cert.not_valid_after_utc


def test_expired_signing_certificate_refuses_to_issue(clock: FakeClock) -> None:
    pki = TestPki.create(now=utc(clock.now()))
    inter = pki.issue_intermediate(lifetime=dt.timedelta(hours=2))
    authority = SigningAuthority(cert=inter.cert, key=inter.key, intermediates=(), roots=(pki.root.cert,))
    with pytest.raises(RootOfTrustError, match="expired"):
        _issue(authority, now=clock.now() + 3 * 3600)


def test_chain_with_intermediates_is_leaf_intermediates_roots(clock: FakeClock) -> None:
    pki = TestPki.create(now=utc(clock.now()))
    other_root = TestPki.create(now=utc(clock.now()))
    upper = pki.issue_intermediate()
    lower = pki.issue_intermediate(issuer=upper)
    authority = SigningAuthority(
        cert=lower.cert,
        key=lower.key,
        intermediates=(upper.cert,),
        roots=(pki.root.cert, other_root.root.cert),
    )
    check_authority(authority, now=clock.now())
    csr = validate_csr(pki.new_csr(SLEEP.uri).csr_pem.decode(), trust_domain=TD)
    issued = issue_workload_certificate(authority, csr.public_key, identity=SLEEP, ttl=HOUR, now=clock.now())
    middle = [x509.load_pem_x509_certificate(p.encode()) for p in issued.cert_chain[1:-1]]
    assert middle == [lower.cert, upper.cert]
    roots = x509.load_pem_x509_certificates(issued.cert_chain[-1].encode())
    assert roots == [pki.root.cert, other_root.root.cert]
    chain = [issued.leaf, *middle]
    assert verify_workload_chain(chain, roots=roots, now=utc(clock.now())) == SLEEP


def test_serving_certificate_names_istiod(root: SigningAuthority, clock: FakeClock) -> None:
    serving = issue_serving_certificate(
        root,
        dns_names=("istiod.istio-system.svc",),
        uri="spiffe://cluster.local/ns/istio-system/sa/istiod",
        ttl=dt.timedelta(days=30),
        now=clock.now(),
    )
    cert = x509.load_pem_x509_certificate(serving.chain_pem)
    names = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    assert names == [
        x509.DNSName("istiod.istio-system.svc"),
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/istio-system/sa/istiod"),
    ]
    cert.verify_directly_issued_by(root.cert)
    assert serving.not_after - serving.not_before == dt.timedelta(days=30) + CLOCK_SKEW


def test_short_lived_leaves_are_backdated_by_a_tenth_of_their_ttl() -> None:
    """A 120 s certificate is renewed near 60 s (half life), not 30 s (catalogue test 24)."""
    clock = FakeClock()
    root = create_root(trust_domain=TD, now=clock.now() - 3600)
    leaf = _issue(root, now=clock.now(), ttl=dt.timedelta(seconds=120))
    assert leaf.not_valid_before_utc == utc(clock.now()) - dt.timedelta(seconds=12)
