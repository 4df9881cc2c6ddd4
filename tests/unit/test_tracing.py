"""Trace context (W3C and B3), the proxy's child span, sampling and tail keep, and the span encoders
(decoded back with opentelemetry-proto, and as Zipkin v2 JSON)."""

from __future__ import annotations

import json
import random

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from mesh.tracing import Span, TraceContext, child_context, extract, inject, keep
from waypoint.tracing import TracingSettings, encode_otlp, encode_zipkin

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN = 0x00F067AA0BA902B7


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
         TraceContext(TRACE, SPAN, True, "", frozenset({"w3c"}))),
        ([("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), ("tracestate", "a=1")],
         TraceContext(TRACE, SPAN, False, "a=1", frozenset({"w3c"}))),
        ([("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")],
         TraceContext(TRACE, SPAN, True, "", frozenset({"b3"}))),
        ([("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")],
         TraceContext(0xA3CE929D0E0E4736, SPAN, None, "", frozenset({"b3"}))),
        ([("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"), ("x-b3-spanid", "00f067aa0ba902b7"),
          ("x-b3-sampled", "0")], TraceContext(TRACE, SPAN, False, "", frozenset({"b3multi"}))),
        ([("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"), ("x-b3-spanid", "00f067aa0ba902b7"),
          ("x-b3-flags", "1")], TraceContext(TRACE, SPAN, True, "", frozenset({"b3multi"}))),
        ([("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")], None),
        ([("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")], None),
        ([("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")], None),
        ([("traceparent", "garbage")], None),
        ([("b3", "nothex-00f067aa0ba902b7-1")], None),
        ([], None),
    ],
)  # fmt: skip
def test_the_callers_context_is_read_from_w3c_or_b3(
    headers: list[tuple[str, str]], expected: TraceContext | None
) -> None:
    assert extract(headers) == expected


def test_the_proxy_span_is_a_child_that_keeps_the_callers_decision_and_formats() -> None:
    parent = TraceContext(TRACE, SPAN, False, "v=1", frozenset({"b3multi"}))
    child, parent_id = child_context(parent, random.Random(1), sampling_percent=100)
    assert (child.trace_id, parent_id, child.sampled, child.tracestate) == (TRACE, SPAN, False, "v=1")
    assert child.span_id not in (0, SPAN)
    headers = [("x-b3-traceid", "old"), ("host", "a"), ("traceparent", "old")]
    inject(headers, child)
    assert dict(headers) == {
        "host": "a",
        "traceparent": f"00-{TRACE:032x}-{child.span_id:016x}-00",
        "tracestate": "v=1",
        "x-b3-traceid": f"{TRACE:032x}",
        "x-b3-spanid": f"{child.span_id:016x}",
        "x-b3-sampled": "0",
    }
    root, root_parent = child_context(None, random.Random(2), sampling_percent=0)
    assert root_parent == 0 and root.sampled is False and root.trace_id


def test_head_sampling_without_a_caller_decision_follows_the_percentage() -> None:
    rng = random.Random(7)
    sampled = sum(bool(child_context(None, rng, sampling_percent=10)[0].sampled) for _ in range(10_000))
    assert 900 <= sampled <= 1100  # 10 % of 10,000; sd 30


@pytest.mark.parametrize(
    ("sampled", "status", "flags", "kept"),
    [(True, 200, "-", True), (False, 200, "-", False), (False, 503, "-", True), (False, 200, "UT", True),
     (False, 404, "", False)],
)  # fmt: skip
def test_tail_keep_of_failures(sampled: bool, status: int, flags: str, kept: bool) -> None:
    assert keep(Span(1, 2, 0, "x", 0, sampled=sampled), status=status, flags=flags) is kept


def spans() -> list[Span]:
    root = Span(TRACE, SPAN, 0, "front/", 1_000, 5_000, True, {"http.status_code": "200"})
    child = Span(TRACE, 0x1234, SPAN, "back/", 2_000, 4_000, True, {"http.status_code": "503"}, error=True)
    return [root, child]


def test_otlp_encoding_decodes_with_opentelemetry_proto() -> None:
    settings = TracingSettings(service_name="waypoint", namespace="demo")
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(encode_otlp(spans(), settings))
    (resource_spans,) = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource == {"service.name": "waypoint", "k8s.namespace.name": "demo"}
    root, child = resource_spans.scope_spans[0].spans
    assert root.trace_id == TRACE.to_bytes(16, "big") and root.parent_span_id == b""
    assert child.parent_span_id == SPAN.to_bytes(8, "big") and child.status.code == 2  # ERROR
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (1_000, 5_000)


def test_zipkin_encoding() -> None:
    root, child = json.loads(encode_zipkin(spans(), TracingSettings(service_name="waypoint")))
    assert root["traceId"] == f"{TRACE:032x}" and "parentId" not in root
    assert child["parentId"] == f"{SPAN:016x}" and child["tags"]["error"] == "true"
    assert root["localEndpoint"] == {"serviceName": "waypoint"}
