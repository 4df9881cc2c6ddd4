"""The agent side of Envoy Delta ADS: subscribe, convert and validate, ACK/NACK, reconnect.

One client keeps one ``DeltaAggregatedResources`` stream to the controller carrying every type
URL it was given, each subscribed as a wildcard. Each resource goes through the converter of
its type URL; a converter raises a ``MeshError`` (e.g. ``ResourceRejectedError``) for a bad
resource. Good resources of a response apply even when others in it are bad (delta semantics,
as ztunnel); a bad one keeps its last good value and is named in the NACK's ``error_detail``.
After each response the new immutable ``XdsState`` goes to ``on_state``.

On a broken stream the client reconnects after 10 ms, doubling to 15 s (jittered with the
injected rng; reset once a response arrives), and sends ``initial_resource_versions`` so the
controller resends only what changed.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from mesh.errors import MeshError
from mesh.rpc import RpcError
from mesh.rt.rpc import RpcChannel

__all__ = [
    "ADDRESS_TYPE_URL",
    "AUTHORIZATION_TYPE_URL",
    "DELTA_ADS_METHOD",
    "Converter",
    "ResourceRejectedError",
    "ResponseEvent",
    "XdsBackoff",
    "XdsClient",
    "XdsNode",
    "XdsState",
    "apply_response",
    "unpacking",
]

ADDRESS_TYPE_URL = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE_URL = "type.googleapis.com/istio.security.Authorization"
DELTA_ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
MAX_MESSAGE_BYTES = 200 * 1024 * 1024  # ztunnel's limit: a 10,000-workload state is one message
_INVALID_ARGUMENT = 3

Converter = Callable[[str, any_pb2.Any], object]
M = TypeVar("M", bound=Message)
T = TypeVar("T")


class ResourceRejectedError(MeshError):
    """A resource failed conversion or validation; the client NACKs it and keeps its last good value."""


def unpacking(message_cls: type[M], convert: Callable[[str, M], object]) -> Converter:
    """A converter that unpacks the ``Any`` into ``message_cls`` and hands it to ``convert``."""
    full_name = message_cls.DESCRIPTOR.full_name

    def converter(name: str, packed: any_pb2.Any) -> object:
        if packed.TypeName() != full_name:
            raise ResourceRejectedError(f"resource {name!r} is a {packed.TypeName()!r}, expected {full_name}")
        message = message_cls()
        try:
            message.ParseFromString(packed.value)
        except DecodeError as exc:
            raise ResourceRejectedError(f"resource {name!r} does not decode as {full_name}: {exc}") from exc
        return convert(name, message)

    return converter


@dataclass(frozen=True, slots=True)
class XdsNode:
    """The node the agent announces: id (``ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local``) and metadata."""

    id: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    cluster: str = ""

    def to_proto(self) -> base_pb2.Node:
        """The envoy.config.core.v3.Node message."""
        node = base_pb2.Node(id=self.id, cluster=self.cluster)
        for key, value in self.metadata.items():
            node.metadata.fields[key].string_value = value
        return node


@dataclass(frozen=True, slots=True)
class XdsState:
    """Per type URL: the converted resources by name, and the versions of those values."""

    resources: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: MappingProxyType({}))
    versions: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))

    def of_type(self, type_url: str) -> Mapping[str, object]:
        """The resources of ``type_url`` (empty when none arrived)."""
        return self.resources.get(type_url, MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ResponseEvent:
    """What one response did: names received, removed, and rejected (name -> error)."""

    type_url: str
    nonce: str
    version: str
    received: tuple[str, ...]
    removed: tuple[str, ...]
    rejected: Mapping[str, str]


def apply_response(
    state: XdsState, response: discovery_pb2.DeltaDiscoveryResponse, converter: Converter
) -> tuple[XdsState, ResponseEvent]:
    """The state after ``response`` (pure): good resources applied, bad ones keep their last good value."""
    type_url = response.type_url
    values = _copy(state.resources.get(type_url))
    versions = _copy(state.versions.get(type_url))
    rejected: dict[str, str] = {}
    received = []
    for resource in response.resources:
        name = resource.name
        received.append(name)
        try:
            values[name] = converter(name, resource.resource)
        except MeshError as exc:
            rejected[name] = str(exc)
            continue
        versions[name] = resource.version
    removed = tuple(response.removed_resources)
    for name in removed:
        values.pop(name, None)
        versions.pop(name, None)
    new_state = XdsState(
        resources=MappingProxyType({**state.resources, type_url: MappingProxyType(values)}),
        versions=MappingProxyType({**state.versions, type_url: MappingProxyType(versions)}),
    )
    event = ResponseEvent(
        type_url=type_url,
        nonce=response.nonce,
        version=response.system_version_info,
        received=tuple(received),
        removed=removed,
        rejected=MappingProxyType(rejected),
    )
    return new_state, event


def _copy(mapping: Mapping[str, T] | None) -> dict[str, T]:
    """A mutable copy; ``MappingProxyType.copy`` copies the dict underneath at C speed."""
    if mapping is None:
        return {}
    if isinstance(mapping, MappingProxyType):
        return mapping.copy()
    return dict(mapping)


def reply_for(event: ResponseEvent) -> discovery_pb2.DeltaDiscoveryRequest:
    """The ACK for ``event``, or a NACK naming every rejected resource."""
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=event.type_url, response_nonce=event.nonce)
    if event.rejected:
        details = "; ".join(f"{name}: {error}" for name, error in sorted(event.rejected.items()))
        request.error_detail.code = _INVALID_ARGUMENT
        request.error_detail.message = details
    return request


@dataclass(frozen=True, slots=True)
class XdsBackoff:
    """Reconnect delays: ``initial`` doubling to ``maximum``, each jittered to between half and all of it."""

    initial: float = 0.01
    maximum: float = 15.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay before reconnect attempt ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * 2.0 ** min(attempt, 64))
        return base / 2 + rng.uniform(0, base / 2)


StateCallback = Callable[[XdsState], Awaitable[None] | None]
EventCallback = Callable[[ResponseEvent], None]


class _StreamEndedError(MeshError):
    """The controller closed the stream."""


class XdsClient:
    """Keeps a Delta ADS stream open and the converted state up to date.

    ``tls`` None means plaintext (tests); ``server_name`` is the name istiod's certificate must carry
    (default: the target's host); ``call_metadata`` carries the bearer token. ``last_error`` says why
    the last stream ended; ``connects`` counts streams opened.
    """

    def __init__(
        self,
        target: str,
        *,
        node: XdsNode,
        converters: Mapping[str, Converter],
        on_state: StateCallback,
        rng: random.Random,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        call_metadata: tuple[tuple[str, str], ...] = (),
        backoff: XdsBackoff = XdsBackoff(),
        on_response: EventCallback | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._target = target
        self._node = node
        self._converters = dict(converters)
        self._on_state = on_state
        self._on_response = on_response
        self._rng = rng
        self._tls = tls
        self._server_name = server_name
        self._metadata = call_metadata
        self.last_error = ""
        self._backoff = backoff
        self._sleep = sleep
        self._state = XdsState()
        self._seen: set[str] = set()
        self._synced = asyncio.Event()
        self._got_response = False
        self.connects = 0
        self._log = structlog.get_logger().bind(component="mesh.xds", **{"xds.target": target})

    @property
    def state(self) -> XdsState:
        """The latest state."""
        return self._state

    @property
    def synced(self) -> bool:
        """True once a response arrived for every type URL (the first full state; stays true)."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        """Waits for ``synced``."""
        await self._synced.wait()

    async def run(self) -> None:
        """Connects and reconnects until cancelled."""
        attempt = 0
        while True:
            try:
                await self._session()
            except (RpcError, _StreamEndedError) as exc:
                self.last_error = str(exc)
                self._log.warning("xds.disconnected", error=self.last_error)
            if self._got_response:
                attempt = 0
            delay = self._backoff.delay(attempt, self._rng)
            attempt += 1
            await self._sleep(delay)

    async def _session(self) -> None:
        self._got_response = False
        channel = RpcChannel(
            self._target, tls=self._tls, server_name=self._server_name, max_message_bytes=MAX_MESSAGE_BYTES
        )
        try:
            call = await channel.stream(DELTA_ADS_METHOD, metadata=self._metadata)
            self.connects += 1
            for request in self._initial_requests():
                await call.write(request.SerializeToString())
            while True:
                message = await call.read()
                if message is None:
                    raise _StreamEndedError("the controller ended the xDS stream")
                try:
                    response = discovery_pb2.DeltaDiscoveryResponse.FromString(message)
                except DecodeError as exc:
                    raise _StreamEndedError(f"the controller sent an undecodable response: {exc}") from exc
                self._got_response = True
                await call.write((await self._handle(response)).SerializeToString())
        finally:
            await channel.close()

    def _initial_requests(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        requests = []
        for index, type_url in enumerate(self._converters):
            request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
            request.initial_resource_versions.update(self._state.versions.get(type_url, {}))
            if index == 0:
                request.node.CopyFrom(self._node.to_proto())
            requests.append(request)
        return requests

    async def _handle(
        self, response: discovery_pb2.DeltaDiscoveryResponse
    ) -> discovery_pb2.DeltaDiscoveryRequest:
        converter = self._converters.get(response.type_url)
        if converter is None:
            return _nack_unknown_type(response)
        self._state, event = apply_response(self._state, response, converter)
        if event.rejected:
            self._log.warning("xds.nack", **{"xds.type": event.type_url}, rejected=dict(event.rejected))
        if self._on_response is not None:
            self._on_response(event)
        result = self._on_state(self._state)
        if result is not None:
            await result
        self._seen.add(response.type_url)
        if self._seen.issuperset(self._converters):
            self._synced.set()
        return reply_for(event)


def _nack_unknown_type(response: discovery_pb2.DeltaDiscoveryResponse) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
    message = f"this agent did not subscribe to {response.type_url}"
    request.error_detail.code = _INVALID_ARGUMENT
    request.error_detail.message = message
    return request
