"""Deciding where an outbound connection goes (pure): ztunnel's ``build_request``.

Given the state, the source workload and the original destination, ``plan_outbound`` returns a
plain value: an HBONE tunnel to a pod (or its waypoint), plain TCP to a destination outside the
mesh, or a refusal. Sockets act on the plan elsewhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mesh.model import (
    GatewayRef,
    IpAddress,
    LoadBalancerMode,
    Service,
    TunnelProtocol,
    Workload,
)
from mesh.ports import INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT
from ztunnel.state import ProxyState

__all__ = [
    "PROXY_PORTS",
    "DirectTcp",
    "HboneTunnel",
    "OutboundPlan",
    "Refuse",
    "plan_outbound",
]

PROXY_PORTS = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT})


@dataclass(frozen=True, slots=True)
class HboneTunnel:
    """A CONNECT stream to ``address:15008`` for ``authority``; the peer must be one of ``identities``."""

    address: IpAddress
    port: int
    authority: str
    identities: tuple[str, ...]
    workload: Workload
    service: Service | None
    via_waypoint: bool = False


@dataclass(frozen=True, slots=True)
class DirectTcp:
    """Plain TCP to a destination that does not speak HBONE (outside the mesh)."""

    address: IpAddress
    port: int
    workload: Workload | None
    service: Service | None


@dataclass(frozen=True, slots=True)
class Refuse:
    """No connection: the reason goes to the access log as the error."""

    reason: str


OutboundPlan = HboneTunnel | DirectTcp | Refuse


def plan_outbound(
    state: ProxyState,
    *,
    source: Workload,
    destination: IpAddress,
    port: int,
    rng: random.Random,
) -> OutboundPlan:
    """Plans one outbound connection from ``source`` to the original ``destination:port``."""
    if port in PROXY_PORTS and state.workload_at(destination, network=source.network) is not None:
        return Refuse(f"port {port} is a ztunnel port and is never proxied to")
    service = state.service_at(destination, network=source.network)
    if service is not None:
        return _to_service(state, source, service=service, vip=destination, port=port, rng=rng)
    workload = state.workload_at(destination, network=source.network)
    if workload is None:
        return DirectTcp(destination, port, None, None)
    if workload.waypoint is not None and not _is_waypoint_of(source, workload.waypoint):
        authority = f"{_host(destination)}:{port}"
        return _via_waypoint(
            state, source, waypoint=workload.waypoint, authority=authority, workload=workload, service=None
        )
    return _to_workload(workload, destination, port, None)


def _to_service(
    state: ProxyState,
    source: Workload,
    *,
    service: Service,
    vip: IpAddress,
    port: int,
    rng: random.Random,
) -> OutboundPlan:
    if service.waypoint is not None and not _is_waypoint_of(source, service.waypoint):
        authority = f"{_host(vip)}:{port}"
        return _via_waypoint(
            state, source, waypoint=service.waypoint, authority=authority, workload=None, service=service
        )
    if not any(p.service_port == port for p in service.ports):
        return Refuse(f"service {service.hostname} has no port {port}")
    candidates = [
        w
        for w in state.endpoints(service.key)
        if (w.healthy or not service.only_healthy) and w.addresses and w.network == source.network
    ]
    if not candidates:
        if service.lb_mode is LoadBalancerMode.PASSTHROUGH:
            return DirectTcp(vip, port, None, service)
        return Refuse(f"service {service.hostname} has no healthy endpoint")
    workload = rng.choice(candidates)
    target = workload.target_port(service.key, port) or port
    plan = _to_workload(workload, workload.addresses[0], target, service)
    if isinstance(plan, HboneTunnel) and service.subject_alt_names:
        extra = tuple(san for san in service.subject_alt_names if san not in plan.identities)
        return HboneTunnel(
            plan.address, plan.port, plan.authority, plan.identities + extra, workload, service
        )
    return plan


def _to_workload(workload: Workload, address: IpAddress, port: int, service: Service | None) -> OutboundPlan:
    if port in PROXY_PORTS:
        return Refuse(f"port {port} is a ztunnel port and is never proxied to")
    if workload.protocol is TunnelProtocol.HBONE:
        authority = f"{_host(address)}:{port}"
        return HboneTunnel(address, INBOUND_HBONE_PORT, authority, (workload.spiffe_uri,), workload, service)
    return DirectTcp(address, port, workload, service)


def _via_waypoint(
    state: ProxyState,
    source: Workload,
    *,
    waypoint: GatewayRef,
    authority: str,
    workload: Workload | None,
    service: Service | None,
) -> OutboundPlan:
    target = _resolve_waypoint(state, source, waypoint)
    if target is None:
        return Refuse("the destination uses a waypoint that has no ready endpoint")
    address, waypoint_workload = target
    identities = (waypoint_workload.spiffe_uri,)
    return HboneTunnel(
        address, waypoint.hbone_port, authority, identities, workload or waypoint_workload, service, True
    )


def _resolve_waypoint(
    state: ProxyState, source: Workload, waypoint: GatewayRef
) -> tuple[IpAddress, Workload] | None:
    if waypoint.address is not None:
        workload = state.workload_at(waypoint.address, network=source.network)
        return (waypoint.address, workload) if workload is not None else None
    key = f"{waypoint.namespace}/{waypoint.hostname}"
    for workload in state.endpoints(key):
        if workload.healthy and workload.addresses:
            return workload.addresses[0], workload
    return None


def _is_waypoint_of(source: Workload, waypoint: GatewayRef) -> bool:
    """Traffic that comes from the waypoint itself is not sent back to it (no loop)."""
    if waypoint.address is not None:
        return waypoint.address in source.addresses
    return (
        bool(waypoint.hostname)
        and source.namespace == waypoint.namespace
        and (waypoint.hostname.split(".", 1)[0] == source.canonical_name)
    )


def _host(address: IpAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)
