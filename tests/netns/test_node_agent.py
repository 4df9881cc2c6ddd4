"""The node agent with real network namespaces, iptables and ip rules: the netns fd it passes is
the pod's (a fake ztunnel listens through it and catches the pod's redirected traffic), it fails
closed without ztunnel (catalogue 9c), relabelling enrolls and releases a running pod, and a
killed and restarted agent replays the snapshot without touching the rules (catalogue 30)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mesh.rt.labstate import LabState
from mesh.rt.net.netns import in_netns, listen_in_netns
from mesh.testing.polling import wait_until
from tests.component.node_agent_fakes import FakeZtunnel, add_pod, make_lab, set_namespace_labels
from ztunnel.cni.agent import parse_args, serve

pytestmark = pytest.mark.netns

PLUGIN = str(Path(sys.executable).with_name("ztunnel-cni"))
AGENT = str(Path(sys.executable).with_name("ztunnel-node-agent"))
REDIRECTION = "ambient.istio.io/redirection"
POD_IP = "10.244.9.2"


def _sh(*argv: str, ns: str | None = None) -> str:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True, check=True, timeout=20)
    return done.stdout


@dataclass
class Pod:
    name: str
    netns: str
    fd: int


@pytest.fixture
def pod() -> Iterator[Pod]:
    """A pod-like namespace: lo up, an address on a veth, a default route."""
    name = f"mtest-na-{os.getpid()}"
    _sh("ip", "netns", "add", name)
    try:
        _sh("ip", "link", "set", "lo", "up", ns=name)
        _sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", ns=name)
        _sh("ip", "link", "set", "peer0", "up", ns=name)
        _sh("ip", "addr", "add", f"{POD_IP}/24", "dev", "eth0", ns=name)
        _sh("ip", "link", "set", "eth0", "up", ns=name)
        _sh("ip", "route", "add", "default", "dev", "eth0", ns=name)
        path = f"/var/run/netns/{name}"
        fd = os.open(path, os.O_RDONLY)
        try:
            yield Pod(name, path, fd)
        finally:
            os.close(fd)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=20)


@dataclass
class Node:
    state: LabState
    run_dir: Path
    listeners: list[socket.socket] = field(default_factory=list)

    @property
    def zds_socket(self) -> str:
        return str(self.run_dir / "ztunnel.sock")

    @property
    def plugin_socket(self) -> str:
        return str(self.run_dir / "pluginevent.sock")

    def redirection(self, name: str = "web-0") -> str | None:
        obj = self.state.read(("Pod", "demo", name))
        assert obj is not None
        value: str | None = (obj["metadata"].get("annotations") or {}).get(REDIRECTION)
        return value

    def listen_on_add(self, uid: str, fd: int) -> None:
        """What ztunnel does with the fd: its in-pod listener on 15001, inside that namespace."""
        self.listeners.append(listen_in_netns(fd, 15001))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(make_lab(tmp_path / "state"), tmp_path / "run")
    try:
        yield node
    finally:
        for listener in node.listeners:
            listener.close()


@contextlib.asynccontextmanager
async def agent_in_process(node: Node, *extra: str) -> AsyncIterator[None]:
    argv = [
        "--node",
        "n1",
        "--state-dir",
        str(node.state.root),
        "--run-dir",
        str(node.run_dir),
        "--no-probe-snat",
        *extra,
    ]  # fmt: skip  (the agent runs in the host's namespace here)
    args = parse_args(argv)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(serve(args, stop=stop))
    await wait_until(lambda: _listening(node, args.plugin_socket) or task.done(), what="agent listening")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _listening(node: Node, plugin_socket: str | None) -> bool:
    return os.path.exists(plugin_socket or node.plugin_socket)


async def cni_add(
    node: Node, pod: Pod, uid: str, *, socket: str | None = None, inside: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The real plugin executable, called as the lab runtime calls it (``inside`` a netns)."""
    conf = {
        "cniVersion": "1.0.0",
        "name": "lab",
        "type": "ztunnel-cni",
        "agent_socket": socket or node.plugin_socket,
    }
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": uid,
        "CNI_NETNS": pod.netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0;K8S_POD_UID={uid}",
        "CNI_PATH": str(Path(PLUGIN).parent),
        "PATH": os.environ.get("PATH", ""),
    }
    prefix = ["ip", "netns", "exec", inside] if inside else []
    proc = await asyncio.create_subprocess_exec(
        *prefix, PLUGIN, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), 30)
    return proc.returncode or 0, json.loads(out)


