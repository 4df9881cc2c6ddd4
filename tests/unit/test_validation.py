"""istiod_lite.validation: what Istio's schemas and webhook refuse is refused, naming the field and
what is allowed; what is valid Istio (even if not applied as written at L4) passes."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.validation import MESH_KINDS, validate_mesh_object

META = {"name": "x", "namespace": "demo"}


def obj(kind: str, spec: dict[str, Any], api: str = "") -> dict[str, Any]:
    version = api or next(v for v in sorted(MESH_KINDS[kind]) if v.endswith("/v1"))
    return {"apiVersion": version, "kind": kind, "metadata": META, "spec": spec}


WAYPOINT = {
    "gatewayClassName": "istio-waypoint",
    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
}
ROUTE = [
    {"destination": {"host": "server", "subset": "v1"}, "weight": 90},
    {"destination": {"host": "server"}, "weight": 10},
]

VALID = [
    obj("PeerAuthentication", {"mtls": {"mode": "STRICT"}}),
    obj(
        "PeerAuthentication",
        {"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}},
    ),
    obj("AuthorizationPolicy", {}),
    obj(
        "AuthorizationPolicy",
        {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["legacy"]}}]}]},
    ),
    obj("AuthorizationPolicy", {"rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/x/*"]}}]}]}),
    obj("AuthorizationPolicy", {"action": "AUDIT", "rules": [{}]}, "security.istio.io/v1beta1"),
    obj("VirtualService", {"hosts": ["server"], "http": [{"route": ROUTE}]}),
    obj(
        "VirtualService",
        {
            "hosts": ["server.demo.svc.cluster.local"],
            "http": [
                {
                    "match": [
                        {"headers": {"x-canary-test": {"exact": "true"}}, "uri": {"regex": "/v[0-9]+/.*"}}
                    ],
                    "route": [{"destination": {"host": "server", "subset": "v2", "port": {"number": 80}}}],
                    "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 50}}},
                    "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,connect-failure"},
                    "timeout": "1s",
                },
                {"redirect": {"uri": "/new", "redirectCode": 308}},
            ],
        },
    ),
    obj(
        "DestinationRule", {"host": "server", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}
    ),
    obj("DestinationRule", {"host": "server", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
    obj("Gateway", WAYPOINT),
    obj("Gateway", {"servers": [{"port": {"number": 80}}]}, "networking.istio.io/v1"),  # Istio's ingress kind
    obj(
        "HTTPRoute",
        {
            "parentRefs": [{"group": "", "kind": "Service", "name": "server", "port": 80}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                    "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": []}}],
                    "backendRefs": [{"name": "server-v1", "port": 80, "weight": 80}],
                }
            ],
        },
    ),
]


@pytest.mark.parametrize("valid", VALID, ids=lambda o: f"{o['kind']}-{sorted(o['spec'])}")
def test_valid_objects_pass(valid: dict[str, Any]) -> None:
    assert validate_mesh_object(valid) == []


INVALID = [
    (
        obj("PeerAuthentication", {"mtls": {"mode": "STRICTT"}}),
        [("spec.mtls.mode", "'STRICTT' is not one of UNSET, DISABLE, PERMISSIVE, STRICT")],
    ),
    (
        obj("AuthorizationPolicy", {"action": "ALOW"}),
        [("spec.action", "'ALOW' is not one of ALLOW, DENY, AUDIT, CUSTOM")],
    ),
    (
        obj(
            "AuthorizationPolicy",
            {"rules": [{"frm": []}, {"from": [{"source": {"ipBlocks": ["10.0.0.300/8"]}}]}]},
        ),
        [
            ("spec.rules[0].frm", "unknown field; known: from, to, when"),
            ("spec.rules[1].from[0].source.ipBlocks[0]", ""),
        ],
    ),
    (
        obj("AuthorizationPolicy", {"selektor": {}}),
        [("spec.selektor", "unknown field")],
    ),
    (
        obj("VirtualService", {"http": [{"route": ROUTE}]}),
        [("spec.hosts", "needs at least one host")],
    ),
    (
        obj(
            "VirtualService",
            {
                "hosts": ["server"],
                "http": [
                    {"match": [{"uri": {"regex": "(?=look)ahead"}}], "route": ROUTE},
                    {"route": []},
                    {"route": [{"destination": {"host": "server"}, "weight": -5}]},
                    {"route": ROUTE, "timeout": "soon"},
                    {"route": ROUTE, "fault": {"abort": {"httpStatus": 99}}},
                ],
            },
        ),
        [
            ("spec.http[0].match[0].uri.regex", "not a valid RE2 regular expression"),
            ("spec.http[1].route", "needs at least one destination"),
            ("spec.http[2].route[0].weight", "-5 is not a whole number >= 0"),
            ("spec.http[3].timeout", ""),
            ("spec.http[4].fault.abort.httpStatus", ""),
        ],
    ),
    (
        obj(
            "DestinationRule",
            {"host": "server", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBINN"}}},
        ),
        [("spec.trafficPolicy.loadBalancer.simple", "'ROUND_ROBINN' is not one of")],
    ),
    (
        obj("DestinationRule", {"host": "server", "subsets": [{"labels": {"version": "v1"}}]}),
        [("spec.subsets[0].name", "every subset needs a name")],
    ),
    (
        obj("DestinationRule", {"subsets": []}),
        [("spec.host", "is required")],
    ),
    (
        obj("Gateway", {"listeners": []}),
        [("spec.gatewayClassName", "is required")],
    ),
    (
        obj(
            "Gateway",
            {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 0, "protocol": "HBONE"}],
            },
        ),
        [("spec.listeners[0].port", "")],
    ),
    (
        obj(
            "HTTPRoute",
            {
                "rules": [
                    {"matches": [{"path": {"type": "Regexp", "value": "/x"}}]},
                    {"filters": [{"type": "CORS"}]},
                ]
            },
        ),
        [
            ("spec.rules[0].matches[0].path.type", "'Regexp' is not Exact, PathPrefix or RegularExpression"),
            ("spec.rules[1].filters[0].type", "filter 'CORS' is not supported"),
        ],
    ),
    (
        obj("Gateway", WAYPOINT, "gateway.networking.k8s.io/v9"),
        [("apiVersion", "'gateway.networking.k8s.io/v9' is not one of gateway.networking.k8s.io/v1")],
    ),
]


@pytest.mark.parametrize(
    ("invalid", "expected"), INVALID, ids=lambda x: x["kind"] if isinstance(x, dict) else ""
)
def test_invalid_objects_name_each_field_and_what_is_allowed(
    invalid: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    problems = validate_mesh_object(invalid)
    assert [p.field for p in problems] == [field for field, _ in expected]
    for problem, (_, text) in zip(problems, expected, strict=True):
        assert text in problem.problem
