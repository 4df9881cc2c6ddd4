"""The push side end to end on loopback: ConfigPusher -> Delta ADS server -> fake agent (a real XdsClient)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.message import Message

from istiod_lite.push.debounce import DebounceSettings
from istiod_lite.push.hub import ConfigPusher, Hub
from istiod_lite.push.metrics import PushMetrics
from istiod_lite.push.server import DeltaAdsServer
from istiod_lite.push.status import syncz
from mesh.api.istio.security import authorization_pb2
from mesh.api.istio.workload import workload_pb2
from mesh.rt.clock import SystemClock
from mesh.rt.metrics import Registry, build_registry
from mesh.rt.xds import ADDRESS_TYPE_URL as ADDR
from mesh.rt.xds import AUTHORIZATION_TYPE_URL as AUTHZ
from mesh.testing.xds import FakeAgent

pytestmark = pytest.mark.timeout(30)

POD = "Kubernetes//Pod/default/"


def workload(name: str, ip: str, *, sa: str = "default") -> workload_pb2.Address:
    w = workload_pb2.Workload(uid=f"{POD}{name}", name=name, namespace="default", service_account=sa)
    w.addresses.append(ipaddress.ip_address(ip).packed)
    return workload_pb2.Address(workload=w)


def policy(name: str) -> authorization_pb2.Authorization:
    return authorization_pb2.Authorization(name=name, namespace="default", action=authorization_pb2.ALLOW)


class Source:
    """A mutable config source standing in for the informers: edits mark the pusher dirty."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Message]] = {
            ADDR: {f"{POD}w{i}": workload(f"w{i}", f"10.244.1.{i + 10}") for i in range(5)},
            AUTHZ: {"default/allow-all": policy("allow-all")},
        }
        self.on_change: list[ConfigPusher] = []

    def build(self) -> Mapping[str, Mapping[str, Message]]:
        return {t: dict(by_name) for t, by_name in self.resources.items()}

    def put(self, type_url: str, name: str, message: Message) -> None:
        self.resources[type_url][name] = message
        for pusher in self.on_change:
            pusher.mark_dirty()

    def delete(self, type_url: str, name: str) -> None:
        del self.resources[type_url][name]
        for pusher in self.on_change:
            pusher.mark_dirty()


@dataclass
class Plane:
    source: Source
    hub: Hub
    pusher: ConfigPusher
    registry: Registry
    target: str
    server: grpc.aio.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.server.stop(0)


async def start_plane(
    source: Source,
    *,
    port: int = 0,
    credentials: grpc.ServerCredentials | None = None,
    **server_kwargs: object,
) -> Plane:
    """Hub + pusher + Delta ADS server on 127.0.0.1 (insecure unless ``credentials``)."""
    clock = SystemClock()
    registry = build_registry(component="istiod_lite")
    hub = Hub(clock=clock)
    metrics = PushMetrics(registry, connected=lambda: len(hub.connections()))
    pusher = ConfigPusher(source.build, hub, clock=clock, metrics=metrics, settings=DebounceSettings())
    source.on_change.append(pusher)
    server = grpc.aio.server()
    DeltaAdsServer(hub, clock=clock, metrics=metrics, **server_kwargs).add_to_server(server)  # type: ignore[arg-type]
    address = f"127.0.0.1:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    task = asyncio.create_task(pusher.run())
    return Plane(source, hub, pusher, registry, f"127.0.0.1:{bound}", server, task)


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    p = await start_plane(Source())
    yield p
    await p.stop()


@pytest.fixture
async def agent(plane: Plane) -> AsyncIterator[FakeAgent]:
    a = FakeAgent(plane.target)
    a.start()
    yield a
    await a.stop()


def address_names(agent: FakeAgent) -> set[str]:
    return set(agent.resources(ADDR))


def metric(plane: Plane, name: str, **labels: str) -> float:
    return plane.registry.get_sample_value(name, labels) or 0.0


async def test_agent_receives_the_full_state_and_is_synced(plane: Plane, agent: FakeAgent) -> None:
    await asyncio.wait_for(agent.client.wait_synced(), 5)
    assert address_names(agent) == set(plane.source.resources[ADDR])
    assert set(agent.resources(AUTHZ)) == {"default/allow-all"}
    got = agent.resources(ADDR)[f"{POD}w3"]
    assert ipaddress.ip_address(got.workload.addresses[0]) == ipaddress.ip_address("10.244.1.13")
    await agent.wait_for(lambda a: _all_acked(plane))
    (conn,) = syncz(plane.hub)["subscribers"]
    assert conn["node"] == "node-1"
    assert conn["node_id"].startswith("ztunnel~10.244.1.2~ztunnel-a.istio-system~")


