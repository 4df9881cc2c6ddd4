"""The node agent on a Kubernetes API (issue 17 part 2): its pods come from a list/watch of the pods of
its own node and of the namespaces, through the real ``kubernetes`` client; it annotates pods with a
merge patch; a pod labelled while the agent was down is enrolled when the agent is back.

The API server is ``kmock``: a test double of the Kubernetes API server (an in-process HTTP server
with the API's paths, list/watch streaming and merge patches), not a real cluster. It ignores field
selectors (the source also drops pods of other nodes; the tests check the selector was sent), and
its path parser is taught the cluster-scoped ``/api/v1/namespaces`` (tests/component/kmock_paths.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client

from mesh.rt.kube.watch import WatchSettings
from mesh.rt.labstate import LabState
from mesh.testing.polling import wait_until
from tests.component.kmock_paths import serve_namespaces
from tests.component.node_agent_fakes import FakeZtunnel, RecordingProbes, RecordingRules
from tests.component.test_node_agent import Node, cni
from tests.netns.running_pods import pod_processes
from ztunnel.cni.agent import parse_args, serve
from ztunnel.cni.kube_pods import KubePodSource

FAST = WatchSettings(backoff_initial=0.02, backoff_max=0.2, read_timeout=10.0, connect_timeout=2.0)
PODS = kmock.resource("v1/pods")
REDIRECTION = "ambient.istio.io/redirection"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def pod(name: str, *, node: str = "n1", labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "demo", "uid": f"uid-{name}", "resourceVersion": "3"}
    if labels:
        meta["labels"] = labels
    spec = {"nodeName": node, "serviceAccountName": "web", "containers": [{"name": "app", "image": "app"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


@pytest.fixture
def server(kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> kmock.KubernetesEmulator:
    serve_namespaces(kmock, monkeypatch)
    kmock.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "demo", "resourceVersion": "2"},
    }
    kmock.objects["v1/namespaces", None, "demo"] = namespace
    return kmock


@pytest.fixture
def api(server: kmock.KubernetesEmulator) -> Iterator[client.ApiClient]:
    api = client.ApiClient(client.Configuration(host=str(server.url).rstrip("/")))
    yield api
    api.close()  # type: ignore[no-untyped-call]


def put(server: kmock.KubernetesEmulator, obj: dict[str, Any]) -> None:
    server.objects["v1/pods", "demo", obj["metadata"]["name"]] = obj


def annotation(server: kmock.KubernetesEmulator, name: str) -> Any:
    return (server.objects["v1/pods", "demo", name].get("metadata", {}).get("annotations") or {}).get(
        REDIRECTION
    )


def kube_node(tmp: Path) -> Node:
    """The lab tests' Node for its sockets, sandboxes and recorders (its lab state is never read)."""
    return Node(LabState(tmp / "unused"), tmp / "run", RecordingRules(), tmp, RecordingProbes())


@contextlib.asynccontextmanager
async def running(source: KubePodSource) -> AsyncIterator[KubePodSource]:
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.wait_loaded(), 10)
        yield source
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not [t.name for t in threading.enumerate() if t.name.startswith("watch-")]


async def test_the_source_watches_its_nodes_pods_and_annotates_them(
    server: kmock.KubernetesEmulator, api: client.ApiClient
) -> None:
    put(server, pod("web-0"))
    put(server, pod("elsewhere", node="n2"))
    async with running(KubePodSource(api, node="n1", settings=FAST, rng=random.Random(7))) as source:
        (listing,) = server[kmock.action.LIST, PODS]
        assert listing.params["fieldSelector"] == "spec.nodeName=n1"
        assert [p.name for p in source.pods().values()] == ["web-0"]  # n2's pod is not this node's
        await server.patch("/api/v1/namespaces/demo/pods/web-0", json={"metadata": {"labels": AMBIENT}})
        await wait_until(lambda: source.pods()["uid-web-0"].facts.labels == AMBIENT, what="the relabel")
        await server.patch("/api/v1/namespaces/demo", json={"metadata": {"labels": {"team": "a"}}})
        await wait_until(lambda: source.pods()["uid-web-0"].facts.namespace_labels == {"team": "a"})

        fetched = await source.fetch("demo", "web-0")
        assert fetched is not None and fetched.uid == "uid-web-0" and fetched.facts.labels == AMBIENT
        assert await source.fetch("demo", "nobody") is None
        assert await source.fetch("demo", "elsewhere") is None  # another node's pod is not ours to enrol

        await source.set_redirection(fetched, "enabled")
        assert annotation(server, "web-0") == "enabled"
        patch = list(server[kmock.method.PATCH])[-1]  # the first was the test relabelling the pod
        assert patch.headers["Content-Type"] == "application/merge-patch+json"
        assert patch.data["metadata"]["uid"] == "uid-web-0"  # the API server refuses another incarnation

        await server.delete("/api/v1/namespaces/demo/pods/web-0")
        await wait_until(lambda: source.pods() == {}, what="the deletion")


@pytest.fixture
async def agent_args(tmp_path: Path) -> Any:
    return parse_args(["--node", "n1", "--kube", "--run-dir", str(tmp_path / "run"), "--zds-timeout", "1"])


