"""AuthorizationPolicy with targetRefs -> the waypoint's RBAC filters: translated by istiod_lite,
compiled by the waypoint's router, and judged by mesh.l7.authz, request by request."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from mesh.l7.authz import RBAC_FILTERS, request_attributes
from mesh.l7.normalize import normalize_target
from mesh.l7.router import compile_routes
from tests.unit.l7_world import REVIEWS, Obj, problems_text, translate

CLIENT = "spiffe://cluster.local/ns/demo/sa/client"
OTHER = "spiffe://cluster.local/ns/other/sa/other"


def policy(name: str, action: str, rules: list[Obj], *, target: Obj | None = None, ns: str = "demo") -> Obj:
    ref = target or {"kind": "Service", "group": "", "name": "reviews"}
    spec: Obj = {"targetRefs": [ref], "rules": rules}
    if action:
        spec["action"] = action
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def decide(policies: list[Obj], request: dict[str, Any], *, authority: str = f"{REVIEWS}:9080") -> str:
    config = translate(*policies)
    assert config.route_configuration is not None
    found = compile_routes(config.route_configuration).authorization(authority)
    assert found is not None
    _, engine = found
    headers = [("host", request.get("host", "reviews:9080")), *request.get("headers", [])]
    attributes = request_attributes(
        request.get("method", "GET"),
        normalize_target(request.get("path", "/"), "BASE"),
        headers,
        source_ip=ipaddress.ip_address(request.get("ip", "10.244.1.5")),
        destination_ip=ipaddress.ip_address("10.96.0.20"),
        destination_port=request.get("port", 9080),
        principal=request.get("principal", ""),
        metadata={"istio_authn": request["jwt"]} if "jwt" in request else {},
    )
    return "allow" if engine.decide(attributes).allowed else "deny"


DENY_ADMIN = policy("deny-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}])
ALLOW_CLIENT = policy(
    "allow-client", "ALLOW", [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/client"]}}]}]
)
ALLOW_NS = policy("allow-ns", "ALLOW", [{"from": [{"source": {"namespaces": ["demo"]}}]}])
ALLOW_GET_API = policy(
    "allow-get",
    "",
    [{"to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"], "notPaths": ["/api/private*"]}}]}],
)
DENY_HOST = policy("deny-host", "DENY", [{"to": [{"operation": {"hosts": ["Secret.com", "*.internal"]}}]}])
DENY_HEADER = policy(
    "deny-role", "DENY", [{"when": [{"key": "request.headers[X-Role]", "values": ["admin"]}]}]
)
ALLOW_PORT_IP = policy(
    "allow-port-ip",
    "ALLOW",
    [{"from": [{"source": {"ipBlocks": ["10.244.1.0/24"]}}], "to": [{"operation": {"ports": ["9080"]}}]}],
)
REQUIRE_JWT = policy(
    "require-jwt", "ALLOW", [{"from": [{"source": {"requestPrincipals": ["https://issuer.test/*"]}}]}]
)
CLAIM = policy("claim", "ALLOW", [{"when": [{"key": "request.auth.claims[groups]", "values": ["admins"]}]}])
TEMPLATE = policy(
    "template", "DENY", [{"to": [{"operation": {"paths": ["/users/{*}/secret", "/files/{**}"]}}]}]
)
GATEWAY_DENY = policy(
    "gw-deny", "DENY", [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
    target={"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"},
)  # fmt: skip
AUDIT = policy("audit", "AUDIT", [{"to": [{"operation": {"paths": ["/"]}}]}])

CASES = [
    ("deny-admin", [DENY_ADMIN], {"path": "/admin"}, "deny"),
    ("deny-admin-sub", [DENY_ADMIN], {"path": "/admin/x"}, "deny"),
    ("deny-admin-dotdot", [DENY_ADMIN], {"path": "/public/../admin"}, "deny"),
    ("deny-admin-not-administrator", [DENY_ADMIN], {"path": "/administrator"}, "allow"),
    ("allow-principal", [ALLOW_CLIENT], {"principal": CLIENT}, "allow"),
    ("allow-principal-other", [ALLOW_CLIENT], {"principal": OTHER}, "deny"),
    ("allow-principal-none", [ALLOW_CLIENT], {}, "deny"),
    ("deny-beats-allow", [ALLOW_CLIENT, DENY_ADMIN], {"principal": CLIENT, "path": "/admin"}, "deny"),
    ("allow-namespace", [ALLOW_NS], {"principal": CLIENT}, "allow"),
    ("allow-namespace-other", [ALLOW_NS], {"principal": OTHER}, "deny"),
    ("allow-get-api", [ALLOW_GET_API], {"path": "/api/x"}, "allow"),
    ("allow-get-api-post", [ALLOW_GET_API], {"path": "/api/x", "method": "POST"}, "deny"),
    ("allow-get-api-private", [ALLOW_GET_API], {"path": "/api/private/x"}, "deny"),
    ("deny-host-case", [DENY_HOST], {"host": "secret.COM"}, "deny"),
    ("deny-host-port", [DENY_HOST], {"host": "secret.com:9080"}, "deny"),
    ("deny-host-dot", [DENY_HOST], {"host": "secret.com."}, "deny"),
    ("deny-host-wildcard", [DENY_HOST], {"host": "db.internal"}, "deny"),
    ("deny-host-other", [DENY_HOST], {"host": "reviews"}, "allow"),
    ("deny-header", [DENY_HEADER], {"headers": [("x-role", "admin")]}, "deny"),
    ("deny-header-second-value", [DENY_HEADER], {"headers": [("x-role", "ok"), ("x-role", "admin")]}, "deny"),
    ("deny-header-other", [DENY_HEADER], {"headers": [("x-role", "user")]}, "allow"),
    ("allow-ip-port", [ALLOW_PORT_IP], {}, "allow"),
    ("allow-ip-port-other-ip", [ALLOW_PORT_IP], {"ip": "10.244.2.5"}, "deny"),
    ("jwt-required-missing", [REQUIRE_JWT], {}, "deny"),
    (
        "jwt-required-good",
        [REQUIRE_JWT],
        {"jwt": {"request.auth.principal": "https://issuer.test/alice"}},
        "allow",
    ),
    ("jwt-required-other", [REQUIRE_JWT], {"jwt": {"request.auth.principal": "https://evil.test/x"}}, "deny"),
    ("claim-list", [CLAIM], {"jwt": {"request.auth.claims": {"groups": ["users", "admins"]}}}, "allow"),
    ("claim-missing", [CLAIM], {"jwt": {"request.auth.claims": {"groups": ["users"]}}}, "deny"),
    ("template-segment", [TEMPLATE], {"path": "/users/bob/secret"}, "deny"),
    ("template-two-segments", [TEMPLATE], {"path": "/users/a/b/secret"}, "allow"),
    ("template-rest", [TEMPLATE], {"path": "/files/a/b/c"}, "deny"),
    ("gateway-target", [GATEWAY_DENY], {"method": "DELETE"}, "deny"),
    ("audit-never-denies", [AUDIT], {"path": "/"}, "allow"),
]


@pytest.mark.parametrize(
    ("policies", "request_", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_policy_decides(policies: list[Obj], request_: dict[str, Any], expected: str) -> None:
    assert decide(policies, request_) == expected


def test_service_policy_stays_on_its_own_service() -> None:
    assert (
        decide(
            [DENY_ADMIN],
            {"path": "/admin", "host": "ratings:8080"},
            authority="ratings.demo.svc.cluster.local:8080",
        )
        == "allow"
    )


def test_gateway_policy_covers_every_service() -> None:
    authority = "ratings.demo.svc.cluster.local:8080"
    assert decide([GATEWAY_DENY], {"method": "DELETE", "host": "ratings:8080"}, authority=authority) == "deny"


def test_selector_policies_are_not_for_the_waypoint() -> None:
    selector = policy("l4", "DENY", [{}])
    del selector["spec"]["targetRefs"]
    selector["spec"]["selector"] = {"matchLabels": {"app": "reviews"}}
    config = translate(selector)
    assert config.route_configuration is not None
    assert all(not vh.typed_per_filter_config for vh in config.route_configuration.virtual_hosts)


def test_filters_carry_istio_policy_names() -> None:
    config = translate(DENY_ADMIN, ALLOW_CLIENT)
    assert config.route_configuration is not None
    vhost = next(vh for vh in config.route_configuration.virtual_hosts if vh.name == f"{REVIEWS}:9080")
    assert sorted(vhost.typed_per_filter_config) == sorted([RBAC_FILTERS[0], RBAC_FILTERS[2]])


@pytest.mark.parametrize(
    ("bad", "field", "expected"),
    [
        (
            policy("bad-deny", "DENY", [{"to": [{"operation": {"paths": ["admin"]}}]}]),
            "spec.rules[0].to[0].operation.paths[0]",
            "deny",
        ),
        (
            policy("bad-allow", "ALLOW", [{"to": [{"operation": {"ports": ["http"]}}]}]),
            "spec.rules[0].to[0].operation.ports[0]",
            "deny",
        ),
        (
            policy("bad-key", "DENY", [{"when": [{"key": "request.magic", "values": ["x"]}]}]),
            "spec.rules[0].when[0].key",
            "deny",
        ),
        (policy("custom", "CUSTOM", [{}]), "spec.action", "deny"),
    ],
)
def test_unreadable_policies_fail_closed(bad: Obj, field: str, expected: str) -> None:
    assert decide([bad], {"path": "/x"}) == expected
    assert any(field in text and "fails closed" in text for text in problems_text(translate(bad)))
