"""Deciding an inbound connection (pure): HBONE CONNECT on 15008 or plaintext on 15006.

HBONE answers follow Istio: 400 for a bad authority, an IP mismatch or a ztunnel port, 503 when
the local workload is unknown, 401 when L4 policy denies, else 200 and the target to connect to.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mesh.identity.spiffe import WorkloadIdentity
from mesh.model import IpAddress, Workload
from mesh.policy import ConnectionAttributes, Decision, applicable_policies, authorize
from ztunnel.plan import PROXY_PORTS
from ztunnel.state import ProxyState

__all__ = ["Admit", "InboundRefusal", "parse_authority", "plan_inbound_hbone", "plan_inbound_plaintext"]


@dataclass(frozen=True, slots=True)
class Admit:
    """Connect to ``address:port`` inside the pod and relay."""

    address: IpAddress
    port: int
    workload: Workload
    decision: Decision


@dataclass(frozen=True, slots=True)
class InboundRefusal:
    """Answer ``status`` (HBONE) or close (plaintext); ``flag`` is the metrics response flag."""

    status: int
    reason: str
    flag: str
    workload: Workload | None = None
    decision: Decision | None = None


def parse_authority(authority: str) -> tuple[IpAddress, int] | None:
    """``ip:port`` or ``[v6]:port`` to a pair; None for anything else (host names included)."""
    host, sep, port_text = authority.rpartition(":")
    if not sep or not port_text.isdigit() or len(port_text) > 5:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    port = int(port_text)
    return (address, port) if 0 < port < 65536 else None


def plan_inbound_hbone(
    state: ProxyState,
    *,
    authority: str,
    arrived_on: IpAddress,
    source_ip: IpAddress,
    peer: WorkloadIdentity,
) -> Admit | InboundRefusal:
    """Decides a CONNECT that arrived on ``arrived_on:15008`` from the verified ``peer``."""
    target = parse_authority(authority)
    if target is None:
        return InboundRefusal(400, f"bad CONNECT authority {authority!r}", "CONNECT")
    address, port = target
    if address != arrived_on:
        return InboundRefusal(
            400, f"authority IP {address} is not the IP the connection arrived on", "CONNECT"
        )
    if port in PROXY_PORTS:
        return InboundRefusal(400, f"port {port} is a ztunnel port", "CONNECT")
    attributes = ConnectionAttributes(
        source_ip=source_ip,
        destination_ip=address,
        destination_port=port,
        source_trust_domain=peer.trust_domain,
        source_namespace=peer.namespace,
        source_service_account=peer.service_account,
    )
    return _decide(state, attributes, status_denied=401)


def plan_inbound_plaintext(
    state: ProxyState, *, destination: IpAddress, port: int, source_ip: IpAddress
) -> Admit | InboundRefusal:
    """Decides plaintext that was captured on 15006; STRICT workloads refuse it by policy."""
    if port in PROXY_PORTS:
        return InboundRefusal(400, f"port {port} is a ztunnel port", "CONNECT")
    attributes = ConnectionAttributes(source_ip=source_ip, destination_ip=destination, destination_port=port)
    return _decide(state, attributes, status_denied=401)


def _decide(
    state: ProxyState, attributes: ConnectionAttributes, *, status_denied: int
) -> Admit | InboundRefusal:
    workload = state.workload_at(attributes.destination_ip)
    if workload is None:
        return InboundRefusal(503, f"no local workload has address {attributes.destination_ip}", "CONNECT")
    decision = authorize(applicable_policies(workload, state.policies), attributes)
    if not decision.allowed:
        reason = f"{decision.reason} ({decision.policy})" if decision.policy else decision.reason
        return InboundRefusal(status_denied, reason, "DENY", workload, decision)
    return Admit(attributes.destination_ip, attributes.destination_port, workload, decision)
