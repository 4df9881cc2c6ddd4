"""A fake agent for tests: a real ``XdsClient`` that records what it got and NACKs on command."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from mesh.api.istio.security import authorization_pb2
from mesh.api.istio.workload import workload_pb2
from mesh.rt.xds import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    ResourceRejectedError,
    ResponseEvent,
    XdsClient,
    XdsNode,
    XdsState,
)

__all__ = ["FakeAgent", "ztunnel_node"]

_POLL = 0.02

_MESSAGES: dict[str, type[Any]] = {
    ADDRESS_TYPE_URL: workload_pb2.Address,
    AUTHORIZATION_TYPE_URL: authorization_pb2.Authorization,
}


def ztunnel_node(*, ip: str = "10.244.1.2", pod: str = "ztunnel-a", node_name: str = "node-1") -> XdsNode:
    """A ztunnel node id and metadata, as ztunnel announces itself."""
    node_id = f"ztunnel~{ip}~{pod}.istio-system~istio-system.svc.cluster.local"
    metadata = {"NODE_NAME": node_name, "NAME": pod, "NAMESPACE": "istio-system", "INSTANCE_IPS": ip}
    return XdsNode(id=node_id, metadata=metadata)


class FakeAgent:
    """Subscribes like ztunnel; resources are kept as decoded protobuf messages.

    ``reject(names)`` makes the agent NACK those resources from then on (keeping their last good
    value), ``accept(names)`` undoes it. Every response is recorded in ``events``.
    """

    def __init__(
        self,
        target: str,
        *,
        node: XdsNode | None = None,
        type_urls: Iterable[str] = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL),
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        call_metadata: tuple[tuple[str, str], ...] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.events: list[ResponseEvent] = []
        self.states: list[XdsState] = []
        self._rejected: set[str] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.client = XdsClient(
            target,
            node=node or ztunnel_node(),
            converters={url: self._convert for url in type_urls},
            on_state=self._record_state,
            on_response=self.events.append,
            rng=rng or random.Random(7),
            tls=tls,
            server_name=server_name,
            call_metadata=call_metadata,
        )

    def reject(self, names: Iterable[str]) -> None:
        """NACK these resource names whenever they arrive."""
        self._rejected.update(names)

    def accept(self, names: Iterable[str]) -> None:
        """Stop rejecting these names."""
        self._rejected.difference_update(names)

    @property
    def state(self) -> XdsState:
        """The agent's current state."""
        return self.client.state

    def resources(self, type_url: str) -> Mapping[str, Any]:
        """The decoded messages of ``type_url`` the agent holds."""
        return self.client.state.of_type(type_url)

    def start(self) -> None:
        """Starts connecting (call ``stop`` to end)."""
        self._task = asyncio.create_task(self.client.run())

    async def stop(self) -> None:
        """Cancels the client and waits for it to end."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def wait_for(self, condition: Callable[[FakeAgent], bool], *, within: float = 5.0) -> None:
        """Waits until ``condition(self)`` holds (checked after each response and every 20 ms)."""
        deadline = time.monotonic() + within
        while not condition(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = len(self.events)
                raise TimeoutError(f"fake agent: condition not met within {within}s ({seen} responses seen)")
            self._changed.clear()
            try:
                async with asyncio.timeout(min(remaining, _POLL)):
                    await self._changed.wait()
            except TimeoutError:
                continue

    def _convert(self, name: str, packed: any_pb2.Any) -> object:
        if name in self._rejected:
            raise ResourceRejectedError(f"resource {name!r} rejected by the test")
        message_cls = _MESSAGES.get(packed.type_url)
        if message_cls is None:
            return packed
        message = message_cls()
        try:
            message.ParseFromString(packed.value)
        except DecodeError as exc:
            raise ResourceRejectedError(f"resource {name!r} does not decode: {exc}") from exc
        return message

    def _record_state(self, state: XdsState) -> None:
        self.states.append(state)
        self._changed.set()
