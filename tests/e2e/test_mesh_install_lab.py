"""The mesh installed into a lab from its manifests (issue 17 part 3): ``meshctl install --lab`` applies
the rendered daemonset/ objects (the lab overlay) to a lab that runs no mesh of its own; the lab runs
them as it runs any workload: istiod_lite's Deployment (2 replicas, one CA through the istio-ca-secret
Secret, the root in the istio-ca-root-cert ConfigMap), and the ztunnel and node agent DaemonSets, one
pod per node, with their volumes (service-account tokens, ConfigMap, host paths). The node agents
install the CNI plugin into the lab's chain and enrol the running pods of the ambient namespace; the
client's requests then reach the server over mTLS with the client's identity. ``meshctl upgrade
--lab`` with a new image rolls both DaemonSets node by node under load without a failed connection;
``meshctl uninstall --lab`` releases every pod (no capture rule left, nothing restarted) and the
pods keep talking, unmeshed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshctl.lab.api import Lab
from meshctl.lab.testkit import SystemSnapshot, unique_lab_id
from meshctl.nethttp import http_get
from tests.e2e.conftest import CONNECTS, HTTP_PORT, REDIRECTION, MeshLab, cluster_objects, spiffe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SYSTEM = "istio-system"
RATE = 50.0
"""New connections a second during the upgrade."""


def _meshctl(lab: Lab, *argv: str, timeout: float = 150.0) -> str:
    command = [sys.executable, "-m", "meshctl.cli", *argv, "--lab", str(lab.paths.root)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _mesh_pods(lab: Lab, app: str) -> list[dict[str, Any]]:
    return [p for p in lab.pods(SYSTEM) if (p["metadata"].get("labels") or {}).get("app") == app]


def _installed(lab: Lab, nodes: set[str]) -> bool:
    """istiod's 2 replicas ready, and a ready ztunnel and node agent pod on every node."""
    if sum(_ready(p) for p in _mesh_pods(lab, "istiod")) < 2:
        return False
    return all(
        {p["spec"]["nodeName"] for p in _mesh_pods(lab, app) if _ready(p)} == nodes
        for app in ("ztunnel", "istio-cni-node")
    )


def _ztunnel_metric(lab: Lab, node: str, name: str, **labels: str) -> float:
    (pod,) = [p for p in _mesh_pods(lab, "ztunnel") if p["spec"]["nodeName"] == node and _ready(p)]
    status, body = http_get(pod["status"]["podIP"], 15020, "/metrics", netns=lab.pod_netns(pod))
    assert status == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    state: Path = tmp_path_factory.mktemp("install-lab")
    lab_id = unique_lab_id("i")
    before = SystemSnapshot.take(lab_id)
    lab = Lab(state, lab_id=lab_id)
    try:
        lab.up(cluster_objects(), mesh=False, timeout=60)
        mesh = MeshLab(lab)
        out = _meshctl(lab, "install")
        assert "daemonset.apps/ztunnel" in out, out
        nodes = set(lab.settings.node_names())
        mesh.wait_for(lambda: _installed(lab, nodes), what="the mesh's pods ready on every node", timeout=90)
        yield mesh
    finally:
        lab.down()
        leftovers = SystemSnapshot.take(lab_id).leftovers(before, lab_id=lab_id)
        assert leftovers == [], f"lab {lab_id} left things behind after down(): {leftovers}"


def test_the_installed_mesh_enrols_the_running_pods_and_carries_mtls(installed: MeshLab) -> None:
    mesh, lab = installed, installed.lab
    status = lab.status_text()
    for app in ("ztunnel", "istio-cni-node", "istiod"):
        assert f"{SYSTEM}/{app}-" in status or f"{app}-" in status, status
    demo = [p["metadata"]["name"] for p in lab.pods("demo")]
    mesh.wait_for(
        lambda: all(
            (lab.find_pod(f"demo/{name}")["metadata"].get("annotations") or {}).get(REDIRECTION) == "enabled"
            for name in demo
        ),
        what="every demo pod enrolled by its node's agent",
        timeout=60,
    )
    restarts = {name: _restarts(lab, f"demo/{name}") for name in demo}
    assert "ISTIO_OUTPUT" in mesh.iptables("demo/client")
    server = lab.find_pod("demo/server")["spec"]["nodeName"]
    principal = spiffe("demo", "client")

    def answered_over_mtls() -> bool:
        done = mesh.curl("demo/client", "http://server.demo/")
        return done.returncode == 0 and _ztunnel_metric(
            lab, server, "istio_tcp_connections_opened_total",
            source_principal=principal, connection_security_policy="mutual_tls",
        ) > 0  # fmt: skip

    mesh.wait_for(answered_over_mtls, what="a request from the client over mTLS", timeout=60)
    assert {name: _restarts(lab, f"demo/{name}") for name in demo} == restarts


def test_an_upgrade_rolls_the_daemonsets_without_a_failed_connection(installed: MeshLab) -> None:
    mesh, lab = installed, installed.lab
    nodes = set(lab.settings.node_names())
    before = _daemonset_pods(lab)
    server = mesh.pod_ip("demo/server")
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(
            mesh.exec, "demo/client", "python", "-c", CONNECTS, server, str(HTTP_PORT), f"{RATE}", "40",
            timeout=90,
        )  # fmt: skip
        out = _meshctl(lab, "upgrade", "--set", "image=ambient-mesh:0.1.1")
        assert "daemonset.apps/ztunnel" in out, out

        def rolled() -> bool:
            now = {
                p["metadata"]["uid"] for app in ("ztunnel", "istio-cni-node") for p in _mesh_pods(lab, app)
            }
            return not now & before and _installed(lab, nodes)

        mesh.wait_for(rolled, what="both DaemonSets rolled on every node", timeout=90)
        done = load.result(timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    print(f"upgrade: {result['ok']} new connections at {result['rate']:.0f}/s, failed: {result['failed']}")
    assert result["failed"] == [], result


def test_uninstall_releases_every_pod_and_they_keep_talking(installed: MeshLab) -> None:
    mesh, lab = installed, installed.lab
    demo = [p["metadata"]["name"] for p in lab.pods("demo")]
    restarts = {name: _restarts(lab, f"demo/{name}") for name in demo}
    out = _meshctl(lab, "uninstall")
    assert "kept CustomResourceDefinition" in out, out
    assert not lab.pods(SYSTEM)
    for name in demo:
        assert "ISTIO_" not in mesh.iptables(f"demo/{name}"), name
        assert REDIRECTION not in (lab.find_pod(f"demo/{name}")["metadata"].get("annotations") or {})
    assert mesh.curl("demo/client", "http://server.demo/").returncode == 0
    assert {name: _restarts(lab, f"demo/{name}") for name in demo} == restarts


def _daemonset_pods(lab: Lab) -> set[str]:
    return {p["metadata"]["uid"] for app in ("ztunnel", "istio-cni-node") for p in _mesh_pods(lab, app)}


def _restarts(lab: Lab, ref: str) -> tuple[str, int]:
    pod = lab.find_pod(ref)
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    return pod["metadata"]["uid"], sum(int(s.get("restartCount", 0)) for s in statuses)
