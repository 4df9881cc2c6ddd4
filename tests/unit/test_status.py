"""Status conditions from translation problems: what each object's status says, and merging it in."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from istiod_lite.status import CONTROLLER_NAME, apply_status, desired_statuses
from istiod_lite.translate import build_resources
from istiod_lite.translate.l7 import translate_waypoint
from istiod_lite.view import view_from_objects
from tests.unit.l7_world import (
    SUBSETS,
    backend,
    destination_rule,
    gateway,
    http_route,
    virtual_service,
    world,
)

NOW = 1_900_000_000.0
BROKEN_VS = virtual_service(
    "reviews",
    [{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"host": "reviews", "subset": "v9"}}]}],
)


def statuses(*extra: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    view = view_from_objects(world(*extra))
    problems = translate_waypoint(view, view.gateways[("demo", "waypoint")]).problems
    return desired_statuses(view, problems, now=NOW)


def test_a_clean_object_is_accepted() -> None:
    (condition,) = statuses(destination_rule(subsets=SUBSETS))[("DestinationRule", "demo", "reviews")][
        "conditions"
    ]
    assert condition == {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "translated without problems",
        "observedGeneration": 1,
        "lastTransitionTime": "2030-03-17T17:46:40Z",
    }


def test_a_problem_makes_it_not_accepted_and_names_the_field() -> None:
    (condition,) = statuses(BROKEN_VS)[("VirtualService", "demo", "reviews")]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "Invalid")
    assert condition["message"].startswith("spec.http[0].match[0].uri.regex: '(' is not a valid RE2")


def test_an_httproute_reports_per_service_parent_for_this_controller() -> None:
    route = http_route("reviews", [{"backendRefs": [backend(weight=0)]}])
    (parent,) = statuses(route)[("HTTPRoute", "demo", "reviews")]["parents"]
    assert parent["parentRef"] == {"group": "", "kind": "Service", "name": "reviews"}
    assert parent["controllerName"] == CONTROLLER_NAME
    (condition,) = parent["conditions"]
    assert condition["status"] == "False" and "weights sum to 0" in condition["message"]


def test_the_virtualservice_an_httproute_beats_says_so() -> None:
    found = statuses(
        virtual_service("r", [{"route": [{"destination": {"host": "reviews"}}]}]),
        http_route("r", [{"backendRefs": [backend()]}]),
    )
    (condition,) = found[("VirtualService", "demo", "r")]["conditions"]
    assert condition["status"] == "False" and "HTTPRoutes win over VirtualServices" in condition["message"]
    assert found[("HTTPRoute", "demo", "r")]["parents"][0]["conditions"][0]["status"] == "True"


def stored(status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": "VirtualService",
        "metadata": {"name": "r", "namespace": "demo"},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def test_merging_keeps_the_transition_time_while_the_status_holds_and_reports_no_change() -> None:
    wanted = statuses(BROKEN_VS)[("VirtualService", "demo", "reviews")]
    obj = stored()
    assert apply_status(obj, wanted)
    first = copy.deepcopy(obj)
    later = copy.deepcopy(wanted)
    later["conditions"][0]["lastTransitionTime"] = "2031-01-01T00:00:00Z"
    assert not apply_status(obj, later) and obj == first
    fixed = statuses(virtual_service("reviews", [{"route": [{"destination": {"host": "reviews"}}]}]))
    assert apply_status(obj, fixed[("VirtualService", "demo", "reviews")])
    assert obj["status"]["conditions"][0]["status"] == "True"


def test_merging_leaves_other_controllers_parents_and_unknown_status_alone() -> None:
    other = {"parentRef": {"name": "gw"}, "controllerName": "example.com/gateway", "conditions": []}
    obj = stored({"parents": [other], "extra": 1})
    route = http_route("reviews", [{"backendRefs": [backend()]}])
    wanted = statuses(route)[("HTTPRoute", "demo", "reviews")]
    assert apply_status(obj, wanted)
    assert obj["status"]["parents"][0] == other and obj["status"]["extra"] == 1
    assert obj["status"]["parents"][1]["controllerName"] == CONTROLLER_NAME
    assert not apply_status(obj, wanted)
    assert not apply_status(stored("not a mapping"), wanted)  # type: ignore[arg-type]


def service_condition(*extra: dict[str, Any], gateway_status: dict[str, Any] | None = None) -> dict[str, Any]:
    objects = world(*extra)
    if gateway_status is not None:
        gw = next(o for o in objects if o["kind"] == "Gateway")
        gw["status"] = gateway_status
    view = view_from_objects(objects)
    problems = build_resources(view).warnings
    (condition,) = desired_statuses(view, problems, now=NOW)[("Service", "demo", "reviews")]["conditions"]
    assert isinstance(condition, dict)
    return condition


PROGRAMMED = {"addresses": [{"type": "Hostname", "value": "waypoint.demo.svc.cluster.local"}]}


@pytest.mark.parametrize(
    ("extra", "gateway_status", "status", "reason", "says"),
    [
        ([], PROGRAMMED, "True", "WaypointAccepted", "traffic goes through waypoint demo/waypoint"),
        ([], None, "False", "WaypointNotReady", "has no ready pod yet"),
        (
            [gateway(**{"istio.io/waypoint-for": "workload"})],
            PROGRAMMED,
            "False",
            "WaypointNotForServices",
            "workloads only",
        ),
        ([gateway(cls="istio")], PROGRAMMED, "False", "WaypointError", "is not a waypoint"),
    ],
    ids=["bound", "not-ready", "workload-waypoint", "another-class"],
)
def test_a_service_using_a_waypoint_says_whether_it_is_bound(
    extra: list[dict[str, Any]], gateway_status: dict[str, Any] | None, status: str, reason: str, says: str
) -> None:
    condition = service_condition(*extra, gateway_status=gateway_status)
    assert condition["type"] == "istio.io/WaypointBound"
    assert (condition["status"], condition["reason"]) == (status, reason) and says in condition["message"]


def test_the_bound_condition_goes_when_the_label_does_and_other_conditions_stay() -> None:
    obj = stored({"conditions": [{"type": "Other", "status": "True"}]})
    wanted = {"conditions": [service_condition(gateway_status=PROGRAMMED)]}
    assert apply_status(obj, wanted)
    assert [c["type"] for c in obj["status"]["conditions"]] == ["Other", "istio.io/WaypointBound"]
    service = copy.deepcopy(next(o for o in world(use_waypoint=None) if o["kind"] == "Service"))
    service["status"] = copy.deepcopy(obj["status"])
    view = view_from_objects([*world(service, use_waypoint=None)])
    removal = desired_statuses(view, [], now=NOW)[("Service", "demo", "reviews")]
    assert apply_status(obj, removal)
    assert [c["type"] for c in obj["status"]["conditions"]] == ["Other"]
