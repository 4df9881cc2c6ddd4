"""HTTPRoutes (GAMMA) -> Envoy routes: matches, filters, weights, timeouts and the precedence order."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.l7_world import REVIEWS, backend, contains, http_route, problems_text, routes_of, translate

Obj = dict[str, Any]
CLUSTER = f"inbound-vip|9080|http|{REVIEWS}"
RATINGS = "inbound-vip|8080|http|ratings.demo.svc.cluster.local"
TO_REVIEWS = [backend()]


def first_route(rule: Obj) -> dict[str, Any]:
    config = translate(http_route("reviews", [rule]))
    assert not config.problems, problems_text(config)
    return routes_of(config)[0]


def path(kind: str, value: str) -> Obj:
    return {"path": {"type": kind, "value": value}}


CASES: list[tuple[str, Obj, Obj]] = [
    (
        "no-matches-is-everything",
        {"backendRefs": TO_REVIEWS},
        {"name": "demo.reviews.0", "match": {"prefix": "/"}},
    ),
    ("rule-name", {"name": "canary", "backendRefs": TO_REVIEWS}, {"name": "canary"}),
    (
        "prefix-matches-whole-segments",
        {"matches": [path("PathPrefix", "/api/")], "backendRefs": TO_REVIEWS},
        {"match": {"path_separated_prefix": "/api"}},
    ),
    (
        "prefix-slash",
        {"matches": [path("PathPrefix", "/")], "backendRefs": TO_REVIEWS},
        {"match": {"prefix": "/"}},
    ),
    ("exact", {"matches": [path("Exact", "/ping")], "backendRefs": TO_REVIEWS}, {"match": {"path": "/ping"}}),
    (
        "regex",
        {"matches": [path("RegularExpression", "/items/[0-9]+")], "backendRefs": TO_REVIEWS},
        {"match": {"safe_regex": {"regex": "/items/[0-9]+"}}},
    ),
    (
        "headers-sorted",
        {
            "matches": [
                {
                    "headers": [
                        {"name": "X-B", "value": "2"},
                        {"name": "x-a", "type": "RegularExpression", "value": "v.*"},
                    ]
                }
            ],
            "backendRefs": TO_REVIEWS,
        },
        {
            "match": {
                "headers": [
                    {"name": "x-a", "string_match": {"safe_regex": {"regex": "v.*"}}},
                    {"name": "x-b", "string_match": {"exact": "2"}},
                ]
            }
        },
    ),
    (
        "method",
        {"matches": [{"method": "PUT"}], "backendRefs": TO_REVIEWS},
        {"match": {"headers": [{"name": ":method", "string_match": {"exact": "PUT"}}]}},
    ),
    (
        "query-params",
        {"matches": [{"queryParams": [{"name": "v", "value": "2"}]}], "backendRefs": TO_REVIEWS},
        {"match": {"query_parameters": [{"name": "v", "string_match": {"exact": "2"}}]}},
    ),
    (
        "one-backend-is-a-cluster",
        {"backendRefs": TO_REVIEWS},
        {
            "route": {
                "cluster": CLUSTER,
                "cluster_not_found_response_code": "INTERNAL_SERVER_ERROR",
                "timeout": "0s",
            }
        },
    ),
    (
        "weights",
        {"backendRefs": [backend("reviews", 9080, 80), backend("ratings", 8080, 20)]},
        {
            "route": {
                "weighted_clusters": {
                    "clusters": [{"name": CLUSTER, "weight": 80}, {"name": RATINGS, "weight": 20}]
                }
            }
        },
    ),
    (
        "default-weight-is-1",
        {"backendRefs": [backend("reviews", 9080), backend("ratings", 8080)]},
        {
            "route": {
                "weighted_clusters": {
                    "clusters": [{"name": CLUSTER, "weight": 1}, {"name": RATINGS, "weight": 1}]
                }
            }
        },
    ),
    (
        "weight-0-dropped",
        {"backendRefs": [backend("reviews", 9080, 0), backend("ratings", 8080, 3)]},
        {"route": {"cluster": RATINGS}},
    ),
    ("default-retries", {"backendRefs": TO_REVIEWS}, {"route": {"retry_policy": {"num_retries": 2}}}),
    (
        "retry",
        {"backendRefs": TO_REVIEWS, "retry": {"attempts": 3, "codes": [503, 502], "backoff": "100ms"}},
        {
            "route": {
                "retry_policy": {
                    "num_retries": 3,
                    "retriable_status_codes": [503, 502],
                    "retry_back_off": {"base_interval": "0.100s"},
                    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                }
            }
        },
    ),
    (
        "retry-backend-timeout-is-per-try",
        {"backendRefs": TO_REVIEWS, "retry": {}, "timeouts": {"request": "10s", "backendRequest": "1s"}},
        {"route": {"timeout": "10s", "retry_policy": {"num_retries": 2, "per_try_timeout": "1s"}}},
    ),
    (
        "request-timeout",
        {"backendRefs": TO_REVIEWS, "timeouts": {"request": "10s"}},
        {"route": {"timeout": "10s", "max_stream_duration": {"grpc_timeout_header_max": "10s"}}},
    ),
    (
        "backend-timeout-caps-it",
        {"backendRefs": TO_REVIEWS, "timeouts": {"request": "10s", "backendRequest": "500ms"}},
        {"route": {"timeout": "0.500s"}},
    ),
    (
        "request-header-modifier",
        {
            "backendRefs": TO_REVIEWS,
            "filters": [
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {
                        "set": [{"name": "x-s", "value": "1"}],
                        "add": [{"name": "x-a", "value": "2"}],
                        "remove": ["x-r"],
                    },
                }
            ],
        },
        {
            "request_headers_to_add": [
                {"header": {"key": "x-s", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                {"header": {"key": "x-a", "value": "2"}},
            ],
            "request_headers_to_remove": ["x-r"],
        },
    ),
    (
        "response-header-modifier",
        {
            "backendRefs": TO_REVIEWS,
            "filters": [
                {
                    "type": "ResponseHeaderModifier",
                    "responseHeaderModifier": {"set": [{"name": "x-s", "value": "1"}]},
                }
            ],
        },
        {
            "response_headers_to_add": [
                {"header": {"key": "x-s", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            ]
        },
    ),
    (
        "rewrite-hostname-and-full-path",
        {
            "backendRefs": TO_REVIEWS,
            "filters": [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {
                        "hostname": "r.internal",
                        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/fixed"},
                    },
                }
            ],
        },
        {
            "route": {
                "host_rewrite_literal": "r.internal",
                "regex_rewrite": {"pattern": {"regex": "/.*"}, "substitution": "/fixed"},
            }
        },
    ),
    (
        "rewrite-prefix",
        {
            "matches": [path("PathPrefix", "/old")],
            "backendRefs": TO_REVIEWS,
            "filters": [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}},
                }
            ],
        },
        {"route": {"prefix_rewrite": "/new"}},
    ),
    (
        "rewrite-prefix-to-slash-keeps-one-slash",
        {
            "matches": [path("PathPrefix", "/old/")],
            "backendRefs": TO_REVIEWS,
            "filters": [
                {
                    "type": "URLRewrite",
                    "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
                }
            ],
        },
        {"route": {"regex_rewrite": {"pattern": {"regex": "^/old/*"}, "substitution": "/"}}},
    ),
    (
        "redirect-defaults-to-302",
        {
            "filters": [
                {"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "hostname": "x.example"}}
            ]
        },
        {"redirect": {"scheme_redirect": "https", "host_redirect": "x.example", "response_code": "FOUND"}},
    ),
    (
        "redirect-301-port-full-path",
        {
            "filters": [
                {
                    "type": "RequestRedirect",
                    "requestRedirect": {
                        "statusCode": 301,
                        "port": 8443,
                        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"},
                    },
                }
            ]
        },
        {"redirect": {"port_redirect": 8443, "path_redirect": "/x"}},
    ),
    (
        "mirror",
        {
            "backendRefs": TO_REVIEWS,
            "filters": [
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "ratings", "port": 8080}}}
            ],
        },
        {
            "route": {
                "request_mirror_policies": [
                    {
                        "cluster": RATINGS,
                        "runtime_fraction": {
                            "default_value": {"numerator": 1000000, "denominator": "MILLION"}
                        },
                    }
                ]
            }
        },
    ),
    (
        "mirror-percent",
        {
            "backendRefs": TO_REVIEWS,
            "filters": [
                {
                    "type": "RequestMirror",
                    "requestMirror": {"backendRef": {"name": "ratings", "port": 8080}, "percent": 25},
                }
            ],
        },
        {
            "route": {
                "request_mirror_policies": [{"runtime_fraction": {"default_value": {"numerator": 250000}}}]
            }
        },
    ),
    (
        "mirror-fraction",
        {
            "backendRefs": TO_REVIEWS,
            "filters": [
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": {"name": "ratings", "port": 8080},
                        "fraction": {"numerator": 1, "denominator": 8},
                    },
                }
            ],
        },
        {
            "route": {
                "request_mirror_policies": [{"runtime_fraction": {"default_value": {"numerator": 125000}}}]
            }
        },
    ),
]


@pytest.mark.parametrize(("rule", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_translation(rule: Obj, expected: Obj) -> None:
    contains(first_route(rule), expected)


def test_routes_follow_the_gateway_api_precedence() -> None:
    older = http_route(
        "older",
        [
            {"name": "catch-all", "backendRefs": TO_REVIEWS},
            {"name": "regex", "matches": [path("RegularExpression", "/.*")], "backendRefs": TO_REVIEWS},
            {"name": "short", "matches": [path("PathPrefix", "/a")], "backendRefs": TO_REVIEWS},
            {
                "name": "short-with-method",
                "matches": [{**path("PathPrefix", "/a"), "method": "GET"}],
                "backendRefs": TO_REVIEWS,
            },
            {
                "name": "two-headers",
                "matches": [
                    {
                        **path("PathPrefix", "/a"),
                        "headers": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}],
                    }
                ],
                "backendRefs": TO_REVIEWS,
            },
            {
                "name": "one-header",
                "matches": [{**path("PathPrefix", "/a"), "headers": [{"name": "a", "value": "1"}]}],
                "backendRefs": TO_REVIEWS,
            },
            {
                "name": "query",
                "matches": [{**path("PathPrefix", "/a"), "queryParams": [{"name": "q", "value": "1"}]}],
                "backendRefs": TO_REVIEWS,
            },
        ],
        created="2026-01-01T00:00:00Z",
    )
    newer = http_route(
        "newer",
        [
            {"name": "exact", "matches": [path("Exact", "/a")], "backendRefs": TO_REVIEWS},
            {"name": "longer", "matches": [path("PathPrefix", "/a/b")], "backendRefs": TO_REVIEWS},
            {"name": "short-newer", "matches": [path("PathPrefix", "/a")], "backendRefs": TO_REVIEWS},
        ],
        created="2026-02-01T00:00:00Z",
    )
    names = [r["name"] for r in routes_of(translate(newer, older))]
    assert names == [
        "exact",
        "longer",
        "short-with-method",
        "two-headers",
        "one-header",
        "query",
        "short",
        "short-newer",
        "regex",
        "catch-all",
    ]


def test_retry_attempts_0_means_no_retries() -> None:
    assert "retry_policy" not in first_route({"backendRefs": TO_REVIEWS, "retry": {"attempts": 0}})["route"]


def test_each_match_of_a_rule_is_its_own_route() -> None:
    rule = {"matches": [path("Exact", "/x"), path("PathPrefix", "/y")], "backendRefs": TO_REVIEWS}
    assert [r["match"] for r in routes_of(translate(http_route("reviews", [rule])))] == [
        {"path": "/x"},
        {"path_separated_prefix": "/y"},
    ]


@pytest.mark.parametrize(
    ("route", "attached"),
    [
        (http_route("r", [{"backendRefs": TO_REVIEWS, "timeouts": {"request": "7s"}}]), True),
        (http_route("r", [{"backendRefs": TO_REVIEWS, "timeouts": {"request": "7s"}}], port=9080), True),
        (http_route("r", [{"backendRefs": TO_REVIEWS, "timeouts": {"request": "7s"}}], port=1234), False),
        (
            http_route("r", [{"backendRefs": TO_REVIEWS, "timeouts": {"request": "7s"}}], parent="ratings"),
            False,
        ),
    ],
    ids=["service", "service-port", "other-port", "other-service"],
)
def test_parent_refs_attach_a_route_to_a_service_port(route: Obj, attached: bool) -> None:
    assert (routes_of(translate(route))[0]["route"]["timeout"] == "7s") is attached


def test_a_route_from_another_namespace_is_a_problem_and_not_applied() -> None:
    route = http_route("consumer", [{"backendRefs": TO_REVIEWS}], ns="client")
    route["spec"]["parentRefs"][0]["namespace"] = "demo"
    config = translate(route)
    assert routes_of(config)[0]["name"] == "default"
    assert "attaches to Service demo/reviews from another namespace" in problems_text(config)[0]


@pytest.mark.parametrize(
    ("rule", "field", "says"),
    [
        (
            {"matches": [path("RegularExpression", "/(a")], "backendRefs": TO_REVIEWS},
            "spec.rules[0].matches[0].path.value",
            "not a valid RE2",
        ),
        (
            {
                "matches": [{"headers": [{"name": "x", "type": "RegularExpression", "value": "[z-a]"}]}],
                "backendRefs": TO_REVIEWS,
            },
            "spec.rules[0].matches[0].headers[0].value",
            "not a valid RE2",
        ),
        (
            {"matches": [path("Suffix", "/x")], "backendRefs": TO_REVIEWS},
            "spec.rules[0].matches[0].path.type",
            "is not Exact",
        ),
        (
            {"filters": [{"type": "ExtensionRef"}], "backendRefs": TO_REVIEWS},
            "spec.rules[0].filters[0].type",
            "is not supported",
        ),
        ({"backendRefs": [{"name": "reviews"}]}, "spec.rules[0].backendRefs[0].port", "not a port number"),
        (
            {"backendRefs": [{"name": "reviews", "port": 9080, "weight": "heavy"}]},
            "spec.rules[0].backendRefs[0].weight",
            "whole number",
        ),
        (
            {"backendRefs": TO_REVIEWS, "timeouts": {"request": "forever"}},
            "spec.rules[0].timeouts.request",
            "not a duration",
        ),
        (
            {
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/x"}},
                    }
                ],
                "matches": [path("Exact", "/e")],
                "backendRefs": TO_REVIEWS,
            },
            "spec.rules[0].filters[0].urlRewrite.path",
            "needs a PathPrefix",
        ),
        (
            {"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 305}}]},
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "301",
        ),
    ],
)
def test_a_bad_rule_is_skipped_with_a_problem_naming_the_field(rule: Obj, field: str, says: str) -> None:
    config = translate(
        http_route("reviews", [rule, {"matches": [path("Exact", "/next")], "backendRefs": TO_REVIEWS}])
    )
    assert [r["match"] for r in routes_of(config)] == [{"path": "/next"}]
    (problem,) = config.problems
    assert (problem.kind, problem.name, problem.field) == ("HTTPRoute", "reviews", field)
    assert says in problem.message and problem.message.endswith("; the rule is skipped")


@pytest.mark.parametrize(
    ("backends", "says"),
    [
        (
            [backend("reviews", 9080, 0), backend("ratings", 8080, 0)],
            "the backendRefs weights sum to 0; requests get 500",
        ),
        ([], "the rule has no backendRefs; requests get 500"),
    ],
)
def test_no_live_backend_answers_500_and_is_reported(backends: list[Obj], says: str) -> None:
    config = translate(http_route("reviews", [{"backendRefs": backends}]))
    assert routes_of(config)[0]["direct_response"] == {"status": 500}
    assert problems_text(config) == [f"HTTPRoute demo/reviews: spec.rules[0].backendRefs: {says}"]


def test_an_unknown_backend_gets_its_share_of_500s() -> None:
    config = translate(
        http_route("reviews", [{"backendRefs": [backend("reviews", 9080, 90), backend("missing", 80, 10)]}])
    )
    route = routes_of(config)[0]["route"]
    assert route["cluster_not_found_response_code"] == "INTERNAL_SERVER_ERROR"
    assert route["weighted_clusters"]["clusters"][1] == {
        "name": "outbound|80||missing.demo.svc.cluster.local",
        "weight": 10,
    }
    assert problems_text(config) == [
        "HTTPRoute demo/reviews: spec.rules[0].backendRefs[1].name: no Service demo/missing;"
        " its share of requests gets 500"
    ]


def test_backend_filters_are_reported_as_unsupported() -> None:
    ref = {**backend(), "filters": [{"type": "RequestHeaderModifier"}]}
    config = translate(http_route("reviews", [{"backendRefs": [ref]}]))
    assert routes_of(config)[0]["route"]["cluster"] == CLUSTER
    assert "filters on a backendRef are not supported yet" in problems_text(config)[0]
