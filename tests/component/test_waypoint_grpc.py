"""HTTP/2 through the waypoint process (local Envoy config, --http-listen): real grpcio clients and
servers (unary calls, raw bytes, no codegen) routed by header to v1 or v2, a fault abort with a
gRPC status seen by the client as that status code, gRPC request metrics; and curl with HTTP/2
prior knowledge to an HTTP/1.1 server (the waypoint translating between the two)."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.testing.ports import free_port
from tests.component.test_waypoint_local import cluster, httpecho, local_waypoint

pytestmark = pytest.mark.timeout(120)

ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
METHOD = "/test.Echo/Say"


def grpc_server(version: str) -> tuple[grpc.Server, int]:
    """A grpcio server whose ``test.Echo/Say`` answers ``<version>:<request>``."""

    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-served-by", version),))
        return version.encode() + b":" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def h2_cluster(name: str, port: int) -> dict[str, Any]:
    options = {
        "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    return {**cluster(name, port), "typed_extension_protocol_options": {HTTP_OPTIONS: options}}


def header(name: str, exact: str) -> dict[str, Any]:
    return {"name": name, "string_match": {"exact": exact}}


def config(v1: int, v2: int, echo: int) -> dict[str, Any]:
    abort = {"@type": FAULT, "abort": {"grpc_status": 14, "percentage": {"numerator": 100}}}
    routes = {
        "@type": ROUTES, "name": "waypoint",
        "virtual_hosts": [
            {"name": "grpc", "domains": ["echo-grpc", "echo-grpc:50051"], "routes": [
                {"match": {"prefix": "/", "headers": [header("x-canary", "true")]},
                 "route": {"cluster": "v2"}},
                {"match": {"prefix": "/", "headers": [header("x-fault", "abort")]},
                 "route": {"cluster": "v1"}, "typed_per_filter_config": {"envoy.filters.http.fault": abort}},
                {"match": {"prefix": "/"}, "route": {"cluster": "v1"}},
            ]},
            {"name": "web", "domains": ["web"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]},
        ],
    }  # fmt: skip
    return {"resources": [routes, h2_cluster("v1", v1), h2_cluster("v2", v2), cluster("echo", echo)]}


@dataclass
class Running:
    port: int
    metrics: int


@pytest.fixture(scope="module")
def waypoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp: Path = tmp_path_factory.mktemp("grpc")
    (s1, v1), (s2, v2) = grpc_server("v1"), grpc_server("v2")
    echo_port, port = free_port(), free_port()
    try:
        with (
            httpecho(echo_port),
            local_waypoint(tmp, config(v1, v2, echo_port), http=f"127.0.0.1:{port}") as wp,
        ):
            yield Running(port, wp.started["ports"]["metrics"])
    finally:
        s1.stop(0)
        s2.stop(0)


def call(port: int, payload: bytes, *metadata: tuple[str, str]) -> tuple[bytes, dict[str, str]]:
    options = [("grpc.default_authority", "echo-grpc:50051")]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        say = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        reply, rpc = say.with_call(payload, metadata=metadata, timeout=10)
        return reply, {str(k): str(v) for k, v in rpc.trailing_metadata() or ()}


def test_grpc_calls_follow_the_header_route(waypoint: Running) -> None:
    assert call(waypoint.port, b"hi") == (b"v1:hi", {"x-served-by": "v1"})
    assert call(waypoint.port, b"hi", ("x-canary", "true"))[0] == b"v2:hi"
    replies = {call(waypoint.port, str(i).encode())[0] for i in range(20)}
    assert replies == {f"v1:{i}".encode() for i in range(20)}


def test_a_grpc_fault_abort_reaches_the_client_as_its_status(waypoint: Running) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(waypoint.port, b"hi", ("x-fault", "abort"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_requests_are_counted_as_grpc_with_their_status(waypoint: Running) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{waypoint.metrics}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("istio_requests_total{")]
    assert any('request_protocol="grpc"' in line and 'grpc_response_status="0"' in line for line in lines)
    assert any('grpc_response_status="14"' in line and 'response_flags="FI"' in line for line in lines)


def test_http2_prior_knowledge_to_an_http1_server(waypoint: Running) -> None:
    done = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-H", "Host: web", "-w", "\\n%{http_version} %{http_code}",
         f"http://127.0.0.1:{waypoint.port}/hello?x=1"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    body, _, status = done.stdout.rpartition("\n")
    assert status == "2 200", done.stderr
    assert '"path": "/hello"' in body and '"query": "x=1"' in body
