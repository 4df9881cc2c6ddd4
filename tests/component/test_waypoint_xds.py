"""The waypoint's WaypointXds against istiod_lite's real push plane (informers -> translation ->
ConfigPusher -> Delta ADS server on loopback): it gets its routes, clusters and endpoints, routes
as the VirtualService says, follows changes, and keeps its last good config when a resource is bad.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from istiod_lite.push.snapshot import scoped_type
from istiod_lite.push.status import syncz
from mesh.l7.router import Request
from mesh.model import Service, Workload
from mesh.testing.polling import wait_until
from tests.component.test_xds_push import Plane, start_plane
from tests.component.test_xds_waypoint import InformerSource
from tests.unit.l7_world import SUBSETS, destination_rule, virtual_service, world
from tests.unit.test_translate_scenarios import pod
from waypoint.config import ROUTES_TYPE, WaypointConfig
from waypoint.xds import WaypointPod, WaypointXds

pytestmark = pytest.mark.timeout(30)

REVIEWS = "reviews.demo.svc.cluster.local"
ROUTE_NAME = "demo/waypoint"
V1 = f"inbound-vip|9080|http/v1|{REVIEWS}"
V2 = f"inbound-vip|9080|http/v2|{REVIEWS}"
POD = WaypointPod(name="waypoint-abc", namespace="demo", ip="10.244.1.99", waypoint="waypoint")


def weighted(v1: int, v2: int) -> dict[str, Any]:
    return virtual_service(
        "reviews",
        [
            {
                "route": [
                    {"destination": {"host": "reviews", "subset": "v1"}, "weight": v1},
                    {"destination": {"host": "reviews", "subset": "v2"}, "weight": v2},
                ]
            }
        ],
    )


class TamperingSource(InformerSource):
    """The translated build, with the waypoint's RouteConfiguration replaced by ``bad`` when set
    (what a newer istiod_lite could send that this waypoint cannot apply)."""

    bad: route_pb2.RouteConfiguration | None = None

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        super().__init__(objects)
        translated = self.build

        def build() -> Mapping[str, Mapping[str, Message]]:
            out = dict(translated())
            if self.bad is not None:
                key = scoped_type(ROUTES_TYPE, ROUTE_NAME)
                out[key] = {**out[key], ROUTE_NAME: self.bad}
            return out

        self.build = build

    def tamper(self, bad: route_pb2.RouteConfiguration | None) -> None:
        self.bad = bad
        self._changed()


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[TamperingSource, Plane, WaypointXds]]:
    source = TamperingSource([*world(weighted(100, 0)), destination_rule(subsets=SUBSETS)])
    plane = await start_plane(source)  # type: ignore[arg-type]
    xds = WaypointXds(plane.target, node=POD.node(), rng=random.Random(3))
    task = asyncio.create_task(xds.run())
    yield source, plane, xds
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await plane.stop()


def routed(config: WaypointConfig, path: str = "/") -> str:
    """The cluster a request to reviews:9080 goes to on ``config``."""
    decision = config.routers[ROUTE_NAME].route(Request("GET", path, f"{REVIEWS}:9080"), random.Random(1))
    assert decision is not None, "no route for reviews"
    return decision.cluster


def endpoints(config: WaypointConfig, cluster: str) -> list[tuple[str, int, bool]]:
    return [(e.host, e.port, e.hbone) for e in config.clusters[cluster].endpoints]


async def test_the_waypoint_gets_its_config_routes_by_it_and_follows_changes(
    mesh: tuple[TamperingSource, Plane, WaypointXds],
) -> None:
    source, _, xds = mesh
    assert not xds.synced
    await asyncio.wait_for(xds.wait_synced(), 5)
    assert xds.synced
    config = xds.config()
    assert set(config.routers) == {ROUTE_NAME}
    assert {V1, V2} <= set(config.clusters)
    assert endpoints(config, V1) == [("10.244.1.11", 9080, True)]  # enrolled pods: over HBONE
    assert endpoints(config, V2) == [("10.244.1.12", 9080, True)]
    assert {routed(config) for _ in range(20)} == {V1}
    assert isinstance(xds.addresses.get("Kubernetes//Pod/demo/reviews-v1"), Workload)
    assert any(isinstance(a, Service) for a in xds.addresses.values())

    source.put(weighted(0, 100))
    await wait_until(lambda: routed(xds.config()) == V2, what="the new weights")
    assert xds.config() is not config  # swapped whole, the old one untouched
    assert routed(config) == V1

    source.put(
        pod("reviews-v2", ip="10.244.1.12", labels={"app": "reviews", "version": "v2"}, enrolled=False)
    )
    await wait_until(
        lambda: endpoints(xds.config(), V2) == [("10.244.1.12", 9080, False)], what="a plain-TCP endpoint"
    )


async def test_a_bad_route_configuration_is_nacked_and_the_last_good_config_stays(
    mesh: tuple[TamperingSource, Plane, WaypointXds],
) -> None:
    source, plane, xds = mesh
    await asyncio.wait_for(xds.wait_synced(), 5)
    good = xds.config()
    bad = route_pb2.RouteConfiguration()
    bad.CopyFrom(good.resources[ROUTES_TYPE][ROUTE_NAME])
    bad.virtual_hosts[0].routes[0].filter_action.SetInParent()  # an action this engine does not apply
    source.tamper(bad)

    def nack() -> str:
        (conn,) = syncz(plane.hub)["subscribers"]
        status = next(t for t in conn["types"] if t["type_url"] == ROUTES_TYPE)
        return str((status["nacked"] or {}).get("error", ""))

    await wait_until(nack, what="a NACK of the RouteConfiguration")
    assert ROUTE_NAME in nack() and "filter_action" in nack()
    assert xds.synced
    assert xds.config().resources[ROUTES_TYPE][ROUTE_NAME] == good.resources[ROUTES_TYPE][ROUTE_NAME]
    assert routed(xds.config()) == V1

    source.tamper(None)  # a good one again, with new weights: applied
    source.put(weighted(0, 100))
    await wait_until(lambda: routed(xds.config()) == V2, what="the next good config")
