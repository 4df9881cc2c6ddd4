"""Objects for waypoint translation tests: a namespace with a waypoint, Services, pods, L7 config."""

from __future__ import annotations

from typing import Any

from istiod_lite.translate.l7 import WaypointConfig, translate_waypoint
from istiod_lite.view import view_from_objects
from tests.unit.test_translate_scenarios import endpoint_slice, namespace, pod, service

Obj = dict[str, Any]
NETWORKING = "networking.istio.io/v1"
GATEWAY_API = "gateway.networking.k8s.io/v1"
REVIEWS = "reviews.demo.svc.cluster.local"


def gateway(name: str = "waypoint", ns: str = "demo", *, cls: str = "istio-waypoint", **labels: str) -> Obj:
    meta: Obj = {"name": name, "namespace": ns, "labels": dict(labels)}
    spec = {"gatewayClassName": cls, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    return {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": meta, "spec": spec}


def virtual_service(
    name: str, http: list[Obj], *, hosts: list[str] | None = None, ns: str = "demo", **extra: Any
) -> Obj:
    api = extra.pop("api", NETWORKING)
    meta: Obj = {
        "name": name,
        "namespace": ns,
        "creationTimestamp": extra.pop("created", "2026-01-01T00:00:00Z"),
    }
    spec = {"hosts": hosts or ["reviews"], "http": http, **extra}
    return {"apiVersion": api, "kind": "VirtualService", "metadata": meta, "spec": spec}


def destination_rule(name: str = "reviews", *, host: str = "reviews", ns: str = "demo", **spec: Any) -> Obj:
    meta = {"name": name, "namespace": ns}
    return {
        "apiVersion": NETWORKING,
        "kind": "DestinationRule",
        "metadata": meta,
        "spec": {"host": host, **spec},
    }


SUBSETS = [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]


def http_route(
    name: str,
    rules: list[Obj],
    *,
    parent: str = "reviews",
    ns: str = "demo",
    port: int | None = None,
    created: str = "",
) -> Obj:
    ref: Obj = {"group": "", "kind": "Service", "name": parent}
    if port is not None:
        ref["port"] = port
    meta: Obj = {"name": name, "namespace": ns, "creationTimestamp": created or "2026-01-01T00:00:00Z"}
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": meta,
        "spec": {"parentRefs": [ref], "rules": rules},
    }


def backend(name: str = "reviews", port: int = 9080, weight: int | None = None) -> Obj:
    ref: Obj = {"name": name, "port": port}
    if weight is not None:
        ref["weight"] = weight
    return ref


def world(*extra: Obj, use_waypoint: str | None = "waypoint") -> list[Obj]:
    """Namespace ``demo`` (using the waypoint), Services reviews (9080) and ratings, their pods."""
    labels = {"istio.io/use-waypoint": use_waypoint} if use_waypoint else {}
    return [
        namespace("demo", labels),
        gateway(),
        service("reviews", ip="10.96.0.20", ports=[{"name": "http", "port": 9080, "targetPort": 9080}]),
        service("ratings", ip="10.96.0.30", ports=[{"name": "http-api", "port": 8080, "targetPort": "api"}]),
        pod("reviews-v1", ip="10.244.1.11", labels={"app": "reviews", "version": "v1"}),
        pod("reviews-v2", ip="10.244.1.12", labels={"app": "reviews", "version": "v2"}),
        pod("ratings-1", ip="10.244.2.21", labels={"app": "ratings"}, ports={"api": 9090}, node="node2"),
        endpoint_slice(
            "reviews", endpoints=[("reviews-v1", "10.244.1.11", True), ("reviews-v2", "10.244.1.12", True)]
        ),
        endpoint_slice("ratings", endpoints=[("ratings-1", "10.244.2.21", True)]),
        *extra,
    ]


def translate(*extra: Obj, gw: tuple[str, str] = ("demo", "waypoint"), **kwargs: Any) -> WaypointConfig:
    """Translates the waypoint ``gw`` of ``world(*extra)``."""
    objects = world(*extra, **kwargs)
    view = view_from_objects(objects)
    found = view.gateways.get(gw)
    assert found is not None, f"no Gateway {gw}"
    return translate_waypoint(view, found)


def as_dict(message: Any) -> dict[str, Any]:
    """A message as Envoy's JSON (proto field names)."""
    from google.protobuf import json_format  # noqa: PLC0415 - test helper only

    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def contains(actual: Any, expected: Any, path: str = "") -> None:
    """Fails unless every key of ``expected`` is in ``actual`` with a value that contains the expected one."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected a mapping, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} is missing in {actual!r}"
            contains(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (
            f"{path}: {actual!r} != {expected!r}"
        )
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            contains(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def routes_of(config: WaypointConfig, host: str = f"{REVIEWS}:9080") -> list[dict[str, Any]]:
    """The routes of one virtual host, as dicts."""
    assert config.route_configuration is not None
    for vhost in config.route_configuration.virtual_hosts:
        if vhost.name == host:
            return [as_dict(r) for r in vhost.routes]
    raise AssertionError(f"no virtual host {host}")


def problems_text(config: WaypointConfig) -> list[str]:
    """The problems as strings (kind ns/name: field: message)."""
    return [str(p) for p in config.problems]


# One waypoint config with every feature the translation emits (Envoy validates it; fuzzing mutates it).
EVERYTHING_VS = virtual_service(
    "reviews",
    [
        {
            "name": "canary",
            "match": [
                {"headers": {"x-canary-test": {"exact": "true"}}, "uri": {"prefix": "/api"}},
                {
                    "uri": {"regex": "/v[0-9]+/.*"},
                    "queryParams": {"debug": {"regex": "*"}},
                    "method": {"exact": "GET"},
                },
                {
                    "withoutHeaders": {"x-user": {"prefix": "bot"}},
                    "ignoreUriCase": True,
                    "uri": {"exact": "/Exact"},
                },
            ],
            "route": [
                {
                    "destination": {"host": "reviews", "subset": "v2"},
                    "headers": {"request": {"set": {"x-v": "2"}}},
                }
            ],
            "headers": {
                "request": {"add": {"x-a": "1"}, "remove": ["x-b"]},
                "response": {"set": {"x-c": "3"}},
            },
            "fault": {
                "delay": {"fixedDelay": "2s", "percentage": {"value": 100}},
                "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 0.5}},
            },
            "retries": {
                "attempts": 3,
                "perTryTimeout": "500ms",
                "retryOn": "gateway-error,connect-failure,503",
            },
            "timeout": "1s",
            "mirror": {"host": "ratings"},
            "mirrorPercentage": {"value": 25.5},
        },
        {
            "match": [{"uri": {"prefix": "/old"}}],
            "redirect": {"uri": "/new", "authority": "x.example", "redirectCode": 308},
        },
        {
            "match": [{"uri": {"prefix": "/gone"}}],
            "directResponse": {"status": 410, "body": {"string": "gone"}},
        },
        {
            "match": [{"uri": {"prefix": "/rw"}}],
            "rewrite": {"uri": "/", "authority": "reviews.internal"},
            "route": [{"destination": {"host": "reviews", "subset": "v1"}}],
        },
        {
            "route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 95},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 5},
            ],
            "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 50}}},
        },
    ],
)
EVERYTHING_DR = destination_rule(
    subsets=SUBSETS,
    trafficPolicy={
        "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}},
        "connectionPool": {
            "tcp": {"maxConnections": 10, "connectTimeout": "2s"},
            "http": {
                "http1MaxPendingRequests": 5,
                "maxRetries": 2,
                "idleTimeout": "30s",
                "maxRequestsPerConnection": 100,
            },
        },
        "outlierDetection": {
            "consecutive5xxErrors": 3,
            "interval": "5s",
            "baseEjectionTime": "30s",
            "maxEjectionPercent": 50,
        },
    },
)
RATINGS_ROUTE = http_route(
    "ratings",
    [
        {
            "matches": [
                {
                    "path": {"type": "PathPrefix", "value": "/api/"},
                    "headers": [{"name": "x-env", "value": "canary"}],
                    "method": "POST",
                }
            ],
            "filters": [
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]},
                },
                {
                    "type": "ResponseHeaderModifier",
                    "responseHeaderModifier": {"add": [{"name": "x-c", "value": "2"}]},
                },
                {
                    "type": "URLRewrite",
                    "urlRewrite": {
                        "hostname": "r.internal",
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"},
                    },
                },
                {
                    "type": "RequestMirror",
                    "requestMirror": {"backendRef": {"name": "reviews", "port": 9080}, "percent": 10},
                },
            ],
            "backendRefs": [backend("ratings", 8080, 80), backend("reviews", 9080, 20)],
            "timeouts": {"request": "3s", "backendRequest": "1s"},
            "retry": {"attempts": 2, "codes": [503], "backoff": "50ms"},
        },
        {
            "matches": [{"path": {"type": "Exact", "value": "/moved"}}],
            "filters": [
                {
                    "type": "RequestRedirect",
                    "requestRedirect": {"scheme": "https", "port": 8443, "statusCode": 301},
                }
            ],
        },
        {
            "matches": [
                {
                    "path": {"type": "RegularExpression", "value": "/items/[0-9]+"},
                    "queryParams": [{"name": "q", "type": "RegularExpression", "value": "a.*"}],
                }
            ],
            "backendRefs": [backend("ratings", 8080)],
        },
        {"backendRefs": [backend("ratings", 8080)]},
    ],
    parent="ratings",
)
