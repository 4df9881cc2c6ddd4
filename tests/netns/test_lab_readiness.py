"""Lab pods are ready when their readinessProbe passes, as on Kubernetes: an httpGet probe answered
503 keeps a pod not ready, 200 makes it ready, ``failureThreshold`` failures in a row make it not
ready again; an exec probe runs inside the container (its volumes), and a hostNetwork pod is probed
on its node's address."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.testing.polling import wait_until_blocking
from meshctl.lab import builders as b
from meshctl.lab.api import Lab
from meshctl.lab.testkit import unique_lab_id

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

SERVER = """\
import http.server, os, sys
flag, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" and os.path.exists(flag) else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((host, port), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab"), lab_id=unique_lab_id())
    lab.up([b.namespace("probes")], timeout=60)
    try:
        yield lab
    finally:
        lab.down()


def probed(name: str, command: list[str], probe: dict[str, Any], **pod: Any) -> dict[str, Any]:
    """A one-pod Deployment whose container has ``probe`` as its readinessProbe (and port 8080)."""
    dep = b.deployment(name, "probes", command=command, node="node1")
    spec = dep["spec"]["template"]["spec"]
    spec["containers"][0] |= {
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": probe,
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
    }
    spec |= pod
    return dep


def pod_of(lab: Lab, name: str) -> dict[str, Any]:
    (pod,) = [p for p in lab.pods("probes") if p["metadata"]["name"].startswith(f"{name}-")]
    return pod


def ready_condition(lab: Lab, name: str) -> dict[str, Any]:
    pod = pod_of(lab, name)
    (ready,) = [c for c in pod.get("status", {}).get("conditions") or () if c["type"] == "Ready"]
    assert pod["status"]["containerStatuses"][0]["ready"] is (ready["status"] == "True")
    return dict(ready)


def is_ready(lab: Lab, name: str) -> bool:
    return bool(ready_condition(lab, name)["status"] == "True")


def started(lab: Lab, name: str) -> bool:
    pods = [p for p in lab.pods("probes") if p["metadata"]["name"].startswith(f"{name}-")]
    statuses = pods[0].get("status", {}).get("containerStatuses") or [] if pods else []
    return bool(statuses and statuses[0]["started"])


def test_http_get_probe_ready_on_200_not_ready_after_failure_threshold(lab: Lab, tmp_path: Path) -> None:
    flag, script = tmp_path / "healthy", tmp_path / "server.py"
    script.write_text(SERVER)
    probe = {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 3}
    web = probed("web", ["python", str(script), str(flag), "$(POD_IP)", "8080"], probe)
    lab.apply([web])
    try:
        wait_until_blocking(lambda: started(lab, "web"), within=30, what="the web container started")
        wait_until_blocking(
            lambda: "HTTP probe failed with statuscode: 503" in lab.logs("probes/web"),
            within=15,
            what="the 503 noted in the pod's log",
        )
        time.sleep(1.5)  # more probes, all answered 503
        assert ready_condition(lab, "web") == {
            "type": "Ready",
            "status": "False",
            "reason": "ContainersNotReady",
            "message": "containers with unready status: [main]",
        }
        flag.touch()
        wait_until_blocking(lambda: is_ready(lab, "web"), within=10, what="web ready once it answers 200")
        flag.unlink()
        gone = time.monotonic()
        wait_until_blocking(lambda: not is_ready(lab, "web"), within=15, what="web not ready again")
        assert time.monotonic() - gone > 1.5  # three failures a second apart, not the first one
        flag.touch()
        wait_until_blocking(lambda: is_ready(lab, "web"), within=10, what="web ready again")
    finally:
        lab.delete([web])


def test_exec_probe_runs_in_the_container(lab: Lab) -> None:
    probe = {"exec": {"command": ["test", "-f", "/probe-dir/ok"]}, "periodSeconds": 1, "failureThreshold": 1}
    pod = {"volumes": [{"name": "scratch", "emptyDir": {}}]}
    worker = probed("worker", list(b.SLEEPER), probe, **pod)
    worker["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "scratch", "mountPath": "/probe-dir"}
    ]
    lab.apply([worker])
    try:
        wait_until_blocking(lambda: started(lab, "worker"), within=30, what="the worker container started")
        time.sleep(1.5)
        assert not is_ready(lab, "worker")
        assert "Readiness probe failed: command test -f /probe-dir/ok exited with 1" in lab.logs(
            "probes/worker"
        )
        lab.exec_in_pod("probes/worker", ["touch", "/probe-dir/ok"], check=True)  # in its emptyDir
        assert not Path("/probe-dir/ok").exists()  # not the host's
        wait_until_blocking(lambda: is_ready(lab, "worker"), within=10, what="worker ready")
        lab.exec_in_pod("probes/worker", ["rm", "/probe-dir/ok"], check=True)
        wait_until_blocking(lambda: not is_ready(lab, "worker"), within=10, what="worker not ready again")
    finally:
        lab.delete([worker])


def test_host_network_pod_is_probed_on_its_nodes_address(lab: Lab, tmp_path: Path) -> None:
    flag, script = tmp_path / "healthy", tmp_path / "server.py"
    script.write_text(SERVER)
    flag.touch()
    probe = {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}
    # listens on the node's address only: a probe of 127.0.0.1 would never pass
    agent = probed("agent", ["python", str(script), str(flag), "$(POD_IP)", "8080"], probe, hostNetwork=True)
    lab.apply([agent])
    try:
        wait_until_blocking(lambda: started(lab, "agent"), within=30, what="the agent container started")
        wait_until_blocking(lambda: is_ready(lab, "agent"), within=10, what="the host-network pod ready")
        assert pod_of(lab, "agent")["status"]["podIP"] == lab.settings.node("node1").address
    finally:
        lab.delete([agent])


def test_a_probe_the_lab_cannot_run_keeps_the_pod_not_ready_and_says_why(lab: Lab) -> None:
    broken = probed("broken", list(b.SLEEPER), {"httpGet": {"path": "/", "port": "metrics"}})
    lab.apply([broken])
    try:
        wait_until_blocking(lambda: started(lab, "broken"), within=30, what="the container started")
        time.sleep(0.5)
        assert not is_ready(lab, "broken")
        assert "the readiness probe's port 'metrics' is not one of its named ports" in lab.logs(
            "probes/broken"
        )
    finally:
        lab.delete([broken])
