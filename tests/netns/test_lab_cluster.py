"""The lab's data plane with real processes: pods reach pods across nodes and Services by name and VIP
(kube-proxy DNAT, hosts files), as curl against the HTTP echo server sees it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.testing.polling import wait_until_blocking
from meshctl.lab import builders as b
from meshctl.lab.api import Lab
from meshctl.lab.testkit import unique_lab_id

pytestmark = pytest.mark.netns

MESHCTL = str(Path(sys.executable).with_name("meshctl"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab"), lab_id=unique_lab_id())
    objects = [
        b.namespace("demo", labels={"istio.io/dataplane-mode": "ambient"}),
        b.namespace("legacy"),
        b.deployment("client", "demo", command=b.SLEEPER, node="node1"),
        b.httpecho_deployment("server-v1", "demo", labels={"app": "server", "version": "v1"}, node="node2"),
        b.httpecho_deployment("server-v2", "demo", labels={"app": "server", "version": "v2"}, node="node1"),
        b.service("server", "demo", selector={"app": "server"}),
        b.deployment("client", "legacy", command=b.SLEEPER, node="node2"),
    ]
    lab.up(objects, timeout=60)
    try:
        yield lab
    finally:
        lab.down()


def curl_json(lab: Lab, pod: str, url: str) -> dict[str, Any]:
    result = lab.exec_in_pod(pod, ["curl", "-sS", "-m", "5", url], check=False)
    assert result.returncode == 0, f"curl {url} from {pod}: {result.stderr}"
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def answering_pods(lab: Lab, pod: str, url: str, count: int) -> Counter[str]:
    """Pods that answered ``count`` requests, each on a new connection (so each is DNATed anew)."""
    argv = ["curl", "-sS", "-m", "5", "-H", "Connection: close", "-w", "\\n", *([url] * count)]
    result = lab.exec_in_pod(pod, argv, check=False)
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    pods: Counter[str] = Counter()
    text = result.stdout.strip()
    while text:
        doc, end = decoder.raw_decode(text)
        pods[doc["pod"]] += 1
        text = text[end:].strip()
    return pods


def test_pod_reaches_pod_on_other_node_by_ip_with_its_own_source_address(lab: Lab) -> None:
    server = lab.find_pod("demo/server-v1")
    assert (
        server["spec"]["nodeName"] == "node2" and lab.find_pod("demo/client")["spec"]["nodeName"] == "node1"
    )
    doc = curl_json(lab, "demo/client", f"http://{lab.pod_ip('demo', 'server-v1')}:8080/hello?x=1")
    assert doc["pod"] == server["metadata"]["name"]
    assert (doc["version"], doc["node"], doc["path"], doc["query"]) == ("v1", "node2", "/hello", "x=1")
    assert doc["client"].split(":")[0] == lab.pod_ip("demo", "client")


@pytest.mark.parametrize(
    "host", ["server", "server.demo", "server.demo.svc", "server.demo.svc.cluster.local", "<vip>"]
)
def test_service_reachable_by_every_name_and_by_vip(lab: Lab, host: str) -> None:
    vip = lab.objects("Service", "demo")[0]["spec"]["clusterIP"]
    doc = curl_json(lab, "demo/client", f"http://{host.replace('<vip>', vip)}/")
    assert doc["namespace"] == "demo" and doc["version"] in ("v1", "v2")
    assert doc["headers"]["host"] == host.replace("<vip>", vip)


def test_service_spreads_connections_over_ready_endpoints(lab: Lab) -> None:
    pods = answering_pods(lab, "demo/client", "http://server/", 24)
    assert sum(pods.values()) == 24
    assert len(pods) == 2, pods  # both endpoints answer (each with probability 1/2 per connection)


def test_other_namespace_uses_the_namespaced_name(lab: Lab) -> None:
    assert curl_json(lab, "legacy/client", "http://server.demo/")["namespace"] == "demo"
    short = lab.exec_in_pod("legacy/client", ["curl", "-sS", "-m", "5", "http://server/"])
    assert short.returncode == 6, "the short name must only resolve inside the Service's namespace"


def test_pod_reaches_itself_through_its_service(lab: Lab) -> None:
    me = lab.find_pod("demo/server-v2")["metadata"]["name"]
    pods = answering_pods(lab, "demo/server-v2", "http://server/", 16)
    assert sum(pods.values()) == 16 and me in pods  # hairpin: masqueraded as kube-proxy does


def test_objects_and_status_are_kubernetes_shaped(lab: Lab) -> None:
    pod = lab.find_pod("demo/server-v1")
    rs = lab.objects("ReplicaSet", "demo")
    owner = pod["metadata"]["ownerReferences"][0]
    replicaset = next(r for r in rs if r["metadata"]["uid"] == owner["uid"])
    assert (
        owner["kind"] == "ReplicaSet" and replicaset["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    )
    assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"].startswith("10.244.2.")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    netns = pod["metadata"]["annotations"]["lab.meshctl.io/netns"]
    assert netns == lab.pod_netns(pod) and Path("/var/run/netns", netns).exists()
    (eps,) = lab.objects("EndpointSlice", "demo")
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "server"
    assert sorted(e["nodeName"] for e in eps["endpoints"]) == ["node1", "node2"]
    assert all(e["conditions"]["ready"] for e in eps["endpoints"]) and eps["ports"][0]["port"] == 8080


def run_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MESHCTL, "lab", *args[:1], "--state", str(lab.paths.root), *args[1:]],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_cli_status_exec_and_logs(lab: Lab) -> None:
    status = run_cli(lab, "status")
    assert status.returncode == 0, status.stderr
    vip = lab.objects("Service", "demo")[0]["spec"]["clusterIP"]
    for pod in lab.pods():
        assert pod["metadata"]["name"] in status.stdout and pod["status"]["podIP"] in status.stdout
    assert vip in status.stdout and "80->8080/TCP" in status.stdout
    executed = run_cli(lab, "exec", "demo/client", "--", "curl", "-s", "-m", "5", "http://server.demo/")
    assert executed.returncode == 0 and json.loads(executed.stdout)["namespace"] == "demo"
    logs = run_cli(lab, "logs", "server-v1")
    assert logs.returncode == 0 and "httpecho: listening on 0.0.0.0:8080" in logs.stdout
    ambiguous = run_cli(lab, "exec", "client", "--", "true")
    assert ambiguous.returncode == 1 and "matches several pods" in ambiguous.stderr


INVALID_MIX = """
apiVersion: v1
kind: ConfigMap
metadata: {name: valid-neighbour, namespace: demo}
data: {a: b}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICTT}}
---
apiVersion: example.com/v1
kind: Frobnicator
metadata: {name: f, namespace: demo}
"""


def test_cli_apply_refuses_invalid_config_and_applies_nothing_from_the_file(lab: Lab, tmp_path: Path) -> None:
    """As Istio's schemas and webhook do: the field, what is allowed, and not one object written."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID_MIX)
    refused = run_cli(lab, "apply", "-f", str(bad))
    assert refused.returncode == 1
    assert "2 objects are invalid, so nothing was applied" in refused.stderr
    assert "PeerAuthentication demo/strict" in refused.stderr
    assert "spec.mtls.mode: 'STRICTT' is not one of UNSET, DISABLE, PERMISSIVE, STRICT" in refused.stderr
    assert (
        "'Frobnicator' (apiVersion example.com/v1) is not a kind the lab or the mesh knows" in refused.stderr
    )
    assert "created" not in refused.stdout
    assert lab.objects("ConfigMap", "demo") == [] and lab.objects("PeerAuthentication", "demo") == []
    bad.write_text(INVALID_MIX.replace("STRICTT", "STRICT").split("---\napiVersion: example.com")[0])
    applied = run_cli(lab, "apply", "-f", str(bad))
    assert applied.returncode == 0, applied.stderr
    assert [o["metadata"]["name"] for o in lab.objects("PeerAuthentication", "demo")] == ["strict"]
    deleted = run_cli(lab, "delete", "-f", str(bad))
    assert deleted.returncode == 0, deleted.stderr


