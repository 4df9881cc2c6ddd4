"""The waypoint's spans: one per request, the child of the caller's context (``mesh.tracing``), with
Istio's tags, exported in batches to an OpenTelemetry collector (OTLP/HTTP, protobuf from the
``opentelemetry-proto`` package) or to Zipkin (v2 JSON).

Export never delays a request: finished spans go into a bounded queue (a full queue drops the
span, counted in ``waypoint_tracing_spans_dropped_total{reason="queue_full"}``) that a background
task sends every second or every 64 spans; a collector that is slow or down loses those spans
(``reason="export_failed"``) and nothing else. Sampling: the route's ``tracing.random_sampling``
(istiod_lite renders the Telemetry API there) else ``--tracing-sampling``; a request ending 5xx or
with a response flag is kept whatever the head decision (tail keep).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass

import structlog
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from mesh.errors import ConfigError
from mesh.http1 import Http1Error, ResponseParser, serialize_request
from mesh.l7.router import RouteDecision
from mesh.rt.metrics import Counter, Registry
from mesh.tracing import Span, child_context, extract, inject, keep
from waypoint.telemetry import RequestRecord

if not hasattr(trace_pb2, "ScopeSpans"):  # an install problem: say how to mend it
    raise ImportError(
        f"{trace_pb2.__file__} is the pre-1.0 copy of OpenTelemetry's protos that xds-protos ships, "
        "not opentelemetry-proto's: run scripts/otlp-protos.sh with this Python (make setup does)"
    )

__all__ = ["SpanExporter", "Tracer", "TracingSettings", "encode_otlp", "encode_zipkin", "exporter_for"]

_BATCH = 64
_COLLECT_POLL = 0.05
_QUEUE = 4096
_FLUSH_EVERY = 1.0
_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """Who the waypoint is, for the spans' resource and tags."""

    service_name: str = "waypoint"
    namespace: str = ""
    mesh_id: str = "cluster.local"
    default_sampling: float = 1.0
    """Percent of requests traced when neither the caller nor the route decides (Istio: 1 %)."""


def _attributes(values: Mapping[str, str]) -> list[common_pb2.KeyValue]:
    return [
        common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v))
        for k, v in sorted(values.items())
    ]


def encode_otlp(spans: Sequence[Span], settings: TracingSettings) -> bytes:
    """An OTLP ``ExportTraceServiceRequest`` (protobuf) with one resource: this waypoint."""
    resource = resource_pb2.Resource(
        attributes=_attributes(
            {"service.name": settings.service_name, "k8s.namespace.name": settings.namespace}
        )
    )
    scope = trace_pb2.ScopeSpans(scope=common_pb2.InstrumentationScope(name="mesh-waypoint"))
    for span in spans:
        scope.spans.append(
            trace_pb2.Span(
                trace_id=span.trace_id.to_bytes(16, "big"),
                span_id=span.span_id.to_bytes(8, "big"),
                parent_span_id=span.parent_span_id.to_bytes(8, "big") if span.parent_span_id else b"",
                name=span.name,
                kind=trace_pb2.Span.SPAN_KIND_SERVER,
                start_time_unix_nano=span.start_ns,
                end_time_unix_nano=span.end_ns,
                attributes=_attributes(span.attributes),
                status=trace_pb2.Status(
                    code=trace_pb2.Status.STATUS_CODE_ERROR
                    if span.error
                    else trace_pb2.Status.STATUS_CODE_UNSET
                ),
            )
        )
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(resource=resource, scope_spans=[scope])]
    )
    return request.SerializeToString()


