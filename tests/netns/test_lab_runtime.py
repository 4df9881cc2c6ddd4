"""The running lab reacts to apply and delete: pods start and stop, Services follow, crashes restart."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mesh.testing.polling import wait_until_blocking
from meshctl.lab import builders as b
from meshctl.lab.api import Lab
from meshctl.lab.testkit import pid_alive, unique_lab_id

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab"), lab_id=unique_lab_id())
    lab.up([b.namespace("apps"), b.deployment("client", "apps", command=b.SLEEPER, node="node1")], timeout=60)
    try:
        yield lab
    finally:
        lab.down()


def named(objects: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["metadata"]["name"].startswith(prefix)]


def http_code(lab: Lab, url: str) -> str:
    result = lab.exec_in_pod(
        "apps/client", ["curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", url]
    )
    return result.stdout


def pids_of(lab: Lab, prefix: str) -> list[int]:
    pids = []
    for path in lab.paths.pids.glob(f"apps_{prefix}*.pid"):
        pids.append(int(path.read_text().split()[0]))
    return pids


def test_apply_starts_pods_and_delete_stops_them(lab: Lab) -> None:
    web = [
        b.httpecho_deployment("web", "apps", replicas=2),
        b.service("web", "apps", selector={"app": "web"}),
    ]
    started = time.monotonic()
    assert lab.apply(web) == ["deployment.apps/web created", "service/web created"]
    # the daemon reacts within about a second (it polls every 0.1 s); 2 s leaves room on a shared machine
    wait_until_blocking(
        lambda: len(named(lab.objects("Pod", "apps"), "web-")) == 2, within=2.0, what="pods to be created"
    )
    lab.wait_ready(timeout=20)
    assert time.monotonic() - started < 10
    pods = named(lab.pods("apps"), "web-")
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node1", "node2"]  # spread round-robin
    assert http_code(lab, "http://web/") == "200"
    netns = [lab.pod_netns(p) for p in pods]
    pids = pids_of(lab, "web-")
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)

    assert lab.delete(web[:1]) == ["deployment.apps/web deleted"]
    wait_until_blocking(
        lambda: not named(lab.objects("Pod", "apps"), "web-"), what="web pods to be removed", within=15.0
    )
    assert not any(os.path.exists(f"/var/run/netns/{n}") for n in netns)
    assert not any(os.path.exists(f"/etc/netns/{n}") for n in netns)
    assert not any(pid_alive(p) for p in pids)
    assert not named(lab.objects("ReplicaSet", "apps"), "web-")
    lab.wait_ready(timeout=10)
    (eps,) = [e for e in lab.objects("EndpointSlice", "apps") if e["metadata"]["name"].startswith("web-")]
    assert eps["endpoints"] == []
    assert http_code(lab, "http://web/") == "000"  # no endpoints: nothing answers
    assert lab.delete(web[1:]) == ["service/web deleted"]


def test_scale_and_relabel_namespace(lab: Lab) -> None:
    lab.apply([b.deployment("sleepy", "apps", command=b.SLEEPER, replicas=1)])
    lab.wait_ready(timeout=20)
    lab.apply([b.deployment("sleepy", "apps", command=b.SLEEPER, replicas=3)])
    lab.wait_ready(timeout=20)
    assert len(named(lab.pods("apps"), "sleepy-")) == 3
    deploy = lab.objects("Deployment", "apps")
    assert any(d["metadata"]["name"] == "sleepy" and d["status"]["readyReplicas"] == 3 for d in deploy)
    lab.apply([b.deployment("sleepy", "apps", command=b.SLEEPER, replicas=1)])
    wait_until_blocking(
        lambda: len(named(lab.objects("Pod", "apps"), "sleepy-")) == 1, what="scale down to 1", within=15.0
    )

    before = int(lab.objects("Namespace")[1]["metadata"]["resourceVersion"])
    assert lab.apply([b.namespace("apps", labels={"istio.io/dataplane-mode": "ambient"})]) == [
        "namespace/apps configured"
    ]
    (apps,) = [n for n in lab.objects("Namespace") if n["metadata"]["name"] == "apps"]
    assert apps["metadata"]["labels"] == {"istio.io/dataplane-mode": "ambient"}
    assert int(apps["metadata"]["resourceVersion"]) > before
    lab.delete([b.deployment("sleepy", "apps", command=b.SLEEPER)])


def test_crashing_container_restarts_with_backoff_and_exit_code(lab: Lab) -> None:
    lab.apply([b.deployment("crasher", "apps", command=["sh", "-c", "echo boom; exit 3"])])

    def restarted_twice() -> dict[str, Any]:
        pods = [p for p in lab.pods("apps") if p["metadata"]["name"].startswith("crasher-")]
        statuses = pods[0].get("status", {}).get("containerStatuses", []) if pods else []
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 2 else {}

    status = wait_until_blocking(restarted_twice, within=15, what="two restarts")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert lab.logs("apps/crasher").count("boom") >= 2
    lab.delete([b.deployment("crasher", "apps", command=["true"])])
