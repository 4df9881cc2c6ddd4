"""The mesh's pods in a running lab, for the tools, demos, tests and benchmarks that talk to them: a
node's ztunnel and node agent, istiod_lite's replicas, where their logs and processes are, and the
mesh's root certificate. The mesh runs as the pods of ``daemonset/`` (:mod:`meshctl.lab.mesh`), so
these are found as a cluster's tools find them: by the ``app`` label in ``istio-system``.

Ports: ztunnel's admin (config dump) on 127.0.0.1:15000 of its pod, its metrics on the pod IP
:15020; istiod_lite's xDS and CA on :15012 and its debug/metrics on :15014.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.lab._meta import is_terminating, pod_ready
from meshctl.lab.api import Lab
from meshctl.lab.errors import LabError
from meshctl.lab.mesh import MESH_NAMESPACE
from meshctl.lab.supervisor import read_pid_file

__all__ = [
    "ISTIOD", "NODE_AGENT", "ROOT_CONFIGMAP", "ZTUNNEL", "MeshPod", "istiods", "mesh_pods", "node_agent",
    "root_cert_pem", "ztunnel",
]  # fmt: skip

ZTUNNEL, NODE_AGENT, ISTIOD = "ztunnel", "istio-cni-node", "istiod"
"""The ``app`` labels of the mesh's workloads."""
ROOT_CONFIGMAP = "istio-ca-root-cert"


@dataclass(frozen=True, slots=True)
class MeshPod:
    """One of the mesh's pods, as the lab runs it."""

    namespace: str
    name: str
    node: str
    ip: str
    netns: str
    container: str
    """Its (first) container, whose process :meth:`pid` finds."""
    ready: bool
    log: Path
    """The pod's log file (every container, restarts included)."""
    pid_file: Path

    @property
    def ref(self) -> str:
        """``namespace/name``, as ``meshctl lab logs`` and ``exec`` take it."""
        return f"{self.namespace}/{self.name}"

    def pid(self) -> int | None:
        """The PID of the container's current process, or None when it is not running."""
        return read_pid_file(self.pid_file)


def mesh_pods(lab: Lab, app: str) -> list[MeshPod]:
    """The live (not terminating) pods of one mesh workload that have an IP, oldest first."""
    found = []
    for pod in sorted(lab.pods(MESH_NAMESPACE), key=_created):
        meta, status = pod["metadata"], pod.get("status") or {}
        if (meta.get("labels") or {}).get("app") != app or is_terminating(pod) or not status.get("podIP"):
            continue
        container = pod["spec"]["containers"][0]["name"]
        found.append(
            MeshPod(
                namespace=meta["namespace"],
                name=meta["name"],
                node=pod["spec"].get("nodeName", ""),
                ip=status["podIP"],
                netns=lab.pod_netns(pod),
                container=container,
                ready=pod_ready(pod),
                log=lab.paths.pod_log(meta["namespace"], meta["name"]),
                pid_file=lab.paths.pids / f"{meta['namespace']}_{meta['name']}_{container}.pid",
            )
        )
    return found


def ztunnel(lab: Lab, node: str) -> MeshPod:
    """The node's ready ztunnel (the newest while a rolling update runs two)."""
    return _on_node(lab, ZTUNNEL, node)


def node_agent(lab: Lab, node: str) -> MeshPod:
    """The node's ready node agent (the CNI role)."""
    return _on_node(lab, NODE_AGENT, node)


def istiods(lab: Lab) -> list[MeshPod]:
    """istiod_lite's ready replicas, oldest first."""
    return [p for p in mesh_pods(lab, ISTIOD) if p.ready]


def root_cert_pem(lab: Lab) -> bytes:
    """The mesh's root certificate(s), from the ``istio-ca-root-cert`` ConfigMap istiod_lite keeps."""
    for config in lab.objects("ConfigMap", MESH_NAMESPACE):
        if config["metadata"]["name"] == ROOT_CONFIGMAP:
            pem = (config.get("data") or {}).get("root-cert.pem", "")
            if pem:
                return str(pem).encode()
    raise LabError(
        f"no {MESH_NAMESPACE}/{ROOT_CONFIGMAP} ConfigMap with a root-cert.pem in the lab yet",
        hint="istiod_lite writes it once it is ready: see 'meshctl lab status' and its pod's log",
    )


def _on_node(lab: Lab, app: str, node: str) -> MeshPod:
    ready = [p for p in mesh_pods(lab, app) if p.node == node and p.ready]
    if not ready:
        raise LabError(
            f"no ready {app} pod on node {node}",
            hint="see 'meshctl lab status' (the mesh's pods are in istio-system) and their logs",
        )
    return ready[-1]


def _created(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"].get("creationTimestamp", ""))
