"""Building and removing the lab's cluster network (bridge namespace and node namespaces)."""

from __future__ import annotations

import asyncio
import random
import shutil
from typing import Any

from meshctl.lab._meta import new_uid, rfc3339
from meshctl.lab.ipam import allocate_pod_ip
from meshctl.lab.kubeproxy import BASE_NAT_RULES
from meshctl.lab.netops import ip_batch, list_netns, netns_exec, run_cmd
from meshctl.lab.pods import ETC_NETNS
from meshctl.lab.settings import LabSettings, NodeSettings
from meshctl.lab.topology import BRIDGE_SYSCTLS, NODE_SYSCTLS, bridge_lines, node_lines

__all__ = ["NETNS_ANNOTATION", "PodIpam", "build_network", "node_object", "remove_network"]

NETNS_ANNOTATION = "lab.meshctl.io/netns"


async def build_network(settings: LabSettings) -> None:
    """Creates the bridge namespace and the nodes, with addresses, routes, sysctls and base rules."""
    names = [settings.bridge_netns, *(n.netns for n in settings.nodes)]
    await ip_batch([f"netns add {name}" for name in names])
    await ip_batch(bridge_lines(settings), netns=settings.bridge_netns)
    await asyncio.gather(*(ip_batch(node_lines(settings, n), netns=n.netns) for n in settings.nodes))
    await asyncio.gather(
        netns_exec(settings.bridge_netns, ["sysctl", "-qw", *BRIDGE_SYSCTLS]),
        *(_prepare_node(n) for n in settings.nodes),
    )


async def _prepare_node(node: NodeSettings) -> None:
    await netns_exec(node.netns, ["sysctl", "-qw", *NODE_SYSCTLS])
    await netns_exec(node.netns, ["iptables-restore", "--noflush"], stdin=BASE_NAT_RULES)


async def remove_network(settings: LabSettings) -> None:
    """Deletes every namespace and /etc/netns entry with the lab's prefix (what is left of it)."""
    names = list_netns(settings.prefix)
    if names:
        await run_cmd(["ip", "-force", "-batch", "-"], stdin="".join(f"netns del {n}\n" for n in names))
    for entry in ETC_NETNS.glob(f"{settings.prefix}*"):
        shutil.rmtree(entry, ignore_errors=True)


def node_object(node: NodeSettings, *, rng: random.Random, now: float) -> dict[str, Any]:
    """The Node object for a lab node (Ready, with its address, pod range and namespace)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "uid": new_uid(rng),
            "creationTimestamp": rfc3339(now),
            "labels": {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"},
            "annotations": {NETNS_ANNOTATION: node.netns},
        },
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.address},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


class PodIpam:
    """The daemon's in-memory pod address book, one range per node (host-local style)."""

    def __init__(self, settings: LabSettings) -> None:
        self._cidrs = {n.name: n.pod_cidr for n in settings.nodes}
        self._used: dict[str, set[str]] = {n.name: set() for n in settings.nodes}
        self._last: dict[str, str] = {}

    def allocate(self, node: str) -> str:
        """Takes the next free address of ``node``'s range."""
        ip = allocate_pod_ip(self._cidrs[node], self._used[node], last=self._last.get(node))
        self._used[node].add(ip)
        self._last[node] = ip
        return ip

    def release(self, node: str, ip: str) -> None:
        """Returns an address to ``node``'s range."""
        self._used[node].discard(ip)