def _daemonset(command: list[str]) -> dict[str, Any]:
    ds = b.deployment("agent", "legacy", command=command)
    ds["kind"] = "DaemonSet"
    ds["spec"].pop("replicas", None)
    ds["spec"]["updateStrategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    return ds


def _agent_pods(lab: Lab) -> list[dict[str, Any]]:
    return [p for p in lab.pods("legacy") if p["metadata"]["name"].startswith("agent-")]


def test_a_daemonset_runs_a_pod_per_node_and_rolls_a_new_template_one_node_at_a_time(lab: Lab) -> None:
    lab.apply([_daemonset(["sleep", "3600"])])
    deadline = time.monotonic() + 30

    def ready(pod: dict[str, Any]) -> bool:
        conditions = pod.get("status", {}).get("conditions") or []
        live = not pod["metadata"].get("deletionTimestamp")
        return live and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    while sorted(p["spec"]["nodeName"] for p in _agent_pods(lab) if ready(p)) != ["node1", "node2"]:
        assert time.monotonic() < deadline, f"no ready pod per node: {_agent_pods(lab)}"
        time.sleep(0.1)
    first = {p["metadata"]["name"] for p in _agent_pods(lab)}
    lab.apply([_daemonset(["sleep", "3601"])])
    lowest, deadline = 2, time.monotonic() + 60
    while True:  # at most maxUnavailable (1) of the 2 nodes without a ready pod, all along
        pods = _agent_pods(lab)
        lowest = min(lowest, len({p["spec"]["nodeName"] for p in pods if ready(p)}))
        new = [p for p in pods if ready(p) and p["spec"]["containers"][0]["command"] == ["sleep", "3601"]]
        if len(new) == 2 and len(pods) == 2:
            break
        assert time.monotonic() < deadline, f"the rollout did not finish: {pods}"
        time.sleep(0.05)
    assert lowest == 1 and not first & {p["metadata"]["name"] for p in new}

    def status_caught_up() -> bool:  # the controller writes it on its next pass, as Kubernetes does
        (ds,) = lab.objects("DaemonSet", "legacy")
        return bool(ds["status"]["updatedNumberScheduled"] == ds["status"]["numberReady"] == 2)

    wait_until_blocking(status_caught_up, within=10, what="the DaemonSet's status (2 updated, 2 ready)")
    lab.delete([_daemonset(["sleep", "3601"])])
    deadline = time.monotonic() + 30
    while _agent_pods(lab):
        assert time.monotonic() < deadline, "the DaemonSet's pods stayed"
        time.sleep(0.1)


def test_host_network_pods_run_in_their_nodes_namespace_with_its_address(lab: Lab) -> None:
    agent = _daemonset(["sleep", "3600"])
    agent["metadata"]["name"] = "hostagent"
    agent["spec"]["template"]["spec"]["hostNetwork"] = True
    lab.apply([agent])
    deadline = time.monotonic() + 30
    while len(pods := [p for p in lab.pods("legacy") if p["metadata"]["name"].startswith("hostagent-")
                       and p.get("status", {}).get("phase") == "Running"]) < 2:  # fmt: skip
        assert time.monotonic() < deadline, "the host-network pods did not start"
        time.sleep(0.1)
    try:
        for pod in pods:
            node = lab.settings.node(pod["spec"]["nodeName"])
            assert pod["status"]["podIP"] == pod["status"]["hostIP"] == node.address
            assert lab.pod_netns(pod) == node.netns
            shown = lab.exec_in_pod(
                f"legacy/{pod['metadata']['name']}", ["ip", "-4", "-o", "addr"], check=False
            )
            assert node.address in shown.stdout, shown
    finally:
        lab.delete([agent])
    deadline = time.monotonic() + 30
    while [p for p in lab.pods("legacy") if p["metadata"]["name"].startswith("hostagent-")]:
        assert time.monotonic() < deadline, "the host-network pods stayed"
        time.sleep(0.1)
    for node in lab.settings.nodes:  # the nodes' namespaces are still there
        assert Path("/var/run/netns", node.netns).exists()