def encode_zipkin(spans: Sequence[Span], settings: TracingSettings) -> bytes:
    """Zipkin v2 JSON spans (``POST /api/v2/spans``)."""
    out = []
    for span in spans:
        doc: dict[str, object] = {
            "traceId": f"{span.trace_id:032x}",
            "id": f"{span.span_id:016x}",
            "name": span.name,
            "kind": "SERVER",
            "timestamp": span.start_ns // 1000,
            "duration": max((span.end_ns - span.start_ns) // 1000, 1),
            "localEndpoint": {"serviceName": settings.service_name},
            "tags": {**span.attributes, **({"error": "true"} if span.error else {})},
        }
        if span.parent_span_id:
            doc["parentId"] = f"{span.parent_span_id:016x}"
        out.append(doc)
    return json.dumps(out).encode()


class SpanExporter:
    """Sends batches of spans with HTTP POST to one collector URL (plain HTTP)."""

    def __init__(self, url: str, *, content_type: str, encode: Callable[[Sequence[Span]], bytes]) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ConfigError(
                f"tracing collector {url!r} is not an http:// URL",
                hint="e.g. http://collector:4318/v1/traces",
            )
        self.url = url
        self._host, self._port = parsed.hostname, parsed.port or 80
        self._path = parsed.path or "/"
        self._content_type = content_type
        self._encode = encode

    async def send(self, spans: Sequence[Span]) -> None:
        """POSTs one batch; raises OSError/TimeoutError/ValueError when the collector does not take it."""
        # Encoding a batch takes milliseconds of pure Python: in a worker thread the event loop
        # gets the interpreter back every switch interval (5 ms) instead of waiting for all of it.
        body = await asyncio.to_thread(self._encode, spans)
        headers = [("host", f"{self._host}:{self._port}"), ("content-type", self._content_type)]
        async with asyncio.timeout(_TIMEOUT):
            reader, writer = await asyncio.open_connection(self._host, self._port)
            try:
                writer.write(serialize_request("POST", self._path, headers, body, keep_alive=False))
                await writer.drain()
                parser = ResponseParser()
                while True:
                    data = await reader.read(65536)
                    answers = parser.feed(data) if data else parser.finish()
                    if answers or not data:
                        break
            finally:
                writer.close()
        if not answers or not 200 <= answers[0].status < 300:
            raise ValueError(f"collector answered {answers[0].status if answers else 'nothing'}")


def exporter_for(kind: str, url: str, settings: TracingSettings) -> SpanExporter:
    """``otlp`` (OTLP/HTTP protobuf) or ``zipkin`` (v2 JSON) to ``url``."""
    if kind == "otlp":
        return SpanExporter(
            url, content_type="application/x-protobuf", encode=lambda s: encode_otlp(s, settings)
        )
    if kind == "zipkin":
        return SpanExporter(url, content_type="application/json", encode=lambda s: encode_zipkin(s, settings))
    raise ConfigError(f"unknown tracing provider kind {kind!r}", hint="use otlp or zipkin")


def _tags(
    settings: TracingSettings,
    record: RequestRecord,
    headers: Sequence[tuple[str, str]],
    decision: RouteDecision | None,
) -> dict[str, str]:
    """Istio's span tags, and the route's custom tags."""
    value = dict(reversed(headers))  # the first value of each header
    tags = {
        "istio.mesh_id": settings.mesh_id, "istio.namespace": settings.namespace,
        "istio.canonical_service": settings.service_name, "component": "proxy",
        "http.method": record.method, "http.url": f"http://{record.authority}{record.path}",
        "http.protocol": record.protocol, "http.status_code": str(record.status),
        "response_flags": record.flags or "-", "upstream_cluster": record.cluster or "-",
        "upstream_cluster.name": record.cluster or "-", "peer.address": record.source_addr or "-",
        "istio.peer_identity": record.source_principal or "-", "request_size": str(record.request_bytes),
        "response_size": str(record.response_bytes), "user_agent": value.get("user-agent", "-"),
        "guid:x-request-id": value.get("x-request-id", "-"),
    }  # fmt: skip
    for tag, kind, source in decision.trace_tags if decision else ():
        tags[tag] = value.get(source, "") if kind == "header" else source
    return tags


@dataclass(slots=True)
class ActiveSpan:
    """A request's span while it runs."""

    span: Span
    started: float


class Tracer:
    """Starts a span per request, rewrites its trace headers for the upstream, and exports the
    spans worth keeping (see the module docstring)."""

    def __init__(
        self,
        settings: TracingSettings,
        exporter: SpanExporter | None,
        registry: Registry,
        *,
        rng: random.Random | None = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self.settings = settings
        self._exporter = exporter
        self._rng = rng or random.Random()
        self._log = log or structlog.get_logger().bind(component="tracing")
        self._queue: asyncio.Queue[Span] = asyncio.Queue(_QUEUE)
        self._dropped = Counter(
            "waypoint_tracing_spans_dropped_total", "Spans not exported", ("reason",), registry=registry
        )
        self._exported = Counter("waypoint_tracing_spans_exported_total", "Spans exported", registry=registry)
        self._task: asyncio.Task[None] | None = None

    def begin(self, headers: MutableSequence[tuple[str, str]], decision: RouteDecision | None) -> ActiveSpan:
        """The request's span, child of the caller's context in ``headers``, which are rewritten
        in place to carry it to the upstream; sampled at the route's percentage, else the default."""
        percent = self.settings.default_sampling
        if decision is not None and decision.sampling_percent is not None:
            percent = decision.sampling_percent
        context, parent_id = child_context(extract(headers), self._rng, sampling_percent=percent)
        inject(headers, context)
        span = Span(
            context.trace_id, context.span_id, parent_id, "", time.time_ns(), sampled=bool(context.sampled)
        )
        return ActiveSpan(span, time.monotonic())

    def end(
        self,
        active: ActiveSpan,
        record: RequestRecord,
        headers: Sequence[tuple[str, str]],
        decision: RouteDecision | None,
    ) -> None:
        """Finishes the request's span; queues it for export when it is kept (never blocks)."""
        span = active.span
        span.name = f"{record.authority or '-'}{record.path.split('?', 1)[0]}"
        span.end_ns = span.start_ns + int((time.monotonic() - active.started) * 1e9)
        span.error = record.status >= 500 or bool(record.flags and record.flags != "-")
        if self._exporter is None or not keep(span, status=record.status, flags=record.flags):
            return
        span.attributes = _tags(self.settings, record, headers, decision)
        try:
            self._queue.put_nowait(span)
        except asyncio.QueueFull:
            self._dropped.labels("queue_full").inc()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._export_forever())

    async def _export_forever(self) -> None:
        exporter = self._exporter
        assert exporter is not None
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + _FLUSH_EVERY
            while True:  # collect for up to a second: polled, not a timer per span
                while len(batch) < _BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                left = deadline - time.monotonic()
                if len(batch) >= _BATCH or left <= 0:
                    break
                await asyncio.sleep(min(left, _COLLECT_POLL))
            try:
                await exporter.send(batch)
                self._exported.inc(len(batch))
            except (OSError, TimeoutError, ValueError, Http1Error) as exc:
                self._dropped.labels("export_failed").inc(len(batch))
                self._log.warning(
                    "tracing.export_failed", collector=exporter.url, spans=len(batch), error=str(exc)
                )

    async def close(self) -> None:
        """Stops exporting (spans still queued are dropped)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
