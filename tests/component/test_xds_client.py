"""The agent-side client's reconnect behaviour, and how the server treats streams it cannot serve."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from istiod_lite import translate
from mesh.rt import xds
from mesh.rt.xds import XdsBackoff, XdsClient, XdsNode
from mesh.testing.xds import FakeAgent
from tests.component.test_xds_push import Plane, Source, start_plane

pytestmark = pytest.mark.timeout(30)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens here once the socket is closed


class StopAfterError(Exception):
    pass


async def test_reconnect_backoff_starts_at_10ms_and_doubles_to_15s() -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 14:
            raise StopAfterError

    client = XdsClient(
        f"127.0.0.1:{closed_port()}",
        node=XdsNode(id="ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local"),
        converters={xds.ADDRESS_TYPE_URL: lambda name, packed: packed},
        on_state=lambda state: None,
        rng=random.Random(3),
        sleep=sleep,
    )
    with pytest.raises(StopAfterError):
        await client.run()
    bases = [min(15.0, 0.01 * 2**i) for i in range(14)]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert delays[-1] >= 7.5  # capped at 15 s, jittered down to no less than half
    assert client.connects == 0  # no stream was ever opened
    assert client.last_error.startswith("UNAVAILABLE: cannot connect to 127.0.0.1:")
    assert not client.synced
    assert XdsBackoff().maximum == 15.0


@pytest.mark.parametrize(
    "node_id",
    [
        "waypoint~10.0.0.1~wp.default~default.svc.cluster.local",  # no projection for waypoints yet
        "not-a-node-id",
    ],
)
async def test_streams_the_server_cannot_serve_are_refused(node_id: str) -> None:
    plane: Plane = await start_plane(Source())
    agent = FakeAgent(plane.target, node=XdsNode(id=node_id))
    agent.start()
    try:
        refused = "istiod_lite_xds_refused_total"
        await agent.wait_for(
            lambda a: (plane.registry.get_sample_value(refused, {"code": "INVALID_ARGUMENT"}) or 0) >= 1
        )
        assert not agent.events
        assert not plane.hub.connections()
    finally:
        await agent.stop()
        await plane.stop()


async def test_cancelling_the_client_ends_it_for_good_and_the_server_sees_the_call_end() -> None:
    plane: Plane = await start_plane(Source())
    agent = FakeAgent(plane.target)
    agent.start()
    try:
        await agent.wait_for(lambda a: a.client.synced and len(plane.hub.connections()) == 1)
        task = agent._task
        assert task is not None
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert task in done and task.cancelled()
        await agent.wait_for(lambda a: not plane.hub.connections())  # the server saw the call end
        await asyncio.sleep(0.3)
        assert agent.client.connects == 1  # nothing reconnects
    finally:
        await agent.stop()
        await plane.stop()


def test_type_urls_agree_with_the_translation() -> None:
    assert (xds.ADDRESS_TYPE_URL, xds.AUTHORIZATION_TYPE_URL) == (
        translate.ADDRESS_TYPE_URL,
        translate.AUTHORIZATION_TYPE_URL,
    )