def capture_state(pod: Pod) -> tuple[list[str], list[str], list[str]]:
    """(ISTIO iptables lines, our ip rules, table-100 routes) in the pod's namespace."""
    saved = _sh("iptables-save", ns=pod.name)
    istio = [line for line in saved.splitlines() if "ISTIO" in line and line.startswith("-A")]
    rules = [
        line.strip() for line in _sh("ip", "rule", "show", ns=pod.name).splitlines() if "lookup 100" in line
    ]
    shown = subprocess.run(
        ["ip", "-n", pod.name, "route", "show", "table", "100"],
        check=False,  # exit 2 when the table does not exist: no routes
        capture_output=True,
        text=True,
        timeout=20,
    )
    routes = [line.strip() for line in shown.stdout.splitlines()]
    return istio, rules, routes


def redirect_packets(pod: Pod) -> int:
    """Packet counter of the outbound REDIRECT rule (reset if the chain were ever rebuilt)."""
    saved = _sh("iptables-save", "-c", "-t", "nat", ns=pod.name)
    for line in saved.splitlines():
        if "--to-ports 15001" in line:
            match = re.match(r"\[(\d+):\d+\]", line)
            assert match is not None, line
            return int(match.group(1))
    raise AssertionError("no REDIRECT to 15001 in the pod")


async def connect_from_pod(pod: Pod, address: tuple[str, int]) -> socket.socket:
    """An ordinary (unmarked) app socket inside the pod, connected to ``address``."""
    with in_netns(pod.fd):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(5):
            await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


async def test_enrolled_pod_traffic_reaches_the_listener_ztunnel_made_with_the_passed_fd(
    pod: Pod, node: Node
) -> None:
    uid = add_pod(node.state, "web-0")
    async with agent_in_process(node):
        ztunnel = await FakeZtunnel(node.zds_socket, on_add=node.listen_on_add).start()
        try:
            status, out = await cni_add(node, pod, uid)
            assert status == 0, out
            st = os.stat(pod.netns)
            assert ztunnel.seen[-1].netns == (st.st_dev, st.st_ino)
            assert node.redirection() == "enabled"
            istio, rules, routes = capture_state(pod)
            assert any(line.endswith("REDIRECT --to-ports 15001") for line in istio)
            assert rules == ["32764:\tfrom all fwmark 0x111/0xfff lookup 100"]
            assert routes == ["local default dev lo scope host"]
            app = await connect_from_pod(pod, ("10.96.0.10", 80))
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(5):
                conn, _ = await loop.sock_accept(node.listeners[0])
            app.close()
            conn.close()
        finally:
            await ztunnel.close()


async def test_add_without_ztunnel_fails_and_the_pod_cannot_bypass(pod: Pod, node: Node) -> None:
    uid = add_pod(node.state, "web-0")
    async with agent_in_process(node):
        status, out = await cni_add(node, pod, uid)
    assert status == 1 and out["code"] == 11 and "no ztunnel is connected" in out["msg"]
    assert node.redirection() == "pending"
    with pytest.raises(ConnectionRefusedError):  # redirected to 15001 where nobody listens
        await connect_from_pod(pod, ("10.244.9.1", 80))


