"""mesh.l7: Envoy's route semantics from a RouteConfiguration, table-tested."""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from mesh.l7.faults import compile_fault, decide_fault
from mesh.l7.retries import Outcome, RetryConfig, backoff, should_retry
from mesh.l7.router import Request, RouteConfigError, compile_routes


def config(*virtual_hosts: dict[str, Any]) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict(
        {"name": "r", "virtual_hosts": list(virtual_hosts)}, route_pb2.RouteConfiguration()
    )


ROUTES = config(
    {
        "name": "server",
        "domains": ["server", "server:80", "server.demo.svc.cluster.local", "10.96.0.10:80"],
        "routes": [
            {"name": "exact", "match": {"path": "/exact"}, "route": {"cluster": "exact"}},
            {
                "name": "canary-header",
                "match": {
                    "prefix": "/",
                    "headers": [{"name": "x-canary-test", "string_match": {"exact": "true"}}],
                },
                "route": {"cluster": "v2"},
            },
            {
                "name": "regex",
                "match": {"safe_regex": {"regex": "/v[0-9]+/.*"}},
                "route": {"cluster": "versioned"},
            },
            {
                "name": "query",
                "match": {"prefix": "/q", "query_parameters": [{"name": "debug", "present_match": True}]},
                "route": {"cluster": "debug"},
            },
            {
                "name": "rewrite",
                "match": {"prefix": "/api/"},
                "route": {"cluster": "api", "prefix_rewrite": "/"},
            },
            {
                "name": "redirect",
                "match": {"prefix": "/old"},
                "redirect": {"path_redirect": "/new", "response_code": "PERMANENT_REDIRECT"},
            },
            {
                "name": "direct",
                "match": {"prefix": "/teapot"},
                "direct_response": {"status": 418, "body": {"inline_string": "tea"}},
            },
            {
                "name": "split",
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": {
                        "clusters": [{"name": "v1", "weight": 95}, {"name": "v2", "weight": 5}]
                    },
                    "timeout": "1s",
                    "retry_policy": {
                        "retry_on": "5xx,connect-failure",
                        "num_retries": 3,
                        "per_try_timeout": "0.5s",
                    },
                },
            },
        ],
    },
    {
        "name": "wild",
        "domains": ["*.example.com"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "wild"}}],
    },
    {
        "name": "fallback",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
    },
)
ROUTER = compile_routes(ROUTES)


@pytest.mark.parametrize(
    ("authority", "path", "headers", "cluster"),
    [
        ("server", "/exact", {}, "exact"),
        ("server:80", "/exact?x=1", {}, "exact"),  # the query is not part of the path matched
        ("server", "/exact/more", {"x-canary-test": ("true",)}, "v2"),
        ("server", "/anything", {"x-canary-test": ("false",)}, None),  # to the split: v1 or v2
        ("server", "/v2/items", {}, "versioned"),
        ("server", "/v2", {}, None),  # regex matches the whole path only
        ("server", "/q?debug", {}, "debug"),
        ("server", "/q?other=1", {}, None),
        ("SERVER.demo.svc.cluster.local:80", "/exact", {}, "exact"),  # case-insensitive, any port
        ("10.96.0.10:80", "/exact", {}, "exact"),
        ("a.example.com", "/", {}, "wild"),
    ],
)
def test_first_matching_route_wins(
    authority: str, path: str, headers: dict[str, tuple[str, ...]], cluster: str | None
) -> None:
    decision = ROUTER.route(Request("GET", path, authority, headers), random.Random(1))
    assert decision is not None
    if cluster is None:
        assert decision.route_name in ("split", "query", "regex") and decision.cluster in ("v1", "v2")
    else:
        assert decision.cluster == cluster


def test_virtual_host_fallback_redirect_direct_and_rewrite() -> None:
    rng = random.Random(1)
    assert ROUTER.route(Request("GET", "/", "elsewhere"), rng).direct_status == 404  # type: ignore[union-attr]
    redirect = ROUTER.route(Request("GET", "/old/x", "server"), rng)
    assert redirect is not None and (redirect.redirect, redirect.redirect_status) == ("/new", 308)
    teapot = ROUTER.route(Request("GET", "/teapot", "server"), rng)
    assert teapot is not None and (teapot.direct_status, teapot.direct_body) == (418, b"tea")
    rewritten = ROUTER.route(Request("GET", "/api/users?id=7", "server"), rng)
    assert rewritten is not None and rewritten.upstream_path == "/users?id=7"


