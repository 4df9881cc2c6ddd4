"""The mesh inside the lab, installed as a cluster installs it: ``meshctl lab up --mesh`` applies the
rendered ``daemonset/`` objects of the lab overlay (:mod:`meshctl.manifests`), and the lab runs them
as any workload: istiod_lite's Deployment, and the ztunnel and node agent DaemonSets (a pod of each
per node). The lab's settings (trust domain, cluster id, workload certificate TTL, istiod replicas,
ztunnel workers) are set on those objects here, as a platform team sets them on its overlay.

Waypoints get the pod template istiod_lite renders on Kubernetes: the service-account token and the
root certificate as volumes (the lab registers projected tokens in its token file, which istiod_lite
reads). Prometheus, when the lab runs it, listens on the lab's own address on the bridge.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from istiod_lite.sources.kube_waypoints import KubeWaypointSettings, kubernetes_pod_mesh
from meshctl.lab._meta import is_terminating, pod_ready
from meshctl.lab.settings import LabSettings
from meshctl.lab.waypoints import WaypointTemplate
from meshctl.manifests import LAB_OVERLAY, Obj, render
from ztunnel.cni.enroll import REDIRECTION, PodFacts, should_enroll

__all__ = [
    "MESH_NAMESPACE", "NODE_AGENT_DAEMONSET", "WAYPOINT_IMAGE", "awaiting_enrolment", "control_plane_address",
    "mesh_installed", "mesh_objects", "waypoint_template",
]  # fmt: skip

MESH_NAMESPACE = "istio-system"
NODE_AGENT_DAEMONSET = "istio-cni-node"
WAYPOINT_IMAGE = "ambient-mesh:0.1.0"
"""The image named in waypoint pods (the lab runs the ``waypoint`` command of its own install)."""


def control_plane_address(settings: LabSettings) -> str:
    """The lab's own address on its bridge (``.2``): where its Prometheus listens, reaching every
    node's pods through the routes the bridge namespace gets."""
    prefix = settings.node_cidr.split("/", 1)[0].rsplit(".", 1)[0]
    return f"{prefix}.2"


def mesh_objects(settings: LabSettings) -> list[Obj]:
    """The lab overlay's objects with the lab's settings on istiod_lite and ztunnel (pure)."""
    objects = render(LAB_OVERLAY)
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if (kind, name) == ("Deployment", "istiod"):
            obj["spec"]["replicas"] = settings.istiod_replicas
            _set_flags(_container(obj), {"--trust-domain": settings.cluster_domain})
        elif (kind, name) == ("DaemonSet", "ztunnel"):
            flags = {
                "--trust-domain": settings.cluster_domain,
                "--cluster-id": settings.cluster_id,
                "--cert-ttl": str(settings.cert_ttl),
            }
            if settings.ztunnel_workers > 1:
                flags["--workers"] = str(settings.ztunnel_workers)
            _set_flags(_container(obj), flags)
    return objects


def waypoint_template(settings: LabSettings) -> WaypointTemplate:
    """How the lab's waypoint pods reach istiod_lite: the Kubernetes pod template, with the lab's
    trust domain, cluster and path normalization."""
    mesh = kubernetes_pod_mesh(
        KubeWaypointSettings(
            image=WAYPOINT_IMAGE,
            trust_domain=settings.cluster_domain,
            cluster_id=settings.cluster_id,
            cluster_domain=settings.cluster_domain,
            path_normalization=settings.path_normalization,
        )
    )
    return WaypointTemplate(
        mesh=mesh, cluster_domain=settings.cluster_domain, service_cidr=settings.service_cidr
    )


def mesh_installed(daemonsets: Iterable[Obj]) -> bool:
    """True when the node agents' DaemonSet (``istio-system/istio-cni-node``) is installed and not
    being deleted: pods that belong in the mesh then get enrolled."""
    return any(d["metadata"]["name"] == NODE_AGENT_DAEMONSET and not is_terminating(d) for d in daemonsets)


def awaiting_enrolment(pods: Iterable[Obj], namespaces: Iterable[Obj]) -> list[str]:
    """The ready pods (``ns/name``) that belong in the mesh but their node agent has not enrolled yet
    (no ``ambient.istio.io/redirection: enabled``), by the node agent's own rule."""
    labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in namespaces}
    waiting = []
    for pod in pods:
        meta = pod["metadata"]
        if is_terminating(pod) or not pod_ready(pod):
            continue
        annotations = meta.get("annotations") or {}
        facts = PodFacts(
            namespace_labels=labels.get(meta["namespace"], {}),
            labels=meta.get("labels") or {},
            annotations=annotations,
            host_network=bool(pod["spec"].get("hostNetwork")),
        )
        if should_enroll(facts)[0] and annotations.get(REDIRECTION) != "enabled":
            waiting.append(f"{meta['namespace']}/{meta['name']}")
    return waiting


def _container(obj: Obj) -> dict[str, Any]:
    container: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]
    return container


def _set_flags(container: dict[str, Any], flags: dict[str, str]) -> None:
    """Sets ``--flag value`` pairs in the container's args: the value after a flag already there is
    replaced, a new flag is appended."""
    args: list[str] = container.setdefault("args", [])
    for flag, value in flags.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
