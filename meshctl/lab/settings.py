"""Lab settings (``<state>/lab.yaml``): the lab id, nodes, address ranges, and the names derived from them.

Every name the lab creates in the system starts with the lab id, so cleanup finds exactly what one
lab created: network namespaces ``<id>-net``, ``<id>-node<N>``, ``<id>-pod-<uid8>``, links
``<id>n<N>`` / ``<id>p<uid8>`` (only ever inside those namespaces), and ``/etc/netns/<id>-...``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.l7.normalize import MODES
from meshctl.lab.errors import LabError

__all__ = [
    "DEFAULT_LAB_ID",
    "DEFAULT_STATE_DIR",
    "LabSettings",
    "NodeSettings",
    "build_settings",
    "check_lab_id",
    "default_state_dir",
]

DEFAULT_LAB_ID = "mlab"
DEFAULT_STATE_DIR = "/var/lib/mesh-lab/state"
_LAB_ID = re.compile(r"^[a-z][a-z0-9]{0,5}$")
_MAX_NODES = 16
_SETTINGS_KIND = "LabSettings"
_SETTINGS_API = "lab.meshctl.io/v1alpha1"


def default_state_dir() -> str:
    """``$MESH_LAB_STATE`` or ``/var/lib/mesh-lab/state``."""
    return os.environ.get("MESH_LAB_STATE") or DEFAULT_STATE_DIR


def check_lab_id(lab_id: str) -> str:
    """Returns ``lab_id`` if it is 1-6 lowercase letters/digits starting with a letter (no dashes)."""
    if not _LAB_ID.match(lab_id):
        raise LabError(
            f"invalid lab id {lab_id!r}",
            hint="use 1-6 lowercase letters or digits starting with a letter, e.g. 'mlab' or 't1'",
        )
    return lab_id


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """One node: a network namespace with an address on the lab bridge and a pod range."""

    name: str
    index: int
    netns: str
    address: str
    pod_cidr: str
    uplink: str

    @property
    def gateway(self) -> str:
        """The node-side address of every pod veth (first host of the pod range)."""
        return str(ipaddress.ip_network(self.pod_cidr)[1])


DEFAULT_CERT_TTL = 24 * 3600
"""Istio's default workload certificate TTL."""
_MIN_CERT_TTL = 60
_MAX_ISTIOD_REPLICAS = 7
_MAX_ZTUNNEL_WORKERS = 8
"""Replicas take 10.240.0.2-8 on the lab bridge; nodes start at .11."""


