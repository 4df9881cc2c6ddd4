"""``/config_dump``: ztunnel's state as JSON, in ztunnel's camelCase shape (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mesh.model import Authorization, GatewayRef, Match, Service, StringMatch, Workload
from ztunnel.state import ProxyState

__all__ = ["config_dump", "policy_json", "service_json", "workload_json"]


def config_dump(
    state: ProxyState,
    *,
    certificates: Iterable[Mapping[str, Any]] = (),
    proxies: Iterable[Mapping[str, Any]] = (),
    config_version: str = "",
) -> dict[str, Any]:
    """Everything ztunnel knows: workloads, services, policies, certificates, pod proxies."""
    return {
        "configVersion": config_version,
        "workloads": [workload_json(w) for w in sorted(state.workloads.values(), key=lambda w: w.uid)],
        "services": [service_json(s) for s in sorted(state.services.values(), key=lambda s: s.key)],
        "policies": [policy_json(p) for p in sorted(state.policies.values(), key=lambda p: p.key)],
        "certificates": list(certificates),
        "proxies": list(proxies),
    }


def workload_json(w: Workload) -> dict[str, Any]:
    """One workload, as ztunnel's config dump shows it."""
    return {
        "uid": w.uid,
        "workloadIps": [str(ip) for ip in w.addresses],
        "protocol": w.protocol.value,
        "name": w.name,
        "namespace": w.namespace,
        "serviceAccount": w.service_account,
        "workloadName": w.workload_name,
        "workloadType": w.workload_type,
        "canonicalName": w.canonical_name,
        "canonicalRevision": w.canonical_revision,
        "clusterId": w.cluster_id,
        "trustDomain": w.trust_domain,
        "node": w.node,
        "network": w.network,
        "status": "Healthy" if w.healthy else "Unhealthy",
        "waypoint": _gateway(w.waypoint),
        "services": {key: {str(p.service_port): p.target_port for p in ports} for key, ports in w.services},
        "authorizationPolicies": list(w.authorization_policies),
    }


def service_json(s: Service) -> dict[str, Any]:
    """One service, as ztunnel's config dump shows it."""
    return {
        "name": s.name,
        "namespace": s.namespace,
        "hostname": s.hostname,
        "vips": [f"{network}/{ip}" for network, ip in s.vips],
        "ports": {str(p.service_port): p.target_port for p in s.ports},
        "subjectAltNames": list(s.subject_alt_names),
        "waypoint": _gateway(s.waypoint),
        "loadBalancer": {
            "mode": s.lb_mode.value,
            "healthPolicy": "OnlyHealthy" if s.only_healthy else "AllowAll",
        },
    }


def policy_json(p: Authorization) -> dict[str, Any]:
    """One policy, in the local config file's shape (rules -> clauses -> matches)."""
    return {
        "name": p.name,
        "namespace": p.namespace,
        "scope": p.scope.value,
        "action": p.action.value,
        "dryRun": p.dry_run,
        "rules": [[[_match(m) for m in clause] for clause in rule] for rule in p.rules],
    }


def _gateway(g: GatewayRef | None) -> dict[str, Any] | None:
    if g is None:
        return None
    destination = str(g.address) if g.address is not None else f"{g.namespace}/{g.hostname}"
    return {"destination": destination, "hboneMtlsPort": g.hbone_port}


def _string(s: StringMatch) -> Any:
    return "Presence" if s.kind == "presence" else {s.kind.capitalize(): s.value}


def _match(m: Match) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "namespaces": [_string(s) for s in m.namespaces],
        "notNamespaces": [_string(s) for s in m.not_namespaces],
        "principals": [_string(s) for s in m.principals],
        "notPrincipals": [_string(s) for s in m.not_principals],
        "sourceIps": [str(n) for n in m.source_ips],
        "notSourceIps": [str(n) for n in m.not_source_ips],
        "destinationIps": [str(n) for n in m.destination_ips],
        "notDestinationIps": [str(n) for n in m.not_destination_ips],
        "destinationPorts": list(m.destination_ports),
        "notDestinationPorts": list(m.not_destination_ports),
        "serviceAccounts": [
            {"namespace": a.namespace, "serviceAccount": a.service_account} for a in m.service_accounts
        ],
        "notServiceAccounts": [
            {"namespace": a.namespace, "serviceAccount": a.service_account} for a in m.not_service_accounts
        ],
    }
    return {key: value for key, value in fields.items() if value}