async def test_a_pod_labelled_while_the_agent_is_down_is_enrolled_when_it_is_back(
    server: kmock.KubernetesEmulator, api: client.ApiClient, tmp_path: Path, agent_args: Any
) -> None:
    # the lab-style Node of the lab tests, for its sockets, sandboxes and recorders (no lab state is read)
    node = kube_node(tmp_path)
    put(server, pod("web-0"))  # neither the pod nor its namespace is labelled for ambient yet

    async def agent_running() -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop = asyncio.Event()
        source = KubePodSource(api, node="n1", settings=FAST, rng=random.Random(7))
        task = asyncio.create_task(
            serve(agent_args, stop=stop, rules=node.rules, probes=node.probes, source=source)
        )
        await wait_until(lambda: os.path.exists(node.plugin_socket) or task.done(), what="agent listening")
        return stop, task

    stop, task = await agent_running()
    ztunnel = await FakeZtunnel(node.zds_socket).start()
    try:
        status, out = await cni(node, "ADD", "web-0", uid="uid-web-0")
        assert (status, out["ips"][0]["address"]) == (0, "10.244.1.5/32")
        assert node.rules.captured == set() and annotation(server, "web-0") is None
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await ztunnel.close()

    await server.patch("/api/v1/namespaces/demo/pods/web-0", json={"metadata": {"labels": AMBIENT}})

    stop, task = await agent_running()
    ztunnel = await FakeZtunnel(node.zds_socket).start()
    try:
        await wait_until(lambda: annotation(server, "web-0") == "enabled", what="the pod enrolled")
        assert node.rules.captured == {node.sandbox("web-0")}
        assert ("add", "Kubernetes//Pod/demo/web-0") in [(s.kind, s.uid) for s in ztunnel.seen]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await ztunnel.close()


@pytest.mark.netns
async def test_a_pod_running_before_the_agent_is_found_in_proc_and_enrolled(
    server: kmock.KubernetesEmulator, api: client.ApiClient, tmp_path: Path, agent_args: Any
) -> None:
    """No CNI ADD was ever seen for it (the pod predates the mesh): the agent finds its network
    namespace through its processes' cgroup (a real process in a real namespace and cgroup), enrols
    it when its namespace is labelled, and takes its address from the pod's status for the probes."""
    node, uid = kube_node(tmp_path), str(uuid.uuid4())
    running = pod("web-0", labels=AMBIENT)
    running["metadata"]["uid"] = uid
    running["status"] = {"podIP": "10.244.1.9", "podIPs": [{"ip": "10.244.1.9"}]}
    put(server, running)
    with pod_processes(uid, systemd=True) as processes:
        stop = asyncio.Event()
        source = KubePodSource(api, node="n1", settings=FAST, rng=random.Random(7))
        task = asyncio.create_task(
            serve(agent_args, stop=stop, rules=node.rules, probes=node.probes, source=source)
        )
        ztunnel = await FakeZtunnel(node.zds_socket).start()
        try:
            await wait_until(
                lambda: annotation(server, "web-0") == "enabled", what="the running pod enrolled"
            )
            assert node.rules.captured == {f"/proc/{processes.pause}/ns/net"}
            assert ("add", "Kubernetes//Pod/demo/web-0") in [(s.kind, s.uid) for s in ztunnel.seen]
            assert node.probes.current == ("10.244.1.9",)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await ztunnel.close()


@pytest.mark.parametrize("daemonset", ["kept", "deleted"])
async def test_at_sigterm_pods_are_released_only_when_the_agents_daemonset_is_gone(
    server: kmock.KubernetesEmulator, api: client.ApiClient, tmp_path: Path, daemonset: str
) -> None:
    """An upgrade restarts the agent with its DaemonSet in place: the pods stay captured. An
    uninstall deletes the DaemonSet: each agent takes its node's pods out of the mesh as it exits."""
    server.resources["apps/v1/daemonsets"] = kmock.ResourceInfo(kind="DaemonSet", namespaced=True)
    if daemonset == "kept":
        server.objects["apps/v1/daemonsets", "istio-system", "istio-cni-node"] = {
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "istio-cni-node", "namespace": "istio-system"},
        }  # fmt: skip
    node = kube_node(tmp_path)
    put(server, pod("web-0", labels=AMBIENT))
    args = parse_args(
        [
            "--node",
            "n1",
            "--kube",
            "--daemonset",
            "istio-system/istio-cni-node",
            "--run-dir",
            str(node.run_dir),
        ]
    )
    stop = asyncio.Event()
    source = KubePodSource(api, node="n1", settings=FAST, rng=random.Random(7))
    task = asyncio.create_task(serve(args, stop=stop, rules=node.rules, probes=node.probes, source=source))
    await wait_until(lambda: os.path.exists(node.plugin_socket) or task.done(), what="agent listening")
    ztunnel = await FakeZtunnel(node.zds_socket).start()
    try:
        assert (await cni(node, "ADD", "web-0", uid="uid-web-0"))[0] == 0
        assert annotation(server, "web-0") == "enabled" and node.rules.captured == {node.sandbox("web-0")}
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await ztunnel.close()
    if daemonset == "kept":
        assert node.rules.captured == {node.sandbox("web-0")} and annotation(server, "web-0") == "enabled"
    else:
        assert node.rules.captured == set() and annotation(server, "web-0") is None
        assert ztunnel.kinds()[-1] == "del"
