"""Circuit breakers, the retry budget, outlier detection and the local rate limit, pure (Envoy's
semantics, the time passed in)."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from google.protobuf import json_format

from mesh.l7.ratelimit import RateLimitConfig, TokenBucket, compile_rate_limit
from mesh.l7.resilience import Admission, CircuitBreaker, Limits, OutlierDetector, OutlierPolicy


def cluster(doc: dict[str, object]) -> cluster_pb2.Cluster:
    return json_format.ParseDict({"name": "c", **doc}, cluster_pb2.Cluster())


def test_limits_and_policy_come_from_the_cluster_with_envoys_defaults() -> None:
    assert Limits.of(cluster({})) == Limits(1024, 1024, 1024, 3, 20.0, 3)
    limited = cluster({"circuit_breakers": {"thresholds": [
        {"max_connections": 10, "max_pending_requests": 1, "retry_budget": {"budget_percent": {"value": 50}}},
    ]}})  # fmt: skip
    assert Limits.of(limited) == Limits(10, 1, 1024, 3, 50.0, 3)
    assert OutlierPolicy.of(cluster({})) is None
    detection = {
        "consecutive_5xx": 3,
        "interval": "2s",
        "base_ejection_time": "5s",
        "max_ejection_percent": 50,
    }
    outlier = cluster({"outlier_detection": detection})
    assert OutlierPolicy.of(outlier) == OutlierPolicy(3, 0, 2.0, 5.0, 300.0, 50.0)


def test_requests_over_the_cap_wait_while_the_queue_has_room_then_overflow() -> None:
    breaker = CircuitBreaker(Limits(max_connections=2, max_pending_requests=1))
    assert [breaker.admit() for _ in range(4)] == [
        Admission.GO,
        Admission.GO,
        Admission.WAIT,
        Admission.OVERFLOW,
    ]
    assert not breaker.may_proceed()
    breaker.release()
    assert breaker.may_proceed() and (breaker.active, breaker.pending) == (2, 0)
    http2 = CircuitBreaker(Limits(max_connections=1, max_requests=3), http2=True)  # streams, not connections
    assert [http2.admit() for _ in range(3)] == [Admission.GO] * 3


def test_the_retry_budget_is_a_share_of_active_requests_with_a_floor() -> None:
    breaker = CircuitBreaker(Limits(max_retries=1000, budget_percent=20, min_retry_concurrency=3))
    breaker.active = 50
    assert sum(breaker.retry_allowed() for _ in range(20)) == 10  # 20 % of 50
    breaker.active, breaker.retries = 2, 0
    assert sum(breaker.retry_allowed() for _ in range(20)) == 3  # the floor
    breaker.retry_done()
    assert breaker.retry_allowed()


def test_outlier_detection_ejects_for_longer_each_time_and_returns_endpoints() -> None:
    detector = OutlierDetector(OutlierPolicy(3, 0, 1.0, 10.0, 300.0, 50.0))
    hosts = ["a:1", "b:1"]
    results = [
        detector.report("a:1", status=500, connect_failure=False, now=0, endpoints=hosts) for _ in range(3)
    ]
    assert results == [False, False, True]
    assert detector.ejected(0.5) == {"a:1"}
    for _ in range(3):  # 50 % of 2 endpoints: b may not go too
        detector.report("b:1", status=503, connect_failure=False, now=1, endpoints=hosts)
    assert detector.ejected(1.0) == {"a:1"}
    assert detector.ejected(10.5) == frozenset()  # back after base_ejection_time
    for _ in range(3):
        detector.report("a:1", status=500, connect_failure=False, now=11, endpoints=hosts)
    assert (
        detector.ejected(30.5) == {"a:1"} and detector.ejected(31.5) == frozenset()
    )  # 2 x 10 s the 2nd time
    detector.report("b:1", status=200, connect_failure=False, now=40, endpoints=hosts)
    assert detector.health["b:1"].consecutive_5xx == 0


def test_gateway_failures_are_counted_only_when_enforced() -> None:
    policy = OutlierPolicy(consecutive_5xx=0, consecutive_gateway_failure=2)
    detector = OutlierDetector(policy)
    assert not detector.report("a:1", status=None, connect_failure=True, now=0, endpoints=["a:1"])
    assert detector.report("a:1", status=502, connect_failure=False, now=0, endpoints=["a:1"])


def limit(doc: dict[str, object]) -> local_rate_limit_pb2.LocalRateLimit:
    return json_format.ParseDict({"stat_prefix": "rl", **doc}, local_rate_limit_pb2.LocalRateLimit())


ENABLED = {
    "filter_enabled": {"default_value": {"numerator": 100}},
    "filter_enforced": {"default_value": {"numerator": 100}},
}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"token_bucket": {"max_tokens": 10, "tokens_per_fill": 5, "fill_interval": "1s"}, **ENABLED,
          "enable_x_ratelimit_headers": "DRAFT_VERSION_03"}, RateLimitConfig(10, 5, 1.0, True, 429)),
        ({"token_bucket": {"max_tokens": 10, "fill_interval": "2s"}, **ENABLED},
         RateLimitConfig(10, 1, 2.0, False, 429)),
        ({"token_bucket": {"max_tokens": 10, "fill_interval": "1s"}}, None),  # not enabled
    ],
)  # fmt: skip
def test_local_rate_limit_config(doc: dict[str, object], expected: RateLimitConfig | None) -> None:
    assert compile_rate_limit(limit(doc), "r") == expected


def test_a_bucket_refills_at_each_interval_and_reports_its_headers() -> None:
    bucket = TokenBucket(RateLimitConfig(3, 2, 1.0))
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.headers(0.2) == [
        ("x-ratelimit-limit", "3"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1"),
    ]
    assert [bucket.take(1.1) for _ in range(3)] == [True, True, False]  # 2 more at the first fill
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]  # never above max_tokens
