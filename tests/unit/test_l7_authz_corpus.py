"""The L7 normalization corpus (reliability-catalogue.md test 19 and every bypass class of section
2.2): each row is a request, the policy chain it meets, the path normalization, and the decision.
``reject`` means the request is malformed and answered 400 without being judged or forwarded.

Policies are Envoy HTTP RBAC configs shaped as Istio generates them for a waypoint.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from google.protobuf import json_format

from mesh.l7.authz import AuthzConfigError, RbacEngine, compile_rbac, request_attributes
from mesh.l7.normalize import NormalizationError, check_headers, normalize_method, normalize_target

CLIENT = "spiffe://cluster.local/ns/demo/sa/client"
OTHER = "spiffe://cluster.local/ns/demo/sa/other"
B, M, D, N = "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES", "NONE"


def rbac(action: str, **policies: Any) -> rbac_pb2.RBAC:
    return json_format.ParseDict({"rules": {"action": action, "policies": policies}}, rbac_pb2.RBAC())


def path_exact(path: str) -> dict[str, Any]:
    return {"url_path": {"path": {"exact": path}}}


def path_prefix(prefix: str) -> dict[str, Any]:
    return {"url_path": {"path": {"prefix": prefix}}}


def host(name: str) -> dict[str, Any]:
    regex = "(?i)" + name.replace(".", r"\.") + "(?::[0-9]+)?"
    return {"header": {"name": ":authority", "string_match": {"safe_regex": {"regex": regex}}}}


def header(name: str, exact: str) -> dict[str, Any]:
    return {"header": {"name": name, "string_match": {"exact": exact}}}


ANY = [{"any": True}]

# DENY path /admin and /admin/* (Istio: exact and prefix), host secret.com, header x-role: admin.
DENY_ADMIN = rbac(
    "DENY",
    **{
        "ns[demo]-policy[deny-admin]-rule[0]": {
            "permissions": [{"or_rules": {"rules": [path_exact("/admin"), path_prefix("/admin/")]}}],
            "principals": ANY,
        },
        "ns[demo]-policy[deny-host]-rule[0]": {"permissions": [host("secret.com")], "principals": ANY},
        "ns[demo]-policy[deny-role]-rule[0]": {"permissions": [header("x-role", "admin")], "principals": ANY},
        "ns[demo]-policy[deny-template]-rule[0]": {
            "permissions": [
                {
                    "uri_template": {
                        "name": "uri-template",
                        "typed_config": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                            "path_template": "/users/{*}/secret",
                        },
                    }
                }
            ],
            "principals": ANY,
        },
        "ns[demo]-policy[deny-suffix]-rule[0]": {
            "permissions": [{"url_path": {"path": {"suffix": ".bak"}}}],
            "principals": ANY,
        },
    },
)
# ALLOW client to /api/* except /api/private*; ALLOW GET from anyone with x-team: blue.
ALLOW_CLIENT = rbac(
    "ALLOW",
    **{
        "ns[demo]-policy[allow-client]-rule[0]": {
            "permissions": [
                {
                    "and_rules": {
                        "rules": [
                            {"or_rules": {"rules": [path_prefix("/api/")]}},
                            {"not_rule": {"or_rules": {"rules": [path_prefix("/api/private")]}}},
                        ]
                    }
                }
            ],
            "principals": [
                {
                    "and_ids": {
                        "ids": [
                            {"or_ids": {"ids": [{"authenticated": {"principal_name": {"exact": CLIENT}}}]}}
                        ]
                    }
                }
            ],
        },
        "ns[demo]-policy[allow-blue]-rule[0]": {
            "permissions": [
                {
                    "and_rules": {
                        "rules": [
                            {"or_rules": {"rules": [header(":method", "GET")]}},
                            {"or_rules": {"rules": [header("x-team", "blue")]}},
                        ]
                    }
                }
            ],
            "principals": ANY,
        },
    },
)
# ALLOW only requests with a JWT principal from issuer https://issuer.test (requestPrincipals).
ALLOW_JWT = rbac(
    "ALLOW",
    **{
        "ns[demo]-policy[require-jwt]-rule[0]": {
            "permissions": ANY,
            "principals": [
                {
                    "metadata": {
                        "filter": "istio_authn",
                        "path": [{"key": "request.auth.principal"}],
                        "value": {"string_match": {"prefix": "https://issuer.test/"}},
                    }
                }
            ],
        }
    },
)

DENY_ONLY = compile_rbac([DENY_ADMIN])
DENY_ALLOW = compile_rbac([DENY_ADMIN, ALLOW_CLIENT])
JWT_ONLY = compile_rbac([ALLOW_JWT])

CORPUS: list[tuple[str, str, str, RbacEngine, dict[str, Any], str]] = [
    # id, target, normalization, engine, request extras, expected
    ("plain-admin", "/admin", B, DENY_ONLY, {}, "deny"),
    ("admin-sub", "/admin/users", B, DENY_ONLY, {}, "deny"),
    ("administrator", "/administrator", B, DENY_ONLY, {}, "allow"),
    ("public", "/public", B, DENY_ONLY, {}, "allow"),
    ("double-slash-base", "//admin", B, DENY_ONLY, {}, "allow"),  # BASE keeps //: Istio's documented gap
    ("double-slash-merge", "//admin", M, DENY_ONLY, {}, "deny"),
    ("double-slash-decode", "//admin", D, DENY_ONLY, {}, "deny"),
    ("inner-double-slash", "/admin//x", M, DENY_ONLY, {}, "deny"),
    ("dot-dot", "/public/../admin", B, DENY_ONLY, {}, "deny"),
    ("dot-dot-a", "/a/../admin", B, DENY_ONLY, {}, "deny"),
    ("dot-dot-above-root", "/../admin", B, DENY_ONLY, {}, "deny"),
    ("dot", "/./admin", B, DENY_ONLY, {}, "deny"),
    ("dot-trailing", "/admin/.", B, DENY_ONLY, {}, "deny"),
    ("dot-dot-trailing", "/admin/x/..", B, DENY_ONLY, {}, "deny"),
    ("encoded-dot-dot", "/public/%2e%2e/admin", B, DENY_ONLY, {}, "deny"),
    ("encoded-dot-dot-upper", "/public/%2E%2E/admin", B, DENY_ONLY, {}, "deny"),
    ("encoded-letter", "/%61dmin", B, DENY_ONLY, {}, "deny"),
    ("encoded-all", "/%61%64%6d%69%6e", B, DENY_ONLY, {}, "deny"),
    ("encoded-letter-upper", "/%41dmin", B, DENY_ONLY, {}, "allow"),  # /Admin: case is kept
    ("none-mode-dot-dot", "/public/../admin", N, DENY_ONLY, {}, "allow"),  # NONE: nothing normalized
    ("encoded-slash-base", "/admin%2Fx", B, DENY_ONLY, {}, "allow"),  # %2F opaque, as Envoy KEEP_UNCHANGED
    ("encoded-slash-decode", "/admin%2Fx", D, DENY_ONLY, {}, "deny"),
    ("encoded-slash-lower-decode", "/admin%2fx", D, DENY_ONLY, {}, "deny"),
    ("encoded-slash-trailing", "/admin%2F", D, DENY_ONLY, {}, "deny"),
    ("encoded-traversal-base", "/x%2F..%2Fadmin", B, DENY_ONLY, {}, "allow"),
    ("encoded-traversal-decode", "/x%2F..%2Fadmin", D, DENY_ONLY, {}, "deny"),
    ("encoded-backslash-decode", "/x%5C..%5Cadmin", D, DENY_ONLY, {}, "deny"),
    ("encoded-backslash-lower", "/x%5c..%5cadmin", D, DENY_ONLY, {}, "deny"),
    ("backslash", "/x\\..\\admin", B, DENY_ONLY, {}, "deny"),
    ("backslash-lead", "\\admin", B, DENY_ONLY, {}, "deny"),
    ("fragment", "/admin#x", B, DENY_ONLY, {}, "deny"),
    ("fragment-section", "/admin/profile#section1", B, DENY_ONLY, {}, "deny"),
    ("query", "/admin?x", B, DENY_ONLY, {}, "deny"),
    ("query-fragment", "/admin?x=1#y", B, DENY_ONLY, {}, "deny"),
    ("query-slash", "/public?/admin", B, DENY_ONLY, {}, "allow"),
    ("encoded-nul-in-path", "/admin%00", B, DENY_ONLY, {}, "reject"),
    ("encoded-nul-query-path", "/x/%00/../admin", B, DENY_ONLY, {}, "reject"),
    ("not-origin-form", "admin", B, DENY_ONLY, {}, "deny"),
    ("template-one-segment", "/users/alice/secret", B, DENY_ONLY, {}, "deny"),
    ("template-normalized", "/users/alice/x/../secret", B, DENY_ONLY, {}, "deny"),
    ("template-two-segments", "/users/a/b/secret", B, DENY_ONLY, {}, "allow"),
    ("suffix", "/backup/db.bak", B, DENY_ONLY, {}, "deny"),
    ("suffix-fragment", "/db.bak#x", B, DENY_ONLY, {}, "deny"),
    ("suffix-query", "/db.bak?download=1", B, DENY_ONLY, {}, "deny"),
    ("host", "/", B, DENY_ONLY, {"host": "secret.com"}, "deny"),
    ("host-case", "/", B, DENY_ONLY, {"host": "Secret.com"}, "deny"),
    ("host-upper", "/", B, DENY_ONLY, {"host": "SECRET.COM"}, "deny"),
    ("host-port", "/", B, DENY_ONLY, {"host": "secret.com:80"}, "deny"),
    ("host-trailing-dot", "/", B, DENY_ONLY, {"host": "secret.com."}, "deny"),
    ("host-trailing-dot-port", "/", B, DENY_ONLY, {"host": "Secret.Com.:8080"}, "deny"),
    ("host-other", "/", B, DENY_ONLY, {"host": "public.com"}, "allow"),
    ("host-suffix-lookalike", "/", B, DENY_ONLY, {"host": "notsecret.com"}, "allow"),
    (
        "host-duplicate",
        "/",
        B,
        DENY_ONLY,
        {"headers": [("host", "public.com"), ("host", "secret.com")]},
        "reject",
    ),
    ("role", "/", B, DENY_ONLY, {"headers": [("x-role", "admin")]}, "deny"),
    ("role-two-values", "/", B, DENY_ONLY, {"headers": [("x-role", "ok"), ("x-role", "admin")]}, "deny"),
    ("role-two-values-rev", "/", B, DENY_ONLY, {"headers": [("x-role", "admin"), ("x-role", "ok")]}, "deny"),
    ("role-name-case", "/", B, DENY_ONLY, {"headers": [("X-Role", "admin")]}, "deny"),
    ("role-other", "/", B, DENY_ONLY, {"headers": [("x-role", "user")]}, "allow"),
    ("role-crlf", "/", B, DENY_ONLY, {"headers": [("x-role", "user\r\nx-role: admin")]}, "reject"),
    ("role-nul", "/", B, DENY_ONLY, {"headers": [("x-role", "user\x00admin")]}, "reject"),
    ("allow-client", "/api/items", B, DENY_ALLOW, {"principal": CLIENT}, "allow"),
    ("allow-other-principal", "/api/items", B, DENY_ALLOW, {"principal": OTHER}, "deny"),
    ("allow-no-principal", "/api/items", B, DENY_ALLOW, {}, "deny"),
    ("allow-client-private", "/api/private/x", B, DENY_ALLOW, {"principal": CLIENT}, "deny"),
    ("allow-client-private-dotdot", "/api/x/../private/x", B, DENY_ALLOW, {"principal": CLIENT}, "deny"),
    ("allow-client-private-double", "/api//private", M, DENY_ALLOW, {"principal": CLIENT}, "deny"),
    ("allow-client-private-encoded", "/api/%70rivate", B, DENY_ALLOW, {"principal": CLIENT}, "deny"),
    ("allow-client-escape-api", "/api/../admin", B, DENY_ALLOW, {"principal": CLIENT}, "deny"),
    ("allow-client-outside", "/other", B, DENY_ALLOW, {"principal": CLIENT}, "deny"),
    ("allow-blue-get", "/anything", B, DENY_ALLOW, {"headers": [("x-team", "blue")]}, "allow"),
    (
        "lower-case-method",
        "/anything",
        B,
        DENY_ALLOW,
        {"method": "get", "headers": [("x-team", "blue")]},
        "reject",
    ),
    (
        "allow-blue-post",
        "/anything",
        B,
        DENY_ALLOW,
        {"method": "POST", "headers": [("x-team", "blue")]},
        "deny",
    ),
    (
        "allow-blue-two-values",
        "/x",
        B,
        DENY_ALLOW,
        {"headers": [("x-team", "blue"), ("x-team", "red")]},
        "deny",
    ),
    ("allow-blue-deny-wins", "/admin", B, DENY_ALLOW, {"headers": [("x-team", "blue")]}, "deny"),
    ("jwt-missing", "/protected", B, JWT_ONLY, {}, "deny"),
    ("jwt-good", "/protected", B, JWT_ONLY, {"jwt": "https://issuer.test/alice"}, "allow"),
    ("jwt-other-issuer", "/protected", B, JWT_ONLY, {"jwt": "https://evil.test/alice"}, "deny"),
    ("jwt-missing-query", "/protected?x", B, JWT_ONLY, {}, "deny"),
    ("jwt-missing-fragment", "/protected#x", B, JWT_ONLY, {}, "deny"),
]


def decide(target: str, mode: str, engine: RbacEngine, extras: dict[str, Any]) -> str:
    headers = (
        [("host", extras.get("host", "app.demo"))] if "host" in extras or "headers" not in extras else []
    )
    headers += extras.get("headers", [])
    try:
        method = normalize_method(extras.get("method", "GET"))
        target = normalize_target(target, mode)
        check_headers(headers)
    except NormalizationError:
        return "reject"
    jwt = extras.get("jwt")
    attributes = request_attributes(
        method,
        target,
        headers,
        source_ip=ipaddress.ip_address("10.244.1.5"),
        destination_ip=ipaddress.ip_address("10.96.0.10"),
        destination_port=80,
        principal=extras.get("principal", ""),
        metadata={"istio_authn": {"request.auth.principal": jwt}} if jwt else {},
    )
    return "allow" if engine.decide(attributes).allowed else "deny"


@pytest.mark.parametrize(
    ("target", "mode", "engine", "extras", "expected"),
    [row[1:] for row in CORPUS],
    ids=[row[0] for row in CORPUS],
)
def test_corpus(target: str, mode: str, engine: RbacEngine, extras: dict[str, Any], expected: str) -> None:
    assert decide(target, mode, engine, extras) == expected


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 60
    assert len({row[0] for row in CORPUS}) == len(CORPUS)


def test_authority_is_judged_in_lower_case_without_trailing_dot() -> None:
    attributes = request_attributes(
        "GET",
        "/a?q=1",
        [("Host", "App.Demo.:80")],
        source_ip=ipaddress.ip_address("10.0.0.1"),
        destination_ip=ipaddress.ip_address("10.0.0.2"),
        destination_port=80,
    )
    assert (attributes.path, attributes.headers[":authority"], attributes.headers[":path"]) == (
        "/a",
        ("app.demo:80",),
        ("/a?q=1",),
    )


def test_allow_filter_without_policies_denies_everything() -> None:
    engine = compile_rbac([rbac("ALLOW")])
    assert decide("/", B, engine, {}) == "deny"


def test_no_filters_allow() -> None:
    engine = compile_rbac([])
    assert not engine
    assert decide("/admin", B, engine, {}) == "allow"


def test_log_filter_never_denies_and_reports() -> None:
    audit = compile_rbac([rbac("LOG", audit={"permissions": [path_exact("/admin")], "principals": ANY})])
    attributes = request_attributes(
        "GET",
        "/admin",
        [("host", "a")],
        source_ip=ipaddress.ip_address("10.0.0.1"),
        destination_ip=ipaddress.ip_address("10.0.0.2"),
        destination_port=80,
    )
    decision = audit.decide(attributes)
    assert decision.allowed and decision.logged == ("audit",)


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        (
            {"permissions": [{"url_path": {"path": {"safe_regex": {"regex": "("}}}}], "principals": ANY},
            "not valid RE2",
        ),
        ({"permissions": [{"requested_server_name": {"exact": "x"}}], "principals": ANY}, "not supported"),
        ({"permissions": ANY, "principals": [{"remote_ip": {"address_prefix": "nonsense"}}]}, "not a CIDR"),
    ],
)
def test_bad_config_is_named(policy: dict[str, Any], problem: str) -> None:
    with pytest.raises(AuthzConfigError, match=problem) as info:
        compile_rbac([rbac("DENY", bad=policy)])
    assert "policies[bad]" in str(info.value)


def method(name: str) -> dict[str, Any]:
    return {"header": {"name": ":method", "string_match": {"exact": name}}}


# An ALLOW chain shaped like the benchmark's 100-rule policy: rules wanting an exact path (alone, in
# an or-list, or in an and-list beside a method), and rules the exact-path index must never skip: a
# prefix, a case-insensitive exact path, a negated path, no path at all.
INDEXED = rbac(
    "ALLOW",
    **{
        "a-exact": {"permissions": [path_exact("/a")], "principals": ANY},
        "b-or": {
            "permissions": [{"or_rules": {"rules": [path_exact("/b"), path_exact("/b2")]}}],
            "principals": ANY,
        },
        "c-and": {
            "permissions": [{"and_rules": {"rules": [path_exact("/c"), method("POST")]}}],
            "principals": ANY,
        },
        "d-prefix": {"permissions": [path_prefix("/d/")], "principals": ANY},
        "e-folded": {
            "permissions": [{"url_path": {"path": {"exact": "/E", "ignore_case": True}}}],
            "principals": ANY,
        },
        "f-not": {"permissions": [{"not_rule": path_exact("/f")}], "principals": [{"authenticated": {}}]},
        "g-method": {"permissions": [method("PUT")], "principals": ANY},
        "h-two": {"permissions": [path_exact("/h"), path_prefix("/h/")], "principals": ANY},
    },
)


@pytest.mark.parametrize(
    "target", ["/a", "/b", "/b2", "/c", "/d/x", "/e", "/E", "/f", "/h", "/h/1", "/zzz", "/"]
)
@pytest.mark.parametrize("verb", ["GET", "POST", "PUT"])
@pytest.mark.parametrize("principal", ["", CLIENT])
def test_the_exact_path_index_decides_as_trying_every_policy(target: str, verb: str, principal: str) -> None:
    engine = compile_rbac([INDEXED])
    request = request_attributes(
        verb, target, [("host", "app.demo")],
        source_ip=ipaddress.ip_address("10.244.1.5"), destination_ip=ipaddress.ip_address("10.96.0.10"),
        destination_port=80, principal=principal,
    )  # fmt: skip
    (chain,) = engine._filters
    every = next((name for name, check in chain.policies if check(request)), None)
    decision = engine.decide(request)
    assert decision.allowed == (every is not None)
    indexed = [name for name, _ in chain.candidates(request.path)]
    assert "a-exact" in indexed if target == "/a" else "a-exact" not in indexed  # the index skips it
    assert {"d-prefix", "e-folded", "f-not", "g-method"} <= set(indexed)  # never skipped
