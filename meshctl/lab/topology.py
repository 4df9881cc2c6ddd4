"""The lab's network as ``ip -batch`` command lines (pure): the bridge, the nodes, one pod.

Layout: a bridge ``br0`` in the lab namespace ``<id>-net``; each node namespace has ``eth0`` on
that bridge (``10.240.0.(10+N)/24``) and a route to every other node's pod range via that node.
Pods use routed veths (no bridge in the node, so br_netfilter never applies there): the pod has
``eth0`` with ``<ip>/32`` and a default route via the node's gateway address, which sits as a /32 on
every pod-facing veth in the node, next to a /32 route to the pod.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from meshctl.lab.settings import LabSettings, NodeSettings

__all__ = [
    "BRIDGE",
    "BRIDGE_SYSCTLS",
    "NODE_SYSCTLS",
    "bridge_lines",
    "control_plane_lines",
    "node_lines",
    "pod_lines",
    "pod_node_lines",
]

BRIDGE = "br0"
NODE_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
BRIDGE_SYSCTLS = ("net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0")
"""br_netfilter is built in and on by default in every namespace; the lab bridge needs no iptables."""


def bridge_lines(settings: LabSettings) -> list[str]:
    """Run in the lab namespace: the bridge and one veth per node (node end becomes the node's eth0)."""
    lines = ["link set lo up", f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up"]
    for node in settings.nodes:
        lines.append(f"link add {node.uplink} type veth peer name eth0 netns {node.netns}")
        lines.append(f"link set {node.uplink} master {BRIDGE} up")
    return lines


def control_plane_lines(settings: LabSettings, addresses: Sequence[str]) -> list[str]:
    """Run in the lab namespace when the mesh is on: the control plane's addresses (one per
    istiod_lite replica) on the bridge, and a route to each node's pod range via that node, so pods
    (a waypoint: not captured) reach istiod_lite and its answers find their way back."""
    prefix = ipaddress.ip_network(settings.node_cidr).prefixlen
    lines = [f"addr add {address}/{prefix} dev {BRIDGE}" for address in addresses]
    lines += [f"route add {node.pod_cidr} via {node.address} dev {BRIDGE}" for node in settings.nodes]
    return lines


def node_lines(settings: LabSettings, node: NodeSettings) -> list[str]:
    """Run in a node namespace: its bridge address and routes to the other nodes' pod ranges."""
    prefix = ipaddress.ip_network(settings.node_cidr).prefixlen
    lines = ["link set lo up", f"addr add {node.address}/{prefix} dev eth0", "link set eth0 up"]
    for other in settings.nodes:
        if other.name != node.name:
            lines.append(f"route add {other.pod_cidr} via {other.address} dev eth0")
    return lines


def pod_node_lines(node: NodeSettings, *, link: str, pod_netns: str, pod_ip: str) -> list[str]:
    """Run in the node namespace: the pod's veth (pod end ``eth0`` lands in the pod namespace)."""
    return [
        f"link add {link} type veth peer name eth0 netns {pod_netns}",
        f"addr add {node.gateway}/32 dev {link}",
        f"link set {link} up",
        f"route add {pod_ip}/32 dev {link} scope link",
    ]


def pod_lines(node: NodeSettings, *, pod_ip: str) -> list[str]:
    """Run in the pod namespace: loopback, the pod address, and the default route via the node."""
    return [
        "link set lo up",
        f"addr add {pod_ip}/32 dev eth0",
        "link set eth0 up",
        f"route add {node.gateway}/32 dev eth0 scope link",
        f"route add default via {node.gateway} dev eth0 src {pod_ip}",
    ]
