"""The Delta ADS servicer (grpc.aio): a thin shell around the pure ``StreamState``.

Registered with ``add_to_server(server)`` on the server that also carries the CA (15012, TLS).
Callers are authenticated like the CA's (``authorization: Bearer <token>`` through an
``istiod_lite.ca.auth.Authenticator``); like istiod's ``checkConnectionIdentity``, the caller's
namespace must be the proxy's namespace, and a caller bound to a node may only speak for it.

Per stream, one lock serializes "compute responses + write them", so responses leave in the
order their deltas were computed; the stream's coalescing slot feeds snapshots to it. At most
``max_concurrent_writes`` responses are being written at once across all streams (istiod's
PILOT_PUSH_THROTTLE): a full state is megabytes, and 100 of them in flight at once would sit in
transport buffers together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import discovery_pb2

from istiod_lite.ca.auth import Authenticator, Caller, bearer_token
from istiod_lite.ca.errors import CaError
from istiod_lite.push.errors import SubscriberForbiddenError, SubscriberRejectedError
from istiod_lite.push.hub import Connection, Hub
from istiod_lite.push.metrics import PushMetrics, short_type
from istiod_lite.push.projection import Subscriber, parse_node_id, select_projection
from istiod_lite.push.stream import DeltaRequest, Response
from mesh.clock import Clock

__all__ = ["DELTA_ADS_METHOD", "DeltaAdsServer", "request_from_proto"]

_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
DELTA_ADS_METHOD = f"/{_SERVICE}/DeltaAggregatedResources"

_Context = grpc.aio.ServicerContext[Any, bytes]


def request_from_proto(message: discovery_pb2.DeltaDiscoveryRequest) -> DeltaRequest:
    """The fields of a DeltaDiscoveryRequest the protocol state acts on."""
    error = (message.error_detail.message or "rejected") if message.HasField("error_detail") else None
    return DeltaRequest(
        type_url=message.type_url,
        subscribe=tuple(message.resource_names_subscribe),
        unsubscribe=tuple(message.resource_names_unsubscribe),
        initial_versions=dict(message.initial_resource_versions),
        response_nonce=message.response_nonce,
        error=error,
    )


def _serialize(response: bytes) -> bytes:
    return response  # responses are encoded by Response.encode from cached resource bytes


class DeltaAdsServer:
    """Serves DeltaAggregatedResources from the hub's snapshots."""

    def __init__(
        self,
        hub: Hub,
        *,
        clock: Clock,
        metrics: PushMetrics,
        authenticator: Authenticator | None = None,
        max_concurrent_writes: int = 16,
    ) -> None:
        self._hub = hub
        self._throttle = asyncio.Semaphore(max_concurrent_writes)
        self._clock = clock
        self._metrics = metrics
        self._authenticator = authenticator
        self._log = structlog.get_logger().bind(component="istiod_lite.xds")

    def rpc_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The ADS service (Delta only; SotW answers UNIMPLEMENTED) as a generic handler."""
        handler = grpc.stream_stream_rpc_method_handler(
            self._stream,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=_serialize,
        )
        return grpc.method_handlers_generic_handler(_SERVICE, {"DeltaAggregatedResources": handler})

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers ``rpc_handler()`` on ``server`` (or pass it to ``grpc.aio.server(handlers=...)``)."""
        server.add_generic_rpc_handlers((self.rpc_handler(),))

    async def _stream(
        self,
        requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: _Context,
    ) -> None:
        caller = await self._authenticate(context)
        first = await anext(requests, None)
        if first is None:
            return
        subscriber = await self._subscriber(first, caller, context)
        connection = self._hub.connect(subscriber)
        log = self._log.bind(**{"xds.conn": connection.id, "xds.node": subscriber.node_name})
        log.info("xds.connected")
        lock = asyncio.Lock()
        pusher = asyncio.create_task(self._push_loop(connection, lock, context))
        try:
            await self._on_request(connection, first, lock, context, log)
            async for message in requests:
                await self._on_request(connection, message, lock, context, log)
        finally:
            # First, and without awaiting: grpc may cancel this task again while it waits below.
            self._hub.disconnect(connection)
            log.info("xds.disconnected")
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)  # a failed write ends with the stream

    async def _authenticate(self, context: _Context) -> Caller | None:
        if self._authenticator is None:
            return None
        try:
            return await self._authenticator.authenticate(bearer_token(context.invocation_metadata() or ()))
        except CaError as exc:
            self._metrics.refused.labels(exc.grpc_status).inc()
            self._log.warning("xds.refused", code=exc.grpc_status, error=str(exc))
            await context.abort(getattr(grpc.StatusCode, exc.grpc_status), str(exc))
            raise  # abort() raises; this line is for the type checker

    async def _subscriber(
        self,
        first: discovery_pb2.DeltaDiscoveryRequest,
        caller: Caller | None,
        context: _Context,
    ) -> Subscriber:
        metadata = {
            k: v.string_value for k, v in first.node.metadata.fields.items() if v.HasField("string_value")
        }
        try:
            subscriber = parse_node_id(
                first.node.id, metadata=metadata, identity=caller.identity.uri if caller else ""
            )
            select_projection(subscriber)  # an unknown proxy type is refused before it registers
            _check_identity(subscriber, caller)
        except SubscriberRejectedError as exc:
            forbidden = isinstance(exc, SubscriberForbiddenError)
            code = grpc.StatusCode.PERMISSION_DENIED if forbidden else grpc.StatusCode.INVALID_ARGUMENT
            self._metrics.refused.labels(code.name).inc()
            self._log.warning("xds.refused", code=code.name, error=str(exc))
            await context.abort(code, str(exc))
            raise
        return subscriber

    async def _on_request(
        self,
        connection: Connection,
        message: discovery_pb2.DeltaDiscoveryRequest,
        lock: asyncio.Lock,
        context: _Context,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        if not message.type_url:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a DeltaDiscoveryRequest needs a type_url")
        request = request_from_proto(message)
        async with lock:
            responses = connection.state.on_request(request, self._hub.current, now=self._clock.now())
            if request.error is not None:
                self._on_nack(connection, request, log)
            await self._write(responses, context, changed_at=None)

    def _on_nack(
        self, connection: Connection, request: DeltaRequest, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self._metrics.rejects.labels(short_type(request.type_url)).inc()
        nack = connection.state.last_nack(request.type_url)
        log.warning(
            "xds.nack",
            **{"xds.type": request.type_url, "xds.nonce": request.response_nonce},
            version=nack.version if nack else "",
            error=request.error,
        )

    async def _push_loop(self, connection: Connection, lock: asyncio.Lock, context: _Context) -> None:
        while True:
            publication = await connection.slot.get()
            async with lock:
                responses = connection.state.on_snapshot(publication.snapshot, now=self._clock.now())
                await self._write(responses, context, changed_at=publication.changed_at)
            self._metrics.skipped.inc(connection.slot.replaced)
            connection.slot.replaced = 0

    async def _write(
        self,
        responses: tuple[Response, ...],
        context: _Context,
        *,
        changed_at: float | None,
    ) -> None:
        for response in responses:
            started = self._clock.monotonic()
            async with self._throttle:
                await context.write(response.encode())
            done = self._clock.monotonic()
            label = short_type(response.type_url)
            self._metrics.pushes.labels(label).inc()
            self._metrics.push_time.labels(label).observe(done - started)
            if changed_at is not None:
                self._metrics.convergence.observe(done - changed_at)


def _check_identity(subscriber: Subscriber, caller: Caller | None) -> None:
    if caller is None:
        return
    if caller.identity.namespace != subscriber.namespace:
        raise SubscriberForbiddenError(
            f"caller {caller.identity.uri} may not connect as {subscriber.node_id}: "
            f"namespace {caller.identity.namespace!r} is not the proxy's namespace {subscriber.namespace!r}",
            hint="connect with the credential of the proxy's own service account",
        )
    waypoint = subscriber.waypoint.partition("/")[2]
    if waypoint and waypoint != caller.identity.service_account:
        raise SubscriberForbiddenError(
            f"caller {caller.identity.uri} may not connect as waypoint {subscriber.waypoint}:"
            f" a waypoint runs as the service account named after its Gateway ({waypoint!r})",
            hint="run the waypoint pod with that service account",
        )
    if caller.node and subscriber.node_name and caller.node != subscriber.node_name:
        raise SubscriberForbiddenError(
            f"caller bound to node {caller.node!r} may not connect for node {subscriber.node_name!r}",
            hint="set NODE_NAME in the node metadata to the agent's own node",
        )
