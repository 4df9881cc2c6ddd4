"""End to end: lab-style state directory -> file source -> informers -> translate -> push -> fake agent."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
import yaml

from istiod_lite.push.debounce import DebounceSettings
from istiod_lite.push.plane import PushPlane
from istiod_lite.push.translated import translated_build
from istiod_lite.sources.file import FileSource
from istiod_lite.view import Informers
from mesh.rt.clock import SystemClock
from mesh.rt.metrics import build_registry
from mesh.rt.xds import ADDRESS_TYPE_URL as ADDR
from mesh.rt.xds import AUTHORIZATION_TYPE_URL as AUTHZ
from mesh.testing.xds import FakeAgent

pytestmark = pytest.mark.timeout(30)

SVC = "default/web.default.svc.cluster.local"


class LabState:
    """Writes objects the way the lab does (docs/lab-state.md): one file each, atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0

    def path(self, kind: str, namespace: str, name: str) -> Path:
        return self.root / "objects" / kind / (namespace or "_cluster") / f"{name}.yaml"

    def put(self, obj: dict[str, Any]) -> None:
        self.version += 1
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{obj['kind']}-{meta['name']}")
        meta["resourceVersion"] = str(self.version)
        target = self.path(obj["kind"], meta.get("namespace", ""), meta["name"])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(obj))
        os.replace(tmp, target)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.path(kind, namespace, name).unlink()


def pod(name: str, ip: str, *, sa: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app": "web"},
            "annotations": {"ambient.istio.io/redirection": "enabled"},
        },
        "spec": {"nodeName": "node-1", "serviceAccountName": sa, "containers": [{"name": "c"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0}],
        },
    }


def seed(lab: LabState) -> None:
    lab.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    lab.put(pod("web-1", "10.244.1.10"))
    lab.put(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "clusterIP": "10.96.0.10",
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        }
    )
    lab.put(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-abc",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": ["10.244.1.10"],
                    "conditions": {"ready": True},
                    "nodeName": "node-1",
                    "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-1"},
                }
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
    )
    lab.put(policy("allow-sleep", {"principals": ["cluster.local/ns/default/sa/sleep"]}))


def policy(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"action": "ALLOW", "rules": [{"from": [{"source": source}]}]},
    }


@dataclass
class Lab:
    state: LabState
    plane: PushPlane
    agent: FakeAgent


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    state = LabState(tmp_path)
    seed(state)
    informers = Informers()
    source = FileSource(tmp_path, informers.sink("lab"), poll_interval=0.05)
    clock = SystemClock()
    plane = PushPlane(
        translated_build(informers),
        clock=clock,
        registry=build_registry(component="istiod_lite"),
        settings=DebounceSettings(),
    )
    informers.on_change(plane.mark_dirty)
    server = grpc.aio.server(handlers=[plane.rpc_handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tasks = [asyncio.create_task(source.run())]
    await asyncio.wait_for(informers.wait_synced(), 5)
    tasks.append(asyncio.create_task(plane.run()))
    agent = FakeAgent(f"127.0.0.1:{port}")
    agent.start()
    try:
        await asyncio.wait_for(agent.client.wait_synced(), 5)
        yield Lab(state, plane, agent)
    finally:
        await agent.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop(0)


async def test_the_agent_gets_the_translated_lab(lab: Lab) -> None:
    addresses = lab.agent.resources(ADDR)
    assert set(addresses) == {"Kubernetes//Pod/default/web-1", SVC}
    workload = addresses["Kubernetes//Pod/default/web-1"].workload
    assert (workload.service_account, workload.node, workload.tunnel_protocol) == ("web", "node-1", 1)
    assert SVC in workload.services
    assert set(lab.agent.resources(AUTHZ)) == {"default/allow-sleep"}


async def test_lab_changes_reach_the_agent_within_a_second(lab: Lab) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    lab.state.put(pod("web-2", "10.244.1.11"))
    await lab.agent.wait_for(lambda a: "Kubernetes//Pod/default/web-2" in a.resources(ADDR), within=2)
    assert loop.time() - started < 1.0
    lab.state.delete("AuthorizationPolicy", "default", "allow-sleep")
    await lab.agent.wait_for(lambda a: "default/allow-sleep" not in a.resources(AUTHZ), within=2)


async def test_invalid_objects_fail_closed_or_are_skipped_and_the_rest_still_applies(lab: Lab) -> None:
    lab.state.put(policy("bad-cidr", {"ipBlocks": ["10.0.0.0/99"]}))
    broken = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 70000, "targetPort": 8080}]},
    }
    with structlog.testing.capture_logs() as logs:
        lab.state.put(broken)
        lab.state.put(pod("web-3", "10.244.1.12"))

        def settled(agent: FakeAgent) -> bool:
            warned = any(e.get("object") == "Service default/broken" for e in logs)
            have_pod = "Kubernetes//Pod/default/web-3" in agent.resources(ADDR)
            return warned and have_pod and "default/bad-cidr" in agent.resources(AUTHZ)

        await lab.agent.wait_for(settled, within=2)
    bad = lab.agent.resources(AUTHZ)["default/bad-cidr"]
    assert (bad.action, len(bad.rules)) == (0, 0)  # an ALLOW without rules: fails closed, never open
    assert "default/broken.default.svc.cluster.local" not in lab.agent.resources(ADDR)  # skipped
    assert len(lab.agent.resources(AUTHZ)["default/allow-sleep"].rules) == 1
