"""The workload API's ``waypoint`` on Services and Workloads (where ztunnel sends their traffic)."""

from __future__ import annotations

import random
from ipaddress import ip_address
from typing import Any

import pytest

from istiod_lite.translate import build_resources
from istiod_lite.translate.translator import Translator
from istiod_lite.view import Informers, parse_object, view_from_objects
from mesh.api.istio.workload import workload_pb2 as pb
from mesh.convert import address_from_proto
from mesh.model import Service, Workload
from tests.unit.l7_world import gateway, world
from tests.unit.test_translate_scenarios import endpoint_slice, pod, service
from ztunnel.plan import HboneTunnel, plan_outbound
from ztunnel.state import ProxyState

Obj = dict[str, Any]
WAYPOINT = pb.GatewayAddress(
    hostname=pb.NamespacedHostname(namespace="demo", hostname="waypoint.demo.svc.cluster.local"),
    hbone_mtls_port=15008,
)
REVIEWS = "demo/reviews.demo.svc.cluster.local"
REVIEWS_POD = "Kubernetes//Pod/demo/reviews-v1"


def waypoint_deployment(ready: bool = True) -> list[Obj]:
    """The waypoint's Service and one pod (ready or not) behind it."""
    labels = {
        "gateway.networking.k8s.io/gateway-name": "waypoint",
        "istio.io/dataplane-mode": "none",
        "service.istio.io/canonical-name": "waypoint",
    }
    return [
        service("waypoint", ip="10.96.0.99", ports=[{"name": "mesh", "port": 15008, "appProtocol": "hbone"}]),
        pod("waypoint-abc", ip="10.244.1.99", labels=labels, sa="waypoint", ready=ready, enrolled=False),
        endpoint_slice("waypoint", endpoints=[("waypoint-abc", "10.244.1.99", ready)]),
    ]


def labelled(obj: Obj, **labels: str) -> Obj:
    obj["metadata"].setdefault("labels", {}).update(labels)
    return obj


def resolve(*extra: Obj, use_waypoint: str | None = "waypoint") -> tuple[pb.Address, pb.Address, list[str]]:
    res = build_resources(view_from_objects(world(*extra, use_waypoint=use_waypoint)))
    return res.addresses[REVIEWS], res.addresses[REVIEWS_POD], [str(w) for w in res.warnings]


def reviews(**labels: str) -> Obj:
    return labelled(service("reviews", ip="10.96.0.20", ports=[{"name": "http", "port": 9080}]), **labels)


USE = "istio.io/use-waypoint"


@pytest.mark.parametrize(
    ("extra", "use_waypoint", "service_waypoint", "pod_waypoint"),
    [
        pytest.param(waypoint_deployment(), "waypoint", True, False, id="namespace-label"),
        pytest.param(waypoint_deployment(ready=False), "waypoint", False, False, id="not-programmed-yet"),
        pytest.param(
            [*waypoint_deployment(), reviews(**{USE: "none"})],
            "waypoint",
            False,
            False,
            id="service-opts-out",
        ),
        pytest.param(
            [*waypoint_deployment(), reviews(**{USE: "waypoint"})], None, True, False, id="service-label"
        ),
        pytest.param(
            [*waypoint_deployment(), gateway(**{"istio.io/waypoint-for": "workload"})],
            "waypoint",
            False,
            True,
            id="workload-waypoint",
        ),
        pytest.param(
            [*waypoint_deployment(), gateway(**{"istio.io/waypoint-for": "all"})],
            "waypoint",
            True,
            True,
            id="all",
        ),
        pytest.param(
            [*waypoint_deployment(), gateway(**{"istio.io/waypoint-for": "none"})],
            "waypoint",
            False,
            False,
            id="none",
        ),
    ],
)
def test_the_waypoint_field(
    extra: list[Obj], use_waypoint: str | None, service_waypoint: bool, pod_waypoint: bool
) -> None:
    service_address, pod_address, warnings = resolve(*extra, use_waypoint=use_waypoint)
    assert service_address.service.HasField("waypoint") is service_waypoint
    assert pod_address.workload.HasField("waypoint") is pod_waypoint
    if service_waypoint:
        assert service_address.service.waypoint == WAYPOINT
    if pod_waypoint:
        assert pod_address.workload.waypoint == WAYPOINT
    assert not warnings


