"""istiod_lite's Deployment upgraded in place under load (issue 17 part 4): a new pod template (as
``meshctl upgrade`` or ``kubectl rollout restart`` makes) rolls the 2 replicas with ``maxSurge: 1,
maxUnavailable: 0``: a new replica starts, becomes ready, then an old one goes, twice. The ztunnels
move to the new replicas through the istiod Service and resync; meanwhile a meshed client keeps
opening new connections through both ztunnels, and not one may fail. Config applied after the roll
reaches both ztunnels. This lab is its own (two replicas)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from meshctl.lab.mesh import MESH_NAMESPACE
from meshctl.lab.meshview import ISTIOD, mesh_pods
from tests.e2e.conftest import CLIENT_NODE, CONNECTS, HTTP_PORT, SERVER_NODE, MeshLab, mesh_lab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

RATE, SECONDS = 50.0, 30
MARKER = "e2e-istiod-upgrade-marker"


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    with mesh_lab(tmp_path_factory.mktemp("istiod-upgrade-lab"), "u", istiod_replicas=2) as lab:
        yield lab


def _restarted(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Deployment with a new pod template, as ``kubectl rollout restart`` makes it."""
    changed = copy.deepcopy(deployment)
    for field in ("uid", "resourceVersion", "generation", "creationTimestamp"):
        changed["metadata"].pop(field, None)
    changed.pop("status", None)
    annotations = changed["spec"]["template"]["metadata"].setdefault("annotations", {})
    annotations["kubectl.kubernetes.io/restartedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return changed


def _marker() -> dict[str, Any]:
    """A policy that binds no workload: it only shows whether config reaches the ztunnels."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": MARKER, "namespace": "demo"},
        "spec": {"selector": {"matchLabels": {"app": "nobody"}}, "action": "DENY", "rules": [{}]},
    }


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
            str(SECONDS), timeout=SECONDS + 40,
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
        done = load.result(timeout=SECONDS + 60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    print(
        f"istiod upgraded (2 replicas, fewest ready on the way: {fewest_ready}): {result['ok']} new "
        f"connections at {result['rate']:.0f}/s, failed: {len(result['failed'])}"
    )
    assert fewest_ready == 2
    assert result["failed"] == [] and result["ok"] >= 0.9 * RATE * SECONDS, result
