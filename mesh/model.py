"""The data plane's model of the mesh: frozen values converted from the xDS resources.

ztunnel and the waypoint read these, never the protobuf messages: conversion
(``mesh.convert``) validates every field once, so a decision never meets a half-valid value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from mesh.identity.principals import ServiceAccountMatch, StringMatch
from mesh.ports import INBOUND_HBONE_PORT

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "Action",
    "Authorization",
    "GatewayRef",
    "IpAddress",
    "IpNetwork",
    "LoadBalancerMode",
    "Match",
    "PortMapping",
    "Scope",
    "Service",
    "ServiceAccountMatch",
    "StringMatch",
    "TunnelProtocol",
    "Workload",
]

DEFAULT_TRUST_DOMAIN = "cluster.local"

IpAddress = IPv4Address | IPv6Address
IpNetwork = IPv4Network | IPv6Network


class TunnelProtocol(enum.Enum):
    """How a workload is reached: plain TCP, or HBONE on port 15008."""

    NONE = "TCP"
    HBONE = "HBONE"


class LoadBalancerMode(enum.Enum):
    """Service load-balancing mode; PASSTHROUGH sends to the original address when no endpoint."""

    UNSPECIFIED = "UNSPECIFIED"
    STRICT = "STRICT"
    FAILOVER = "FAILOVER"
    PASSTHROUGH = "PASSTHROUGH"


class Scope(enum.Enum):
    """Which workloads an authorization policy applies to."""

    GLOBAL = "Global"
    NAMESPACE = "Namespace"
    WORKLOAD_SELECTOR = "WorkloadSelector"


class Action(enum.Enum):
    """What a matching policy does."""

    ALLOW = "Allow"
    DENY = "Deny"


@dataclass(frozen=True, slots=True)
class PortMapping:
    """A service port and the workload port it maps to (0 = same as the service port)."""

    service_port: int
    target_port: int


@dataclass(frozen=True, slots=True)
class GatewayRef:
    """Where a waypoint (or network gateway) is: an address or a service host name."""

    address: IpAddress | None
    hostname: str
    namespace: str
    hbone_port: int = INBOUND_HBONE_PORT


@dataclass(frozen=True, slots=True)
class Workload:
    """One pod (or VM) as ztunnel knows it."""

    uid: str
    name: str
    namespace: str
    addresses: tuple[IpAddress, ...]
    service_account: str = "default"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    node: str = ""
    network: str = ""
    protocol: TunnelProtocol = TunnelProtocol.NONE
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_name: str = ""
    workload_type: str = "deployment"
    cluster_id: str = "Kubernetes"
    healthy: bool = True
    services: tuple[tuple[str, tuple[PortMapping, ...]], ...] = ()
    """(``namespace/hostname``, port mappings) pairs, sorted by key."""
    authorization_policies: tuple[str, ...] = ()
    waypoint: GatewayRef | None = None

    @property
    def spiffe_uri(self) -> str:
        """The SPIFFE ID this workload's certificate carries."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def target_port(self, service_key: str, service_port: int) -> int | None:
        """The workload port behind ``service_port`` of the service ``service_key``, if it backs it."""
        for key, ports in self.services:
            if key == service_key:
                for mapping in ports:
                    if mapping.service_port == service_port:
                        return mapping.target_port or service_port
        return None


@dataclass(frozen=True, slots=True)
class Service:
    """A service: its VIPs, ports and who may serve it."""

    name: str
    namespace: str
    hostname: str
    vips: tuple[tuple[str, IpAddress], ...]
    """(network, address) pairs."""
    ports: tuple[PortMapping, ...]
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayRef | None = None
    lb_mode: LoadBalancerMode = LoadBalancerMode.UNSPECIFIED
    only_healthy: bool = True

    @property
    def key(self) -> str:
        """The resource name: ``namespace/hostname``."""
        return f"{self.namespace}/{self.hostname}"


@dataclass(frozen=True, slots=True)
class Match:
    """Fields are AND'ed; values inside a field are OR'ed; empty fields are not checked."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[IpNetwork, ...] = ()
    not_source_ips: tuple[IpNetwork, ...] = ()
    destination_ips: tuple[IpNetwork, ...] = ()
    not_destination_ips: tuple[IpNetwork, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Authorization:
    """An L4 authorization policy: rules are OR'ed, clauses AND'ed, matches OR'ed."""

    name: str
    namespace: str
    scope: Scope
    action: Action
    rules: tuple[tuple[tuple[Match, ...], ...], ...] = field(default=())
    dry_run: bool = False

    @property
    def key(self) -> str:
        """The resource name: ``namespace/name``."""
        return f"{self.namespace}/{self.name}"
