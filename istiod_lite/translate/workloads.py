"""Pods -> ``istio.workload.Workload`` (resource name = uid ``<cluster>//Pod/<ns>/<name>``).

A pod becomes a workload once it has an IP and until it terminates (Succeeded/Failed); it is
HEALTHY when Running, ready and not being deleted. ``tunnel_protocol`` is HBONE only when the
node agent finished enrolling it (annotation ``ambient.istio.io/redirection: enabled``) or when
it terminates HBONE itself (label ``networking.istio.io/tunnel: http``, with ``native_tunnel``).
Telemetry names follow Istio: the workload is the Deployment (through the pod's ReplicaSet),
the Job or CronJob, else the pod; canonical name and revision come from the usual labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from istiod_lite.translate._fields import ip_bytes, mapping, port, sequence, string
from istiod_lite.translate.model import TranslateOptions
from istiod_lite.translate.services import ServiceInfo
from istiod_lite.view import ClusterView, KubeObject, ObjectKey
from mesh.api.istio.workload import workload_pb2 as pb

if TYPE_CHECKING:  # waypoints imports the l7 package, which imports this module
    from istiod_lite.translate.waypoints import WaypointIndex

__all__ = [
    "WorkloadContext",
    "canonical_service",
    "container_ports",
    "pod_ips",
    "pod_ready",
    "pod_workload",
    "speaks_hbone",
    "workload_name_and_type",
    "workload_uid",
]

_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
_REDIRECTION = "ambient.istio.io/redirection"
_TUNNEL_LABEL = "networking.istio.io/tunnel"
_CRONJOB_JOB_NAME = re.compile(r"^(.+)-\d{8,11}$")
_TERMINAL = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class WorkloadContext:
    """What every pod's translation reads besides the pod."""

    view: ClusterView
    options: TranslateOptions
    endpoints: Mapping[ObjectKey, Sequence[tuple[ServiceInfo, str]]]
    policy_keys: Callable[[str, Mapping[str, str]], list[str]]
    waypoints: WaypointIndex | None = None


def workload_uid(cluster_id: str, namespace: str, name: str) -> str:
    """Istio's pod workload uid."""
    return f"{cluster_id}//Pod/{namespace}/{name}"


def canonical_service(labels: Mapping[str, str], workload_name: str) -> tuple[str, str]:
    """(canonical name, canonical revision) as Istio derives them."""
    name = next((labels[k] for k in _NAME_LABELS if labels.get(k)), workload_name)
    revision = next((labels[k] for k in _REVISION_LABELS if labels.get(k)), "latest")
    return name, revision


def workload_name_and_type(pod: KubeObject, view: ClusterView) -> tuple[str, pb.WorkloadType.ValueType]:
    """The owning Deployment (through its ReplicaSet), Job or CronJob; else the pod itself."""
    owner = pod.controller()
    if owner is None:
        return pod.name, pb.POD
    if owner.kind == "ReplicaSet":
        rs = view.replica_sets.get((pod.namespace, owner.name))
        if rs is not None:
            deployment = rs.controller()
            if deployment is not None and deployment.kind == "Deployment":
                return deployment.name, pb.DEPLOYMENT
            return pod.name, pb.POD
        pod_hash = pod.labels.get("pod-template-hash", "")
        if pod_hash and owner.name.endswith(f"-{pod_hash}"):
            return owner.name[: -len(pod_hash) - 1], pb.DEPLOYMENT
        return pod.name, pb.POD
    if owner.kind == "Job":
        cron = _CRONJOB_JOB_NAME.match(owner.name)
        return (cron.group(1), pb.CRONJOB) if cron else (owner.name, pb.JOB)
    return pod.name, pb.POD


def speaks_hbone(pod: KubeObject) -> bool:
    """Reached over HBONE: enrolled by the node agent, or terminating HBONE itself."""
    return pod.annotations.get(_REDIRECTION) == "enabled" or pod.labels.get(_TUNNEL_LABEL) == "http"


