"""istiod_lite with two replicas (its Deployment's pods), restarted one at a time while a pod keeps
opening connections (issue 17 part 4): the ztunnels reach istiod through its Service; when the replica
a ztunnel is connected to dies (SIGKILL) or drains (SIGTERM), the ztunnel keeps serving with its last
config and certificates, connects to the other replica and resyncs, so config applied meanwhile still
reaches it. The lab restarts the killed container in its pod, as kubelet does. Not one new connection
may fail. Then the Deployment is upgraded in place (a new pod template, as ``meshctl upgrade`` or
``kubectl rollout restart`` makes): with ``maxSurge: 1, maxUnavailable: 0`` a new replica starts and
becomes ready before an old one goes, twice, and again no new connection fails. This lab is its own
(two replicas), not the package's."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from meshctl.lab.mesh import MESH_NAMESPACE
from meshctl.lab.meshview import ISTIOD, MeshPod, mesh_pods
from meshctl.proxy_status import ProxyStatusError, fetch_syncz
from tests.e2e.conftest import CLIENT_NODE, CONNECTS, HTTP_PORT, SERVER_NODE, MeshLab, mesh_lab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MARKER = "e2e-rolling-marker"
RATE = 50.0
UPGRADE_SECONDS = 30


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    with mesh_lab(tmp_path_factory.mktemp("rolling-lab"), "r", istiod_replicas=2) as lab:
        yield lab


def _marker() -> dict[str, Any]:
    """A policy that binds no workload: it only shows whether config reaches the ztunnels."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": MARKER, "namespace": "demo"},
        "spec": {"selector": {"matchLabels": {"app": "nobody"}}, "action": "DENY", "rules": [{}]},
    }


def _replicas(mesh: MeshLab) -> list[MeshPod]:
    """istiod_lite's two pods, oldest first (a restarted container keeps its pod and address)."""
    pods = mesh_pods(mesh.lab, ISTIOD)
    assert len(pods) == 2, pods
    return pods


def _pid(mesh: MeshLab, replica: int) -> int | None:
    return _replicas(mesh)[replica].pid()


def _ztunnels_on(mesh: MeshLab, replica: int) -> set[str]:
    """The nodes whose ztunnel is connected to ``replica`` (its syncz), asked from the first node."""
    address = _replicas(mesh)[replica].ip
    netns = mesh.node_netns(CLIENT_NODE)
    try:
        doc = fetch_syncz(f"http://{address}:15014", timeout=2, netns=netns)
    except ProxyStatusError:  # restarting: nobody is connected to it
        return set()
    return {s["node"] for s in doc["subscribers"] if str(s.get("pod", "")).startswith("ztunnel")}


def _all_on(mesh: MeshLab, replica: int) -> bool:
    return _ztunnels_on(mesh, replica) == {CLIENT_NODE, SERVER_NODE}


def _wait_both_connected(mesh: MeshLab) -> None:
    mesh.wait_for(
        lambda: _ztunnels_on(mesh, 0) | _ztunnels_on(mesh, 1) == {CLIENT_NODE, SERVER_NODE},
        what="both ztunnels connected to a replica",
    )


def test_rolling_istiod_replicas_one_at_a_time_fails_no_connection(replicated: MeshLab) -> None:
    mesh = replicated
    _wait_both_connected(mesh)
    server = mesh.pod_ip("demo/server")
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(
            mesh.exec,
            "demo/client",
            "python",
            "-c",
            CONNECTS,
            server,
            str(HTTP_PORT),
            f"{RATE}",
            "30",
            timeout=70,
        )
        time.sleep(1.0)
        # 1. Replica 0 dies without a goodbye: its ztunnels move to replica 1, and config still arrives.
        killed = _pid(mesh, 0)
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        mesh.wait_for(lambda: _all_on(mesh, 1), what="both ztunnels on replica 1", timeout=30)
        mesh.lab.apply([_marker()])
        for node in (CLIENT_NODE, SERVER_NODE):
            mesh.wait_policy(node, MARKER, present=True, timeout=30)
        # 2. The lab starts replica 0's container again (as kubelet would); replica 1 is then drained.
        mesh.wait_for(lambda: _pid(mesh, 0) not in (None, killed), what="replica 0 started again", timeout=30)
        mesh.wait_for(lambda: _ztunnels_on(mesh, 0) == set(), what="replica 0 serving (no ztunnel yet)")
        drained = _pid(mesh, 1)
        assert drained is not None
        os.kill(drained, signal.SIGTERM)
        mesh.wait_for(lambda: _all_on(mesh, 0), what="both ztunnels on replica 0", timeout=30)
        mesh.lab.delete([_marker()])
        for node in (CLIENT_NODE, SERVER_NODE):
            mesh.wait_policy(node, MARKER, present=False, timeout=30)
        done = load.result(timeout=90)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    print(
        f"istiod rolled: {result['ok']} new connections at {result['rate']:.0f}/s, failed: {result['failed']}"
    )
    assert result["failed"] == [] and result["ok"] >= 0.9 * RATE * 30, result


