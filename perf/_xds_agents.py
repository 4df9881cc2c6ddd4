"""The benchmark's subscriber processes: real ``XdsClient``s, or lean protocol-only agents.

Many agents share one process (and one heap) here, so the cyclic GC, which would scan all of
them at once, is turned off in these processes; a real agent has a heap of its own.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from mesh.rt.xds import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, DELTA_ADS_METHOD, XdsClient, XdsNode

__all__ = ["run_agents"]

_TYPES = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)
_DOMAIN = "istio-system.svc.cluster.local"
_OPTIONS = [("grpc.max_receive_message_length", 200 << 20)]


def _node(i: int) -> XdsNode:
    node_id = f"ztunnel~10.1.{i // 256}.{i % 256}~ztunnel-{i}.istio-system~{_DOMAIN}"
    return XdsNode(id=node_id, metadata={"NODE_NAME": f"node-{i}"})


def _raw(name: str, packed: Any) -> object:
    """The agents' converter: keep the resource bytes (the protocol's cost, no model conversion)."""
    del name
    return packed.value


async def _lean_agent(target: str, i: int) -> None:
    """Subscribes and ACKs every response after parsing it, touching no resource (the server's floor)."""
    async with grpc.aio.insecure_channel(target, options=_OPTIONS) as channel:
        method: Any = channel.stream_stream(
            DELTA_ADS_METHOD,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )
        call = method()
        for index, type_url in enumerate(_TYPES):
            request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
            if index == 0:
                request.node.CopyFrom(_node(i).to_proto())
            await call.write(request)
        async for response in call:
            ack = discovery_pb2.DeltaDiscoveryRequest(
                type_url=response.type_url, response_nonce=response.nonce
            )
            await call.write(ack)


def _full_agent(target: str, i: int) -> XdsClient:
    converters = dict.fromkeys(_TYPES, _raw)
    return XdsClient(
        target, node=_node(i), converters=converters, on_state=lambda s: None, rng=random.Random(i)
    )


async def run_agents(target: str, first: int, count: int, *, lean: bool) -> None:
    """Runs agents ``first .. first+count-1`` against ``target`` until stdin closes."""
    gc.disable()
    if lean:
        tasks = [asyncio.create_task(_lean_agent(target, i)) for i in range(first, first + count)]
    else:
        tasks = [asyncio.create_task(_full_agent(target, i).run()) for i in range(first, first + count)]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
