"""Labelling a namespace in and out at runtime: its running pod is enrolled (rules, ZDS, HBONE with its
own identity) and released again, without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.lab import builders as b
from meshctl.lab.supervisor import read_pid_file
from tests.e2e.conftest import CLIENT_NODE, HTTP_PORT, REDIRECTION, SERVER_NODE, MeshLab, spiffe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

POD = "legacy/client"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def _process(mesh: MeshLab) -> tuple[int | None, int]:
    """The pod's container PID and restart count."""
    pod = mesh.pod(POD)
    name = pod["metadata"]["name"]
    (pid_file,) = mesh.lab.paths.pids.glob(f"legacy_{name}_*.pid")
    restarts = sum(int(c.get("restartCount", 0)) for c in pod["status"].get("containerStatuses", []))
    return read_pid_file(pid_file), restarts


def _redirection(mesh: MeshLab) -> str | None:
    annotations: dict[str, Any] = mesh.pod(POD)["metadata"].get("annotations") or {}
    return annotations.get(REDIRECTION)


def _protocol(mesh: MeshLab) -> str | None:
    workload = mesh.workload(CLIENT_NODE, mesh.pod(POD)["metadata"]["name"])
    return workload["protocol"] if workload else None


@pytest.fixture
def relabelled(mesh: MeshLab) -> Iterator[None]:
    """Leaves ``legacy`` unlabelled however the test ends."""
    try:
        yield
    finally:
        mesh.lab.apply([b.namespace("legacy")])
        mesh.wait_for(lambda: _redirection(mesh) is None, what="legacy/client to be released")


def test_labelling_a_namespace_enrols_and_releases_its_running_pod(mesh: MeshLab, relabelled: None) -> None:
    process = _process(mesh)
    assert process[0] is not None and _redirection(mesh) is None and _protocol(mesh) == "TCP"
    server_ip = mesh.pod_ip("demo/server")
    url = f"http://{server_ip}:{HTTP_PORT}/from-legacy"
    proxies_before = _proxy_metrics(mesh)

    mesh.lab.apply([b.namespace("legacy", labels=AMBIENT)])
    mesh.wait_for(lambda: _redirection(mesh) == "enabled", what=f"{POD} annotated {REDIRECTION}: enabled")
    mesh.wait_for(lambda: _protocol(mesh) == "HBONE", what=f"ztunnel on {CLIENT_NODE} to see {POD} as HBONE")
    assert ":ISTIO_" in mesh.iptables(POD)
    logged_before = len(mesh.access_log(SERVER_NODE))
    done = mesh.curl(POD, url)
    assert done.returncode == 0, f"{done.stderr}\n{mesh.diagnostics([POD])}"

    def tunnelled() -> list[dict[str, Any]]:
        wanted = (f"{server_ip}:{HTTP_PORT}", spiffe("legacy", "default"))
        entries = mesh.access_log(SERVER_NODE)[logged_before:]
        return [e for e in entries if (e.get("dst.addr"), e.get("src.identity")) == wanted]

    mesh.wait_for(tunnelled, what="an inbound HBONE access-log line with the legacy identity")
    assert _process(mesh) == process, "enrolling restarted the pod"
    started, stopped = proxies_before
    assert _proxy_metrics(mesh) == (started + 1, stopped)

    mesh.lab.apply([b.namespace("legacy")])
    mesh.wait_for(lambda: _redirection(mesh) is None, what=f"{POD} to lose {REDIRECTION}")
    mesh.wait_for(lambda: _protocol(mesh) == "TCP", what=f"ztunnel on {CLIENT_NODE} to see {POD} as TCP")
    mesh.wait_for(lambda: "ISTIO" not in mesh.iptables(POD), what=f"the capture rules to leave {POD}")
    assert _process(mesh) == process, "releasing restarted the pod"
    mesh.wait_for(
        lambda: _proxy_metrics(mesh) == (started + 1, stopped + 1),
        what="the proxy counted as stopped",
    )
    again = mesh.curl(POD, url)
    assert again.returncode == 0, again.stderr


def _proxy_metrics(mesh: MeshLab) -> tuple[float, float]:
    """ztunnel's workload_manager_* metrics on the client's node: (started, stopped)."""
    return (
        mesh.metric(CLIENT_NODE, "workload_manager_proxies_started_total"),
        mesh.metric(CLIENT_NODE, "workload_manager_proxies_stopped_total"),
    )
