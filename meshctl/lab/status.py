"""``meshctl lab status`` as text tables (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshctl.lab._meta import is_terminating
from meshctl.lab.endpoints import SERVICE_NAME_LABEL
from meshctl.lab.network import NETNS_ANNOTATION

__all__ = ["format_table", "pod_state", "render_status"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, like kubectl."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def pod_state(pod: Mapping[str, Any]) -> str:
    """What kubectl shows in STATUS: Terminating, a waiting reason, or the phase."""
    if is_terminating(pod):
        return "Terminating"
    status = pod.get("status") or {}
    if status.get("reason"):
        return str(status["reason"])
    for container in status.get("containerStatuses") or ():
        waiting = (container.get("state") or {}).get("waiting")
        if (
            waiting
            and waiting.get("reason") not in (None, "ContainerCreating")
            and status.get("phase") == "Running"
        ):
            return str(waiting["reason"])
    return str(status.get("phase", "Pending"))


def _pod_row(pod: Mapping[str, Any]) -> list[str]:
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    ready = sum(1 for c in containers if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in containers)
    total = len(pod["spec"].get("containers") or [])
    return [
        pod["metadata"]["namespace"],
        pod["metadata"]["name"],
        f"{ready}/{total}",
        pod_state(pod),
        str(restarts),
        status.get("podIP", "<none>"),
        pod["spec"].get("nodeName", "<none>"),
    ]


def _service_row(svc: Mapping[str, Any], slices: Sequence[Mapping[str, Any]]) -> list[str]:
    meta, spec = svc["metadata"], svc["spec"]
    ports = ",".join(
        f"{p['port']}->{p.get('targetPort', p['port'])}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or ()
    )
    endpoints: list[str] = []
    for eps in slices:
        labels = eps["metadata"].get("labels") or {}
        if (
            eps["metadata"]["namespace"] != meta["namespace"]
            or labels.get(SERVICE_NAME_LABEL) != meta["name"]
        ):
            continue
        port = next((p.get("port") for p in eps.get("ports") or ()), None)
        for endpoint in eps.get("endpoints") or ():
            if (endpoint.get("conditions") or {}).get("ready"):
                endpoints.extend(f"{a}:{port}" for a in endpoint.get("addresses") or ())
    return [
        meta["namespace"],
        meta["name"],
        spec.get("clusterIP", "<none>"),
        ports,
        ",".join(endpoints) or "<none>",
    ]


def render_status(
    *,
    header: str,
    nodes: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    services: Sequence[Mapping[str, Any]],
    slices: Sequence[Mapping[str, Any]],
    namespaces: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The status report: a header line, then NODES, PODS, SERVICES (and NAMESPACES with labels)."""
    node_rows = []
    for node in nodes:
        address = next((a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"), "")
        count = sum(
            1 for p in pods if p["spec"].get("nodeName") == node["metadata"]["name"] and not is_terminating(p)
        )
        netns = (node["metadata"].get("annotations") or {}).get(NETNS_ANNOTATION, "")
        node_rows.append([node["metadata"]["name"], netns, address, node["spec"]["podCIDR"], str(count)])
    parts = [header, "", "NODES", format_table(["NAME", "NETNS", "ADDRESS", "POD CIDR", "PODS"], node_rows)]
    if namespaces:
        ns_rows = [
            [
                n["metadata"]["name"],
                ",".join(f"{k}={v}" for k, v in (n["metadata"].get("labels") or {}).items()) or "<none>",
            ]
            for n in namespaces
        ]
        parts += ["", "NAMESPACES", format_table(["NAME", "LABELS"], ns_rows)]
    pod_header = ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP", "NODE"]
    parts += ["", "PODS", format_table(pod_header, [_pod_row(p) for p in pods])]
    svc_rows = [_service_row(s, slices) for s in services]
    parts += [
        "",
        "SERVICES",
        format_table(["NAMESPACE", "NAME", "CLUSTER-IP", "PORTS", "ENDPOINTS"], svc_rows),
    ]
    return "\n".join(parts) + "\n"