def test_proxy_status_shows_each_proxy_with_its_replica(replicated: MeshLab) -> None:
    mesh = replicated
    addresses = [p.ip for p in _replicas(mesh)]
    _wait_both_connected(mesh)
    command = [
        sys.executable,
        "-m",
        "meshctl.cli",
        "proxy-status",
        "-o",
        "json",
        "--state",
        str(mesh.lab.paths.root),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    rows = [
        (s["node"], s["istiod"])
        for s in json.loads(done.stdout)["subscribers"]
        if s["pod"].startswith("ztunnel")
    ]
    assert sorted(node for node, _ in rows) == [CLIENT_NODE, SERVER_NODE]
    assert all(replica in addresses for _, replica in rows), rows


def _restarted(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Deployment with a new pod template, as ``kubectl rollout restart`` makes it."""
    changed = copy.deepcopy(deployment)
    for field in ("uid", "resourceVersion", "generation", "creationTimestamp"):
        changed["metadata"].pop(field, None)
    changed.pop("status", None)
    annotations = changed["spec"]["template"]["metadata"].setdefault("annotations", {})
    annotations["kubectl.kubernetes.io/restartedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return changed


def test_upgrading_the_istiod_deployment_under_load_fails_no_connection(replicated: MeshLab) -> None:
    mesh = replicated
    (deployment,) = [
        d for d in mesh.lab.objects("Deployment", MESH_NAMESPACE) if d["metadata"]["name"] == ISTIOD
    ]
    before = {p.name for p in mesh_pods(mesh.lab, ISTIOD)}
    assert len(before) == 2
    server = mesh.pod_ip("demo/server")
    fewest_ready = 2
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(
            mesh.exec, "demo/client", "python", "-c", CONNECTS, server, str(HTTP_PORT), f"{RATE}",
            str(UPGRADE_SECONDS), timeout=UPGRADE_SECONDS + 40,
        )  # fmt: skip
        time.sleep(2.0)
        mesh.lab.apply([_restarted(deployment)])
        deadline = time.monotonic() + 60
        while True:  # both replicas replaced; never fewer than 2 ready on the way (maxUnavailable 0)
            pods = mesh_pods(mesh.lab, ISTIOD)
            fewest_ready = min(fewest_ready, sum(p.ready for p in pods))
            names = {p.name for p in pods}
            if len(pods) == 2 and all(p.ready for p in pods) and not names & before:
                break
            assert time.monotonic() < deadline, f"the rollout did not finish: {pods}"
            time.sleep(0.1)
        mesh.lab.apply([_marker()])
        for node in (CLIENT_NODE, SERVER_NODE):
            mesh.wait_policy(node, MARKER, present=True, timeout=30)
        mesh.lab.delete([_marker()])
        done = load.result(timeout=UPGRADE_SECONDS + 60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    print(
        f"istiod upgraded (2 replicas, fewest ready on the way: {fewest_ready}): {result['ok']} new "
        f"connections at {result['rate']:.0f}/s, failed: {len(result['failed'])}"
    )
    assert fewest_ready == 2
    assert result["failed"] == [] and result["ok"] >= 0.9 * RATE * UPGRADE_SECONDS, result
