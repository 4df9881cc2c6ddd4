"""The status report as text."""

from __future__ import annotations

from typing import Any

from meshctl.lab.status import format_table, pod_state, render_status


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
        "status": {"containerStatuses": [{"ready": True, "restartCount": 2}], **status},
    }


def test_pod_state_column() -> None:
    assert pod_state(pod("a", phase="Running")) == "Running"
    assert pod_state(pod("a", phase="Pending", reason="FailedCreatePodSandBox")) == "FailedCreatePodSandBox"
    looping = pod("a", phase="Running")
    looping["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    assert pod_state(looping) == "CrashLoopBackOff"
    looping["metadata"]["deletionTimestamp"] = "t"
    assert pod_state(looping) == "Terminating"


def test_tables() -> None:
    assert format_table(["A", "BB"], [["xyz", "1"]]) == "A    BB\nxyz  1"
    text = render_status(
        header="lab t1",
        nodes=[
            {
                "metadata": {"name": "node1", "annotations": {"lab.meshctl.io/netns": "t1-node1"}},
                "spec": {"podCIDR": "10.244.1.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": "10.240.0.11"}]},
            }
        ],
        pods=[pod("web-1", phase="Running", podIP="10.244.1.2")],
        services=[
            {
                "metadata": {"name": "web", "namespace": "demo"},
                "spec": {"clusterIP": "10.96.0.100", "ports": [{"port": 80, "targetPort": 8080}]},
            }
        ],
        slices=[
            {
                "metadata": {"namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
                "ports": [{"port": 8080}],
                "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": True}}],
            }
        ],
    )
    assert "node1  t1-node1  10.240.0.11  10.244.1.0/24  1" in text
    assert "demo       web-1  1/1    Running  2         10.244.1.2  node1" in text
    assert "demo       web   10.96.0.100  80->8080/TCP  10.244.1.2:8080" in text
