"""The CNI chain as kubelet runs it: a chained plugin gets the standard environment and the previous
result; a failing ADD keeps the pod Pending (visible in status) and is retried until it succeeds."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.lab import builders as b
from meshctl.lab.api import Lab
from meshctl.lab.testkit import unique_lab_id

pytestmark = pytest.mark.netns

# Records every call; fails the first FAIL_ADDS ADDs with a CNI error, then passes prevResult through.
PLUGIN = """#!{python}
import json, os, sys
config = json.load(sys.stdin)
record = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
record["config"] = config
record["netns_inode"] = os.stat("/proc/self/ns/net").st_ino
log = {log!r}
calls = [json.loads(line) for line in open(log)] if os.path.exists(log) else []
with open(log, "a") as f:
    f.write(json.dumps(record) + "\\n")
adds = sum(1 for c in calls if c["CNI_COMMAND"] == "ADD")
if os.environ["CNI_COMMAND"] == "ADD" and adds < {fail_adds}:
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "test plugin: node agent not ready"}}))
    sys.exit(1)
print(json.dumps(config.get("prevResult", {{}})))
"""


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab"), lab_id=unique_lab_id())
    lab.up([b.namespace("apps")], timeout=60)
    try:
        yield lab
    finally:
        lab.down()


def install_plugin(lab: Lab, *, fail_adds: int) -> str:
    log = str(lab.paths.root / "cni-calls.jsonl")
    plugin = lab.paths.cni_bin / "lab-test-cni"
    plugin.write_text(PLUGIN.format(python=sys.executable, log=log, fail_adds=fail_adds))
    plugin.chmod(0o755)
    lab.set_cni_chain([{"type": "lab-test-cni", "mode": "test"}], name="lab-test")
    return log


def calls(log: str) -> list[dict[str, Any]]:
    with open(log) as f:
        return [json.loads(line) for line in f]


def test_failing_add_keeps_pod_pending_then_it_starts(lab: Lab) -> None:
    log = install_plugin(lab, fail_adds=2)
    lab.apply([b.httpecho_deployment("web", "apps")])
    deadline = time.monotonic() + 10
    pending: dict[str, Any] = {}
    while time.monotonic() < deadline and not pending:
        pods = lab.pods("apps")
        status = pods[0].get("status", {}) if pods else {}
        if status.get("reason") == "FailedCreatePodSandBox":
            pending = status
        time.sleep(0.02)
    assert pending["phase"] == "Pending"
    assert "node agent not ready" in pending["message"] and "lab-test-cni" in pending["message"]

    lab.wait_ready(timeout=20)
    pod = lab.find_pod("apps/web")
    assert pod["status"]["phase"] == "Running" and "reason" not in pod["status"]
    adds = [c for c in calls(log) if c["CNI_COMMAND"] == "ADD"]
    assert len(adds) == 3
    dels = [c for c in calls(log) if c["CNI_COMMAND"] == "DEL"]
    assert len(dels) == 2, "every failed ADD is followed by DEL, as a runtime cleans up a failed sandbox"

    last = adds[-1]
    netns = lab.pod_netns(pod)
    assert last["CNI_NETNS"] == f"/var/run/netns/{netns}"
    assert last["CNI_IFNAME"] == "eth0" and last["CNI_CONTAINERID"] == pod["metadata"]["uid"]
    assert f"K8S_POD_NAMESPACE=apps;K8S_POD_NAME={pod['metadata']['name']}" in last["CNI_ARGS"]
    assert str(lab.paths.cni_bin) in last["CNI_PATH"].split(":")
    config = last["config"]
    assert (config["name"], config["cniVersion"], config["type"], config["mode"]) == (
        "lab-test", "1.0.0", "lab-test-cni", "test"
    )  # fmt: skip
    assert config["prevResult"]["ips"][0]["address"] == pod["status"]["podIP"] + "/32"
    assert config["prevResult"]["interfaces"][1]["sandbox"] == last["CNI_NETNS"]
    node_ns = os.stat(f"/var/run/netns/{lab.settings.node(pod['spec']['nodeName']).netns}").st_ino
    assert last["netns_inode"] == node_ns, "plugins run in the node's namespace, as on a node"

    lab.delete([b.httpecho_deployment("web", "apps")])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and lab.objects("Pod", "apps"):
        time.sleep(0.05)
    final = calls(log)[-1]
    assert final["CNI_COMMAND"] == "DEL" and final["CNI_CONTAINERID"] == pod["metadata"]["uid"]
    assert final["config"]["prevResult"]["ips"][0]["address"] == pod["status"]["podIP"] + "/32"
