"""DestinationRules -> Clusters, and ready pods -> ClusterLoadAssignments, for a waypoint."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.translate.l7 import CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, WaypointConfig
from tests.unit.l7_world import (
    REVIEWS,
    SUBSETS,
    as_dict,
    contains,
    destination_rule,
    problems_text,
    routes_of,
    translate,
    virtual_service,
)
from tests.unit.test_translate_scenarios import endpoint_slice, pod, service

Obj = dict[str, Any]
PLAIN = f"inbound-vip|9080|http|{REVIEWS}"
V1 = f"inbound-vip|9080|http/v1|{REVIEWS}"
V2 = f"inbound-vip|9080|http/v2|{REVIEWS}"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MAX = 4294967295


def cluster(config: WaypointConfig, name: str = PLAIN) -> dict[str, Any]:
    found = as_dict(config.resources[CLUSTER_TYPE_URL][name])
    found.setdefault("lb_policy", "ROUND_ROBIN")  # proto3 leaves the zero enum value out of JSON
    return found


def endpoints(config: WaypointConfig, name: str) -> list[tuple[str, int]]:
    assignment = as_dict(config.resources[ENDPOINT_TYPE_URL][name])
    return [
        (
            lb["endpoint"]["address"]["socket_address"]["address"],
            lb["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for group in assignment.get("endpoints", [])
        for lb in group["lb_endpoints"]
    ]


def test_a_default_cluster_is_eds_least_request_with_istio_limits() -> None:
    got = cluster(translate())
    assert got == {
        "name": PLAIN,
        "type": "EDS",
        "eds_cluster_config": {
            "eds_config": {"ads": {}, "resource_api_version": "V3"},
            "service_name": PLAIN,
        },
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": MAX, "max_pending_requests": MAX, "max_requests": MAX, "max_retries": MAX}
            ]
        },
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        "metadata": {
            "filter_metadata": {
                "istio": {
                    "services": [{"host": REVIEWS, "name": "reviews", "namespace": "demo"}],
                    "default_original_port": 9080.0,
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"loadBalancer": {"simple": "ROUND_ROBIN"}}, {"lb_policy": "ROUND_ROBIN"}),
        ({"loadBalancer": {"simple": "RANDOM"}}, {"lb_policy": "RANDOM"}),
        ({"loadBalancer": {"simple": "LEAST_CONN"}}, {"lb_policy": "LEAST_REQUEST"}),
        (
            {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": "1024"}},
        ),
        (
            {"loadBalancer": {"consistentHash": {"useSourceIp": True, "ringHash": {"minimumRingSize": 64}}}},
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": "64"}},
        ),
        (
            {"loadBalancer": {"consistentHash": {"httpQueryParameterName": "u", "maglev": {}}}},
            {"lb_policy": "MAGLEV"},
        ),
        (
            {
                "connectionPool": {
                    "tcp": {"maxConnections": 10, "connectTimeout": "2s"},
                    "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 20, "maxRetries": 3},
                }
            },
            {
                "connect_timeout": "2s",
                "circuit_breakers": {
                    "thresholds": [
                        {
                            "max_connections": 10,
                            "max_pending_requests": 1,
                            "max_requests": 20,
                            "max_retries": 3,
                        }
                    ]
                },
            },
        ),
        (
            {"connectionPool": {"http": {"maxRequestsPerConnection": 1, "idleTimeout": "30s"}}},
            {
                "typed_extension_protocol_options": {
                    HTTP_OPTIONS: {
                        "common_http_protocol_options": {
                            "idle_timeout": "30s",
                            "max_requests_per_connection": 1,
                        }
                    }
                }
            },
        ),
        (
            {
                "outlierDetection": {
                    "consecutive5xxErrors": 3,
                    "interval": "5s",
                    "baseEjectionTime": "1m",
                    "maxEjectionPercent": 50,
                }
            },
            {
                "outlier_detection": {
                    "consecutive_5xx": 3,
                    "enforcing_consecutive_5xx": 100,
                    "interval": "5s",
                    "base_ejection_time": "60s",
                    "max_ejection_percent": 50,
                    "enforcing_success_rate": 0,
                },
                "common_lb_config": {"healthy_panic_threshold": {}},
            },
        ),
        (
            {"outlierDetection": {"consecutiveGatewayErrors": 2, "minHealthPercent": 30}},
            {
                "outlier_detection": {
                    "consecutive_gateway_failure": 2,
                    "enforcing_consecutive_gateway_failure": 100,
                },
                "common_lb_config": {"healthy_panic_threshold": {"value": 30.0}},
            },
        ),
    ],
    ids=[
        "round-robin",
        "random",
        "least-conn",
        "hash-header",
        "hash-source-ip",
        "maglev",
        "limits",
        "per-connection",
        "outlier",
        "gateway-errors",
    ],
)
def test_traffic_policy(policy: Obj, expected: Obj) -> None:
    config = translate(destination_rule(trafficPolicy=policy))
    assert not config.problems, problems_text(config)
    contains(cluster(config), expected)


@pytest.mark.parametrize(
    ("chash", "hash_policy"),
    [
        ({"httpHeaderName": "X-User"}, {"header": {"header_name": "x-user"}}),
        (
            {"httpCookie": {"name": "session", "ttl": "1h", "path": "/"}},
            {"cookie": {"name": "session", "ttl": "3600s", "path": "/"}},
        ),
        ({"useSourceIp": True}, {"connection_properties": {"source_ip": True}}),
        ({"httpQueryParameterName": "user"}, {"query_parameter": {"name": "user"}}),
    ],
    ids=["header", "cookie", "source-ip", "query"],
)
def test_a_consistent_hash_puts_its_key_on_the_route_and_keeps_retries_on_the_host(
    chash: Obj, hash_policy: Obj
) -> None:
    config = translate(destination_rule(trafficPolicy={"loadBalancer": {"consistentHash": chash}}))
    route = routes_of(config)[0]["route"]
    assert route["hash_policy"] == [hash_policy]
    assert "retry_host_predicate" not in route["retry_policy"]


def test_subsets_get_clusters_with_their_pods_and_their_own_policy() -> None:
    subsets = [SUBSETS[0], {**SUBSETS[1], "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}]
    config = translate(
        destination_rule(subsets=subsets, trafficPolicy={"loadBalancer": {"simple": "ROUND_ROBIN"}})
    )
    assert cluster(config, V1)["lb_policy"] == "ROUND_ROBIN" and cluster(config, V2)["lb_policy"] == "RANDOM"
    assert endpoints(config, V1) == [("10.244.1.11", 9080)]
    assert endpoints(config, V2) == [("10.244.1.12", 9080)]
    assert endpoints(config, PLAIN) == [("10.244.1.11", 9080), ("10.244.1.12", 9080)]
    assert cluster(config, V2)["metadata"]["filter_metadata"]["istio"]["subset"] == "v2"


def test_port_level_settings_override_the_top_level() -> None:
    policy = {
        "loadBalancer": {"simple": "ROUND_ROBIN"},
        "portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}],
    }
    config = translate(destination_rule(trafficPolicy=policy))
    assert cluster(config)["lb_policy"] == "RANDOM"
    assert (
        cluster(config, "inbound-vip|8080|http|ratings.demo.svc.cluster.local")["lb_policy"]
        == "LEAST_REQUEST"
    )


def test_the_waypoints_namespace_rule_wins_over_the_services_and_the_roots() -> None:
    rules = [
        destination_rule(
            "root",
            host="reviews.demo.svc.cluster.local",
            ns="istio-system",
            trafficPolicy={"loadBalancer": {"simple": "RANDOM"}},
        ),
        destination_rule("own", trafficPolicy={"loadBalancer": {"simple": "ROUND_ROBIN"}}),
    ]
    assert cluster(translate(*rules))["lb_policy"] == "ROUND_ROBIN"
    assert cluster(translate(rules[0]))["lb_policy"] == "RANDOM"


@pytest.mark.parametrize(
    ("policy", "field", "says"),
    [
        ({"loadBalancer": {"simple": "FASTEST"}}, "spec.trafficPolicy.loadBalancer.simple", "is not one of"),
        (
            {"loadBalancer": {"simple": "PASSTHROUGH"}},
            "spec.trafficPolicy.loadBalancer.simple",
            "not supported by waypoints",
        ),
        (
            {"loadBalancer": {"consistentHash": {}}},
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "exactly one of",
        ),
        (
            {"connectionPool": {"tcp": {"maxConnections": -1}}},
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            ">= 0",
        ),
        (
            {"outlierDetection": {"interval": "often"}},
            "spec.trafficPolicy.outlierDetection.interval",
            "not a duration",
        ),
    ],
)
def test_a_bad_policy_field_is_a_problem_and_the_cluster_keeps_defaults(
    policy: Obj, field: str, says: str
) -> None:
    config = translate(destination_rule(trafficPolicy=policy))
    assert cluster(config)["lb_policy"] == "LEAST_REQUEST"
    problem = config.problems[0]
    assert (problem.kind, problem.name, problem.field) == ("DestinationRule", "reviews", field)
    assert says in problem.message and f"cluster {PLAIN} uses the default" in problem.message


def test_an_unreadable_destination_rule_is_ignored_with_a_problem() -> None:
    config = translate(destination_rule(subsets=[{"labels": {"version": "v1"}}]))
    assert set(config.resources[CLUSTER_TYPE_URL]) >= {PLAIN}
    assert (
        problems_text(config)[0]
        == "DestinationRule demo/reviews: spec.subsets[0].name: every subset needs a name;"
        " the DestinationRule is ignored"
    )


def test_named_target_ports_are_resolved_per_pod_and_not_ready_pods_are_left_out() -> None:
    late = pod("ratings-2", ip="10.244.2.22", labels={"app": "ratings"}, ports={"api": 9091}, ready=False)
    config = translate(
        late,
        endpoint_slice(
            "ratings", endpoints=[("ratings-1", "10.244.2.21", True), ("ratings-2", "10.244.2.22", False)]
        ),
    )
    assert endpoints(config, "inbound-vip|8080|http|ratings.demo.svc.cluster.local") == [
        ("10.244.2.21", 9090)
    ]
    meta = as_dict(config.resources[ENDPOINT_TYPE_URL][PLAIN])["endpoints"][0]["lb_endpoints"][0]["metadata"]
    assert meta == {
        "filter_metadata": {
            "istio": {"workload": "reviews-v1;demo;reviews;v1;Kubernetes"},
            "envoy.transport_socket_match": {"tunnel": "http"},  # enrolled: reached over HBONE
        }
    }


def test_a_pod_outside_the_mesh_is_reached_without_a_tunnel() -> None:
    legacy = pod("reviews-v1", ip="10.244.1.11", labels={"app": "reviews", "version": "v1"}, enrolled=False)
    config = translate(legacy)
    lb_endpoints = as_dict(config.resources[ENDPOINT_TYPE_URL][PLAIN])["endpoints"][0]["lb_endpoints"]
    tunnels = [lb["metadata"]["filter_metadata"].get("envoy.transport_socket_match") for lb in lb_endpoints]
    assert tunnels == [None, {"tunnel": "http"}]  # reviews-v1 (10.244.1.11) plain, reviews-v2 over HBONE


def test_a_service_without_ready_pods_has_an_empty_assignment() -> None:
    config = translate(endpoint_slice("reviews", endpoints=[]))
    assert as_dict(config.resources[ENDPOINT_TYPE_URL][PLAIN]) == {"cluster_name": PLAIN}


@pytest.mark.parametrize(
    ("port", "clusters", "vhost", "protocol_options"),
    [
        (
            {"name": "http", "port": 80},
            ["http"],
            True,
            {"explicit_http_config": {"http_protocol_options": {}}},
        ),
        (
            {"name": "grpc-api", "port": 80},
            ["http"],
            True,
            {"explicit_http_config": {"http2_protocol_options": {}}},
        ),
        (
            {"name": "api", "port": 80, "appProtocol": "kubernetes.io/h2c"},
            ["http"],
            True,
            {"explicit_http_config": {"http2_protocol_options": {}}},
        ),
        (
            {"name": "web", "port": 80},
            ["http", "tcp"],
            True,
            {"use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}},
        ),
        ({"name": "redis", "port": 6379}, ["tcp"], False, None),
        ({"name": "api", "port": 443, "appProtocol": "https"}, ["tcp"], False, None),
        ({"name": "dns", "port": 53, "protocol": "UDP"}, [], False, None),
    ],
    ids=["http", "grpc-name", "h2c-app-protocol", "unknown-both", "redis-tcp", "https-tcp", "udp-none"],
)
def test_port_protocols_decide_clusters_virtual_hosts_and_upstream_http(
    port: Obj, clusters: list[str], vhost: bool, protocol_options: Obj | None
) -> None:
    config = translate(service("reviews", ip="10.96.0.20", ports=[port]))
    names = {n for n in config.resources[CLUSTER_TYPE_URL] if n.endswith(REVIEWS)}
    assert names == {f"inbound-vip|{port['port']}|{kind}|{REVIEWS}" for kind in clusters}
    assert config.route_configuration is not None
    assert any(v.name.startswith(REVIEWS) for v in config.route_configuration.virtual_hosts) is vhost
    if protocol_options is not None:
        contains(
            cluster(config, f"inbound-vip|{port['port']}|http|{REVIEWS}")["typed_extension_protocol_options"][
                HTTP_OPTIONS
            ],
            protocol_options,
        )


def test_clusters_only_for_what_routes_use_outside_the_waypoint() -> None:
    details = service("details", "other", ip="10.96.0.40", ports=[{"name": "http", "port": 9080}])
    config = translate(
        details,
        virtual_service(
            "reviews", [{"route": [{"destination": {"host": "details.other.svc.cluster.local"}}]}]
        ),
    )
    outside = [n for n in config.resources[CLUSTER_TYPE_URL] if not n.startswith("inbound-vip|")]
    assert outside == ["outbound|9080||details.other.svc.cluster.local"]