def test_a_gateway_status_address_programs_the_waypoint() -> None:
    programmed = gateway()
    programmed["status"] = {"addresses": [{"type": "IPAddress", "value": "10.96.0.99"}]}
    service_address, _, _ = resolve(programmed)
    assert service_address.service.waypoint == WAYPOINT


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            [reviews(**{USE: "nowhere"})],
            "waypoint demo/nowhere does not exist; traffic goes straight to the pods",
        ),
        (
            [*waypoint_deployment(), gateway(cls="istio")],
            "Gateway demo/waypoint is not a waypoint (gatewayClassName 'istio'",
        ),
    ],
    ids=["missing-gateway", "gateway-of-another-class"],
)
def test_a_waypoint_that_cannot_be_used_is_a_warning_naming_the_service(extra: list[Obj], says: str) -> None:
    service_address, _, warnings = resolve(*extra)
    assert not service_address.service.HasField("waypoint")
    mine = [
        w for w in warnings if w.startswith("Service demo/reviews: metadata.labels[istio.io/use-waypoint]")
    ]
    assert len(mine) == 1 and says in mine[0]


def test_the_waypoint_follows_label_changes_through_the_translator() -> None:
    informers = Informers()
    sink = informers.sink("t")
    for obj in world(*waypoint_deployment()):
        sink.upsert(parse_object(obj))
    sink.mark_synced()
    translator = Translator()
    assert translator.build(informers.view()).addresses[REVIEWS].service.HasField("waypoint")
    sink.upsert(parse_object(reviews(**{USE: "none"})))
    assert not translator.build(informers.view()).addresses[REVIEWS].service.HasField("waypoint")
    sink.upsert(parse_object(reviews()))
    assert translator.build(informers.view()).addresses[REVIEWS].service.HasField("waypoint")


def test_the_waypoints_own_service_and_pods_never_use_a_waypoint() -> None:
    extra = [*waypoint_deployment(), gateway(**{"istio.io/waypoint-for": "all"})]
    extra[0]["metadata"]["labels"] = {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    res = build_resources(view_from_objects(world(*extra)))
    assert not res.addresses["demo/waypoint.demo.svc.cluster.local"].service.HasField("waypoint")
    assert not res.addresses["Kubernetes//Pod/demo/waypoint-abc"].workload.HasField("waypoint")
    assert res.addresses[REVIEWS].service.waypoint == WAYPOINT


def ztunnel_state(*extra: Obj) -> ProxyState:
    """What a ztunnel holds after converting this translation's Address resources."""
    res = build_resources(view_from_objects(world(*extra)))
    converted = [address_from_proto(name, address) for name, address in res.addresses.items()]
    return ProxyState.build(
        workloads=[a for a in converted if isinstance(a, Workload)],
        services=[a for a in converted if isinstance(a, Service)],
    )


def test_ztunnel_sends_service_traffic_to_the_waypoint_and_the_waypoints_traffic_to_the_pods() -> None:
    state = ztunnel_state(*waypoint_deployment())
    client = state.workload_at(ip_address("10.244.2.21"), network="")
    waypoint = state.workload_at(ip_address("10.244.1.99"), network="")
    assert client is not None and waypoint is not None
    via = plan_outbound(
        state, source=client, destination=ip_address("10.96.0.20"), port=9080, rng=random.Random(1)
    )
    assert isinstance(via, HboneTunnel) and via.via_waypoint
    assert (str(via.address), via.port, via.authority) == ("10.244.1.99", 15008, "10.96.0.20:9080")
    assert via.identities == ("spiffe://cluster.local/ns/demo/sa/waypoint",)
    onward = plan_outbound(
        state, source=waypoint, destination=ip_address("10.96.0.20"), port=9080, rng=random.Random(1)
    )
    assert isinstance(onward, HboneTunnel) and not onward.via_waypoint
    assert str(onward.address) in ("10.244.1.11", "10.244.1.12") and onward.port == 15008
