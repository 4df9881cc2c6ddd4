"""Services as kube-proxy (iptables mode) programs them, and names as the cluster DNS answers them (pure).

Each node namespace gets kube-proxy's chains in its nat table: ``KUBE-SERVICES`` matches a VIP and
port and jumps to ``KUBE-SVC-<hash>``, which picks a ready endpoint with ``statistic --mode random``
and jumps to ``KUBE-SEP-<hash>``, which DNATs to the pod. A pod that reaches itself through its
own Service is masqueraded (``KUBE-MARK-MASQ`` / ``KUBE-POSTROUTING``), as kube-proxy does.
Names resolve from per-pod hosts files (``svc``, ``svc.ns``, ``svc.ns.svc``, ``svc.ns.svc.<domain>``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshctl.lab.endpoints import SERVICE_NAME_LABEL
from meshctl.lab.objects import ObjKey

__all__ = [
    "BASE_NAT_RULES",
    "ServicePort",
    "render_hosts",
    "render_nat",
    "render_resolv_conf",
    "service_ports",
]

MASQ_MARK = "0x4000"

BASE_NAT_RULES = "\n".join(
    [
        "*nat",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "COMMIT",
        "",
    ]
)
"""Installed once per node (``iptables-restore --noflush``): the jumps into kube-proxy's chains."""


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of one Service with its ready endpoints."""

    namespace: str
    name: str
    port_name: str
    vip: str
    port: int
    protocol: str
    endpoints: tuple[tuple[str, int], ...]

    @property
    def display(self) -> str:
        """``ns/name:port`` as kube-proxy writes it in rule comments."""
        return f"{self.namespace}/{self.name}:{self.port_name}"


def service_ports(objects: Mapping[ObjKey, dict[str, Any]]) -> list[ServicePort]:
    """Every Service port with a VIP, joined with the ready endpoints of its EndpointSlices."""
    slices: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (kind, namespace, _), obj in sorted(objects.items()):
        if kind == "EndpointSlice":
            service = (obj["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
            if service:
                slices.setdefault((namespace, service), []).append(obj)
    result = []
    for (kind, namespace, name), svc in sorted(objects.items()):
        vip = svc.get("spec", {}).get("clusterIP") if kind == "Service" else None
        if not vip:
            continue
        for port in svc["spec"]["ports"]:
            port_name = port.get("name", "")
            protocol = port.get("protocol", "TCP")
            endpoints = _ready_endpoints(slices.get((namespace, name), []), port_name, protocol)
            result.append(
                ServicePort(namespace, name, port_name, vip, int(port["port"]), protocol, tuple(endpoints))
            )
    return result


def _ready_endpoints(slices: list[dict[str, Any]], port_name: str, protocol: str) -> list[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for eps in slices:
        ports = [
            p
            for p in eps.get("ports") or ()
            if p.get("name", "") == port_name and p.get("protocol", "TCP") == protocol
        ]
        if not ports or ports[0].get("port") is None:
            continue
        for endpoint in eps.get("endpoints") or ():
            if (endpoint.get("conditions") or {}).get("ready", True):
                found.update((addr, int(ports[0]["port"])) for addr in endpoint.get("addresses") or ())
    return sorted(found)


def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def _service_rules(sp: ServicePort) -> tuple[list[str], list[str]]:
    """The chain names and rules of one Service port with endpoints."""
    proto = sp.protocol.lower()
    svc_chain = "KUBE-SVC-" + _hash16(sp.display + proto)
    chains = [svc_chain]
    rules = [
        f"-A KUBE-SERVICES -d {sp.vip}/32 -p {proto} -m comment --comment "
        f'"{sp.display} cluster IP" -m {proto} --dport {sp.port} -j {svc_chain}'
    ]
    count = len(sp.endpoints)
    for i, (ip, port) in enumerate(sp.endpoints):
        sep_chain = "KUBE-SEP-" + _hash16(f"{sp.display}{proto}{ip}:{port}")
        chains.append(sep_chain)
        pick = "" if i == count - 1 else f"-m statistic --mode random --probability {1 / (count - i):0.10f} "
        rules += [
            f'-A {svc_chain} -m comment --comment "{sp.display} -> {ip}:{port}" {pick}-j {sep_chain}',
            f"-A {sep_chain} -s {ip}/32 -j KUBE-MARK-MASQ",
            f"-A {sep_chain} -p {proto} -m {proto} -j DNAT --to-destination {ip}:{port}",
        ]
    return chains, rules


def render_nat(
    ports: Iterable[ServicePort], *, previous_chains: Iterable[str] = ()
) -> tuple[str, frozenset[str]]:
    """The ``iptables-restore --noflush`` text for the nat table, and the per-service chains it declares.

    Chains of ``previous_chains`` that are no longer needed are flushed, then deleted, in the same
    transaction. Services without ready endpoints get no rules.
    """
    chains: list[str] = []
    rules = [
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        "-A KUBE-POSTROUTING -j MASQUERADE",
    ]
    for sp in ports:
        if sp.endpoints:
            names, lines = _service_rules(sp)
            chains += names
            rules += lines
    stale = sorted(set(previous_chains) - set(chains))
    decls = [
        f":{c} - [0:0]" for c in ["KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING", *chains, *stale]
    ]
    text = "\n".join(["*nat", *decls, *rules, *(f"-X {c}" for c in stale), "COMMIT", ""])
    return text, frozenset(chains)


def render_hosts(
    services: Iterable[tuple[str, str, str]], *, namespace: str, pod_name: str, pod_ip: str, domain: str
) -> str:
    """A pod's /etc/hosts: itself, then every Service ``(namespace, name, vip)`` under all its names."""
    lines = [
        "# Kubernetes-managed hosts file (meshctl lab): rewritten when services change.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{pod_name}",
    ]
    for svc_ns, name, vip in sorted(services):
        names = [f"{name}.{svc_ns}.svc.{domain}", f"{name}.{svc_ns}.svc", f"{name}.{svc_ns}"]
        if svc_ns == namespace:
            names.append(name)
        lines.append(f"{vip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def render_resolv_conf(namespace: str, *, domain: str) -> str:
    """A pod's resolv.conf with the Kubernetes search path (names come from the hosts file)."""
    return f"search {namespace}.svc.{domain} svc.{domain} {domain}\nnameserver 127.0.0.1\noptions ndots:5\n"
