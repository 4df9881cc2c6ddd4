"""The Telemetry API's tracing for a waypoint: mesh, namespace and waypoint scope (the most specific
wins, tags merge), rendered as Envoy's Route.tracing on every route; bad fields are named."""

from __future__ import annotations

from typing import Any

import pytest

from istiod_lite.validation import validate_mesh_object
from tests.unit.l7_world import routes_of, translate

Obj = dict[str, Any]


def telemetry(name: str, ns: str, tracing: list[Obj], **spec: Any) -> Obj:
    return {
        "apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
        "metadata": {"name": name, "namespace": ns}, "spec": {"tracing": tracing, **spec},
    }  # fmt: skip


TEAM = {"team": {"literal": {"value": "a"}}}
USER = {"user": {"header": {"name": "x-user"}}}
WAYPOINT = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
OTHER = {"kind": "Gateway", "name": "other"}


def tracing_of(*extra: Obj) -> list[Obj]:
    return [route.get("tracing", {}) for route in routes_of(translate(*extra))]


def test_no_telemetry_leaves_the_routes_without_tracing() -> None:
    assert tracing_of() == [{}]


@pytest.mark.parametrize(
    ("objects", "expected"),
    [
        ([telemetry("mesh", "istio-system", [{"randomSamplingPercentage": 10}])],
         {"random_sampling": {"numerator": 100_000, "denominator": "MILLION"}}),
        ([telemetry("mesh", "istio-system", [{"randomSamplingPercentage": 10}]),
          telemetry("ns", "demo", [{"randomSamplingPercentage": 50}])],
         {"random_sampling": {"numerator": 500_000, "denominator": "MILLION"}}),
        ([telemetry("ns", "demo", [{"randomSamplingPercentage": 50, "customTags": TEAM}]),
          telemetry("wp", "demo", [{"randomSamplingPercentage": 100, "customTags": USER}],
                    targetRefs=[WAYPOINT]),
          telemetry("other", "demo", [{"randomSamplingPercentage": 1}], targetRefs=[OTHER])],
         {"random_sampling": {"numerator": 1_000_000, "denominator": "MILLION"},
          "custom_tags": [{"tag": "team", "literal": {"value": "a"}},
                          {"tag": "user", "request_header": {"name": "x-user"}}]}),
        ([telemetry("ns", "demo", [{"randomSamplingPercentage": 50, "disableSpanReporting": True}])],
         {"random_sampling": {}}),
        ([telemetry("elsewhere", "shop", [{"randomSamplingPercentage": 50}])], {}),
    ],
    ids=["mesh", "namespace-overrides-mesh", "waypoint-wins-tags-merge", "disabled", "other-namespace"],
)  # fmt: skip
def test_the_most_specific_telemetry_sets_the_routes_tracing(objects: list[Obj], expected: Obj) -> None:
    assert tracing_of(*objects) == [expected]


def test_a_bad_telemetry_is_named_and_the_rest_applies() -> None:
    bad = telemetry("bad", "demo", [{"randomSamplingPercentage": 250}])
    good = telemetry("mesh", "istio-system", [{"randomSamplingPercentage": 5}])
    config = translate(bad, good)
    assert any(
        "Telemetry demo/bad" in str(p) and "randomSamplingPercentage" in str(p) for p in config.problems
    )
    assert [r["tracing"]["random_sampling"]["numerator"] for r in routes_of(config)] == [50_000]
    errors = validate_mesh_object(bad)
    assert [e.field for e in errors] == ["spec.tracing[0].randomSamplingPercentage"]
    tag = telemetry("tag", "demo", [{"customTags": {"x": {"nothing": {}}}}])
    assert [e.field for e in validate_mesh_object(tag)] == ["spec.tracing[0].customTags.x"]
