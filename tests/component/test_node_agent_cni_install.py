"""The real ``ztunnel-node-agent`` process installs the mesh's CNI plugin on a node (temp dirs stand
in for the host's /etc/cni/net.d and /opt/cni/bin): chained at start, put back after the primary CNI
rewrites its config, removed when the agent's DaemonSet is deleted (uninstall), kept on a plain
SIGTERM (upgrade: pods created during the roll must still be captured). The installed plugin file
runs on its own with the node's python3: no virtualenv, no PYTHONPATH.

The API server is ``kmock``, a test double of the Kubernetes API server (see test_node_agent_kube).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from mesh.testing.polling import wait_until
from tests.component.kmock_paths import serve_namespaces
from tests.component.test_node_agent_kube import annotation, pod, put
from ztunnel.cni.plugin import SUPPORTED_VERSIONS

pytestmark = pytest.mark.timeout(60)

AGENT = str(Path(sys.executable).with_name("ztunnel-node-agent"))
DAEMONSET = ("apps/v1/daemonsets", "istio-system", "istio-cni-node")
CALICO = {"type": "calico", "ipam": {"type": "calico-ipam"}}
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
CONFLIST = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [CALICO, PORTMAP]}
NODE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # a node's PATH: the mesh's virtualenv is not on it


@pytest.fixture
def server(kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> kmock.KubernetesEmulator:
    serve_namespaces(kmock, monkeypatch)
    kmock.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True)
    kmock.resources["apps/v1/daemonsets"] = kmock.ResourceInfo(kind="DaemonSet", namespaced=True)
    kmock.objects["v1/namespaces", None, "demo"] = {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "resourceVersion": "2"},
    }  # fmt: skip
    kmock.objects[DAEMONSET] = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "istio-cni-node", "namespace": "istio-system"},
    }  # fmt: skip
    put(kmock, pod("web-0"))  # not labelled for ambient
    return kmock


class Host:
    """The node's CNI directories and the agent process installing into them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.conf_dir = tmp / "net.d"
        self.bin_dir = tmp / "bin"
        self.plugin = self.bin_dir / "ztunnel-cni"
        self.socket = str(tmp / "run" / "pluginevent.sock")
        self.log = tmp / "agent.log"
        self.conf_dir.mkdir()
        self.bin_dir.mkdir()

    def rewrite(self, doc: dict[str, Any]) -> None:
        """Writes the primary config as a CNI plugin installing itself does (a rename)."""
        tmp = self.conf_dir / ".10-calico.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.rename(self.conf_dir / "10-calico.conflist")

    def config(self) -> Any:
        return json.loads((self.conf_dir / "10-calico.conflist").read_text())

    def chained(self) -> bool:
        return self.plugin.exists() and self.config()["plugins"][-1].get("type") == "ztunnel-cni"

    def logged(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def events(self) -> list[str]:
        return [entry["event"] for entry in self.logged()]


@contextlib.asynccontextmanager
async def agent(
    host: Host, server: kmock.KubernetesEmulator, *extra: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    kubeconfig = host.tmp / "kubeconfig"
    kubeconfig.write_text(
        json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        })
    )  # fmt: skip
    argv = [
        AGENT, "--node", "n1", "--kube", "--kubeconfig", str(kubeconfig),
        "--daemonset", "istio-system/istio-cni-node", "--run-dir", str(host.tmp / "run"),
        "--no-probe-snat", "--cni-conf-dir", str(host.conf_dir), "--cni-bin-dir", str(host.bin_dir),
        "--cni-poll-interval", "0.1", *extra,
    ]  # fmt: skip
    with host.log.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def run_plugin(host: Host, env: dict[str, str], netconf: dict[str, Any]) -> tuple[int, Any]:
    """Runs the installed plugin file as a kubelet does: only the CNI variables and a node's PATH."""
    proc = await asyncio.create_subprocess_exec(
        str(host.plugin), env={**env, "PATH": NODE_PATH}, cwd="/",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(netconf).encode()), 20)
    assert not err.strip() or proc.returncode, err.decode()
    return proc.returncode or 0, json.loads(out) if out.strip() else None


