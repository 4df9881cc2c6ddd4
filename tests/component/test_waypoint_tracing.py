"""Tracing through the waypoint process (local Envoy config, --tracing-otlp) with a test collector
that decodes OTLP with opentelemetry-proto: a request crossing two services makes one trace with
the right parents; 1 % sampling keeps 1 % within a binomial bound; every 5xx is kept at 0 %; a
collector that never answers loses spans (counted) and slows no request."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from mesh.testing.ports import free_port
from tests.component.test_waypoint_local import cluster, httpecho, local_waypoint

pytestmark = pytest.mark.timeout(180)

ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def routes() -> dict[str, Any]:
    def route(name: str, prefix: str, cluster_name: str, percent: float) -> dict[str, Any]:
        return {
            "name": name, "match": {"prefix": prefix}, "route": {"cluster": cluster_name},
            "tracing": {"random_sampling": {"numerator": int(percent * 10_000), "denominator": "MILLION"},
                        "custom_tags": [{"tag": "team", "literal": {"value": "shop"}},
                                        {"tag": "user", "request_header": {"name": "x-user"}}]},
        }  # fmt: skip

    return {
        "@type": ROUTES,
        "name": "waypoint",
        "virtual_hosts": [
            {"name": "front", "domains": ["front"], "routes": [
                route("traced", "/traced", "app", 100), route("one-percent", "/sampled", "echo", 1),
                route("failing", "/status/", "echo", 0),
            ]},
            {"name": "back", "domains": ["back"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]},
        ],
    }  # fmt: skip


@dataclass
class Collector:
    """An OTLP/HTTP collector on loopback; ``answer=False`` accepts and never answers."""

    answer: bool = True
    spans: list[trace_pb2.Span] = field(default_factory=list)
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> Collector:
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if not collector.answer:
                    time.sleep(30)  # a collector that hangs
                    return
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    for scope in resource_spans.scope_spans:
                        collector.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def wait_spans(self, count: int, timeout: float = 15.0) -> list[trace_pb2.Span]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # one more export interval: nothing unexpected arrives late
        return list(self.spans)


def app_calling_back(waypoint_port: int) -> http.server.ThreadingHTTPServer:
    """Service A: answers after calling service B through the waypoint, passing the trace headers on
    (as Istio asks of every app)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            forward = {k: v for k, v in self.headers.items() if k.lower() in ("traceparent", "tracestate")}
            connection = http.client.HTTPConnection("127.0.0.1", waypoint_port, timeout=5)
            connection.request("GET", "/from-a", headers={"Host": "back", **forward})
            status = connection.getresponse().status
            self.send_response(200 if status == 200 else 502)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Traced:
    port: int
    metrics: int
    collector: Collector
    app: http.server.ThreadingHTTPServer


@contextlib.contextmanager
def start(tmp: Path, collector: Collector) -> Iterator[Traced]:
    echo_port, waypoint_port = free_port(), free_port()
    app = app_calling_back(waypoint_port)
    resources = [routes(), cluster("app", app.server_address[1]), cluster("echo", echo_port)]
    otlp = ("--tracing-otlp", f"http://127.0.0.1:{collector.port}/v1/traces")
    try:
        with (
            httpecho(echo_port),
            local_waypoint(
                tmp, {"resources": resources}, http=f"127.0.0.1:{waypoint_port}", extra=otlp
            ) as wp,
        ):
            yield Traced(waypoint_port, wp.started["ports"]["metrics"], collector, app)
    finally:
        app.shutdown()
        collector.stop()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    with start(tmp_path_factory.mktemp("traced"), Collector().start()) as running:
        yield running


def get(port: int, path: str, n: int = 1, headers: dict[str, str] | None = None) -> list[tuple[int, float]]:
    """``n`` keep-alive GETs to the waypoint with Host ``front``: (status, seconds) each."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = []
    for _ in range(n):
        started = time.monotonic()
        connection.request("GET", path, headers={"Host": "front", **(headers or {})})
        response = connection.getresponse()
        response.read()
        answers.append((response.status, time.monotonic() - started))
    connection.close()
    return answers


def attributes(span: trace_pb2.Span) -> dict[str, str]:
    return {a.key: a.value.string_value for a in span.attributes}


def test_a_request_across_two_services_is_one_trace_with_the_right_parents(traced: Traced) -> None:
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert [
        status for status, _ in get(traced.port, "/traced", headers={"traceparent": caller, "x-user": "ada"})
    ] == [200]
    spans = traced.collector.wait_spans(2)
    front = next(s for s in spans if s.name.startswith("front"))
    back = next(s for s in spans if s.name.startswith("back"))
    assert front.trace_id == back.trace_id == bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    assert front.parent_span_id == bytes.fromhex("b7ad6b7169203331")  # the caller's span
    assert back.parent_span_id == front.span_id  # A passed the waypoint's context on
    tags = attributes(front)
    assert tags["team"] == "shop" and tags["user"] == "ada" and tags["http.status_code"] == "200"
    assert tags["http.method"] == "GET" and tags["upstream_cluster"] == "app" and "istio.mesh_id" in tags


def test_one_percent_sampling_keeps_one_percent_and_every_5xx_at_zero(traced: Traced) -> None:
    before = len(traced.collector.spans)
    answers = get(traced.port, "/sampled", 5000)
    assert {status for status, _ in answers} == {200}
    failing = get(traced.port, "/status/503", 50)
    assert {status for status, _ in failing} == {503}
    spans = traced.collector.wait_spans(before + 50)[before:]
    sampled = [s for s in spans if s.name.endswith("/sampled")]
    errors = [s for s in spans if "/status/" in s.name]
    bound = 3.29 * math.sqrt(5000 * 0.01 * 0.99)  # two-sided 99.9 %
    assert abs(len(sampled) - 50) <= bound, f"{len(sampled)} of 5000 sampled at 1 %"
    assert len(errors) == 50 and all(s.status.code == trace_pb2.Status.STATUS_CODE_ERROR for s in errors)


def test_a_hanging_collector_loses_spans_counted_and_slows_no_request(tmp_path: Path) -> None:
    with start(tmp_path, Collector(answer=False).start()) as traced:
        answers = get(traced.port, "/traced", 200)
        assert {status for status, _ in answers} == {200}
        assert max(seconds for _, seconds in answers) < 1.0  # an export waits up to 2 s, a request never
        deadline = time.monotonic() + 15
        dropped = 0.0
        while time.monotonic() < deadline and dropped < 1:
            with urllib.request.urlopen(f"http://127.0.0.1:{traced.metrics}/metrics", timeout=5) as reply:
                for line in reply.read().decode().splitlines():
                    if line.startswith('waypoint_tracing_spans_dropped_total{reason="export_failed"}'):
                        dropped = float(line.split()[-1])
            time.sleep(0.5)
        assert dropped >= 1
