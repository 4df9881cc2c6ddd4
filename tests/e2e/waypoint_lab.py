"""What the waypoint e2e modules share: an enrolled namespace with a waypoint, waiting until the
client node's ztunnel sends a Service to it, and the waypoint's metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from meshctl.lab import builders as b
from tests.e2e.conftest import CLIENT_NODE, MeshLab

__all__ = [
    "applied_behind_waypoint",
    "enrolled_namespace_with_waypoint",
    "wait_on_waypoint",
    "waypoint_metrics",
]


def enrolled_namespace_with_waypoint(namespace: str) -> list[dict[str, Any]]:
    """The namespace (ambient) and a Gateway ``waypoint`` of class istio-waypoint in it."""
    return [
        b.namespace(namespace, labels={"istio.io/dataplane-mode": "ambient"}),
        {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": namespace,
                         "labels": {"istio.io/waypoint-for": "service"}},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        },
    ]  # fmt: skip


def wait_on_waypoint(mesh: MeshLab, *services: str, timeout: float = 60.0) -> None:
    """Until the client node's ztunnel sends each of ``services`` to its waypoint."""

    def on_waypoint() -> bool | None:
        names = {s.get("name") for s in mesh.zc(CLIENT_NODE, "services") if s.get("waypoint")}
        return set(services) <= names or None

    mesh.wait_for(
        on_waypoint,
        what=f"the client's ztunnel sending {', '.join(services)} to the waypoint",
        timeout=timeout,
    )


@contextlib.contextmanager
def applied_behind_waypoint(
    mesh: MeshLab,
    namespace: str,
    objects: list[dict[str, Any]],
    *services: str,
    ready: Callable[[], bool] | None = None,
    what: str = "",
) -> Iterator[MeshLab]:
    """Applies ``objects`` (``namespace`` with its waypoint and apps) and waits until its pods are
    ready, the client's ztunnel sends ``services`` to the waypoint and ``ready`` holds (``what``);
    deletes the namespace at the end."""
    mesh.lab.apply(objects)
    try:
        mesh.lab.wait_ready(timeout=90)
        wait_on_waypoint(mesh, *services)
        if ready is not None:
            mesh.wait_for(ready, what=what)
        yield mesh
    finally:
        mesh.lab.delete([b.namespace(namespace)])


def waypoint_metrics(mesh: MeshLab, namespace: str) -> str:
    """The namespace's waypoint pod's /metrics (15020), read inside its network namespace."""
    pod = next(
        p["metadata"]["name"]
        for p in mesh.lab.pods(namespace)
        if p["metadata"]["name"].startswith("waypoint")
    )
    return mesh.exec(f"{namespace}/{pod}", "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics").stdout