@pytest.mark.parametrize("stop", ["upgrade", "uninstall"])
async def test_the_agent_installs_keeps_and_removes_its_plugin(
    server: kmock.KubernetesEmulator, tmp_path: Path, stop: str
) -> None:
    host = Host(tmp_path)
    host.rewrite(CONFLIST)
    async with agent(host, server) as proc:
        await wait_until(lambda: host.chained() or proc.returncode is not None, within=20, what="installed")
        assert host.config() == {
            **CONFLIST,
            "plugins": [CALICO, PORTMAP, {"type": "ztunnel-cni", "agent_socket": host.socket}],
        }

        host.rewrite(CONFLIST)  # the primary CNI plugin reinstalls itself
        await wait_until(lambda: "cni.config_restored" in host.events(), what="the entry put back")
        assert host.chained()

        if stop == "uninstall":
            await server.delete("/apis/apps/v1/namespaces/istio-system/daemonsets/istio-cni-node")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0

    if stop == "upgrade":  # new pods must still go through the agent that comes next
        assert host.chained()
    else:
        assert host.config() == CONFLIST and not host.plugin.exists()
        assert "cni.uninstalled" in host.events()


async def test_the_installed_plugin_runs_without_the_mesh_environment(
    server: kmock.KubernetesEmulator, tmp_path: Path
) -> None:
    host = Host(tmp_path)
    host.rewrite(CONFLIST)
    async with agent(host, server) as proc:
        await wait_until(lambda: host.chained() or proc.returncode is not None, within=20, what="installed")
        assert os.access(host.plugin, os.X_OK)

        status, out = await run_plugin(host, {"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"})
        assert (status, out) == (0, {"cniVersion": "1.0.0", "supportedVersions": list(SUPPORTED_VERSIONS)})

        # an ADD as the runtime makes it from the installed chain: the plugin reaches the agent, which
        # answers for the (unlabelled, so not enrolled) pod; the previous result passes through
        prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/32", "gateway": "10.244.1.1"}]}
        entry = host.config()["plugins"][-1]
        env = {
            "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": str(tmp_path / "no-such-netns"),
            "CNI_IFNAME": "eth0", "CNI_PATH": str(host.bin_dir),
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0;K8S_POD_UID=uid-web-0",
        }  # fmt: skip
        netconf = {**entry, "cniVersion": "1.0.0", "name": "k8s-pod-network", "prevResult": prev}
        assert await run_plugin(host, env, netconf) == (0, prev)
        assert annotation(server, "web-0") is None

        # a pod the API does not know: the agent refuses and the plugin fails the ADD (fail closed)
        env["CNI_ARGS"] = "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=ghost;K8S_POD_UID=uid-ghost"
        status, out = await run_plugin(host, env, netconf)
        assert status == 1 and out["code"] == 11 and "ghost" in out["msg"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_the_agent_is_ready_only_once_its_plugin_is_chained(
    server: kmock.KubernetesEmulator, tmp_path: Path
) -> None:
    host = Host(tmp_path)
    primary = host.conf_dir / "10-calico.conflist"
    async with agent(host, server, "--readiness-port", "0") as proc:
        await wait_until(lambda: "agent.ready" in host.events() or proc.returncode is not None, within=20)
        (ready,) = [e for e in host.logged() if e["event"] == "agent.ready"]
        port = ready["readiness.port"]

        # the node's primary CNI plugin has not written its config yet
        await wait_until(lambda: "cni.waiting_for_config" in host.events(), what="waiting said")
        status, text = await asyncio.to_thread(readyz, port)
        assert status == 503
        assert text.startswith(f"not ready: no CNI config in {host.conf_dir} yet")

        primary.write_text('{"name": "k8s-pod-network", "plugins": [')  # half a file: never touched
        await wait_until(lambda: "cni.config_invalid" in host.events(), what="the error logged")
        status, text = await asyncio.to_thread(readyz, port)
        assert status == 503 and "CNI config 10-calico.conflist: not valid JSON" in text
        (error,) = [e for e in host.logged() if e["event"] == "cni.config_invalid"]
        assert (
            error["file"] == str(primary) and error["level"] == "error" and "left as it is" in error["hint"]
        )
        assert primary.read_text() == '{"name": "k8s-pod-network", "plugins": ['

        host.rewrite(CONFLIST)
        await wait_until(host.chained, what="installed once the config parses")
        await wait_until(lambda: readyz(port)[0] == 200, what="ready")  # the agent's own port: no wait here
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
