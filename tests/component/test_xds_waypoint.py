"""Waypoints on the Delta ADS stream: each gets its own translated routes, clusters and endpoints.

The push side runs as in istiod_lite (informers -> ``translated_build`` -> ConfigPusher -> Delta
ADS server on loopback); the subscribers are real ``XdsClient``s that identify as waypoints
(node id ``waypoint~...``, node metadata ``WAYPOINT_NAME``), or authenticate with the waypoint's
service account over TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from istiod_lite.ca.auth import Caller, LabTokenAuthenticator
from istiod_lite.push.translated import translated_build
from istiod_lite.translate.l7 import CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, ROUTE_TYPE_URL
from istiod_lite.view import Informers, parse_object
from mesh.identity import WorkloadIdentity
from mesh.rt.clock import SystemClock
from mesh.rt.rpc import client_tls
from mesh.rt.xds import ADDRESS_TYPE_URL, XdsNode
from mesh.testing.pki import TestPki
from mesh.testing.xds import FakeAgent
from tests.component.test_xds_push import Plane, start_plane
from tests.unit.l7_world import SUBSETS, destination_rule, gateway, virtual_service, world
from tests.unit.test_translate_scenarios import namespace

pytestmark = pytest.mark.timeout(30)

WAYPOINT_TYPES = (ROUTE_TYPE_URL, CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, ADDRESS_TYPE_URL)
REVIEWS = "reviews.demo.svc.cluster.local"


class InformerSource:
    """Informers fed straight from objects, standing in for the lab's file source."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.informers = Informers()
        self.sink = self.informers.sink("test")
        for obj in objects:
            self.sink.upsert(parse_object(obj))
        self.sink.mark_synced()
        self.build = translated_build(self.informers)
        self.on_change: list[Any] = []
        self.informers.on_change(self._changed)

    def _changed(self) -> None:
        for pusher in self.on_change:
            pusher.mark_dirty()

    def put(self, obj: dict[str, Any]) -> None:
        self.sink.upsert(parse_object(obj))


def waypoint_node(name: str = "waypoint", ns: str = "demo", *, metadata: bool = True) -> XdsNode:
    meta = {"WAYPOINT_NAME": name, "NAMESPACE": ns} if metadata else {"NAMESPACE": ns}
    return XdsNode(id=f"waypoint~10.244.1.99~{name}-abc.{ns}~{ns}.svc.cluster.local", metadata=meta)


def route_config(agent: FakeAgent, name: str = "demo/waypoint") -> route_pb2.RouteConfiguration:
    packed: Mapping[str, Message] = agent.resources(ROUTE_TYPE_URL)
    found = packed[name]
    assert isinstance(found, any_pb2.Any)
    config = route_pb2.RouteConfiguration()
    assert found.Unpack(config)
    return config


@pytest.fixture
async def source_and_plane() -> AsyncIterator[tuple[InformerSource, Plane]]:
    objects = [
        *world(
            virtual_service("reviews", [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}])
        ),
        destination_rule(subsets=SUBSETS),
        namespace("shop", {"istio.io/use-waypoint": "waypoint"}),
        gateway("waypoint", "shop"),
    ]
    source = InformerSource(objects)
    plane = await start_plane(source)  # type: ignore[arg-type]
    yield source, plane
    await plane.stop()


