"""Principal matching: literal, never fooled by look-alike identities (CVE-2020-16844, CVE-2026-39350)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.identity import (
    MatchKind,
    ServiceAccountMatch,
    StringMatch,
    WorkloadIdentity,
    matches_namespace,
    matches_principal,
    principal_of,
)

B = WorkloadIdentity("td", "a", "b")


def _id(principal: str) -> WorkloadIdentity:
    return WorkloadIdentity.from_principal(principal)


# (pattern, identity principal, expected)
PRINCIPAL_TABLE = [
    (StringMatch.exact("td/ns/a/sa/b"), "td/ns/a/sa/b", True),
    (StringMatch.exact("td/ns/a/sa/b"), "td/ns/a/sa/bb", False),
    (StringMatch.exact("td/ns/a/sa/b"), "td/ns/a/sa/b.x", False),
    (StringMatch.exact("td/ns/a/sa/b"), "td/ns/aa/sa/b", False),
    (StringMatch.exact("td/ns/a/sa/b"), "td2/ns/a/sa/b", False),
    (StringMatch.exact("td/ns/a/sa/b"), "xtd/ns/a/sa/b", False),
    (StringMatch.exact("td/ns/a/sa/a.b"), "td/ns/a/sa/aXb", False),  # '.' is not a regex wildcard
    (StringMatch.exact("td/ns/a/sa/a.b"), "td/ns/a/sa/a.b", True),
    (StringMatch.exact("TD/ns/a/sa/b"), "td/ns/a/sa/b", False),  # no case folding
    (StringMatch.exact("spiffe://td/ns/a/sa/b"), "td/ns/a/sa/b", False),  # principals carry no scheme
    # Istio "*/ns/ns1/sa/foo" compiles to this suffix; it must match every trust domain, and only foo
    (StringMatch.suffix("/ns/ns1/sa/foo"), "td/ns/ns1/sa/foo", True),
    (StringMatch.suffix("/ns/ns1/sa/foo"), "other.local/ns/ns1/sa/foo", True),
    (StringMatch.suffix("/ns/ns1/sa/foo"), "td/ns/ns1/sa/xfoo", False),
    (StringMatch.suffix("/ns/ns1/sa/foo"), "td/ns/xns1/sa/foo", False),
    (StringMatch.suffix("/ns/ns1/sa/foo"), "td/ns/ns1/sa/foo.bar", False),
    # Istio "td/ns/a/*" compiles to this prefix
    (StringMatch.prefix("td/ns/a/"), "td/ns/a/sa/anything", True),
    (StringMatch.prefix("td/ns/a/"), "td/ns/ab/sa/b", False),
    (StringMatch.prefix("td/ns/a/"), "td.evil/ns/a/sa/b", False),
    (StringMatch.presence(), "td/ns/a/sa/b", True),
]


@pytest.mark.parametrize(("pattern", "principal", "expected"), PRINCIPAL_TABLE)
def test_principal_matching_is_literal(pattern: StringMatch, principal: str, expected: bool) -> None:
    assert matches_principal(_id(principal), [pattern]) is expected


@pytest.mark.parametrize(
    "candidate", ["td/ns/a/sa/bb", "td/ns/a/sa/b/c", "td/ns/a/sa/b.x", "td/ns/a/sa/", ""]
)
def test_exact_principal_never_matches_a_longer_or_shorter_string(candidate: str) -> None:
    assert StringMatch.exact("td/ns/a/sa/b").matches(candidate) is False


def test_no_identity_matches_no_principal_not_even_presence() -> None:
    patterns = [StringMatch.presence(), StringMatch.prefix(""), StringMatch.suffix(""), StringMatch.exact("")]
    assert matches_principal(None, patterns) is False
    assert principal_of(None) == ""
    assert principal_of(B) == "td/ns/a/sa/b"


def test_any_of_several_patterns_matches() -> None:
    patterns = [StringMatch.exact("td/ns/x/sa/y"), StringMatch.exact("td/ns/a/sa/b")]
    assert matches_principal(B, patterns) is True
    assert matches_principal(B, patterns[:1]) is False
    assert matches_principal(B, []) is False


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", StringMatch.presence()),
        ("*/ns/a/sa/b", StringMatch.suffix("/ns/a/sa/b")),
        ("td/ns/a/*", StringMatch.prefix("td/ns/a/")),
        ("td/ns/a/sa/b", StringMatch.exact("td/ns/a/sa/b")),
        ("td/ns/*/sa/b", StringMatch.exact("td/ns/*/sa/b")),  # a middle '*' is literal
    ],
)
def test_from_istio_wildcards(pattern: str, expected: StringMatch) -> None:
    assert StringMatch.from_istio(pattern) == expected
    assert str(expected) == pattern


def test_a_middle_wildcard_matches_nothing_real() -> None:
    assert matches_principal(B, [StringMatch.from_istio("td/ns/*/sa/b")]) is False


def test_presence_has_no_value() -> None:
    with pytest.raises(ValueError, match="presence"):
        StringMatch(MatchKind.PRESENCE, "x")


@pytest.mark.parametrize(
    ("pattern", "identity", "expected"),
    [
        (StringMatch.exact("a"), B, True),
        (StringMatch.exact("a"), WorkloadIdentity("td", "aa", "b"), False),
        (StringMatch.exact("a.b"), WorkloadIdentity("td", "aXb", "b"), False),
        (StringMatch.exact("Default"), WorkloadIdentity("td", "default", "b"), False),
        (StringMatch.prefix("team-"), WorkloadIdentity("td", "team-x", "b"), True),
        (StringMatch.presence(), None, False),
        (StringMatch.exact("a"), None, False),
        (StringMatch.exact(""), None, True),  # ztunnel: a plaintext peer has the namespace ""
    ],
)
def test_namespace_matching(pattern: StringMatch, identity: WorkloadIdentity | None, expected: bool) -> None:
    assert matches_namespace(identity, [pattern]) is expected


@pytest.mark.parametrize(
    ("match", "identity", "expected"),
    [
        (ServiceAccountMatch("a", "b"), B, True),
        (ServiceAccountMatch("a", "b"), WorkloadIdentity("other.td", "a", "b"), True),
        (ServiceAccountMatch("a", "b"), WorkloadIdentity("td", "a", "bb"), False),
        (ServiceAccountMatch("a.b", "c"), WorkloadIdentity("td", "aXb", "c"), False),
        (ServiceAccountMatch("a", "b.c"), WorkloadIdentity("td", "a", "bXc"), False),
        (ServiceAccountMatch("a", "b"), None, False),
    ],
)
def test_service_account_matching(
    match: ServiceAccountMatch, identity: WorkloadIdentity | None, expected: bool
) -> None:
    assert match.matches(identity) is expected


_SEGMENT = st.text(string.ascii_lowercase + string.digits + ".-_", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)
identities = st.builds(WorkloadIdentity, st.sampled_from(["td", "td.x", "t"]), _SEGMENT, _SEGMENT)


@settings(max_examples=300, deadline=None)
@given(identities, identities)
def test_exact_principal_matches_only_the_same_identity(a: WorkloadIdentity, b: WorkloadIdentity) -> None:
    assert matches_principal(b, [StringMatch.exact(a.principal)]) is (a == b)
    assert ServiceAccountMatch(a.namespace, a.service_account).matches(b) is (
        (a.namespace, a.service_account) == (b.namespace, b.service_account)
    )
