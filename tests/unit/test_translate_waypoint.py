"""translate_waypoint: which Services a waypoint serves, its virtual hosts, rule precedence, problems."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.translate.l7 import CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, ROUTE_TYPE_URL
from istiod_lite.translate.l7.routes import service_domains
from istiod_lite.translate.services import parse_service
from istiod_lite.view import parse_object
from tests.unit.l7_world import (
    REVIEWS,
    SUBSETS,
    backend,
    destination_rule,
    gateway,
    http_route,
    problems_text,
    routes_of,
    translate,
    virtual_service,
)
from tests.unit.test_translate_scenarios import service

RATINGS = "ratings.demo.svc.cluster.local"
Obj = dict[str, Any]


def vhost_names(*extra: Obj, **kwargs: Any) -> set[str]:
    config = translate(*extra, **kwargs)
    assert config.route_configuration is not None
    return {v.name for v in config.route_configuration.virtual_hosts}


def reviews_service(**labels: str) -> Obj:
    obj = service("reviews", ip="10.96.0.20", ports=[{"name": "http", "port": 9080, "targetPort": 9080}])
    obj["metadata"]["labels"] = labels
    return obj


@pytest.mark.parametrize(
    ("extra", "use_waypoint", "expected"),
    [
        pytest.param([], "waypoint", {f"{REVIEWS}:9080", f"{RATINGS}:8080"}, id="namespace-label"),
        pytest.param([], None, set(), id="nothing-enrolled"),
        pytest.param([], "other-waypoint", set(), id="namespace-uses-another-waypoint"),
        pytest.param(
            [reviews_service(**{"istio.io/use-waypoint": "none"})],
            "waypoint",
            {f"{RATINGS}:8080"},
            id="service-opts-out",
        ),
        pytest.param(
            [reviews_service(**{"istio.io/use-waypoint": "waypoint"})],
            None,
            {f"{REVIEWS}:9080"},
            id="service-label",
        ),
        pytest.param(
            [
                reviews_service(
                    **{"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "infra"}
                )
            ],
            None,
            set(),
            id="service-uses-a-waypoint-in-another-namespace",
        ),
        pytest.param(
            [
                reviews_service(
                    **{"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "demo"}
                )
            ],
            None,
            {f"{REVIEWS}:9080"},
            id="use-waypoint-namespace-is-its-own",
        ),
        pytest.param(
            [gateway(**{"istio.io/waypoint-for": "workload"})], "waypoint", set(), id="waypoint-for-workload"
        ),
        pytest.param(
            [gateway(**{"istio.io/waypoint-for": "all"})],
            "waypoint",
            {f"{REVIEWS}:9080", f"{RATINGS}:8080"},
            id="waypoint-for-all",
        ),
        pytest.param(
            [gateway(**{"istio.io/waypoint-for": "none"})], "waypoint", set(), id="waypoint-for-none"
        ),
    ],
)
def test_which_services_use_the_waypoint(
    extra: list[Obj], use_waypoint: str | None, expected: set[str]
) -> None:
    assert vhost_names(*extra, use_waypoint=use_waypoint) == expected


def test_a_gateway_of_another_class_is_a_problem_and_gets_nothing() -> None:
    config = translate(gateway("ingress", cls="istio"), gw=("demo", "ingress"))
    assert config.resources == {} and config.route_configuration is None
    assert problems_text(config) == [
        "Gateway demo/ingress: spec.gatewayClassName: gatewayClassName 'istio' is not 'istio-waypoint';"
        " the Gateway is not a waypoint"
    ]


def test_an_istio_networking_gateway_is_not_a_waypoint() -> None:
    istio_gateway = gateway("waypoint")
    istio_gateway["apiVersion"] = "networking.istio.io/v1"
    config = translate(istio_gateway)
    assert config.resources == {} and "not gateway.networking.k8s.io/v1" in problems_text(config)[0]


def test_an_unknown_waypoint_for_is_reported_and_read_as_service() -> None:
    config = translate(gateway(**{"istio.io/waypoint-for": "everything"}))
    assert config.services == (RATINGS, REVIEWS)
    assert "istio.io/waypoint-for must be service, workload, all or none" in problems_text(config)[0]


@pytest.mark.parametrize(
    ("ports", "port", "waypoint_ns", "expected"),
    [
        pytest.param(
            [{"name": "http", "port": 9080}],
            9080,
            "demo",
            [
                "reviews.demo.svc.cluster.local:9080",
                "reviews.demo.svc:9080",
                "reviews.demo:9080",
                "reviews:9080",
                "10.96.0.20:9080",
                "reviews.demo.svc.cluster.local",
                "reviews.demo.svc",
                "reviews.demo",
                "reviews",
                "10.96.0.20",
            ],
            id="single-port-also-takes-the-names-without-port",
        ),
        pytest.param(
            [{"name": "http", "port": 9080}],
            9080,
            "infra",
            [
                "reviews.demo.svc.cluster.local:9080",
                "reviews.demo.svc:9080",
                "reviews.demo:9080",
                "10.96.0.20:9080",
                "reviews.demo.svc.cluster.local",
                "reviews.demo.svc",
                "reviews.demo",
                "10.96.0.20",
            ],
            id="no-bare-name-from-another-namespace",
        ),
        pytest.param(
            [{"name": "http-a", "port": 9090}, {"name": "http-b", "port": 80}],
            9090,
            "demo",
            [
                "reviews.demo.svc.cluster.local:9090",
                "reviews.demo.svc:9090",
                "reviews.demo:9090",
                "reviews:9090",
                "10.96.0.20:9090",
            ],
            id="port-80-takes-the-names-without-port",
        ),
        pytest.param(
            [{"name": "tcp-db", "port": 5432}, {"name": "web", "port": 8080}, {"name": "http", "port": 9000}],
            8080,
            "demo",
            [
                "reviews.demo.svc.cluster.local:8080",
                "reviews.demo.svc:8080",
                "reviews.demo:8080",
                "reviews:8080",
                "10.96.0.20:8080",
                "reviews.demo.svc.cluster.local",
                "reviews.demo.svc",
                "reviews.demo",
                "reviews",
                "10.96.0.20",
            ],
            id="else-the-first-http-port",
        ),
    ],
)
def test_virtual_host_domains(ports: list[Obj], port: int, waypoint_ns: str, expected: list[str]) -> None:
    info = parse_service(
        parse_object(service("reviews", ip="10.96.0.20", ports=ports)), cluster_domain="cluster.local"
    )
    assert info is not None
    assert service_domains(info, port, waypoint_namespace=waypoint_ns) == expected


def test_ipv6_cluster_ips_are_bracketed() -> None:
    info = parse_service(
        parse_object(service("r", ip="fd00::20", ports=[{"name": "http", "port": 80}])),
        cluster_domain="cluster.local",
    )
    assert info is not None
    assert "[fd00::20]:80" in service_domains(info, 80, waypoint_namespace="demo")


def test_without_routes_everything_goes_to_the_service_with_istio_defaults() -> None:
    config = translate()
    assert config.route_configuration is not None
    assert config.route_configuration.name == "demo/waypoint"
    assert config.route_configuration.validate_clusters.value is False
    (route,) = routes_of(config)
    assert route == {
        "name": "default",
        "match": {"prefix": "/"},
        "route": {
            "cluster": f"inbound-vip|9080|http|{REVIEWS}",
            "timeout": "0s",
            "retry_policy": {
                "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                "num_retries": 2,
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                        },
                    }
                ],
                "host_selection_retry_max_attempts": "5",
            },
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
        },
        "decorator": {"operation": f"{REVIEWS}:9080/*"},
    }
    assert not config.problems


def test_resources_are_keyed_by_type_url_and_name() -> None:
    config = translate()
    assert set(config.resources) == {ROUTE_TYPE_URL, CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL}
    assert (
        set(config.resources[CLUSTER_TYPE_URL])
        == set(config.resources[ENDPOINT_TYPE_URL])
        == {
            f"inbound-vip|9080|http|{REVIEWS}",
            f"inbound-vip|8080|http|{RATINGS}",
        }
    )


CANARY_VS = virtual_service("reviews", [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}])
CANARY_ROUTE = http_route("reviews", [{"backendRefs": [backend(weight=1)]}])


def test_an_httproute_wins_over_a_virtualservice_for_the_same_service() -> None:
    ratings_vs = virtual_service(
        "ratings", [{"route": [{"destination": {"host": "ratings"}}], "timeout": "3s"}], hosts=["ratings"]
    )
    config = translate(CANARY_VS, ratings_vs, CANARY_ROUTE, destination_rule(subsets=SUBSETS))
    (route,) = routes_of(config)
    assert (
        route["name"] == "demo.reviews.0" and route["route"]["cluster"] == f"inbound-vip|9080|http|{REVIEWS}"
    )
    assert (
        routes_of(config, f"{RATINGS}:8080")[0]["route"]["timeout"] == "3s"
    )  # no HTTPRoute there: the VS applies
    assert problems_text(config) == [
        f"VirtualService demo/reviews: spec.hosts: HTTPRoute demo/reviews also routes {REVIEWS};"
        " HTTPRoutes win"
        " over VirtualServices for the same Service, so this VirtualService is ignored for it"
    ]


def test_an_httproute_for_another_port_leaves_the_virtualservice_in_charge() -> None:
    config = translate(
        CANARY_VS,
        http_route("reviews", [{"backendRefs": [backend()]}], port=9999),
        destination_rule(subsets=SUBSETS),
    )
    assert (
        routes_of(config)[0]["route"]["cluster"] == f"inbound-vip|9080|http/v2|{REVIEWS}"
        and not config.problems
    )


def test_two_virtualservices_for_one_host_are_concatenated_oldest_first_and_reported() -> None:
    first = virtual_service(
        "a",
        [{"match": [{"uri": {"prefix": "/a"}}], "route": [{"destination": {"host": "reviews"}}]}],
        created="2026-01-01T00:00:00Z",
    )
    second = virtual_service(
        "b",
        [{"route": [{"destination": {"host": "reviews"}}], "timeout": "2s"}],
        created="2026-01-02T00:00:00Z",
    )
    config = translate(second, first)
    assert [r["match"] for r in routes_of(config)] == [{"prefix": "/a"}, {"prefix": "/"}]
    assert problems_text(config) == [
        f"VirtualService demo/b: spec.hosts: VirtualService demo/a also routes {REVIEWS};"
        " their rules are used oldest"
        " first (Istio IST0109: one VirtualService per host)"
    ]


@pytest.mark.parametrize(
    ("vs", "applies"),
    [
        pytest.param(
            virtual_service("r", [{"route": [{"destination": {"host": "reviews"}}], "timeout": "9s"}]),
            True,
            id="short-host",
        ),
        pytest.param(
            virtual_service(
                "r", [{"route": [{"destination": {"host": REVIEWS}}], "timeout": "9s"}], hosts=[REVIEWS]
            ),
            True,
            id="fqdn",
        ),
        pytest.param(
            virtual_service(
                "r",
                [{"route": [{"destination": {"host": REVIEWS}}], "timeout": "9s"}],
                hosts=["*.demo.svc.cluster.local"],
            ),
            True,
            id="wildcard",
        ),
        pytest.param(
            virtual_service(
                "r",
                [{"route": [{"destination": {"host": REVIEWS}}], "timeout": "9s"}],
                hosts=["reviews"],
                ns="other",
            ),
            False,
            id="other-namespace",
        ),
        pytest.param(
            virtual_service(
                "r",
                [{"route": [{"destination": {"host": "reviews"}}], "timeout": "9s"}],
                gateways=["istio-system/ingress"],
            ),
            False,
            id="bound-to-a-gateway",
        ),
        pytest.param(
            virtual_service(
                "r", [{"route": [{"destination": {"host": "reviews"}}], "timeout": "9s"}], gateways=["mesh"]
            ),
            True,
            id="bound-to-the-mesh",
        ),
        pytest.param(
            virtual_service(
                "r", [{"route": [{"destination": {"host": "reviews"}}], "timeout": "9s"}], hosts=["ratings"]
            ),
            False,
            id="other-host",
        ),
    ],
)
def test_which_virtualservices_apply(vs: Obj, applies: bool) -> None:
    route = routes_of(translate(vs))[0]
    assert (route["route"]["timeout"] == "9s") is applies


def test_a_virtualservice_of_another_api_group_is_reported_and_ignored() -> None:
    vs = virtual_service(
        "r", [{"route": [{"destination": {"host": "reviews"}}], "timeout": "9s"}], api="example.com/v1"
    )
    config = translate(vs)
    assert routes_of(config)[0]["name"] == "default"
    assert problems_text(config) == [
        "VirtualService demo/r: apiVersion: 'example.com/v1' is not a networking.istio.io version; ignored"
    ]


@pytest.mark.parametrize(
    "api", ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"]
)
def test_every_served_virtualservice_version_is_read(api: str) -> None:
    vs = virtual_service("r", [{"route": [{"destination": {"host": "reviews"}}], "timeout": "9s"}], api=api)
    assert routes_of(translate(vs))[0]["route"]["timeout"] == "9s"


def test_bad_rules_are_reported_and_the_rest_still_translates() -> None:
    vs = virtual_service(
        "reviews",
        [
            {"match": [{"uri": {"regex": "/(?<=x)y"}}], "route": [{"destination": {"host": "reviews"}}]},
            {
                "match": [{"uri": {"prefix": "/v3"}}],
                "route": [{"destination": {"host": "reviews", "subset": "v3"}}],
            },
            {
                "match": [{"uri": {"prefix": "/zero"}}],
                "route": [
                    {"destination": {"host": "reviews", "subset": "v1"}, "weight": 0},
                    {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0},
                ],
            },
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
        ],
    )
    config = translate(vs, destination_rule(subsets=SUBSETS))
    routes = routes_of(config)
    assert [(r["match"], r.get("route", {}).get("cluster"), r.get("direct_response")) for r in routes] == [
        ({"prefix": "/v3"}, f"inbound-vip|9080|http/v3|{REVIEWS}", None),
        ({"prefix": "/zero"}, None, {"status": 500}),
        ({"prefix": "/"}, f"inbound-vip|9080|http/v1|{REVIEWS}", None),
    ]
    assert (
        f"inbound-vip|9080|http/v3|{REVIEWS}" not in config.resources[CLUSTER_TYPE_URL]
    )  # a missing cluster: 503
    text = problems_text(config)
    assert len(text) == 3
    assert text[0].startswith(
        "VirtualService demo/reviews: spec.http[0].match[0].uri.regex: '/(?<=x)y' is not a valid RE2"
    )
    assert text[0].endswith("; the rule is skipped")
    assert text[1] == (
        "VirtualService demo/reviews: spec.http[1].route[0].destination: subset 'v3' of"
        " reviews.demo.svc.cluster.local is not defined (DestinationRule demo/reviews for that host"
        " defines v1, v2); requests routed to it fail with"
        " 503 until it is"
    )
    assert (
        text[2] == "VirtualService demo/reviews: spec.http[2].route: the destination weights sum to 0;"
        " requests get 500"
    )


def test_problems_are_listed_once_even_when_a_rule_is_read_for_several_ports() -> None:
    two_ports = service(
        "reviews", ip="10.96.0.20", ports=[{"name": "http", "port": 9080}, {"name": "http-b", "port": 9081}]
    )
    vs = virtual_service(
        "reviews", [{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"host": "reviews"}}]}]
    )
    config = translate(two_ports, vs)
    assert len(config.problems) == 1


def test_translation_is_deterministic() -> None:
    objects = (
        CANARY_VS,
        destination_rule(subsets=SUBSETS),
        http_route("ratings", [{"backendRefs": [backend("ratings", 8080)]}], parent="ratings"),
    )
    first, second = translate(*objects), translate(*reversed(objects))
    assert first.resources == second.resources and first.problems == second.problems


def test_the_waypoint_does_not_route_for_its_own_service() -> None:
    own = service(
        "waypoint", ip="10.96.0.99", ports=[{"name": "mesh", "port": 15008, "appProtocol": "hbone"}]
    )
    own["metadata"]["labels"] = {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    assert vhost_names(own) == {f"{REVIEWS}:9080", f"{RATINGS}:8080"}