def pod_ready(pod: KubeObject) -> bool:
    """The Ready condition; without conditions, every container status that says; else True."""
    status = pod.status
    for raw in sequence(status.get("conditions"), "status.conditions"):
        condition = mapping(raw, "status.conditions[]")
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    statuses = sequence(status.get("containerStatuses"), "status.containerStatuses")
    containers = [mapping(c, "status.containerStatuses[]") for c in statuses]
    return all(c.get("ready", True) is not False for c in containers)


def pod_ips(pod: KubeObject) -> list[bytes]:
    """The pod's IPs (``status.podIPs``, else ``status.podIP``), packed."""
    status = pod.status
    entries = sequence(status.get("podIPs"), "status.podIPs")
    ips = [mapping(e, f"status.podIPs[{i}]").get("ip") for i, e in enumerate(entries)]
    if not ips and status.get("podIP"):
        ips = [status.get("podIP")]
    return [ip_bytes(ip, "status.podIPs") for ip in ips]


def container_ports(pod: KubeObject) -> dict[str, int]:
    """Named container ports of the pod (the first container naming a port wins)."""
    named: dict[str, int] = {}
    for i, raw in enumerate(sequence(pod.spec.get("containers"), "spec.containers")):
        container = mapping(raw, f"spec.containers[{i}]")
        for j, raw_port in enumerate(sequence(container.get("ports"), f"spec.containers[{i}].ports")):
            where = f"spec.containers[{i}].ports[{j}]"
            item = mapping(raw_port, where)
            name = string(item.get("name"), f"{where}.name")
            number = port(item.get("containerPort"), f"{where}.containerPort")
            if name:
                named.setdefault(name, number)
    return named


def _services(pod: KubeObject, ctx: WorkloadContext) -> dict[str, pb.PortList]:
    entries = ctx.endpoints.get(pod.key, ())
    if not entries:
        return {}
    named = container_ports(pod)
    out: dict[str, pb.PortList] = {}
    for info, uid in entries:
        if uid and pod.uid and uid != pod.uid:
            continue  # the slice still names an earlier pod of the same name
        ports = []
        for p in info.ports:
            target = named.get(p.target_port_name, 0) if p.target_port_name else p.target_port
            if target:
                ports.append(pb.Port(service_port=p.port, target_port=target))
        out[info.key] = pb.PortList(ports=ports)
    return out


def pod_workload(
    pod: KubeObject, ctx: WorkloadContext, *, waypoint: pb.GatewayAddress | None = None
) -> pb.Workload | None:
    """The workload of one pod, or None when it has no IP yet or has terminated."""
    if pod.status.get("phase") in _TERMINAL:
        return None
    ips = pod_ips(pod)
    if not ips:
        return None
    options = ctx.options
    account = string(pod.spec.get("serviceAccountName"), "spec.serviceAccountName") or "default"
    healthy = pod.status.get("phase") == "Running" and pod_ready(pod) and not pod.deletion_timestamp
    workload_name, workload_type = workload_name_and_type(pod, ctx.view)
    canonical_name, canonical_revision = canonical_service(pod.labels, workload_name)
    workload = pb.Workload(
        uid=workload_uid(options.cluster_id, pod.namespace, pod.name),
        name=pod.name,
        namespace=pod.namespace,
        addresses=ips,
        network=options.network,
        service_account="" if account == "default" else account,
        trust_domain="" if options.trust_domain == "cluster.local" else options.trust_domain,
        node=string(pod.spec.get("nodeName"), "spec.nodeName"),
        cluster_id=options.cluster_id,
        canonical_name=canonical_name,
        canonical_revision=canonical_revision,
        workload_name=workload_name,
        workload_type=workload_type,
        status=pb.HEALTHY if healthy else pb.UNHEALTHY,
        services=_services(pod, ctx),
        authorization_policies=ctx.policy_keys(pod.namespace, pod.labels),
    )
    if pod.spec.get("hostNetwork") is True:
        workload.network_mode = pb.HOST_NETWORK
    if speaks_hbone(pod):
        workload.tunnel_protocol = pb.HBONE
    if pod.labels.get(_TUNNEL_LABEL) == "http":
        workload.native_tunnel = True
    if waypoint is not None:
        workload.waypoint.CopyFrom(waypoint)
    return workload
