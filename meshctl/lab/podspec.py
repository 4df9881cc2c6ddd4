"""From a Pod object to what the runtime runs, and from what runs back to the Pod's status (pure).

A container's readiness check is :mod:`meshctl.lab.probes`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ContainerState",
    "container_argv",
    "container_env",
    "expand_vars",
    "listening_tcp_ports",
    "render_pod_status",
]

_BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_TCP_LISTEN = "0A"


def _field_value(pod: Mapping[str, Any], path: str, *, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.hostIP": host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = _LABEL_REF.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    return ""


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    pod_ip: str,
    host_ip: str,
    bin_dirs: Sequence[str],
    python_path: str = "",
) -> dict[str, str]:
    """The container's environment: PATH (with the lab's Python first), the lab's PYTHONPATH when it
    has one (pods then run the same code as the lab), HOSTNAME, and ``env``.

    ``valueFrom.fieldRef`` works as the downward API does for name, namespace, uid, labels,
    annotations, nodeName, serviceAccountName, podIP and hostIP; ``$(VAR)`` refers to earlier vars.
    """
    env = {
        "PATH": ":".join([*bin_dirs, _BASE_PATH]),
        "HOME": "/root",
        "HOSTNAME": pod["metadata"]["name"],
    }
    if python_path:
        env["PYTHONPATH"] = python_path
    for var in container.get("env") or ():
        if "valueFrom" in var:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = _field_value(pod, path, pod_ip=pod_ip, host_ip=host_ip)
        else:
            env[var["name"]] = expand_vars(str(var.get("value", "")), env)
    return env


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` references replaced from ``env``; unknown ones stay as written (as in Kubernetes)."""
    return _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, ...]:
    """``command`` + ``args`` with ``$(VAR)`` references expanded, as the kubelet does."""
    parts = [*(container.get("command") or ()), *(container.get("args") or ())]
    return tuple(expand_vars(p, env) for p in parts)


def listening_tcp_ports(proc_net_tcp: str) -> set[int]:
    """Local ports in LISTEN state in the text of ``/proc/PID/net/tcp`` or ``tcp6``."""
    ports = set()
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == _TCP_LISTEN:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass(slots=True)
class ContainerState:
    """What the runtime knows about one container (mutable, owned by the pod's runner)."""

    name: str
    state: str = "waiting"
    reason: str = "ContainerCreating"
    started_at: str = ""
    ready: bool = False
    restart_count: int = 0
    last_exit_code: int | None = None
    last_finished_at: str = ""
    exit_code: int | None = None
    pid: int = 0

    def render(self) -> dict[str, Any]:
        """The ``containerStatuses`` entry."""
        if self.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {"terminated": {"exitCode": self.exit_code, "finishedAt": self.last_finished_at}}
        else:
            state = {"waiting": {"reason": self.reason}}
        out: dict[str, Any] = {
            "name": self.name,
            "ready": self.ready,
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "state": state,
        }
        if self.last_exit_code is not None:
            out["lastState"] = {
                "terminated": {"exitCode": self.last_exit_code, "finishedAt": self.last_finished_at}
            }
        return out


def _ready_condition(phase: str, containers: Sequence[ContainerState]) -> dict[str, str]:
    """The Ready (and ContainersReady) condition's status, with the kubelet's reason when False."""
    if phase in ("Succeeded", "Failed"):
        return {"status": "False", "reason": "PodCompleted"}
    unready = [c.name for c in containers if not c.ready]
    if phase == "Running" and not unready:
        return {"status": "True"}
    message = f"containers with unready status: [{' '.join(unready)}]"
    return {"status": "False", "reason": "ContainersNotReady", "message": message}


def render_pod_status(
    *,
    phase: str,
    containers: Sequence[ContainerState],
    pod_ip: str | None,
    host_ip: str,
    start_time: str,
    reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    """A Pod ``status`` as the kubelet reports it; a pod not ready says which containers are not
    (the Ready condition's reason ``ContainersNotReady`` and message)."""
    ready = _ready_condition(phase, containers)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", **ready},
            {"type": "Ready", **ready},
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "containerStatuses": [c.render() for c in containers],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if start_time:
        status["startTime"] = start_time
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status
