"""Has the lab's mesh caught up with its pods? Config and certificates reach the ztunnels a moment
after the lab reports pods Ready; the demo and the tests wait for this before sending traffic."""

from __future__ import annotations

import time

from mesh.errors import MeshError
from mesh.ports import READINESS_PORT
from meshctl.lab import Lab, LabError, pod_ready
from meshctl.lab.meshview import ztunnel
from meshctl.nethttp import http_get
from meshctl.ztunnel_config import HOST_ADMIN, fetch_admin

__all__ = ["lagging", "wait_for_mesh"]


def lagging(lab: Lab) -> list[str]:
    """What the ztunnels still miss (empty once every ztunnel is ready and knows every pod with an
    address: enrolled ones as HBONE, the others as TCP, and Ready ones as healthy endpoints)."""
    missing = []
    pods = [p for p in lab.pods() if (p.get("status") or {}).get("podIP")]
    for node in lab.settings.nodes:
        try:
            zt = ztunnel(lab, node.name)
            status, _ = http_get("127.0.0.1", READINESS_PORT, "/healthz/ready", netns=zt.netns, timeout=1.0)
            if status != 200:
                missing.append(f"ztunnel on {node.name} is not ready")
                continue
            dump = fetch_admin(HOST_ADMIN, "/config_dump", netns=zt.netns)
        except (OSError, MeshError) as exc:
            missing.append(f"ztunnel on {node.name} does not answer: {exc}")
            continue
        known = {w["name"]: (w["protocol"], w["status"]) for w in dump["workloads"]}
        for pod in pods:
            meta = pod["metadata"]
            enrolled = (meta.get("annotations") or {}).get("ambient.istio.io/redirection") == "enabled"
            wanted = ("HBONE" if enrolled else "TCP", "Healthy" if pod_ready(pod) else "Unhealthy")
            if known.get(meta["name"]) != wanted:
                missing.append(
                    f"ztunnel on {node.name} has {meta['name']} as {known.get(meta['name'])}, not {wanted}"
                )
    return missing


def wait_for_mesh(lab: Lab, *, within: float = 30.0) -> None:
    """Waits until :func:`lagging` is empty; raises LabError saying what is still missing."""
    deadline = time.monotonic() + within
    while missing := lagging(lab):
        if time.monotonic() > deadline:
            raise LabError(
                f"the ztunnels did not converge within {within:.0f} s: {'; '.join(missing[:3])}",
                hint="see the ztunnels' logs (meshctl lab logs istio-system/<pod>; lab status lists them)",
            )
        time.sleep(0.2)