def _all_acked(plane: Plane) -> bool:
    subs = syncz(plane.hub)["subscribers"]
    return bool(subs) and all(
        t["acked"] is not None and t["acked"]["version"] == t["sent"]["version"]
        for s in subs
        for t in s["types"]
    )


async def test_a_change_reaches_the_agent_within_a_second(plane: Plane, agent: FakeAgent) -> None:
    await asyncio.wait_for(agent.client.wait_synced(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    plane.source.put(ADDR, f"{POD}new", workload("new", "10.244.2.9"))
    await agent.wait_for(lambda a: f"{POD}new" in address_names(a), within=1.0)
    assert loop.time() - started < 1.0
    assert agent.events[-1].received == (f"{POD}new",)  # only the change was sent


async def test_removals_are_delivered(plane: Plane, agent: FakeAgent) -> None:
    await asyncio.wait_for(agent.client.wait_synced(), 5)
    plane.source.delete(ADDR, f"{POD}w0")
    plane.source.delete(AUTHZ, "default/allow-all")
    await agent.wait_for(lambda a: f"{POD}w0" not in address_names(a) and not a.resources(AUTHZ))
    removed = {name for e in agent.events for name in e.removed}
    assert removed == {f"{POD}w0", "default/allow-all"}


async def test_nack_keeps_the_last_good_value_applies_the_rest_and_is_not_resent(
    plane: Plane, agent: FakeAgent
) -> None:
    await asyncio.wait_for(agent.client.wait_synced(), 5)
    bad, good = f"{POD}w1", f"{POD}w2"
    agent.reject({bad})
    plane.source.put(ADDR, bad, workload("w1", "10.244.1.11", sa="evil"))
    plane.source.put(ADDR, good, workload("w2", "10.244.1.12", sa="changed"))
    await agent.wait_for(lambda a: a.resources(ADDR)[good].workload.service_account == "changed")
    assert agent.resources(ADDR)[bad].workload.service_account == "default"  # last good value kept
    await agent.wait_for(lambda a: metric(plane, "pilot_xds_rejects_total", type="Address") == 1.0)
    (conn,) = syncz(plane.hub)["subscribers"]
    (addr_status,) = [t for t in conn["types"] if t["type_url"] == ADDR]
    assert bad in addr_status["nacked"]["error"]
    assert addr_status["nacked"]["version"] == addr_status["sent"]["version"]
    # Another change elsewhere: only that goes out; the rejected version is not sent again.
    plane.source.put(AUTHZ, "default/other", policy("other"))
    await agent.wait_for(lambda a: "default/other" in a.resources(AUTHZ))
    await asyncio.sleep(0.3)  # a resend loop would show up here as more Address responses
    rejections = [e for e in agent.events if bad in e.rejected]
    assert len(rejections) == 1
    assert metric(plane, "pilot_xds_rejects_total", type="Address") == 1.0


async def test_reconnect_resumes_without_a_full_resend() -> None:
    source = Source()
    first = await start_plane(source)
    port = int(first.target.rpartition(":")[2])
    agent = FakeAgent(first.target)
    agent.start()
    try:
        await asyncio.wait_for(agent.client.wait_synced(), 5)
        full = len(agent.events)
        await first.stop()  # controller restart; meanwhile one workload changes and one goes away
        source.resources[ADDR][f"{POD}w4"] = workload("w4", "10.244.1.99")
        del source.resources[ADDR][f"{POD}w0"]
        second = await start_plane(source, port=port)
        try:
            await agent.wait_for(lambda a: a.client.connects == 2 and len(a.events) >= full + 2, within=10)
            resumed = agent.events[full:]
            received = {name for e in resumed for name in e.received}
            removed = {name for e in resumed for name in e.removed}
            assert received == {f"{POD}w4"}
            assert removed == {f"{POD}w0"}
            assert address_names(agent) == set(source.resources[ADDR])
        finally:
            await second.stop()
    finally:
        await agent.stop()


async def test_many_agents_on_one_server_all_converge(plane: Plane) -> None:
    agents = [FakeAgent(plane.target) for _ in range(5)]
    for a in agents:
        a.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(a.client.wait_synced() for a in agents)), 5)
        plane.source.put(AUTHZ, "default/p2", policy("p2"))
        for a in agents:
            await a.wait_for(lambda x: "default/p2" in x.resources(AUTHZ))
        assert metric(plane, "pilot_xds") == 5.0
    finally:
        await asyncio.gather(*(a.stop() for a in agents))
