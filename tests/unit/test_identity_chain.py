"""verify_workload_chain: the SVID rejection corpus (catalogue test 4) and the chains that must pass."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from mesh.identity import CertificateRejected, Reason, WorkloadIdentity, verify_workload_chain
from mesh.identity.chain import MAX_INTERMEDIATES
from mesh.testing.clock import FakeClock
from mesh.testing.pki import IssuedCert, TestPki, build_certificate, corrupt_signature, generate_key, raw_san

NOW = dt.datetime.fromtimestamp(FakeClock().now(), dt.UTC)
TD = "cluster.local"
URI = f"spiffe://{TD}/ns/default/sa/sleep"
SECOND = dt.timedelta(seconds=1)
DAY = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Kit:
    pki: TestPki
    inter: IssuedCert
    other: TestPki  # an unrelated CA


@dataclass(frozen=True, slots=True)
class Case:
    chain: list[x509.Certificate]
    roots: list[x509.Certificate]
    trust_domain: str | None = None


@pytest.fixture(scope="module")
def kit() -> Kit:
    pki = TestPki.create(trust_domain=TD, now=NOW)
    return Kit(pki, pki.issue_intermediate(), TestPki.create(trust_domain=TD, now=NOW))


def _leaf(k: Kit, uri: str | None = URI, **options: object) -> Case:
    """A leaf straight under the root, with issue_leaf options."""
    if "uri_sans" in options:
        uri = None
    leaf = k.pki.issue_leaf(uri, **options)  # type: ignore[arg-type]
    return Case([leaf.cert], k.pki.roots)


def _uri(uri: str) -> Callable[[Kit], Case]:
    return lambda k: _leaf(k, uri_sans=[uri])


def _under(k: Kit, inter: IssuedCert, **options: object) -> Case:
    leaf = k.pki.issue_leaf(URI, issuer=inter, **options)  # type: ignore[arg-type]
    return Case([leaf.cert, inter.cert], k.pki.roots)


def _ca_with(k: Kit, extension: x509.ExtensionType) -> IssuedCert:
    key = generate_key()
    cert = build_certificate(
        key.public_key(),
        subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "constrained")]),
        issuer_name=k.pki.root.cert.subject,
        signing_key=k.pki.root.key,
        not_before=NOW - DAY,
        not_after=NOW + DAY,
        ca=True,
        key_usage={"key_cert_sign"},
        extra_extensions=[(extension, True)],
    )
    return IssuedCert(cert, key)


def _expired_root(k: Kit) -> Case:
    old = TestPki.create(trust_domain=TD, now=NOW - 20 * DAY, not_after=NOW - SECOND)
    leaf = old.issue_leaf(URI, not_after=NOW + DAY)
    return Case([leaf.cert], old.roots)


def _same_name_other_root(k: Kit) -> Case:
    twin = TestPki.create(trust_domain=TD, now=NOW, common_name=k.pki.root.cert.subject.rfc4514_string())
    impostor = TestPki.create(trust_domain=TD, now=NOW, common_name=k.pki.root.cert.subject.rfc4514_string())
    return Case([impostor.issue_leaf(URI).cert], twin.roots)


def _too_many_intermediates(k: Kit) -> Case:
    cas = [k.pki.issue_intermediate()]
    for _ in range(MAX_INTERMEDIATES):
        cas.append(k.pki.issue_intermediate(issuer=cas[-1]))
    leaf = k.pki.issue_leaf(URI, issuer=cas[-1])
    return Case([leaf.cert, *(c.cert for c in reversed(cas))], k.pki.roots)


def _path_length(k: Kit) -> Case:
    top = k.pki.issue_intermediate(path_length=0)
    below = k.pki.issue_intermediate(issuer=top)
    leaf = k.pki.issue_leaf(URI, issuer=below)
    return Case([leaf.cert, below.cert, top.cert], k.pki.roots)


def _root_not_ca(k: Kit) -> Case:
    pki = TestPki.create(trust_domain=TD, now=NOW, ca=False)
    return Case([pki.issue_leaf(URI).cert], pki.roots)


_CRITICAL_UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")

# id -> (build the case, the reason it must be refused with)
MALFORMED: dict[str, tuple[Callable[[Kit], Case], Reason]] = {
    # the SAN (X509-SVID section 2; CVE-2022-21656, CVE-2025-66220)
    "two URI SANs": (lambda k: _leaf(k, uri_sans=[URI, f"spiffe://{TD}/ns/x/sa/y"]), Reason.TWO_URI_SANS),
    "SPIFFE ID only in a DNS SAN": (
        lambda k: _leaf(k, uri_sans=[], dns_sans=[URI]),
        Reason.SPIFFE_ID_IN_DNS_SAN,
    ),
    "no SAN at all": (lambda k: _leaf(k, uri_sans=[]), Reason.NO_SAN),
    "only a DNS SAN": (lambda k: _leaf(k, uri_sans=[], dns_sans=["sleep.default.svc"]), Reason.NO_URI_SAN),
    "NUL byte in the URI SAN": (
        lambda k: _leaf(k, raw_san=raw_san(("uri", URI.encode() + b"\x00.evil"))),
        Reason.NUL_IN_SAN,
    ),
    "NUL byte in a DNS SAN": (
        lambda k: _leaf(k, raw_san=raw_san(("uri", URI.encode()), ("dns", b"a\x00.evil"))),
        Reason.NUL_IN_SAN,
    ),
    # the SPIFFE ID itself (SPIFFE-ID.md)
    "non-spiffe URI": (_uri(f"https://{TD}/ns/default/sa/sleep"), Reason.NOT_SPIFFE_SCHEME),
    "upper-case trust domain": (
        _uri("spiffe://Cluster.Local/ns/default/sa/sleep"),
        Reason.TRUST_DOMAIN_UPPERCASE,
    ),
    "port in the URI": (_uri(f"spiffe://{TD}:15008/ns/default/sa/sleep"), Reason.PORT),
    "userinfo in the URI": (_uri(f"spiffe://admin@{TD}/ns/default/sa/sleep"), Reason.USERINFO),
    "percent-encoding": (_uri(f"spiffe://{TD}/ns/default/sa/%73leep"), Reason.PERCENT_ENCODING),
    "percent-encoded dot segment": (_uri(f"spiffe://{TD}/ns/%2e%2e/sa/sleep"), Reason.PERCENT_ENCODING),
    "query": (_uri(f"spiffe://{TD}/ns/default/sa/sleep?admin=1"), Reason.QUERY),
    "fragment": (_uri(f"spiffe://{TD}/ns/default/sa/sleep#x"), Reason.FRAGMENT),
    "'..' segment": (_uri(f"spiffe://{TD}/ns/../sa/sleep"), Reason.DOT_SEGMENT),
    "empty segment": (_uri(f"spiffe://{TD}/ns//sa/sleep"), Reason.EMPTY_SEGMENT),
    "trailing slash": (_uri(f"spiffe://{TD}/ns/default/sa/sleep/"), Reason.TRAILING_SLASH),
    "path is not /ns/x/sa/y": (_uri(f"spiffe://{TD}/ns/default/sa/sleep/extra"), Reason.NOT_WORKLOAD_PATH),
    "root path ID": (_uri(f"spiffe://{TD}"), Reason.NOT_WORKLOAD_PATH),
    "ID longer than 2048 bytes": (_uri(f"spiffe://{TD}/ns/default/sa/" + "s" * 2030), Reason.TOO_LONG),
    "other trust domain": (
        lambda k: Case(_leaf(k, "spiffe://evil.local/ns/default/sa/sleep").chain, k.pki.roots, TD),
        Reason.TRUST_DOMAIN_MISMATCH,
    ),
    # the leaf's constraints (X509-SVID section 4; CVE-2022-21657)
    "CA=true leaf": (lambda k: _leaf(k, ca=True), Reason.LEAF_IS_CA),
    "keyCertSign on the leaf": (
        lambda k: _leaf(k, key_usage={"digital_signature", "key_cert_sign"}),
        Reason.LEAF_KEY_CERT_SIGN,
    ),
    "cRLSign on the leaf": (
        lambda k: _leaf(k, key_usage={"digital_signature", "crl_sign"}),
        Reason.LEAF_CRL_SIGN,
    ),
    "no digitalSignature": (
        lambda k: _leaf(k, key_usage={"key_encipherment"}),
        Reason.LEAF_NO_DIGITAL_SIGNATURE,
    ),
    "no keyUsage at all": (lambda k: _leaf(k, key_usage=None), Reason.LEAF_NO_KEY_USAGE),
    "EKU without clientAuth": (
        lambda k: _leaf(k, extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH]),
        Reason.MISSING_CLIENT_AUTH,
    ),
    "EKU without serverAuth": (
        lambda k: _leaf(k, extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH]),
        Reason.MISSING_SERVER_AUTH,
    ),
    "unknown critical extension": (
        lambda k: _leaf(k, extra_extensions=[(_CRITICAL_UNKNOWN, True)]),
        Reason.UNSUPPORTED_CRITICAL_EXTENSION,
    ),
    # time
    "expired": (lambda k: _leaf(k, not_before=NOW - DAY, not_after=NOW - SECOND), Reason.EXPIRED),
    "not yet valid": (lambda k: _leaf(k, not_before=NOW + SECOND, not_after=NOW + DAY), Reason.NOT_YET_VALID),
    "intermediate expired": (
        lambda k: _under(k, k.pki.issue_intermediate(not_before=NOW - DAY, not_after=NOW - SECOND)),
        Reason.INTERMEDIATE_EXPIRED,
    ),
    "intermediate not yet valid": (
        lambda k: _under(k, k.pki.issue_intermediate(not_before=NOW + SECOND, not_after=NOW + DAY)),
        Reason.INTERMEDIATE_NOT_YET_VALID,
    ),
    "root expired": (_expired_root, Reason.ROOT_EXPIRED),
    # trust and the chain
    "signed by another root": (
        lambda k: Case([k.other.issue_leaf(URI).cert], k.pki.roots),
        Reason.UNTRUSTED_ROOT,
    ),
    "another root with the same name": (_same_name_other_root, Reason.BAD_SIGNATURE),
    "broken leaf signature under the root": (
        lambda k: Case([corrupt_signature(k.pki.issue_leaf(URI).cert)], k.pki.roots),
        Reason.BAD_SIGNATURE,
    ),
    "broken leaf signature under an intermediate": (
        lambda k: Case(
            [corrupt_signature(k.pki.issue_leaf(URI, issuer=k.inter).cert), k.inter.cert], k.pki.roots
        ),
        Reason.BAD_SIGNATURE,
    ),
    "broken intermediate signature": (
        lambda k: Case(
            [k.pki.issue_leaf(URI, issuer=k.inter).cert, corrupt_signature(k.inter.cert)], k.pki.roots
        ),
        Reason.BAD_SIGNATURE,
    ),
    "intermediate missing from the chain": (
        lambda k: Case([k.pki.issue_leaf(URI, issuer=k.inter).cert], k.pki.roots),
        Reason.UNTRUSTED_ROOT,
    ),
    "chain out of order": (
        lambda k: Case([k.pki.issue_leaf(URI).cert, k.inter.cert], k.pki.roots),
        Reason.CHAIN_NOT_LINKED,
    ),
    "intermediate not CA": (
        lambda k: _under(k, k.pki.issue_intermediate(ca=False)),
        Reason.INTERMEDIATE_NOT_CA,
    ),
    "intermediate without basicConstraints": (
        lambda k: _under(k, k.pki.issue_intermediate(ca=None)),
        Reason.INTERMEDIATE_NOT_CA,
    ),
    "intermediate without keyCertSign": (
        lambda k: _under(k, k.pki.issue_intermediate(key_usage={"crl_sign"})),
        Reason.INTERMEDIATE_NO_KEY_CERT_SIGN,
    ),
    "intermediate pathLen exceeded": (_path_length, Reason.PATH_LENGTH_EXCEEDED),
    "too many intermediates": (_too_many_intermediates, Reason.CHAIN_TOO_LONG),
    "trust root that is not a CA": (
        _root_not_ca,
        Reason.ROOT_NOT_CA,
    ),
    # algorithms and keys
    "SHA-224 signature": (
        lambda k: _leaf(k, hash_algorithm=hashes.SHA224()),
        Reason.WEAK_SIGNATURE_ALGORITHM,
    ),
    "RSA 1024 leaf key": (lambda k: _leaf(k, key_type="rsa-1024"), Reason.WEAK_KEY),
    "secp256k1 leaf key": (lambda k: _leaf(k, key_type="ec-secp256k1"), Reason.WEAK_KEY),
    # what only cryptography's path validator knows: URI name constraints are unsupported, DNS ones enforced
    "URI name constraint on the CA": (
        lambda k: _under(k, _ca_with(k, x509.NameConstraints([x509.UniformResourceIdentifier(TD)], None))),
        Reason.CHAIN_POLICY,
    ),
    "DNS SAN outside the CA's name constraints": (
        lambda k: _under(
            k, _ca_with(k, x509.NameConstraints([x509.DNSName("other.example")], None)), dns_sans=["a." + TD]
        ),
        Reason.CHAIN_POLICY,
    ),
}


def test_the_corpus_has_at_least_20_distinct_reasons() -> None:
    assert len(MALFORMED) >= 20
    assert len({reason for _, reason in MALFORMED.values()}) >= 20


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_chain_is_rejected_with_its_reason(kit: Kit, name: str) -> None:
    build, reason = MALFORMED[name]
    case = build(kit)
    with pytest.raises(CertificateRejected) as caught:
        verify_workload_chain(case.chain, roots=case.roots, now=NOW, trust_domain=case.trust_domain)
    assert caught.value.reason == reason, str(caught.value)
    assert caught.value.hint, "every rejection tells the operator what to do"


def _good_direct(k: Kit) -> Case:
    return _leaf(k)


def _good_two_intermediates(k: Kit) -> Case:
    lower = k.pki.issue_intermediate(issuer=k.inter, path_length=0)
    leaf = k.pki.issue_leaf(URI, issuer=lower)
    return Case([leaf.cert, lower.cert, k.inter.cert], k.pki.roots)


def _good_second_root(k: Kit) -> Case:
    return Case([k.other.issue_leaf(URI).cert], [*k.pki.roots, *k.other.roots])


def _good_rotated_same_name(k: Kit) -> Case:
    name = "CN=cluster.local rotating root"
    old = TestPki.create(trust_domain=TD, now=NOW, common_name=name)
    new = TestPki.create(trust_domain=TD, now=NOW, common_name=name)
    return Case([new.issue_leaf(URI).cert], [*old.roots, *new.roots])


def _good_rsa(k: Kit) -> Case:
    pki = TestPki.create(trust_domain=TD, now=NOW, key_type="rsa-2048")
    return Case([pki.issue_leaf(URI, key_type="rsa-2048").cert], pki.roots)


GOOD: dict[str, Callable[[Kit], Case]] = {
    "leaf directly under the root": _good_direct,
    "via an intermediate": lambda k: _under(k, k.inter),
    "via two intermediates": _good_two_intermediates,
    "presented chain ends with the root": lambda k: Case(
        [*_under(k, k.inter).chain, k.pki.root.cert], k.pki.roots
    ),
    "signed by the second root of the bundle": _good_second_root,
    "two roots with the same name (rotation)": _good_rotated_same_name,
    "expected trust domain": lambda k: Case(_leaf(k).chain, k.pki.roots, TD),
    "valid from exactly now": lambda k: _leaf(k, not_before=NOW, not_after=NOW + DAY),
    "valid until exactly now": lambda k: _leaf(k, not_before=NOW - DAY, not_after=NOW),
    "explicit CA=false": lambda k: _leaf(k, ca=False),
    "no EKU extension": lambda k: _leaf(k, extended_key_usage=None),
    "extra DNS SAN": lambda k: _leaf(k, dns_sans=["sleep.default.svc.cluster.local"]),
    "non-critical SAN": lambda k: _leaf(k, san_critical=False),
    "P-384 leaf": lambda k: _leaf(k, key_type="ec-p384"),
    "RSA 2048 CA and leaf": _good_rsa,
    "DNS SAN inside the CA's name constraints": lambda k: _under(
        k, _ca_with(k, x509.NameConstraints([x509.DNSName(TD)], None)), dns_sans=["a." + TD]
    ),
}


@pytest.mark.parametrize("name", list(GOOD))
def test_good_chain_is_accepted(kit: Kit, name: str) -> None:
    case = GOOD[name](kit)
    identity = verify_workload_chain(case.chain, roots=case.roots, now=NOW, trust_domain=case.trust_domain)
    assert identity == WorkloadIdentity(TD, "default", "sleep")


@pytest.mark.parametrize(
    ("chain_size", "roots_size", "now", "reason"),
    [
        (0, 1, NOW, Reason.EMPTY_CHAIN),
        (1, 0, NOW, Reason.NO_TRUST_ROOTS),
        (1, 1, NOW.replace(tzinfo=None), Reason.NAIVE_TIME),
    ],
)
def test_bad_arguments_are_refused(
    kit: Kit, chain_size: int, roots_size: int, now: dt.datetime, reason: Reason
) -> None:
    chain = _leaf(kit).chain[:chain_size]
    with pytest.raises(CertificateRejected) as caught:
        verify_workload_chain(chain, roots=kit.pki.roots[:roots_size], now=now)
    assert caught.value.reason == reason


def test_a_valid_chain_stops_being_valid_one_second_after_expiry(kit: Kit) -> None:
    chain = _under(kit, kit.inter, lifetime=dt.timedelta(hours=24)).chain
    expiry = chain[0].not_valid_after_utc
    assert verify_workload_chain(chain, roots=kit.pki.roots, now=expiry).service_account == "sleep"
    with pytest.raises(CertificateRejected) as caught:
        verify_workload_chain(chain, roots=kit.pki.roots, now=expiry + SECOND)
    assert caught.value.reason == Reason.EXPIRED
    assert caught.value.position == 0


def test_rejection_names_the_failing_position(kit: Kit) -> None:
    bad_inter = kit.pki.issue_intermediate(ca=False)
    case = _under(kit, bad_inter)
    with pytest.raises(CertificateRejected) as caught:
        verify_workload_chain(case.chain, roots=case.roots, now=NOW)
    assert caught.value.position == 1
    assert "position 1" in str(caught.value)