async def test_a_waypoint_gets_its_own_config_and_changes(
    source_and_plane: tuple[InformerSource, Plane],
) -> None:
    source, plane = source_and_plane
    agent = FakeAgent(plane.target, node=waypoint_node(), type_urls=WAYPOINT_TYPES)
    agent.start()
    try:
        await asyncio.wait_for(agent.client.wait_synced(), 5)
        assert set(agent.resources(ROUTE_TYPE_URL)) == {"demo/waypoint"}
        config = route_config(agent)
        reviews = next(v for v in config.virtual_hosts if v.name == f"{REVIEWS}:9080")
        assert reviews.routes[0].route.cluster == f"inbound-vip|9080|http/v1|{REVIEWS}"
        clusters = set(agent.resources(CLUSTER_TYPE_URL))
        assert f"inbound-vip|9080|http/v1|{REVIEWS}" in clusters
        assert set(agent.resources(ENDPOINT_TYPE_URL)) == clusters
        assert agent.resources(ADDRESS_TYPE_URL)  # the workload API too
        source.put(
            virtual_service("reviews", [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}])
        )
        await agent.wait_for(
            lambda a: route_config(a).virtual_hosts[1].routes[0].route.cluster.endswith(f"v2|{REVIEWS}")
        )
    finally:
        await agent.stop()


async def test_two_waypoints_do_not_see_each_others_config(
    source_and_plane: tuple[InformerSource, Plane],
) -> None:
    _, plane = source_and_plane
    demo = FakeAgent(plane.target, node=waypoint_node(), type_urls=WAYPOINT_TYPES)
    shop = FakeAgent(plane.target, node=waypoint_node("waypoint", "shop"), type_urls=WAYPOINT_TYPES)
    for agent in (demo, shop):
        agent.start()
    try:
        for agent in (demo, shop):
            await asyncio.wait_for(agent.client.wait_synced(), 5)
        assert set(demo.resources(ROUTE_TYPE_URL)) == {"demo/waypoint"}
        assert set(shop.resources(ROUTE_TYPE_URL)) == {"shop/waypoint"}
        assert not route_config(shop, "shop/waypoint").virtual_hosts  # nothing in shop uses it yet
        assert not shop.resources(CLUSTER_TYPE_URL)
    finally:
        for agent in (demo, shop):
            await agent.stop()


SERVER_NAME = "istiod.istio-system.svc"
TOKENS = {
    "tok-waypoint": Caller(WorkloadIdentity("cluster.local", "demo", "waypoint")),
    "tok-reviews": Caller(WorkloadIdentity("cluster.local", "demo", "reviews")),
}


@pytest.mark.parametrize(
    ("token", "metadata", "refused"),
    [
        ("tok-waypoint", False, None),
        ("tok-waypoint", True, None),
        (
            "tok-reviews",
            True,
            "PERMISSION_DENIED",
        ),  # another service account may not read the waypoint's config
    ],
    ids=["service-account-names-the-gateway", "metadata-matches", "other-service-account"],
)
async def test_a_waypoint_authenticates_as_its_gateways_service_account(
    token: str, metadata: bool, refused: str | None
) -> None:
    pki = TestPki.create()
    leaf = pki.issue_leaf(
        uri_sans=["spiffe://cluster.local/ns/istio-system/sa/istiod"], dns_sans=[SERVER_NAME]
    )
    source = InformerSource(world())
    plane = await start_plane(
        source,  # type: ignore[arg-type]
        credentials=grpc.ssl_server_credentials([(leaf.key_pem, leaf.cert_pem)]),
        authenticator=LabTokenAuthenticator(TOKENS, clock=SystemClock()),
    )
    agent = FakeAgent(
        plane.target,
        node=waypoint_node(metadata=metadata),
        type_urls=WAYPOINT_TYPES,
        tls=client_tls(pki.root_pem),
        server_name=SERVER_NAME,
        call_metadata=(("authorization", f"Bearer {token}"),),
    )
    agent.start()
    try:
        if refused is None:
            await asyncio.wait_for(agent.client.wait_synced(), 5)
            assert set(agent.resources(ROUTE_TYPE_URL)) == {"demo/waypoint"}
        else:
            metric = "istiod_lite_xds_refused_total"
            await agent.wait_for(
                lambda a: (plane.registry.get_sample_value(metric, {"code": refused}) or 0) >= 1
            )
            assert (
                agent.client.last_error.startswith(refused)
                and "waypoint demo/waypoint" in agent.client.last_error
            )
            assert not agent.events
    finally:
        await agent.stop()
        await plane.stop()