@dataclass(frozen=True, slots=True)
class LabSettings:
    """Static settings of one lab; written once by ``lab up``."""

    lab_id: str
    nodes: tuple[NodeSettings, ...]
    bridge_netns: str
    node_cidr: str = "10.240.0.0/24"
    service_cidr: str = "10.96.0.0/16"
    cluster_domain: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    mesh: bool = False
    """Whether the lab runs the mesh (istiod_lite, node agents, ztunnels) with its CNI plugin."""
    cert_ttl: int = DEFAULT_CERT_TTL
    """The workload certificate TTL, in seconds, the ztunnels ask the CA for."""
    observability: bool = False
    """Whether the lab runs a Prometheus server scraping the mesh (``lab up --observability``)."""
    path_normalization: str = "BASE"
    """Istio's ``meshConfig.pathNormalization.normalization`` for every waypoint (mesh.l7.normalize)."""
    istiod_replicas: int = 1
    """istiod_lite processes (``lab up --istiod-replicas``); the agents know them all and fail over."""
    ztunnel_workers: int = 1
    """Each node's ztunnel ``--workers`` (``lab up --ztunnel-workers``)."""

    @property
    def prefix(self) -> str:
        """The prefix of every namespace and /etc/netns entry this lab creates."""
        return f"{self.lab_id}-"

    def node(self, name: str) -> NodeSettings:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        names = ", ".join(n.name for n in self.nodes)
        raise LabError(f"unknown node {name!r}", hint=f"the lab's nodes are {names}")

    def node_names(self) -> tuple[str, ...]:
        """Node names in order."""
        return tuple(n.name for n in self.nodes)

    def pod_netns(self, uid: str) -> str:
        """The network namespace the lab makes for the pod with this uid."""
        return f"{self.lab_id}-pod-{_short(uid)}"

    def netns_of(self, pod: Mapping[str, Any]) -> str:
        """Where a Pod object's containers run: its own namespace, or its node's (``hostNetwork``)."""
        spec = pod.get("spec") or {}
        if spec.get("hostNetwork") and spec.get("nodeName"):
            return self.node(str(spec["nodeName"])).netns
        return self.pod_netns(str(pod["metadata"]["uid"]))

    def pod_link(self, uid: str) -> str:
        """The node-side name of the pod's veth (at most 15 characters)."""
        return f"{self.lab_id}p{_short(uid)}"

    def to_dict(self) -> dict[str, Any]:
        """The lab.yaml document."""
        return {
            "apiVersion": _SETTINGS_API,
            "kind": _SETTINGS_KIND,
            "labId": self.lab_id,
            "clusterId": self.cluster_id,
            "clusterDomain": self.cluster_domain,
            "serviceCIDR": self.service_cidr,
            "nodeCIDR": self.node_cidr,
            "bridgeNetns": self.bridge_netns,
            "mesh": self.mesh,
            "workloadCertTTL": self.cert_ttl,
            "observability": self.observability,
            "pathNormalization": self.path_normalization,
            "istiodReplicas": self.istiod_replicas,
            "ztunnelWorkers": self.ztunnel_workers,
            "nodes": [
                {
                    "name": n.name,
                    "netns": n.netns,
                    "address": n.address,
                    "podCIDR": n.pod_cidr,
                    "uplink": n.uplink,
                }
                for n in self.nodes
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabSettings:
        """Reads a lab.yaml document written by :meth:`to_dict`."""
        try:
            nodes = tuple(
                NodeSettings(
                    name=str(n["name"]),
                    index=i + 1,
                    netns=str(n["netns"]),
                    address=str(n["address"]),
                    pod_cidr=str(n["podCIDR"]),
                    uplink=str(n["uplink"]),
                )
                for i, n in enumerate(data["nodes"])
            )
            return cls(
                lab_id=check_lab_id(str(data["labId"])),
                nodes=nodes,
                bridge_netns=str(data["bridgeNetns"]),
                node_cidr=str(data["nodeCIDR"]),
                service_cidr=str(data["serviceCIDR"]),
                cluster_domain=str(data["clusterDomain"]),
                cluster_id=str(data["clusterId"]),
                mesh=bool(data.get("mesh", False)),
                cert_ttl=int(data.get("workloadCertTTL", DEFAULT_CERT_TTL)),
                observability=bool(data.get("observability", False)),
                path_normalization=str(data.get("pathNormalization", "BASE")),
                istiod_replicas=int(data.get("istiodReplicas", 1)),
                ztunnel_workers=int(data.get("ztunnelWorkers", 1)),
            )
        except (KeyError, TypeError) as exc:
            raise LabError(
                f"lab.yaml is missing or has a malformed field: {exc}",
                hint="run 'meshctl lab down' and 'meshctl lab up' to recreate it",
            ) from exc


def build_settings(
    *,
    lab_id: str = DEFAULT_LAB_ID,
    node_count: int = 2,
    mesh: bool = False,
    cert_ttl: int = DEFAULT_CERT_TTL,
    observability: bool = False,
    path_normalization: str = "BASE",
    istiod_replicas: int = 1,
    ztunnel_workers: int = 1,
) -> LabSettings:
    """Settings for ``node_count`` nodes: node N at 10.240.0.(10+N), pods in 10.244.N.0/24."""
    check_lab_id(lab_id)
    if not _MIN_CERT_TTL <= cert_ttl <= DEFAULT_CERT_TTL:
        raise LabError(
            f"a workload certificate TTL of {cert_ttl} s is out of range",
            hint=f"pass --cert-ttl between {_MIN_CERT_TTL} and {DEFAULT_CERT_TTL} seconds",
        )
    if not 1 <= node_count <= _MAX_NODES:
        raise LabError(f"a lab has 1 to {_MAX_NODES} nodes, not {node_count}", hint="pass --nodes 1..16")
    nodes = tuple(
        NodeSettings(
            name=f"node{i}",
            index=i,
            netns=f"{lab_id}-node{i}",
            address=f"10.240.0.{10 + i}",
            pod_cidr=f"10.244.{i}.0/24",
            uplink=f"{lab_id}n{i}",
        )
        for i in range(1, node_count + 1)
    )
    if observability and not mesh:
        raise LabError("--observability watches the mesh", hint="drop --no-mesh, or --observability")
    if not 1 <= istiod_replicas <= _MAX_ISTIOD_REPLICAS:
        raise LabError(
            f"a lab runs 1 to {_MAX_ISTIOD_REPLICAS} istiod_lite replicas, not {istiod_replicas}",
            hint=f"pass --istiod-replicas 1..{_MAX_ISTIOD_REPLICAS}",
        )
    if not 1 <= ztunnel_workers <= _MAX_ZTUNNEL_WORKERS:
        raise LabError(
            f"a ztunnel runs 1 to {_MAX_ZTUNNEL_WORKERS} worker processes, not {ztunnel_workers}",
            hint=f"pass --ztunnel-workers 1..{_MAX_ZTUNNEL_WORKERS}",
        )
    if path_normalization not in MODES:
        raise LabError(
            f"path normalization {path_normalization!r} is unknown", hint=f"use one of {', '.join(MODES)}"
        )
    return LabSettings(
        lab_id=lab_id,
        nodes=nodes,
        bridge_netns=f"{lab_id}-net",
        mesh=mesh,
        cert_ttl=cert_ttl,
        observability=observability,
        path_normalization=path_normalization,
        istiod_replicas=istiod_replicas,
        ztunnel_workers=ztunnel_workers,
    )


def _short(uid: str) -> str:
    return uid.replace("-", "")[:8]
