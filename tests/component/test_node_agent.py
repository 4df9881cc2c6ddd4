"""The whole node agent (composition root) on real unix sockets and a lab-style state directory:
the real ``ztunnel-cni`` executable asks it, a fake ztunnel acks. Rules are recorded, not applied
(no root here; tests/netns applies them for real)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mesh.rt.labstate import LabState
from mesh.testing.polling import wait_until
from tests.component.node_agent_fakes import (
    FakeZtunnel,
    RecordingProbes,
    RecordingRules,
    add_pod,
    make_lab,
    set_namespace_labels,
)
from ztunnel.cni.agent import parse_args, serve

PLUGIN = str(Path(sys.executable).with_name("ztunnel-cni"))
AGENT = str(Path(sys.executable).with_name("ztunnel-node-agent"))
REDIRECTION = "ambient.istio.io/redirection"


@dataclass
class Node:
    state: LabState
    run_dir: Path
    rules: RecordingRules
    tmp: Path
    probes: RecordingProbes = field(default_factory=RecordingProbes)

    @property
    def zds_socket(self) -> str:
        return str(self.run_dir / "ztunnel.sock")

    @property
    def plugin_socket(self) -> str:
        return str(self.run_dir / "pluginevent.sock")

    def sandbox(self, name: str) -> str:
        """A stand-in for /var/run/netns/<pod>: any openable file works for fd passing."""
        path = self.tmp / f"netns-{name}"
        path.touch()
        return str(path)

    def redirection(self, name: str) -> str | None:
        pod = self.state.read(("Pod", "demo", name))
        assert pod is not None
        value: str | None = (pod["metadata"].get("annotations") or {}).get(REDIRECTION)
        return value


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    state = make_lab(tmp_path / "state")
    node = Node(state, tmp_path / "run", RecordingRules(), tmp_path)
    args = parse_args(
        ["--node", "n1", "--state-dir", str(state.root), "--run-dir", str(node.run_dir), "--zds-timeout", "1"]
    )
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        serve(args, stop=stop, rules=node.rules, probes=node.probes)
    )
    await wait_until(lambda: os.path.exists(node.plugin_socket) or task.done(), what="agent listening")
    try:
        yield node
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert not _exists(node.plugin_socket) and not _exists(node.zds_socket)


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def cni(
    node: Node, command: str, name: str, *, uid: str = "", socket: str | None = None
) -> tuple[int, Any]:
    """Runs the real plugin executable as the lab runtime does; returns (exit status, parsed stdout)."""
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/32", "gateway": "10.244.1.1"}]}
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "lab", "type": "ztunnel-cni", "prevResult": prev}
    conf |= {"agent_socket": socket or node.plugin_socket, "agent_timeout": 5}
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": uid or name,
        "CNI_NETNS": node.sandbox(name),
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name};K8S_POD_UID={uid}",
        "CNI_PATH": str(Path(PLUGIN).parent),
        "PATH": os.environ.get("PATH", ""),
    }
    proc = await asyncio.create_subprocess_exec(
        PLUGIN, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), 20)
    return proc.returncode or 0, (json.loads(out) if out.strip() else None)


async def test_add_enrolls_the_pod_with_its_netns_fd_and_annotation(node: Node) -> None:
    uid = add_pod(node.state, "web-0")
    ztunnel = await FakeZtunnel(node.zds_socket).start()
    try:
        await wait_until(lambda: ztunnel.kinds() == ["snapshot_sent"])
        status, out = await cni(node, "ADD", "web-0", uid=uid)
        assert status == 0 and out["ips"][0]["address"] == "10.244.1.5/32"  # prevResult passed through
        add = ztunnel.seen[-1]
        st = os.stat(node.sandbox("web-0"))
        assert (add.kind, add.uid, add.workload) == (
            "add",
            "Kubernetes//Pod/demo/web-0",
            ("web-0", "demo", "web"),
        )
        assert add.netns == (st.st_dev, st.st_ino)
        assert node.rules.captured == {node.sandbox("web-0")}
        assert node.redirection("web-0") == "enabled"
        assert node.probes.current == ("10.244.1.5",)  # node-local probes to the pod skip ztunnel
        assert (await cni(node, "CHECK", "web-0", uid=uid))[0] == 0
        assert await cni(node, "DEL", "web-0", uid=uid) == (0, None)
        assert ztunnel.seen[-1].kind == "del"
        assert node.probes.sets[-1] == ()
    finally:
        await ztunnel.close()


async def test_add_fails_closed_when_no_ztunnel_is_connected(node: Node) -> None:
    uid = add_pod(node.state, "web-0")
    status, out = await cni(node, "ADD", "web-0", uid=uid)
    assert status == 1 and out["code"] == 11 and "no ztunnel is connected" in out["msg"]
    assert node.redirection("web-0") == "pending"
    assert node.rules.captured == {node.sandbox("web-0")}  # captured: the pod cannot bypass
    assert node.probes.current == ("10.244.1.5",)  # ... and its probes are exempt already


@pytest.mark.parametrize("mode", ["nack", "silent"])
async def test_add_fails_when_ztunnel_refuses_or_does_not_answer(node: Node, mode: str) -> None:
    uid = add_pod(node.state, "web-0")
    ztunnel = await FakeZtunnel(node.zds_socket).start()
    try:
        await wait_until(lambda: ztunnel.kinds() == ["snapshot_sent"])
        ztunnel.mode = mode
        status, out = await cni(node, "ADD", "web-0", uid=uid)
        assert status == 1 and out["code"] == 11
        assert ("fake ztunnel refuses" if mode == "nack" else "did not ack") in out["msg"]
        assert node.redirection("web-0") == "pending"
    finally:
        await ztunnel.close()


async def test_add_fails_when_the_agent_is_not_running(node: Node) -> None:
    uid = add_pod(node.state, "web-0")
    status, out = await cni(node, "ADD", "web-0", uid=uid, socket=str(node.tmp / "nobody.sock"))
    assert status == 1 and out["code"] == 11 and "cannot reach the node agent" in out["msg"]
    assert node.redirection("web-0") is None and node.rules.captured == set()


async def test_pod_outside_the_mesh_starts_untouched(node: Node) -> None:
    set_namespace_labels(node.state, "demo", {})
    uid = add_pod(node.state, "legacy-0")
    assert (await cni(node, "ADD", "legacy-0", uid=uid))[0] == 0
    assert node.redirection("legacy-0") is None and node.rules.captured == set()
    assert node.probes.current in (None, ())


async def test_relabelling_the_namespace_enrolls_then_releases_the_running_pod(node: Node) -> None:
    set_namespace_labels(node.state, "demo", {})
    uid = add_pod(node.state, "web-0")
    ztunnel = await FakeZtunnel(node.zds_socket).start()
    try:
        assert (await cni(node, "ADD", "web-0", uid=uid))[0] == 0
        set_namespace_labels(node.state, "demo", {"istio.io/dataplane-mode": "ambient"})
        await wait_until(lambda: node.redirection("web-0") == "enabled", what="runtime enrollment")
        assert ztunnel.kinds() == ["snapshot_sent", "add"]
        assert node.rules.captured == {node.sandbox("web-0")}
        assert node.probes.current == ("10.244.1.5",)
        set_namespace_labels(node.state, "demo", {})
        await wait_until(lambda: ztunnel.kinds()[-1:] == ["del"], what="runtime release")
        assert node.redirection("web-0") is None and node.rules.captured == set()
        await wait_until(lambda: node.probes.current == (), what="the probe SNAT to drop the pod")
    finally:
        await ztunnel.close()


async def test_pending_pod_is_enrolled_once_ztunnel_connects(node: Node) -> None:
    """A running pod labelled while ztunnel is away stays captured and pending, then is served."""
    set_namespace_labels(node.state, "demo", {})
    uid = add_pod(node.state, "web-0")
    assert (await cni(node, "ADD", "web-0", uid=uid))[0] == 0
    set_namespace_labels(node.state, "demo", {"istio.io/dataplane-mode": "ambient"})
    await wait_until(lambda: node.redirection("web-0") == "pending", what="fail-closed pending")
    ztunnel = await FakeZtunnel(node.zds_socket).start()
    try:
        await wait_until(lambda: node.redirection("web-0") == "enabled", what="enrollment after connect")
        assert ztunnel.kinds() == ["snapshot_sent", "add"]
    finally:
        await ztunnel.close()


async def test_reconnecting_ztunnel_gets_the_snapshot(node: Node) -> None:
    uids = [add_pod(node.state, name) for name in ("web-0", "web-1")]
    first = await FakeZtunnel(node.zds_socket).start()
    for name, uid in zip(("web-0", "web-1"), uids, strict=True):
        assert (await cni(node, "ADD", name, uid=uid))[0] == 0
    await first.close()
    os.unlink(node.sandbox("web-1"))  # a namespace the agent cannot open is kept, not dropped
    second = await FakeZtunnel(node.zds_socket).start()
    try:
        await wait_until(lambda: second.kinds()[-1:] == ["snapshot_sent"], what="snapshot")
        assert sorted((s.kind, s.uid) for s in second.seen[:-1]) == [
            ("add", "Kubernetes//Pod/demo/web-0"),
            ("keep", "Kubernetes//Pod/demo/web-1"),
        ]
    finally:
        await second.close()


async def test_deleted_pod_is_dropped_from_ztunnel(node: Node) -> None:
    uid = add_pod(node.state, "web-0")
    ztunnel = await FakeZtunnel(node.zds_socket).start()
    try:
        assert (await cni(node, "ADD", "web-0", uid=uid))[0] == 0
        with node.state.transaction() as txn:
            txn.remove(("Pod", "demo", "web-0"))
        await wait_until(lambda: ztunnel.kinds()[-1:] == ["del"], what="del after pod deletion")
        # The agent forgets the pod's saved state once ztunnel acknowledged the del: just after.
        await wait_until(
            lambda: not list((node.run_dir / "pods").glob("*.json")), what="the pod's state gone"
        )
    finally:
        await ztunnel.close()


async def test_agent_process_logs_json_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    state = make_lab(tmp_path / "state", ambient=False)
    uid = add_pod(state, "legacy-0")
    run_dir = tmp_path / "run"
    proc = await asyncio.create_subprocess_exec(
        AGENT, "--node", "n1", "--state-dir", str(state.root), "--run-dir", str(run_dir),
        "--no-probe-snat", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        node = Node(state, run_dir, RecordingRules(), tmp_path)
        await wait_until(
            lambda: os.path.exists(node.plugin_socket), within=15, what="agent process listening"
        )
        assert (await cni(node, "ADD", "legacy-0", uid=uid))[0] == 0
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    assert proc.returncode == 0
    events = [json.loads(line) for line in err.decode().splitlines()]
    by_name = {e["event"]: e for e in events}
    assert by_name["agent.ready"]["zds.socket"] == str(run_dir / "ztunnel.sock")
    assert by_name["cni.add_not_enrolled"]["pod.name"] == "legacy-0"
    assert "agent.stopped" in by_name
    assert not (run_dir / "pluginevent.sock").exists() and not (run_dir / "ztunnel.sock").exists()


async def test_abstract_plugin_socket(tmp_path: Path) -> None:
    """``@name`` is an abstract socket, scoped to the network namespace (one agent per node netns)."""
    state = make_lab(tmp_path / "state", ambient=False)
    uid = add_pod(state, "legacy-0")
    name = f"@mtest-na-{os.getpid()}"
    node = Node(state, tmp_path / "run", RecordingRules(), tmp_path)
    args = parse_args(["--node", "n1", "--state-dir", str(state.root), "--run-dir", str(node.run_dir)])
    args.plugin_socket = name
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        serve(args, stop=stop, rules=node.rules, probes=node.probes)
    )
    try:
        await wait_until(lambda: _exists(node.zds_socket), what="agent listening")
        status, out = await _retry_cni(node, "legacy-0", uid, name)
        assert status == 0, out
        assert not (node.run_dir / "pluginevent.sock").exists()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _retry_cni(node: Node, name: str, uid: str, socket: str) -> tuple[int, Any]:
    """The ZDS socket comes up just before the plugin socket: retry while the agent finishes starting."""
    for _ in range(50):
        status, out = await cni(node, "ADD", name, uid=uid, socket=socket)
        if status == 0 or "cannot reach" not in out["msg"]:
            return status, out
        await asyncio.sleep(0.05)
    return status, out