async def test_relabelling_enrolls_then_releases_the_running_pod(pod: Pod, node: Node) -> None:
    set_namespace_labels(node.state, "demo", {})
    uid = add_pod(node.state, "web-0")
    async with agent_in_process(node):
        ztunnel = await FakeZtunnel(node.zds_socket).start()
        try:
            assert (await cni_add(node, pod, uid))[0] == 0
            assert capture_state(pod) == ([], [], [])
            set_namespace_labels(node.state, "demo", {"istio.io/dataplane-mode": "ambient"})
            await wait_until(lambda: node.redirection() == "enabled", what="runtime enrollment")
            istio, rules, routes = capture_state(pod)
            assert len(istio) == 12 and len(rules) == 1 and len(routes) == 1
            assert ztunnel.kinds()[-1] == "add"
            set_namespace_labels(node.state, "demo", {})
            await wait_until(lambda: ztunnel.kinds()[-1] == "del", what="runtime release")
            await wait_until(lambda: node.redirection() is None, what="annotation removed")
            assert capture_state(pod) == ([], [], [])
            assert "ISTIO" not in _sh("iptables-save", ns=pod.name)
        finally:
            await ztunnel.close()


async def test_plugin_run_in_a_node_namespace_finds_that_nodes_agent(pod: Pod, node: Node) -> None:
    """The lab runs plugins inside the node's namespace (here the pod's plays it); ``{netns}`` in
    agent_socket becomes that namespace's name, so one conflist serves every node."""
    set_namespace_labels(node.state, "demo", {})
    uid = add_pod(node.state, "web-0")
    per_node = str(node.run_dir / f"{pod.name}.sock")
    async with agent_in_process(node, "--plugin-socket", per_node):
        template = str(node.run_dir / "{netns}.sock")
        status, out = await cni_add(node, pod, uid, socket=template, inside=pod.name)
        assert status == 0, out
        status, out = await cni_add(node, pod, uid, socket=template)  # from the host: no such node
        assert status == 1 and "named network namespace" in out["msg"]


async def start_agent_process(node: Node, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as sink:
        proc = await asyncio.create_subprocess_exec(
            AGENT, "--node", "n1", "--state-dir", str(node.state.root), "--run-dir", str(node.run_dir),
            "--no-probe-snat", stdout=sink, stderr=sink,
        )  # fmt: skip
    return proc


async def test_killed_agent_restarts_replays_the_snapshot_and_leaves_rules_alone(
    pod: Pod, node: Node, tmp_path: Path
) -> None:
    uid = add_pod(node.state, "web-0")
    procs: list[asyncio.subprocess.Process] = []
    ztunnels: list[FakeZtunnel] = []
    try:
        procs.append(await start_agent_process(node, tmp_path / "agent.log"))
        ztunnels.append(await FakeZtunnel(node.zds_socket, on_add=node.listen_on_add).start(deadline=15))
        assert (await cni_add(node, pod, uid))[0] == 0
        (await connect_from_pod(pod, ("10.96.0.10", 80))).close()
        before, packets = capture_state(pod), redirect_packets(pod)
        pod_rv = node.state.current_rv()
        assert packets >= 1

        procs[0].send_signal(signal.SIGKILL)
        await procs[0].wait()
        await wait_until(ztunnels[0].gone.is_set, what="ztunnel noticing the agent died")
        procs.append(await start_agent_process(node, tmp_path / "agent.log"))
        ztunnels.append(await FakeZtunnel(node.zds_socket).start(deadline=15))
        await wait_until(lambda: ztunnels[1].kinds() == ["add", "snapshot_sent"], within=10, what="snapshot")

        st = os.stat(pod.netns)
        assert ztunnels[1].seen[0].uid == "Kubernetes//Pod/demo/web-0"
        assert ztunnels[1].seen[0].netns == (st.st_dev, st.st_ino)
        assert capture_state(pod) == before  # nothing duplicated
        assert redirect_packets(pod) >= packets  # the chain was not rebuilt (counters kept)
        assert node.state.current_rv() == pod_rv  # nothing was written: no annotation flap
        assert node.redirection() == "enabled"
    finally:
        for ztunnel in ztunnels:
            await ztunnel.close()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