def test_weights_split_within_a_binomial_bound() -> None:
    rng = random.Random(7)
    picks = [ROUTER.route(Request("GET", "/x", "server"), rng).cluster for _ in range(2000)]  # type: ignore[union-attr]
    share = picks.count("v2") / len(picks)
    assert abs(share - 0.05) < 3.3 * (0.05 * 0.95 / 2000) ** 0.5  # 99.9 %


def test_split_route_carries_timeout_and_retries() -> None:
    decision = ROUTER.route(Request("GET", "/x", "server"), random.Random(1))
    assert decision is not None and decision.timeout == 1.0
    assert (
        decision.retry is not None
        and decision.retry.num_retries == 3
        and decision.retry.per_try_timeout == 0.5
    )


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ({"match": {"safe_regex": {"regex": "(?=x)"}}, "route": {"cluster": "c"}}, "not a valid RE2"),
        (
            {
                "match": {"prefix": "/"},
                "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}},
            },
            "sum to 0",
        ),
        (
            {"match": {"path": "/x"}, "route": {"cluster": "c", "prefix_rewrite": "/"}},
            "needs a route that matches on a prefix",
        ),
    ],
)
def test_bad_routes_are_refused_naming_the_route(route: dict[str, Any], problem: str) -> None:
    with pytest.raises(RouteConfigError, match=problem) as info:
        compile_routes(config({"name": "vh", "domains": ["*"], "routes": [route]}))
    assert "virtual_hosts[0] 'vh'.routes[0]" in str(info.value)


def test_fault_percentages_and_abort_kinds() -> None:
    from envoy.extensions.filters.http.fault.v3 import fault_pb2  # noqa: PLC0415

    fault = compile_fault(
        json_format.ParseDict(
            {"abort": {"http_status": 503, "percentage": {"numerator": 50}}, "delay": {"fixed_delay": "2s"}},
            fault_pb2.HTTPFault(),
        )
    )
    rng = random.Random(3)
    decisions = [decide_fault(fault, rng) for _ in range(4000)]
    assert all(d.delay == 2.0 for d in decisions)  # no percentage: every request
    aborted = sum(d.aborted for d in decisions) / len(decisions)
    assert abs(aborted - 0.5) < 3.3 * (0.25 / 4000) ** 0.5
    assert {d.abort_http for d in decisions if d.aborted} == {503}


@pytest.mark.parametrize(
    ("retry_on", "outcome", "retried"),
    [
        ("5xx", Outcome(status=503), True),
        ("5xx", Outcome(status=404), False),
        ("5xx", Outcome(connect_failure=True), True),
        ("gateway-error", Outcome(status=500), False),
        ("gateway-error", Outcome(status=504), True),
        ("connect-failure", Outcome(status=503), False),
        ("connect-failure", Outcome(connect_failure=True), True),
        ("reset", Outcome(reset=True), True),
        ("retriable-4xx", Outcome(status=409), True),
        ("retriable-status-codes", Outcome(status=418), True),
        ("retriable-status-codes", Outcome(status=503), False),
    ],
)
def test_retry_conditions(retry_on: str, outcome: Outcome, retried: bool) -> None:
    policy = RetryConfig(
        retry_on=frozenset({retry_on}), num_retries=2, retriable_status_codes=frozenset({418})
    )
    assert should_retry(policy, outcome, 0) is retried
    assert not should_retry(policy, outcome, 2)  # the budget of retries is spent


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryConfig(retry_on=frozenset({"5xx"}), base_interval=0.025, max_interval=0.25)
    rng = random.Random(5)
    assert all(0 <= backoff(policy, n, rng) < min(0.025 * 2**n, 0.25) for n in range(8) for _ in range(50))


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST"])
def test_endpoint_pickers_spread_and_avoid_the_failed_endpoint(policy: str) -> None:
    from envoy.config.cluster.v3 import cluster_pb2  # noqa: PLC0415

    from mesh.l7.balancing import Endpoint, EndpointPicker  # noqa: PLC0415

    endpoints = [Endpoint("10.244.1.5", 8080), Endpoint("10.244.2.6", 8080), Endpoint("10.244.2.7", 8080)]
    picker = EndpointPicker(cluster_pb2.Cluster.LbPolicy.Value(policy), endpoints)
    rng = random.Random(11)
    seen = [picker.pick(rng) for _ in range(300)]
    assert {e.host for e in seen if e is not None} == {e.host for e in endpoints}
    assert all(picker.pick(rng, exclude=endpoints[0]) is not endpoints[0] for _ in range(50))
    assert EndpointPicker(picker.policy, []).pick(rng) is None
    if policy == "LEAST_REQUEST":
        endpoints[1].active = endpoints[2].active = 5
        assert seen and sum(picker.pick(rng) is endpoints[0] for _ in range(300)) > 150
