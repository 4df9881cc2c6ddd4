"""Cancelling the xDS client stops it even when grpc.aio swallows the CancelledError of a call."""

from __future__ import annotations

import asyncio
import random

from mesh.rt.xds import XdsClient, XdsNode


async def test_a_swallowed_cancellation_still_stops_the_client() -> None:
    sessions = 0

    async def swallowing_session() -> None:  # what grpc.aio does to a call torn down mid-flight
        nonlocal sessions
        sessions += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return

    client = XdsClient("127.0.0.1:9", node=XdsNode(id="ztunnel~~a.b~b.svc.cluster.local"), converters={},
                       on_state=lambda state: None, rng=random.Random(1))  # fmt: skip
    client._session = swallowing_session  # type: ignore[method-assign]
    task = asyncio.create_task(client.run())
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()
    assert sessions == 1  # no reconnect after the stop request
