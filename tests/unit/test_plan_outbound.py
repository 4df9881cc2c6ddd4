"""plan_outbound: where each outbound connection goes, as data (ztunnel's build_request tests)."""

from __future__ import annotations

import dataclasses
import random
from ipaddress import ip_address

import pytest

from mesh.model import GatewayRef, LoadBalancerMode, PortMapping, Service, TunnelProtocol, Workload
from ztunnel.plan import DirectTcp, HboneTunnel, OutboundPlan, Refuse, plan_outbound
from ztunnel.state import ProxyState

SVC_KEY = "demo/server.demo.svc.cluster.local"


def pod(name: str, ip: str, **kw: object) -> Workload:
    base = Workload(
        uid=f"Kubernetes//Pod/demo/{name}",
        name=name,
        namespace="demo",
        addresses=(ip_address(ip),),
        service_account=name.split("-", maxsplit=1)[0],
        protocol=TunnelProtocol.HBONE,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


CLIENT = pod("client-1", "10.244.1.5")
SERVER_V1 = pod("server-v1", "10.244.2.7", services=((SVC_KEY, (PortMapping(80, 8080),)),))
SERVER_V2 = pod("server-v2", "10.244.1.8", services=((SVC_KEY, (PortMapping(80, 8080),)),))
LEGACY = pod("legacy-1", "10.244.2.9", protocol=TunnelProtocol.NONE)
UNHEALTHY = pod("server-v3", "10.244.2.10", healthy=False, services=((SVC_KEY, (PortMapping(80, 8080),)),))
SERVICE = Service(
    name="server",
    namespace="demo",
    hostname="server.demo.svc.cluster.local",
    vips=(("", ip_address("10.96.0.10")),),
    ports=(PortMapping(80, 8080),),
)
WAYPOINT = pod("waypoint-1", "10.244.1.20", service_account="waypoint")


def state(*workloads: Workload, services: tuple[Service, ...] = (SERVICE,)) -> ProxyState:
    return ProxyState.build(workloads=(CLIENT, *workloads), services=services)


def plan(s: ProxyState, dst: str, port: int, *, source: Workload = CLIENT, seed: int = 1) -> OutboundPlan:
    return plan_outbound(s, source=source, destination=ip_address(dst), port=port, rng=random.Random(seed))


def test_mesh_pod_by_ip_goes_over_hbone() -> None:
    result = plan(state(SERVER_V1), "10.244.2.7", 8080)
    assert isinstance(result, HboneTunnel)
    assert (str(result.address), result.port, result.authority) == ("10.244.2.7", 15008, "10.244.2.7:8080")
    assert result.identities == ("spiffe://cluster.local/ns/demo/sa/server",)
    assert result.service is None


def test_service_vip_resolves_to_endpoint_and_target_port() -> None:
    result = plan(state(SERVER_V1), "10.96.0.10", 80)
    assert isinstance(result, HboneTunnel)
    assert result.authority == "10.244.2.7:8080"
    assert result.service == SERVICE


def test_service_load_balances_over_healthy_endpoints_only() -> None:
    s = state(SERVER_V1, SERVER_V2, UNHEALTHY)
    chosen = set()
    for seed in range(50):
        result = plan(s, "10.96.0.10", 80, seed=seed)
        assert isinstance(result, HboneTunnel)
        chosen.add(str(result.address))
    assert chosen == {"10.244.2.7", "10.244.1.8"}


def test_allow_all_health_policy_includes_unhealthy() -> None:
    allow_all = dataclasses.replace(SERVICE, only_healthy=False)
    result = plan(state(UNHEALTHY, services=(allow_all,)), "10.96.0.10", 80)
    assert isinstance(result, HboneTunnel) and str(result.address) == "10.244.2.10"


@pytest.mark.parametrize(
    ("dst", "port", "expected"),
    [
        ("10.244.2.9", 6379, DirectTcp),  # a workload without HBONE: plain TCP
        ("10.1.2.3", 443, DirectTcp),  # outside the mesh
        ("10.96.0.10", 81, Refuse),  # the service has no such port
        ("10.244.2.7", 15008, Refuse),  # never proxied to ztunnel ports
        ("10.244.2.7", 15001, Refuse),
        ("10.244.2.7", 15006, Refuse),
    ],
)
def test_kinds_of_destination(dst: str, port: int, expected: type) -> None:
    assert isinstance(plan(state(SERVER_V1, LEGACY), dst, port), expected)


def test_service_without_endpoints_is_refused_unless_passthrough() -> None:
    assert isinstance(plan(state(), "10.96.0.10", 80), Refuse)
    passthrough = dataclasses.replace(SERVICE, lb_mode=LoadBalancerMode.PASSTHROUGH)
    result = plan(state(services=(passthrough,)), "10.96.0.10", 80)
    assert isinstance(result, DirectTcp) and str(result.address) == "10.96.0.10"


def test_service_target_port_to_a_ztunnel_port_is_refused() -> None:
    looping = pod("server-v1", "10.244.2.7", services=((SVC_KEY, (PortMapping(80, 15006),)),))
    assert isinstance(plan(state(looping), "10.96.0.10", 80), Refuse)


def test_service_subject_alt_names_are_expected_too() -> None:
    with_sans = dataclasses.replace(SERVICE, subject_alt_names=("spiffe://cluster.local/ns/demo/sa/alt",))
    result = plan(state(SERVER_V1, services=(with_sans,)), "10.96.0.10", 80)
    assert isinstance(result, HboneTunnel)
    assert result.identities == (
        "spiffe://cluster.local/ns/demo/sa/server",
        "spiffe://cluster.local/ns/demo/sa/alt",
    )


def test_service_with_waypoint_goes_to_the_waypoint_with_the_original_authority() -> None:
    with_waypoint = dataclasses.replace(SERVICE, waypoint=GatewayRef(ip_address("10.244.1.20"), "", ""))
    result = plan(state(SERVER_V1, WAYPOINT, services=(with_waypoint,)), "10.96.0.10", 80)
    assert isinstance(result, HboneTunnel) and result.via_waypoint
    assert (str(result.address), result.authority) == ("10.244.1.20", "10.96.0.10:80")
    assert result.identities == ("spiffe://cluster.local/ns/demo/sa/waypoint",)


def test_traffic_from_the_waypoint_goes_to_the_endpoint() -> None:
    with_waypoint = dataclasses.replace(SERVICE, waypoint=GatewayRef(ip_address("10.244.1.20"), "", ""))
    result = plan(state(SERVER_V1, WAYPOINT, services=(with_waypoint,)), "10.96.0.10", 80, source=WAYPOINT)
    assert isinstance(result, HboneTunnel) and not result.via_waypoint
    assert result.authority == "10.244.2.7:8080"


def test_waypoint_without_endpoint_is_refused() -> None:
    with_waypoint = dataclasses.replace(SERVICE, waypoint=GatewayRef(ip_address("10.244.1.99"), "", ""))
    assert isinstance(plan(state(SERVER_V1, services=(with_waypoint,)), "10.96.0.10", 80), Refuse)


def test_ipv6_authority_is_bracketed() -> None:
    v6 = pod("server-v6", "fd00::7")
    result = plan(state(v6), "fd00::7", 8080)
    assert isinstance(result, HboneTunnel) and result.authority == "[fd00::7]:8080"
