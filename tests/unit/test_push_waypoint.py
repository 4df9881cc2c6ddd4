"""Waypoint subscribers: who they are (node id, metadata, identity) and what their projection holds."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from structlog.testing import capture_logs

from istiod_lite.push import translated
from istiod_lite.push.debug import waypointz, workloadz
from istiod_lite.push.errors import SubscriberRejectedError
from istiod_lite.push.projection import parse_node_id, select_projection, waypoint_projection
from istiod_lite.push.snapshot import build_snapshot, scoped_type
from istiod_lite.push.translated import translated_build
from istiod_lite.translate.l7 import CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, ROUTE_TYPE_URL, translate_waypoint
from istiod_lite.view import Informers, parse_object
from mesh.api.istio.workload import workload_pb2
from mesh.rt.xds import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from tests.unit.l7_world import gateway, world
from tests.unit.test_translate_scenarios import namespace, pod

NODE = "waypoint~10.244.1.99~waypoint-abc.demo~demo.svc.cluster.local"
IDENTITY = "spiffe://cluster.local/ns/demo/sa/waypoint"


@pytest.mark.parametrize(
    ("metadata", "identity", "waypoint"),
    [
        ({"WAYPOINT_NAME": "waypoint"}, "", "demo/waypoint"),
        ({}, IDENTITY, "demo/waypoint"),
        ({"WAYPOINT_NAME": "other"}, IDENTITY, "demo/other"),
    ],
    ids=["metadata", "service-account", "metadata-first"],
)
def test_a_waypoint_names_its_gateway(metadata: dict[str, str], identity: str, waypoint: str) -> None:
    subscriber = parse_node_id(NODE, metadata=metadata, identity=identity)
    assert (subscriber.proxy_type, subscriber.waypoint) == ("waypoint", waypoint)
    assert select_projection(subscriber) is waypoint_projection


def test_a_waypoint_that_names_no_gateway_is_refused_with_a_hint() -> None:
    with pytest.raises(SubscriberRejectedError) as caught:
        parse_node_id(NODE, metadata={}, identity="")
    assert "does not say which Gateway" in caught.value.message and "WAYPOINT_NAME" in (
        caught.value.hint or ""
    )


def test_a_ztunnel_has_no_waypoint() -> None:
    subscriber = parse_node_id("ztunnel~10.0.0.2~zt.istio-system~istio-system.svc.cluster.local", metadata={})
    assert subscriber.waypoint == ""


def test_the_projection_is_the_waypoints_own_scope_and_every_address() -> None:
    mine, theirs = "demo/waypoint", "other/waypoint"
    route = route_pb2.RouteConfiguration(name=mine)
    snapshot = build_snapshot(
        {
            ADDRESS_TYPE_URL: {"a": workload_pb2.Address()},
            AUTHORIZATION_TYPE_URL: {},
            scoped_type(ROUTE_TYPE_URL, mine): {mine: route},
            scoped_type(CLUSTER_TYPE_URL, mine): {"c1": cluster_pb2.Cluster(name="c1")},
            scoped_type(ROUTE_TYPE_URL, theirs): {theirs: route_pb2.RouteConfiguration(name=theirs)},
        },
        counter=1,
        now=0.0,
    )
    projected = waypoint_projection(parse_node_id(NODE, metadata={"WAYPOINT_NAME": "waypoint"}), snapshot)
    assert {t: set(r) for t, r in projected.items()} == {
        ROUTE_TYPE_URL: {mine},
        CLUSTER_TYPE_URL: {"c1"},
        ENDPOINT_TYPE_URL: set(),
        ADDRESS_TYPE_URL: {"a"},
    }
    sent = projected[ROUTE_TYPE_URL][mine]
    assert sent.type_url == ROUTE_TYPE_URL  # on the wire without the scope
    entry = discovery_pb2.DeltaDiscoveryResponse.FromString(sent.wire).resources[0]
    assert entry.resource.type_url == ROUTE_TYPE_URL and entry.name == mine


def test_a_failing_waypoint_translation_keeps_its_last_config_and_the_rest_of_the_mesh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    informers = Informers()
    sink = informers.sink("t")
    for obj in world(gateway("waypoint", "shop")):
        sink.upsert(parse_object(obj))
    sink.mark_synced()
    build = translated_build(informers)
    first = build()
    mine = scoped_type(ROUTE_TYPE_URL, "demo/waypoint")
    assert set(first[mine]) == {"demo/waypoint"}

    def broken(view: Any, gw: Any, **kwargs: Any) -> Any:
        if gw.namespace == "demo":
            raise RuntimeError("a bug")
        return translate_waypoint(view, gw, **kwargs)

    monkeypatch.setattr(translated, "translate_waypoint", broken)
    sink.upsert(parse_object(pod("late", ip="10.244.1.77")))
    with capture_logs() as logs:
        second = build()
    assert second[mine] is first[mine]  # the last good config, as it was
    assert scoped_type(ROUTE_TYPE_URL, "shop/waypoint") in second
    assert "Kubernetes//Pod/demo/late" in second[ADDRESS_TYPE_URL]  # ztunnel's config still moves on
    assert [e["waypoint"] for e in logs if e["event"] == "translate.waypoint_failed"] == ["demo/waypoint"]


def test_waypointz_lists_the_waypoints_and_dumps_one_as_envoy_json() -> None:
    informers = Informers()
    sink = informers.sink("t")
    for obj in world(gateway("waypoint", "shop")):
        sink.upsert(parse_object(obj))
    sink.mark_synced()
    snapshot = build_snapshot(translated_build(informers)(), counter=3, now=0.0)
    status, listing = waypointz(snapshot)
    assert status == 200 and isinstance(listing, dict)
    assert listing["waypoints"]["demo/waypoint"][ROUTE_TYPE_URL] == 1
    assert listing["waypoints"]["shop/waypoint"][CLUSTER_TYPE_URL] == 0
    status, dump = waypointz(snapshot, "demo/waypoint")
    assert status == 200 and isinstance(dump, dict)
    route = dump["resources"][ROUTE_TYPE_URL]["demo/waypoint"]
    assert route["name"] == "demo/waypoint" and route["validate_clusters"] is False
    assert "inbound-vip|9080|http|reviews.demo.svc.cluster.local" in dump["resources"][CLUSTER_TYPE_URL]
    status, missing = waypointz(snapshot, "demo/nope")
    assert (
        status == 404 and isinstance(missing, dict) and missing["known"] == ["demo/waypoint", "shop/waypoint"]
    )


def test_workloadz_lists_workloads_with_their_enrolment_and_the_services() -> None:
    informers = Informers()
    sink = informers.sink("t")
    objects = world()
    objects[0] = namespace("demo", {"istio.io/dataplane-mode": "ambient"})
    for obj in objects:
        sink.upsert(parse_object(obj))
    sink.mark_synced()
    listing = workloadz(build_snapshot(translated_build(informers)(), counter=1, now=0.0))
    by_name = {w["name"]: w for w in listing["workloads"]}
    assert sorted(by_name) == ["ratings-1", "reviews-v1", "reviews-v2"]
    ratings = by_name["ratings-1"]
    assert (ratings["namespace"], ratings["node"], ratings["canonicalName"]) == ("demo", "node2", "ratings")
    assert (ratings["protocol"], ratings["serviceAccount"], ratings["policies"]) == ("HBONE", "web", [])
    hostnames = [(s["name"], s["hostname"]) for s in listing["services"]]
    assert hostnames == [
        ("ratings", "ratings.demo.svc.cluster.local"),
        ("reviews", "reviews.demo.svc.cluster.local"),
    ]
