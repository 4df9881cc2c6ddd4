"""SPIFFE ID and workload identity parsing: spec tables and properties."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.identity import IdentityError, InvalidSpiffeId, Reason, SpiffeId, WorkloadIdentity
from mesh.identity.spiffe import validate_trust_domain

VALID = [
    ("spiffe://cluster.local/ns/default/sa/sleep", "cluster.local", "/ns/default/sa/sleep"),
    ("spiffe://td", "td", ""),
    ("spiffe://td/a", "td", "/a"),
    ("spiffe://a-b_c.9/X.y-_z/..a/a..", "a-b_c.9", "/X.y-_z/..a/a.."),
    ("spiffe://10.0.0.1/x", "10.0.0.1", "/x"),
    ("spiffe://" + "t" * 255 + "/x", "t" * 255, "/x"),
]


@pytest.mark.parametrize(("uri", "trust_domain", "path"), VALID)
def test_valid_ids_parse_and_format_back(uri: str, trust_domain: str, path: str) -> None:
    parsed = SpiffeId.parse(uri)
    assert parsed == SpiffeId(trust_domain, path)
    assert str(parsed) == parsed.uri == uri


INVALID = [
    ("", Reason.NOT_SPIFFE_SCHEME),
    ("cluster.local/ns/a/sa/b", Reason.NOT_SPIFFE_SCHEME),
    ("SPIFFE://td/a", Reason.NOT_SPIFFE_SCHEME),
    ("spiffe:/td/a", Reason.NOT_SPIFFE_SCHEME),
    ("spiffe:td/a", Reason.NOT_SPIFFE_SCHEME),
    (" spiffe://td/a", Reason.NOT_SPIFFE_SCHEME),
    ("https://td/a", Reason.NOT_SPIFFE_SCHEME),
    ("spiffe://", Reason.EMPTY_TRUST_DOMAIN),
    ("spiffe:///ns/a", Reason.EMPTY_TRUST_DOMAIN),
    ("spiffe://Cluster.local/a", Reason.TRUST_DOMAIN_UPPERCASE),
    ("spiffe://TD", Reason.TRUST_DOMAIN_UPPERCASE),
    ("spiffe://tD!/a", Reason.TRUST_DOMAIN_BAD_CHAR),
    ("spiffe://t d/a", Reason.TRUST_DOMAIN_BAD_CHAR),
    ("spiffe://tdé/a", Reason.TRUST_DOMAIN_BAD_CHAR),
    ("spiffe://[::1]/a", Reason.PORT),
    ("spiffe://" + "t" * 256 + "/x", Reason.TRUST_DOMAIN_TOO_LONG),
    ("spiffe://td:8080/a", Reason.PORT),
    ("spiffe://td:/a", Reason.PORT),
    ("spiffe://user@td/a", Reason.USERINFO),
    ("spiffe://user:pw@td/a", Reason.USERINFO),
    ("spiffe://td/a%2Fb", Reason.PERCENT_ENCODING),
    ("spiffe://td/%2e%2e/a", Reason.PERCENT_ENCODING),
    ("spiffe://t%64/a", Reason.PERCENT_ENCODING),
    ("spiffe://td/a?b=c", Reason.QUERY),
    ("spiffe://td?x", Reason.QUERY),
    ("spiffe://td/a#frag", Reason.FRAGMENT),
    ("spiffe://td/", Reason.TRAILING_SLASH),
    ("spiffe://td/a/", Reason.TRAILING_SLASH),
    ("spiffe://td//a", Reason.EMPTY_SEGMENT),
    ("spiffe://td/a//b", Reason.EMPTY_SEGMENT),
    ("spiffe://td/./a", Reason.DOT_SEGMENT),
    ("spiffe://td/a/..", Reason.DOT_SEGMENT),
    ("spiffe://td/a b", Reason.PATH_BAD_CHAR),
    ("spiffe://td/a\\b", Reason.PATH_BAD_CHAR),
    ("spiffe://td/é", Reason.PATH_BAD_CHAR),
    ("spiffe://td/a\n", Reason.PATH_BAD_CHAR),
    ("spiffe://td/a*", Reason.PATH_BAD_CHAR),
    ("spiffe://td/a\x00b", Reason.NUL_BYTE),
    ("spiffe://td\x00.evil/a", Reason.NUL_BYTE),
    ("spiffe://td/" + "a" * 2040, Reason.TOO_LONG),
]


@pytest.mark.parametrize(("uri", "reason"), INVALID, ids=[repr(u[:40]) for u, _ in INVALID])
def test_invalid_ids_are_refused_with_their_reason(uri: str, reason: Reason) -> None:
    with pytest.raises(InvalidSpiffeId) as caught:
        SpiffeId.parse(uri)
    assert caught.value.reason == reason
    assert caught.value.hint


def test_exactly_2048_bytes_is_allowed_and_one_more_is_not() -> None:
    prefix = "spiffe://td/"
    longest = prefix + "a" * (2048 - len(prefix))
    assert len(SpiffeId.parse(longest).uri) == 2048
    with pytest.raises(InvalidSpiffeId) as caught:
        SpiffeId.parse(longest + "a")
    assert caught.value.reason == Reason.TOO_LONG


def test_non_string_input_is_an_identity_error() -> None:
    with pytest.raises(InvalidSpiffeId) as caught:
        SpiffeId.parse(b"spiffe://td/a")  # type: ignore[arg-type]
    assert caught.value.reason == Reason.NOT_A_STRING


@pytest.mark.parametrize(
    ("trust_domain", "path", "reason"),
    [
        ("td", "a", Reason.PATH_NOT_ABSOLUTE),
        ("td", "/a/", Reason.TRAILING_SLASH),
        ("TD", "/a", Reason.TRUST_DOMAIN_UPPERCASE),
        ("", "/a", Reason.EMPTY_TRUST_DOMAIN),
        ("td", "/" + "a" * 2040, Reason.TOO_LONG),
    ],
)
def test_direct_construction_is_validated(trust_domain: str, path: str, reason: Reason) -> None:
    with pytest.raises(InvalidSpiffeId) as caught:
        SpiffeId(trust_domain, path)
    assert caught.value.reason == reason


def test_workload_identity_forms() -> None:
    identity = WorkloadIdentity.parse("spiffe://cluster.local/ns/default/sa/sleep")
    assert identity == WorkloadIdentity("cluster.local", "default", "sleep")
    assert identity.uri == str(identity) == "spiffe://cluster.local/ns/default/sa/sleep"
    assert identity.principal == "cluster.local/ns/default/sa/sleep"
    assert identity.spiffe_id == SpiffeId("cluster.local", "/ns/default/sa/sleep")
    assert WorkloadIdentity.from_principal(identity.principal) == identity
    assert WorkloadIdentity.from_spiffe_id(identity.spiffe_id) == identity


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("spiffe://td", Reason.NOT_WORKLOAD_PATH),
        ("spiffe://td/ns/a", Reason.NOT_WORKLOAD_PATH),
        ("spiffe://td/ns/a/sa", Reason.NOT_WORKLOAD_PATH),
        ("spiffe://td/ns/a/sa/b/c", Reason.NOT_WORKLOAD_PATH),
        ("spiffe://td/sa/b/ns/a", Reason.NOT_WORKLOAD_PATH),
        ("spiffe://td/NS/a/sa/b", Reason.NOT_WORKLOAD_PATH),
        ("spiffe://td/ns/a/serviceaccount/b", Reason.NOT_WORKLOAD_PATH),
        ("spiffe://td/ns/a/sa/b/", Reason.TRAILING_SLASH),
        ("spiffe://td/ns/../sa/b", Reason.DOT_SEGMENT),
    ],
)
def test_workload_identity_requires_ns_sa_path(uri: str, reason: Reason) -> None:
    with pytest.raises(InvalidSpiffeId) as caught:
        WorkloadIdentity.parse(uri)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("namespace", "service_account", "reason"),
    [
        ("a/sa/x", "b", Reason.PATH_BAD_CHAR),  # a '/' would forge another principal
        ("a", "b/c", Reason.PATH_BAD_CHAR),
        ("", "b", Reason.EMPTY_SEGMENT),
        ("a", "..", Reason.DOT_SEGMENT),
        ("a", "b*", Reason.PATH_BAD_CHAR),
    ],
)
def test_workload_identity_parts_cannot_smuggle_separators(
    namespace: str, service_account: str, reason: Reason
) -> None:
    with pytest.raises(InvalidSpiffeId) as caught:
        WorkloadIdentity("td", namespace, service_account)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "principal", ["spiffe://td/ns/a/sa/b", "td/ns/a/sa", "/ns/a/sa/b", "td/ns/a/sa/b/", "TD/ns/a/sa/b"]
)
def test_from_principal_refuses_other_forms(principal: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        WorkloadIdentity.from_principal(principal)


def test_validate_trust_domain() -> None:
    assert validate_trust_domain("cluster.local") == "cluster.local"
    with pytest.raises(InvalidSpiffeId):
        validate_trust_domain("cluster.local:443")


# --- properties ---------------------------------------------------------------------------------

_TD_CHARS = string.ascii_lowercase + string.digits + ".-_"
_SEGMENT_CHARS = string.ascii_letters + string.digits + ".-_"
trust_domains = st.text(_TD_CHARS, min_size=1, max_size=40)
segments = st.text(_SEGMENT_CHARS, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))
paths = st.lists(segments, max_size=6).map(lambda parts: "".join("/" + p for p in parts))
# text that looks like SPIFFE IDs often enough to reach every branch of the parser
uri_like = st.one_of(
    st.text(),
    st.builds(
        lambda body: "spiffe://" + body,
        st.text(alphabet=_SEGMENT_CHARS + "/:@%?#\x00 éA", max_size=60),
    ),
)


@settings(max_examples=300, deadline=None)
@given(trust_domains, paths)
def test_format_then_parse_round_trips(trust_domain: str, path: str) -> None:
    spiffe_id = SpiffeId(trust_domain, path)
    assert SpiffeId.parse(str(spiffe_id)) == spiffe_id


@settings(max_examples=200, deadline=None)
@given(trust_domains, segments, segments)
def test_workload_identity_round_trips_through_uri_and_principal(td: str, ns: str, sa: str) -> None:
    identity = WorkloadIdentity(td, ns, sa)
    assert WorkloadIdentity.parse(identity.uri) == identity
    assert WorkloadIdentity.from_principal(identity.principal) == identity


@settings(max_examples=1000, deadline=None)
@given(uri_like)
def test_parser_raises_only_identity_errors_and_never_normalises(text: str) -> None:
    try:
        parsed = SpiffeId.parse(text)
    except IdentityError:
        return
    assert str(parsed) == text  # accepted text is already canonical
    try:
        identity = WorkloadIdentity.from_spiffe_id(parsed)
    except IdentityError:
        return
    assert identity.uri == text
