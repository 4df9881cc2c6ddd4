"""Volumes in real lab pods: each container mounts its volumes in its own mount namespace.

One lab with two nodes: a reader pod on node1 reads its configMap, secret and projected token at
their mount paths; writer pods on both nodes share the hostPath mountPath but each sees its own
node's directory; updates reach a running container; a pod waits for a missing ConfigMap; nothing
is mounted in the host's namespace, and ``lab down`` removes the mount points it made.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.testing.polling import wait_until_blocking
from meshctl.lab import builders as b
from meshctl.lab import mountexec
from meshctl.lab.api import Lab
from meshctl.lab.testkit import unique_lab_id

pytestmark = pytest.mark.netns

NS = "vol"
LAB_ID = unique_lab_id("v")
HOST_DIR = f"/var/run/{LAB_ID}-sock"
"""Host and mount paths are unique to this run, so the test never touches a real host directory
(the lab creates the mount points on the host and removes them at ``lab down``)."""
CFG = f"/etc/{LAB_ID}/cfg"
CFG_AGAIN = f"/etc/{LAB_ID}/again"
CREDS = f"/var/run/{LAB_ID}/secrets/creds"
TOKENS = f"/var/run/{LAB_ID}/secrets/tokens"
READ_ONLY = f"/srv/{LAB_ID}/ro"
SCRATCH = f"/srv/{LAB_ID}/scratch"
NODE_ENV = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]


def pod(
    name: str,
    node: str,
    script: str,
    *,
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    container = {"name": "main", "command": ["sh", "-c", script], "env": NODE_ENV, "volumeMounts": mounts}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": node,
            "serviceAccountName": "reader",
            "containers": [container],
            "volumes": volumes,
            "terminationGracePeriodSeconds": 1,
        },
    }


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS},
        "data": data,
    }


SOCK = {"name": "sock", "hostPath": {"path": HOST_DIR, "type": "DirectoryOrCreate"}}
READER = pod(
    "reader",
    "node1",
    f"for f in {CFG}/greeting {CREDS}/password {TOKENS}/token; do cat $f; echo; done > {SCRATCH}/seen;"
    " sleep infinity",
    volumes=[
        {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "greeting", "path": "greeting"}]}},
        {"name": "creds", "secret": {"secretName": "creds"}},
        {
            "name": "token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "istio-ca",
                            "expirationSeconds": 600,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        SOCK,
        {"name": "scratch", "emptyDir": {}},
    ],
    mounts=[
        {"name": "cfg", "mountPath": CFG},
        {"name": "cfg", "mountPath": CFG_AGAIN},
        {"name": "creds", "mountPath": CREDS},
        {"name": "token", "mountPath": TOKENS, "readOnly": True},
        {"name": "sock", "mountPath": HOST_DIR},
        {"name": "sock", "mountPath": READ_ONLY, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH},
    ],
)


def writer(name: str, node: str) -> dict[str, Any]:
    script = f"echo $NODE_NAME > {HOST_DIR}/{name}; sleep infinity"
    return pod(name, node, script, volumes=[SOCK], mounts=[{"name": "sock", "mountPath": HOST_DIR}])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab"), lab_id=LAB_ID)
    objects = [
        b.namespace(NS),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": NS}},
        config_map("cfg", {"greeting": "hello", "other": "x"}),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": NS},
            "data": {"password": base64.b64encode(b"s3cret").decode()},
        },
        READER,
        writer("writer-1", "node1"),
        writer("writer-2", "node2"),
    ]
    lab.up(objects, timeout=60)
    try:
        yield lab
    finally:
        lab.down()


def volume_dir(lab: Lab, name: str, volume: str) -> Path:
    uid = str(lab.find_pod(f"{NS}/{name}")["metadata"]["uid"])
    return lab.paths.root / "run" / "pods" / uid / "volumes" / volume


def tokens(lab: Lab) -> dict[str, Any]:
    path = lab.paths.root / "mesh" / "tokens.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


def test_a_container_reads_its_configmap_secret_and_token_at_the_mount_paths(lab: Lab) -> None:
    seen = volume_dir(lab, "reader", "scratch") / "seen"
    text = wait_until_blocking(
        lambda: seen.exists() and seen.read_text(), what="the reader's output", within=15.0
    )
    (token,) = [t for t, e in tokens(lab).items() if e.get("pod") == f"{NS}/reader"]
    assert text == f"hello\ns3cret\n{token}\n"
    entry = tokens(lab)[token]
    assert (entry["identity"], entry["node"], entry["audience"]) == (f"{NS}/reader", "node1", "istio-ca")
    assert entry["expires"] - time.time() == pytest.approx(600, abs=30)
    assert lab.exec_in_pod(f"{NS}/reader", ["cat", f"{CFG_AGAIN}/greeting"]).stdout == "hello"
    listing = lab.exec_in_pod(f"{NS}/reader", ["ls", CFG]).stdout.split()
    assert listing == ["greeting"]  # items: only the key asked for


def test_host_paths_are_per_node_and_shared_on_a_node(lab: Lab) -> None:
    node1 = lab.paths.root / "hostpath" / "node1" / HOST_DIR.removeprefix("/var/")
    node2 = lab.paths.root / "hostpath" / "node2" / HOST_DIR.removeprefix("/var/")
    wait_until_blocking(
        lambda: (node1 / "writer-1").exists() and (node2 / "writer-2").exists(),
        what="the writers",
        within=15.0,
    )
    assert sorted(p.name for p in node1.iterdir()) == ["writer-1"]
    assert sorted(p.name for p in node2.iterdir()) == ["writer-2"]
    assert (node2 / "writer-2").read_text() == "node2\n"
    # the reader, on node1, shares node1's directory with writer-1 (and sees nothing of node2's)
    assert lab.exec_in_pod(f"{NS}/reader", ["cat", f"{HOST_DIR}/writer-1"]).stdout == "node1\n"
    assert lab.exec_in_pod(f"{NS}/reader", ["ls", HOST_DIR]).stdout.split() == ["writer-1"]


@pytest.mark.parametrize(
    "path",
    [f"{READ_ONLY}/x", f"{CFG}/new", f"{TOKENS}/new", f"{CREDS}/new"],
    ids=["readOnly-hostPath", "configMap", "projected", "secret"],
)
def test_read_only_mounts_refuse_writes(lab: Lab, path: str) -> None:
    result = lab.exec_in_pod(f"{NS}/reader", ["sh", "-c", f"echo x > {path}"])
    assert result.returncode != 0 and "Read-only file system" in result.stderr


def test_no_mount_reaches_the_host(lab: Lab) -> None:
    root = str(lab.paths.root)
    netns = ("/run/netns/", "/var/run/netns/")  # the lab's namespaces are mounted there, by design
    leaked = [
        line
        for line in host_mounts()
        if (root in line or LAB_ID in line) and not line.split()[4].startswith(netns)
    ]
    assert leaked == []
    inside = lab.exec_in_pod(f"{NS}/reader", ["cat", "/proc/self/mountinfo"]).stdout.splitlines()
    expected = {
        p.replace("/var/run/", "/run/") for p in (CFG, CFG_AGAIN, CREDS, TOKENS, HOST_DIR, READ_ONLY, SCRATCH)
    }
    assert expected <= {line.split()[4] for line in inside}


def test_a_configmap_update_reaches_the_running_container(lab: Lab) -> None:
    lab.apply([config_map("cfg", {"greeting": "hello again", "other": "y"})])
    wait_until_blocking(
        lambda: lab.exec_in_pod(f"{NS}/reader", ["cat", f"{CFG}/greeting"]).stdout == "hello again",
        what="the update in the container",
        within=15.0,
    )


def test_a_missing_configmap_holds_the_pod_until_it_is_applied(lab: Lab) -> None:
    late = pod(
        "late",
        "node2",
        "cat /cfg/k; sleep infinity",
        volumes=[{"name": "cfg", "configMap": {"name": "late-cfg"}}],
        mounts=[{"name": "cfg", "mountPath": "/cfg"}],
    )
    lab.apply([late])

    def waiting() -> dict[str, Any]:
        status: dict[str, Any] = lab.find_pod(f"{NS}/late").get("status") or {}
        return status if status.get("reason") == "FailedMount" else {}

    status = wait_until_blocking(waiting, what="FailedMount", within=15.0)
    assert status["phase"] == "Pending"
    assert 'configmap "late-cfg" not found' in status["message"]
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    time.sleep(1.5)  # retries keep it waiting
    assert lab.find_pod(f"{NS}/late")["status"]["phase"] == "Pending"
    lab.apply([config_map("late-cfg", {"k": "finally"})])
    lab.wait_ready(timeout=20)
    wait_until_blocking(
        lambda: "finally" in lab.logs(f"{NS}/late"), what="the late ConfigMap's value", within=15.0
    )


def test_deleting_a_pod_removes_its_empty_dir_and_tokens(lab: Lab) -> None:
    pod_dir = volume_dir(lab, "reader", "scratch").parent.parent
    assert pod_dir.is_dir() and any(e.get("pod") == f"{NS}/reader" for e in tokens(lab).values())
    lab.delete([READER])
    wait_until_blocking(
        lambda: "reader" not in {p["metadata"]["name"] for p in lab.objects("Pod", NS)},
        what="the reader to go",
        within=15.0,
    )
    assert not pod_dir.exists()
    assert not any(e.get("pod") == f"{NS}/reader" for e in tokens(lab).values())


def test_lab_down_removes_the_mount_points_it_made(tmp_path: Path) -> None:
    lab_id = unique_lab_id("v")
    target = f"/opt/{lab_id}/data"
    objects = [
        b.namespace(NS),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": NS}},
        pod(
            "one",
            "node1",
            "sleep infinity",
            volumes=[{"name": "e", "emptyDir": {}}],
            mounts=[{"name": "e", "mountPath": target}],
        ),
    ]
    lab = Lab(tmp_path / "state", lab_id=lab_id)
    try:
        lab.up(objects, timeout=60, nodes=1)
        assert Path(target).is_dir()
    finally:
        lab.down()
    assert not Path(f"/opt/{lab_id}").exists()
    assert not [line for line in host_mounts() if lab_id in line]


@pytest.mark.parametrize(
    ("mounts", "command", "code", "stderr"),
    [
        (["v", "{src}", "{dst}", "ro", "private"], ["sh", "-c", "cat f && ! touch g"], 0, ""),
        (["v", "{src}/none", "{dst}", "rw", "private"], ["true"], 126, "cannot mount volume 'v' at {dst}:"),
        ([], ["no-such-command"], 127, "cannot run 'no-such-command'"),
        (["v", "{src}"], ["true"], 2, "usage:"),
    ],
)
def test_the_exec_step_mounts_then_execs_or_says_why(
    tmp_path: Path, mounts: list[str], command: list[str], code: int, stderr: str
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("content")
    fields = [m.format(src=src, dst=dst) for m in mounts]
    argv = ["unshare", "--mount", "--propagation", "slave", sys.executable, "-I", "-S", mountexec.__file__]
    result = subprocess.run(
        [*argv, str(dst), *fields, "--", *command], check=False, capture_output=True, text=True, timeout=10
    )
    assert result.returncode == code, result.stderr
    assert stderr.format(dst=dst) in result.stderr
    assert str(tmp_path) not in "".join(host_mounts())


def test_a_mount_covering_another_volumes_source_does_not_hide_it(tmp_path: Path) -> None:
    # As an emptyDir at /tmp covers the state directory of a lab kept under /tmp: the hostPath
    # source under it, mounted after, is still the one the pod gets.
    state, empty, socks, dst = (
        tmp_path / "state",
        tmp_path / "empty",
        tmp_path / "state" / "socks",
        tmp_path / "dst",
    )
    for directory in (empty, socks, dst):
        directory.mkdir(parents=True)
    (socks / "ztunnel.sock").write_text("here")
    mounts = ["tmp", str(empty), str(state), "rw", "private", "sock", str(socks), str(dst), "rw", "private"]
    argv = ["unshare", "--mount", "--propagation", "slave", sys.executable, "-I", "-S", mountexec.__file__]
    result = subprocess.run(
        [*argv, "/", *mounts, "--", "cat", str(dst / "ztunnel.sock")],
        check=False, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "here"), result.stderr


def test_a_volume_over_the_labs_own_interpreter_does_not_hide_it(lab: Lab) -> None:
    # As an emptyDir at /tmp covers a checkout and its venv under /tmp (CI's clone): the lab binds its
    # interpreter and code back over the volume, so the container's program still runs.
    covered = str(Path(sys.prefix).parent)
    script = f"{sys.executable} -c 'import meshctl.lab.mesh; print(\"ran\", 6 * 7)'; sleep 3600"
    hider = pod("hider", "node1", script, volumes=[{"name": "hide", "emptyDir": {}}],
                mounts=[{"name": "hide", "mountPath": covered}])  # fmt: skip
    lab.apply([hider])
    try:
        wait_until_blocking(
            lambda: "ran 42" in lab.logs(f"{NS}/hider"),
            what="the program under the volume to run",
            within=15.0,
        )
        written = lab.exec_in_pod(f"{NS}/hider", ["touch", f"{sys.prefix}/written-by-a-container"])
        assert written.returncode != 0 and "Read-only file system" in written.stderr  # bound back read-only
    finally:
        lab.delete([hider])
