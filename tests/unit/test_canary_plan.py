"""Canary analysis, pure: the route a canary drives, its weights, the new version's selectors, the
decisions, and the state kept on the route object."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.canary_plan import (
    CanaryError,
    CanarySpec,
    CanaryState,
    Signals,
    find_route,
    judge,
    read_state,
    signal_queries,
    with_state,
    with_weight,
)

SPEC = CanarySpec(
    "web", "shop", "v1", "v2", steps=(50, 100), interval=15, max_error_rate=0.01, max_p99_ms=300
)


def virtual_service(name: str = "web", hosts: tuple[str, ...] = ("web",), **weights: int) -> dict[str, Any]:
    route = [{"destination": {"host": "web", "subset": s}, "weight": w} for s, w in weights.items()]
    return {
        "kind": "VirtualService", "metadata": {"name": name, "namespace": "shop"},
        "spec": {"hosts": list(hosts), "http": [
            {"match": [{"headers": {"x-test": {"exact": "1"}}}],
             "route": [{"destination": {"host": "web", "subset": "v2"}}]},
            {"route": route},
        ]},
    }  # fmt: skip


def destination_rule() -> dict[str, Any]:
    subsets = [{"name": "v1", "labels": {"version": "1.0"}}, {"name": "v2", "labels": {"version": "2.0"}}]
    return {
        "kind": "DestinationRule",
        "metadata": {"name": "web"},
        "spec": {"host": "web", "subsets": subsets},
    }


def http_route() -> dict[str, Any]:
    return {
        "kind": "HTTPRoute", "metadata": {"name": "web-split", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                 "rules": [{"backendRefs": [{"name": "v1", "port": 80, "weight": 100},
                                            {"name": "v2", "port": 80, "weight": 0}]}]},
    }  # fmt: skip


def test_a_virtual_service_rule_with_both_subsets_is_found_with_the_version_label_of_its_subset() -> None:
    ref = find_route([virtual_service(v1=100, v2=0), destination_rule()], SPEC)
    assert (ref.kind, ref.name, ref.rule) == ("VirtualService", "web", 1)
    assert ref.version_labels == {
        "destination_service_name": "web", "destination_service_namespace": "shop",
        "destination_version": "2.0",
    }  # fmt: skip
    moved = with_weight(virtual_service(v1=100, v2=0), ref, SPEC, 25)
    assert [d["weight"] for d in moved["spec"]["http"][1]["route"]] == [75, 25]
    assert "weight" not in moved["spec"]["http"][0]["route"][0]  # other rules untouched


def test_an_http_route_splitting_two_backend_services_is_found() -> None:
    ref = find_route([http_route()], SPEC)
    assert (ref.kind, ref.rule, ref.version_labels["destination_service_name"]) == ("HTTPRoute", 0, "v2")
    moved = with_weight(http_route(), ref, SPEC, 100)
    assert [b["weight"] for b in moved["spec"]["rules"][0]["backendRefs"]] == [0, 100]


@pytest.mark.parametrize(
    ("objects", "problem"),
    [
        ([virtual_service(v1=100)], "no VirtualService or HTTPRoute"),
        ([virtual_service(hosts=("other",), v1=100, v2=0)], "no VirtualService or HTTPRoute"),
        ([virtual_service(v1=100, v2=0), virtual_service("web-2", v1=50, v2=50)], "more than one rule"),
    ],
)
def test_a_missing_or_ambiguous_route_is_named(objects: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(CanaryError, match=problem):
        find_route(objects, SPEC)


@pytest.mark.parametrize(
    ("signals", "failed", "action", "reason"),
    [
        (Signals(10.0, 0.0, 120.0), 0, "advance", "within thresholds"),
        (Signals(10.0, 0.3, 120.0), 0, "rollback", "error rate of v2 30.0 % > 1 %"),
        (Signals(10.0, 0.005, 900.0), 0, "rollback", "p99 of v2 900 ms > 300 ms"),
        (Signals(10.0, 0.0, None), 0, "advance", "within thresholds"),
        (Signals(0.0, 0.0, None), 0, "hold", "no requests reached v2 yet"),
        (Signals(0.0, 0.0, None), 1, "rollback", "no requests reached v2 in 2 checks"),
    ],
)
def test_decisions(signals: Signals, failed: int, action: str, reason: str) -> None:
    decision = judge(SPEC, signals, failed_checks=failed)
    assert (decision.action, decision.reason) == (action, reason)


def test_the_state_round_trips_through_the_route_annotation() -> None:
    state = CanaryState(spec={"service": "web"}, step=1, weight=50, history=[{"decision": "advance"}])
    obj = with_state(virtual_service(v1=50, v2=50), state)
    assert read_state(obj) == state and read_state(virtual_service()) is None
    obj["metadata"]["annotations"]["canary.mesh.dev/state"] = "{not json"
    with pytest.raises(CanaryError, match="not a canary state"):
        read_state(obj)


def test_signal_queries_select_the_new_version_at_the_waypoint() -> None:
    ref = find_route([virtual_service(v1=100, v2=0), destination_rule()], SPEC)
    queries = signal_queries(ref, 15)
    errors = (
        'istio_requests_total{reporter="waypoint",destination_service_name="web",'
        'destination_service_namespace="shop",destination_version="2.0",response_code=~"5.."}'
    )
    now, before = f"last_over_time({errors}[15s])", f"last_over_time({errors}[5m] offset 15s)"
    assert queries["errors"] == f"sum((({now} - {before}) >= 0 or {now}))"
    assert queries["buckets"].startswith(
        "sum by (le) (((last_over_time(istio_request_duration_milliseconds_bucket{"
    )
