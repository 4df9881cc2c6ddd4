"""``lab exec`` runs in the container's mount namespace when it mounts volumes, as kubectl exec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from meshctl.lab.api import Lab
from meshctl.lab.settings import build_settings
from meshctl.lab.store import Store
from meshctl.lab.supervisor import process_start_time

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-1", "namespace": "apps", "uid": "0a1b2c3d-0000"},
    "spec": {
        "nodeName": "node1",
        "containers": [{"name": "main", "command": ["sleep", "infinity"]}],
        "volumes": [{"name": "e", "emptyDir": {}}],
    },
}


@pytest.mark.parametrize(
    ("mounts", "running", "expected"),
    [
        (True, True, ["nsenter", f"--target={os.getpid()}", "--mount", "--net", "--", "cat", "/x"]),
        (True, False, ["ip", "netns", "exec", "t1-pod-0a1b2c3d", "cat", "/x"]),
        (False, True, ["ip", "netns", "exec", "t1-pod-0a1b2c3d", "cat", "/x"]),
    ],
)
def test_exec_enters_the_first_containers_mounts(
    tmp_path: Path, mounts: bool, running: bool, expected: list[str]
) -> None:
    store = Store(tmp_path)
    store.write_settings(build_settings(lab_id="t1"))
    pod = {**POD, "spec": {**POD["spec"], "containers": [dict(POD["spec"]["containers"][0])]}}
    if mounts:
        pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "e", "mountPath": "/x"}]
    with store.transaction() as txn:
        txn.put(pod)
    if running:  # this process stands for the container
        store.paths.pids.mkdir(parents=True)
        pid = os.getpid()
        (store.paths.pids / "apps_web-1_main.pid").write_text(f"{pid} {process_start_time(pid)}\n")
    assert Lab(tmp_path).exec_argv("apps/web-1", ["cat", "/x"]) == expected
