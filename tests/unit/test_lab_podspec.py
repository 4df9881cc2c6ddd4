"""From Pod spec to process (env, argv) and back to status; restart backoff decisions (readiness:
test_lab_probes)."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.lab.podspec import (
    ContainerState,
    container_argv,
    container_env,
    listening_tcp_ports,
    render_pod_status,
)
from meshctl.lab.supervisor import Backoff, next_backoff

POD: dict[str, Any] = {
    "metadata": {"name": "web-1", "namespace": "demo", "uid": "u-1", "labels": {"version": "v2"}},
    "spec": {"nodeName": "node2", "serviceAccountName": "web"},
}


def test_env_has_path_hostname_downward_api_and_references() -> None:
    container = {
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['version']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "GREETING", "value": "hi $(POD) on $(NODE)"},
        ]
    }
    env = container_env(POD, container, pod_ip="10.244.2.5", host_ip="10.240.0.12", bin_dirs=["/venv/bin"])
    assert env["PATH"].startswith("/venv/bin:") and env["HOSTNAME"] == "web-1"
    assert (env["POD"], env["V"], env["IP"], env["SA"]) == ("web-1", "v2", "10.244.2.5", "web")
    assert env["GREETING"] == "hi web-1 on $(NODE)"  # unknown references stay as written, as in Kubernetes
    assert container_argv({"command": ["echo"], "args": ["$(POD)", "x"]}, env) == ("echo", "web-1", "x")
    assert "PYTHONPATH" not in env
    checkout = container_env(POD, container, pod_ip="", host_ip="", bin_dirs=[], python_path="/src")
    assert checkout["PYTHONPATH"] == "/src"  # pods run the same code as the lab that started them


def test_listening_ports_from_proc_net_tcp() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
        "   1: 0200F40A:D2A4 0300F40A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2\n"
    )
    assert listening_tcp_ports(text) == {8080}


@pytest.mark.parametrize(
    ("policy", "code", "ran_for", "streak", "expected"),
    [
        ("Always", 0, 1.0, 0, (0.5, 1)),
        ("Always", 1, 1.0, 1, (1.0, 2)),
        ("Always", 1, 1.0, 4, (8.0, 5)),
        ("Always", 1, 1.0, 9, (10.0, 10)),  # capped
        ("Always", 1, 60.0, 9, (0.5, 0)),  # a long run resets the backoff
        ("OnFailure", 0, 1.0, 0, (None, 0)),
        ("OnFailure", 2, 1.0, 0, (0.5, 1)),
        ("Never", 2, 1.0, 0, (None, 0)),
    ],
)
def test_restart_backoff(
    policy: str, code: int, ran_for: float, streak: int, expected: tuple[float | None, int]
) -> None:
    assert next_backoff(Backoff(), policy=policy, exit_code=code, ran_for=ran_for, streak=streak) == expected


def test_status_ready_only_when_running_and_all_containers_ready() -> None:
    a, c = ContainerState("a", state="running", ready=True, started_at="t"), ContainerState("c")
    status = render_pod_status(
        phase="Running", containers=[a, c], pod_ip="10.244.1.2", host_ip="h", start_time="t"
    )
    assert {x["type"]: x["status"] for x in status["conditions"]}["Ready"] == "False"
    assert status["conditions"][3] == {
        "type": "Ready",
        "status": "False",
        "reason": "ContainersNotReady",
        "message": "containers with unready status: [c]",
    }
    assert status["podIPs"] == [{"ip": "10.244.1.2"}]
    assert status["containerStatuses"][1]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    c.state, c.ready = "running", True
    c.restart_count, c.last_exit_code, c.last_finished_at = 2, 3, "t2"
    status = render_pod_status(
        phase="Running", containers=[a, c], pod_ip="10.244.1.2", host_ip="h", start_time="t"
    )
    assert status["conditions"][2:] == [
        {"type": "ContainersReady", "status": "True"},
        {"type": "Ready", "status": "True"},
    ]
    assert status["containerStatuses"][1]["lastState"] == {"terminated": {"exitCode": 3, "finishedAt": "t2"}}
    pending = render_pod_status(
        phase="Pending",
        containers=[c],
        pod_ip=None,
        host_ip="h",
        start_time="",
        reason="FailedCreatePodSandBox",
        message="m",
    )
    assert (pending["reason"], pending["message"]) == (
        "FailedCreatePodSandBox",
        "m",
    ) and "podIP" not in pending
    done = render_pod_status(phase="Succeeded", containers=[c], pod_ip=None, host_ip="h", start_time="t")
    assert done["conditions"][3] == {"type": "Ready", "status": "False", "reason": "PodCompleted"}
