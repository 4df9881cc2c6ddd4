"""VirtualService rules -> Envoy routes, feature by feature (Istio's translation, route.go / retry.go)."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.translate.l7 import CLUSTER_TYPE_URL
from tests.unit.l7_world import (
    REVIEWS,
    SUBSETS,
    contains,
    destination_rule,
    problems_text,
    routes_of,
    translate,
    virtual_service,
)
from tests.unit.test_translate_scenarios import service

Obj = dict[str, Any]
V1 = f"inbound-vip|9080|http/v1|{REVIEWS}"
V2 = f"inbound-vip|9080|http/v2|{REVIEWS}"
TO_V1 = [{"destination": {"host": "reviews", "subset": "v1"}}]
FAULT = "envoy.filters.http.fault"
HTTP_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def first_route(*rules: Obj) -> dict[str, Any]:
    config = translate(virtual_service("reviews", list(rules)), destination_rule(subsets=SUBSETS))
    assert not config.problems, problems_text(config)
    return routes_of(config)[0]


CASES: list[tuple[str, Obj, Obj]] = [
    (
        "header-exact",
        {"match": [{"headers": {"X-Canary-Test": {"exact": "true"}}}], "route": TO_V1},
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": "x-canary-test", "string_match": {"exact": "true"}}],
            },
            "route": {"cluster": V1},
        },
    ),
    (
        "header-prefix-and-regex-sorted-by-name",
        {"match": [{"headers": {"b": {"regex": "v[0-9]"}, "a": {"prefix": "x"}}}], "route": TO_V1},
        {
            "match": {
                "headers": [
                    {"name": "a", "string_match": {"prefix": "x"}},
                    {"name": "b", "string_match": {"safe_regex": {"regex": "v[0-9]"}}},
                ]
            }
        },
    ),
    (
        "header-regex-star-is-present",
        {"match": [{"headers": {"x-user": {"regex": "*"}}}], "route": TO_V1},
        {"match": {"headers": [{"name": "x-user", "present_match": True}]}},
    ),
    (
        "without-headers-match-absent-too",
        {"match": [{"withoutHeaders": {"x-user": {"exact": "bot"}}}], "route": TO_V1},
        {
            "match": {
                "headers": [
                    {
                        "name": "x-user",
                        "string_match": {"exact": "bot"},
                        "invert_match": True,
                        "treat_missing_header_as_empty": True,
                    }
                ]
            }
        },
    ),
    ("uri-exact", {"match": [{"uri": {"exact": "/ping"}}], "route": TO_V1}, {"match": {"path": "/ping"}}),
    ("uri-prefix", {"match": [{"uri": {"prefix": "/api"}}], "route": TO_V1}, {"match": {"prefix": "/api"}}),
    (
        "uri-regex",
        {"match": [{"uri": {"regex": "/v[0-9]+/.*"}}], "route": TO_V1},
        {"match": {"safe_regex": {"regex": "/v[0-9]+/.*"}}},
    ),
    (
        "ignore-uri-case",
        {"match": [{"uri": {"prefix": "/API"}, "ignoreUriCase": True}], "route": TO_V1},
        {"match": {"prefix": "/API", "case_sensitive": False}},
    ),
    (
        "query-params",
        {"match": [{"queryParams": {"q": {"exact": "1"}, "debug": {}}}], "route": TO_V1},
        {
            "match": {
                "query_parameters": [
                    {"name": "debug", "present_match": True},
                    {"name": "q", "string_match": {"exact": "1"}},
                ]
            }
        },
    ),
    (
        "method-after-headers",
        {"match": [{"method": {"exact": "POST"}, "headers": {"z": {"exact": "1"}}}], "route": TO_V1},
        {
            "match": {
                "headers": [
                    {"name": "z", "string_match": {"exact": "1"}},
                    {"name": ":method", "string_match": {"exact": "POST"}},
                ]
            }
        },
    ),
    (
        "named-match",
        {"name": "canary", "match": [{"name": "api", "uri": {"prefix": "/api"}}], "route": TO_V1},
        {"name": "canary.api"},
    ),
    (
        "weights",
        {
            "route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 95},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 5},
            ]
        },
        {
            "route": {
                "weighted_clusters": {"clusters": [{"name": V1, "weight": 95}, {"name": V2, "weight": 5}]}
            }
        },
    ),
    (
        "weight-0-dropped",
        {
            "route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 100},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0},
            ]
        },
        {"route": {"cluster": V1}},
    ),
    (
        "destination-headers-on-weighted-cluster",
        {
            "route": [
                {
                    "destination": {"host": "reviews", "subset": "v1"},
                    "weight": 50,
                    "headers": {"request": {"set": {"x-v": "1"}}},
                },
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50},
            ]
        },
        {
            "route": {
                "weighted_clusters": {
                    "clusters": [
                        {
                            "name": V1,
                            "weight": 50,
                            "request_headers_to_add": [
                                {
                                    "header": {"key": "x-v", "value": "1"},
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                }
                            ],
                        },
                        {"name": V2, "weight": 50},
                    ]
                }
            }
        },
    ),
    (
        "abort-http",
        {"route": TO_V1, "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 50}}}},
        {
            "typed_per_filter_config": {
                FAULT: {
                    "@type": HTTP_FAULT,
                    "abort": {
                        "http_status": 503,
                        "percentage": {"numerator": 500000, "denominator": "MILLION"},
                    },
                }
            }
        },
    ),
    (
        "abort-grpc",
        {"route": TO_V1, "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}},
        {
            "typed_per_filter_config": {
                FAULT: {"abort": {"grpc_status": 14, "percentage": {"numerator": 1000000}}}
            }
        },
    ),
    (
        "abort-without-percentage-aborts-nothing",
        {"route": TO_V1, "fault": {"abort": {"httpStatus": 500}}},
        {
            "typed_per_filter_config": {
                FAULT: {"abort": {"http_status": 500, "percentage": {"denominator": "MILLION"}}}
            }
        },
    ),
    (
        "delay",
        {"route": TO_V1, "fault": {"delay": {"fixedDelay": "2s", "percentage": {"value": 100}}}},
        {
            "typed_per_filter_config": {
                FAULT: {
                    "delay": {
                        "fixed_delay": "2s",
                        "percentage": {"numerator": 1000000, "denominator": "MILLION"},
                    }
                }
            }
        },
    ),
    (
        "delay-deprecated-percent",
        {"route": TO_V1, "fault": {"delay": {"fixedDelay": "100ms", "percent": 10}}},
        {
            "typed_per_filter_config": {
                FAULT: {"delay": {"fixed_delay": "0.100s", "percentage": {"numerator": 10}}}
            }
        },
    ),
    (
        "retries",
        {
            "route": TO_V1,
            "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,gateway-error,503"},
        },
        {
            "route": {
                "retry_policy": {
                    "retry_on": "5xx,gateway-error,retriable-status-codes",
                    "num_retries": 3,
                    "per_try_timeout": "2s",
                    "retriable_status_codes": [503],
                }
            }
        },
    ),
    (
        "retries-keep-default-conditions",
        {"route": TO_V1, "retries": {"attempts": 5}},
        {
            "route": {
                "retry_policy": {
                    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                    "num_retries": 5,
                }
            }
        },
    ),
    (
        "retry-backoff",
        {"route": TO_V1, "retries": {"attempts": 1, "backoff": "50ms"}},
        {"route": {"retry_policy": {"retry_back_off": {"base_interval": "0.050s"}}}},
    ),
    (
        "timeout",
        {"route": TO_V1, "timeout": "1s"},
        {"route": {"timeout": "1s", "max_stream_duration": {"grpc_timeout_header_max": "1s"}}},
    ),
    (
        "rewrite",
        {"route": TO_V1, "rewrite": {"uri": "/v2/", "authority": "reviews.internal"}},
        {"route": {"prefix_rewrite": "/v2/", "host_rewrite_literal": "reviews.internal"}},
    ),
    (
        "regex-rewrite",
        {"route": TO_V1, "rewrite": {"uriRegexRewrite": {"match": "^/old/(.*)$", "rewrite": "/new/\\1"}}},
        {"route": {"regex_rewrite": {"pattern": {"regex": "^/old/(.*)$"}, "substitution": "/new/\\1"}}},
    ),
    (
        "redirect",
        {
            "redirect": {
                "uri": "/new",
                "authority": "example.com",
                "redirectCode": 302,
                "scheme": "https",
                "port": 8443,
            }
        },
        {
            "redirect": {
                "path_redirect": "/new",
                "host_redirect": "example.com",
                "response_code": "FOUND",
                "scheme_redirect": "https",
                "port_redirect": 8443,
            }
        },
    ),
    (
        "direct-response",
        {"directResponse": {"status": 418, "body": {"string": "teapot"}}},
        {"direct_response": {"status": 418, "body": {"inline_string": "teapot"}}},
    ),
    (
        "headers",
        {
            "route": TO_V1,
            "headers": {
                "request": {"set": {"x-b": "2", "x-a": "1"}, "add": {"x-c": "3"}, "remove": ["X-Drop"]},
                "response": {"set": {"x-r": "r"}, "remove": ["server"]},
            },
        },
        {
            "request_headers_to_add": [
                {"header": {"key": "x-a", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                {"header": {"key": "x-b", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                {"header": {"key": "x-c", "value": "3"}},
            ],
            "request_headers_to_remove": ["x-drop"],
            "response_headers_to_add": [
                {"header": {"key": "x-r", "value": "r"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            ],
            "response_headers_to_remove": ["server"],
        },
    ),
    (
        "host-header-set-is-a-host-rewrite",
        {"route": TO_V1, "headers": {"request": {"set": {"Host": "other.example"}}}},
        {"route": {"host_rewrite_literal": "other.example"}},
    ),
    (
        "mirror",
        {"route": TO_V1, "mirror": {"host": "reviews", "subset": "v2"}, "mirrorPercentage": {"value": 10}},
        {
            "route": {
                "request_mirror_policies": [
                    {
                        "cluster": V2,
                        "runtime_fraction": {
                            "default_value": {"numerator": 100000, "denominator": "MILLION"}
                        },
                        "trace_sampled": False,
                    }
                ]
            }
        },
    ),
    (
        "mirror-without-percentage-mirrors-all",
        {"route": TO_V1, "mirror": {"host": "reviews", "subset": "v2"}},
        {
            "route": {
                "request_mirror_policies": [
                    {"cluster": V2, "runtime_fraction": {"default_value": {"numerator": 1000000}}}
                ]
            }
        },
    ),
    (
        "mirrors",
        {
            "route": TO_V1,
            "mirrors": [{"destination": {"host": "reviews", "subset": "v2"}, "percentage": {"value": 5}}],
        },
        {
            "route": {
                "request_mirror_policies": [
                    {"cluster": V2, "runtime_fraction": {"default_value": {"numerator": 50000}}}
                ]
            }
        },
    ),
    (
        "destination-port-explicit",
        {"route": [{"destination": {"host": "reviews", "port": {"number": 9080}}}]},
        {"route": {"cluster": f"inbound-vip|9080|http|{REVIEWS}"}},
    ),
]


@pytest.mark.parametrize(("rule", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_translation(rule: Obj, expected: Obj) -> None:
    contains(first_route(rule), expected)


def test_a_retry_policy_is_absent_with_zero_attempts() -> None:
    assert "retry_policy" not in first_route({"route": TO_V1, "retries": {"attempts": 0}})["route"]


def test_a_destination_service_not_served_here_gets_an_outbound_cluster() -> None:
    details = service("details", "other", ip="10.96.0.40", ports=[{"name": "http", "port": 9080}])
    vs = virtual_service(
        "reviews", [{"route": [{"destination": {"host": "details.other.svc.cluster.local"}}]}]
    )
    config = translate(vs, details)
    assert routes_of(config)[0]["route"]["cluster"] == "outbound|9080||details.other.svc.cluster.local"
    assert "outbound|9080||details.other.svc.cluster.local" in config.resources[CLUSTER_TYPE_URL]


def test_an_unknown_destination_host_is_a_problem() -> None:
    vs = virtual_service("reviews", [{"route": [{"destination": {"host": "nope", "port": {"number": 80}}}]}])
    config = translate(vs)
    assert routes_of(config)[0]["route"]["cluster"] == "outbound|80||nope"
    assert problems_text(config) == [
        "VirtualService demo/reviews: spec.http[0].route[0].destination.host: no Service is named 'nope';"
        " requests routed to it get 503"
    ]


def test_rules_after_a_catch_all_are_not_used() -> None:
    config = translate(
        virtual_service(
            "reviews", [{"route": TO_V1}, {"match": [{"uri": {"prefix": "/x"}}], "route": TO_V1}]
        ),
        destination_rule(subsets=SUBSETS),
    )
    assert len(routes_of(config)) == 1


def test_each_match_becomes_a_route_and_a_catch_all_match_ends_the_list() -> None:
    rule = {
        "match": [{"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/"}}, {"uri": {"prefix": "/b"}}],
        "route": TO_V1,
    }
    config = translate(
        virtual_service("reviews", [rule, {"route": TO_V1}]), destination_rule(subsets=SUBSETS)
    )
    assert [r["match"] for r in routes_of(config)] == [{"prefix": "/a"}, {"prefix": "/"}]


def test_matches_for_another_port_or_on_source_labels_are_dropped() -> None:
    rule = {
        "match": [
            {"port": 8080, "uri": {"prefix": "/other"}},
            {"sourceLabels": {"app": "x"}},
            {"uri": {"prefix": "/kept"}},
        ],
        "route": TO_V1,
    }
    config = translate(virtual_service("reviews", [rule]), destination_rule(subsets=SUBSETS))
    assert [r["match"] for r in routes_of(config)] == [{"prefix": "/kept"}]
    assert problems_text(config) == [
        "VirtualService demo/reviews: spec.http[0].match[1].sourceLabels:"
        " a waypoint cannot match on the client's labels; dropped"
    ]


@pytest.mark.parametrize(
    ("rule", "field", "says"),
    [
        ({"route": TO_V1, "timeout": "soon"}, "spec.http[0].timeout", "is not a duration"),
        (
            {"route": TO_V1, "fault": {"abort": {"grpcStatus": "SLOW"}}},
            "spec.http[0].fault.abort.grpcStatus",
            "is not a gRPC status name",
        ),
        (
            {"route": TO_V1, "fault": {"abort": {"httpStatus": 99}}},
            "spec.http[0].fault.abort.httpStatus",
            "not an HTTP status code",
        ),
        (
            {"route": TO_V1, "fault": {"abort": {"percentage": {"value": 5}}}},
            "spec.http[0].fault.abort",
            "set httpStatus or grpcStatus",
        ),
        (
            {"route": TO_V1, "fault": {"delay": {"exponentialDelay": "1s"}}},
            "spec.http[0].fault.delay.fixedDelay",
            "exponentialDelay is not supported",
        ),
        (
            {"route": TO_V1, "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 150}}}},
            "spec.http[0].fault.abort.percentage.value",
            "between 0 and 100",
        ),
        (
            {"route": TO_V1, "retries": {"attempts": "three"}},
            "spec.http[0].retries.attempts",
            "not a whole number",
        ),
        (
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": -1}]},
            "spec.http[0].route[0].weight",
            ">= 0",
        ),
        ({"route": [{"destination": {}}]}, "spec.http[0].route[0].destination.host", "is required"),
        (
            {"match": [{"uri": {"exact": "/a", "prefix": "/b"}}], "route": TO_V1},
            "spec.http[0].match[0].uri",
            "exactly one",
        ),
        (
            {"match": [{"headers": {"x": {"suffix": "y"}}}], "route": TO_V1},
            "spec.http[0].match[0].headers.x",
            "unknown match type",
        ),
        ({"redirect": {"uri": "/x", "redirectCode": 399}}, "spec.http[0].redirect.redirectCode", "301, 302"),
        ({"match": "everything", "route": TO_V1}, "spec.http[0].match", "must be a list"),
        ({}, "spec.http[0].route", "needs at least one destination"),
    ],
)
def test_a_bad_rule_is_skipped_with_a_problem_naming_the_field(rule: Obj, field: str, says: str) -> None:
    config = translate(
        virtual_service("reviews", [rule, {"match": [{"uri": {"prefix": "/next"}}], "route": TO_V1}]),
        destination_rule(subsets=SUBSETS),
    )
    assert [r["match"] for r in routes_of(config)] == [{"prefix": "/next"}]
    (problem,) = config.problems
    assert (problem.kind, problem.namespace, problem.name, problem.field) == (
        "VirtualService",
        "demo",
        "reviews",
        field,
    )
    assert says in problem.message and problem.message.endswith("; the rule is skipped")
