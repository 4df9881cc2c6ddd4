"""Address allocation and pod placement (pure functions)."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping, Sequence

from meshctl.lab.errors import LabError

__all__ = ["SERVICE_IP_OFFSET", "allocate_pod_ip", "allocate_service_ip", "place_pod"]

SERVICE_IP_OFFSET = 100
"""Service VIPs start at the 100th address of the range (10.96.0.100 for 10.96.0.0/16)."""


def allocate_pod_ip(cidr: str, used: Collection[str], *, last: str | None = None) -> str:
    """The next free pod address after ``last`` (wrapping), like CNI host-local.

    The first host is the node's gateway and is never handed out. Going round the range instead of
    taking the lowest free address keeps a deleted pod's address (and stale conntrack entries for
    it) unused for as long as possible.
    """
    network = ipaddress.ip_network(cidr)
    hosts = list(network.hosts())[1:]
    if not hosts:
        raise LabError(f"pod range {cidr} is too small", hint="use a /30 or larger range")
    start = 0
    if last is not None:
        last_ip = ipaddress.ip_address(last)
        if last_ip in network:
            start = int(last_ip) - int(hosts[0]) + 1
    taken = set(used)
    for i in range(len(hosts)):
        candidate = str(hosts[(start + i) % len(hosts)])
        if candidate not in taken:
            return candidate
    raise LabError(
        f"pod range {cidr} is full ({len(hosts)} pods)", hint="delete pods or spread them over more nodes"
    )


def allocate_service_ip(cidr: str, used: Collection[str]) -> str:
    """The lowest free service VIP, starting at :data:`SERVICE_IP_OFFSET` into the range."""
    network = ipaddress.ip_network(cidr)
    taken = set(used)
    for offset in range(SERVICE_IP_OFFSET, network.num_addresses - 1):
        candidate = str(network[offset])
        if candidate not in taken:
            return candidate
    raise LabError(f"service range {cidr} is full", hint="delete services you no longer need")


def place_pod(
    nodes: Sequence[str], *, owner_counts: Mapping[str, int], total_counts: Mapping[str, int]
) -> str:
    """The node for a new pod: fewest pods of the same owner, then fewest pods, then node order.

    This spreads each Deployment's replicas round-robin over the nodes and balances the rest.
    """
    if not nodes:
        raise LabError("the lab has no nodes", hint="start it with 'meshctl lab up --nodes N'")
    return min(
        nodes,
        key=lambda n: (owner_counts.get(n, 0), total_counts.get(n, 0), nodes.index(n)),
    )
