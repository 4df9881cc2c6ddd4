"""The waypoint over HBONE, on loopback with a test PKI: a client's CONNECT stream to the waypoint
carries HTTP/1.1 that is routed by the stream's authority (the Service's VIP:port, not the Host
header) with the client's verified identity in the metrics; an endpoint reached over HBONE gets a
CONNECT stream to its ztunnel's 15008 presenting the waypoint's identity, then HTTP/1.1 to the app
(a real HTTP server, ``meshctl.apps.httpecho``)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import structlog
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from mesh.http1 import serialize_request
from mesh.identity.spiffe import WorkloadIdentity
from mesh.l7.balancing import Endpoint, EndpointPicker
from mesh.l7.router import compile_routes
from mesh.ports import INBOUND_HBONE_PORT
from mesh.rt.clock import SystemClock
from mesh.rt.hbone.pool import HbonePool
from mesh.rt.hbone.server import HboneServer
from mesh.rt.metrics import Registry, render
from mesh.rt.net.sockets import PlainSocketFactory
from mesh.testing.hbone import ForwardingHandler, StaticCertificates, material_for, request_over_hbone
from mesh.testing.pki import TestPki
from mesh.testing.polling import wait_until_blocking
from waypoint.config import WaypointConfig
from waypoint.hbone import HboneFront, HboneUpstream
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestMetrics
from waypoint.upstream import Upstreams

pytestmark = pytest.mark.timeout(60)

APP_HOST = "127.0.0.3"
"""The 'pod': its ztunnel listens on APP_HOST:15008 and its app on APP_HOST:<port> (loopback)."""
VIP = "10.96.0.10:80"


@dataclass
class Mesh:
    pki: TestPki
    front: HboneFront
    address: tuple[str, int]
    registry: Registry
    ztunnel: ForwardingHandler


@pytest.fixture(scope="module")
def app_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshctl.apps.httpecho",
            "--host",
            APP_HOST,
            "--port",
            "18180",
            "--version",
            "v1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_blocking(lambda: _listening(APP_HOST, 18180), within=10, what="the app listening")
        yield 18180
    finally:
        proc.kill()
        proc.wait()


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def routes() -> route_pb2.RouteConfiguration:
    return json_format.ParseDict(
        {
            "name": "demo/waypoint",
            "virtual_hosts": [
                {"name": "server", "domains": [VIP, "server.demo.svc.cluster.local:80"],
                 "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound-vip|80|http|server"}}]},
            ],
        },
        route_pb2.RouteConfiguration(),
    )  # fmt: skip


@pytest.fixture
async def mesh(app_port: int) -> AsyncIterator[Mesh]:
    pki = TestPki.create()
    waypoint = material_for(pki, "demo", "waypoint")
    server = material_for(pki, "demo", "server")
    config = WaypointConfig(
        routers={"demo/waypoint": compile_routes(routes())},
        clusters={
            "inbound-vip|80|http|server": EndpointPicker(endpoints=[Endpoint(APP_HOST, app_port, hbone=True)])
        },
    )
    pool = HbonePool(
        sockets=PlainSocketFactory(),
        certs=StaticCertificates({waypoint.identity: waypoint}),
        clock=SystemClock(),
    )
    tunnel = HboneUpstream(pool, waypoint.identity, lambda host: frozenset({server.identity}))
    registry = Registry()
    proxy = WaypointProxy(lambda: config, RequestMetrics(registry, structlog.get_logger()))
    proxy.upstreams = Upstreams(tunnel=tunnel.connect)
    front = HboneFront(proxy, credentials=lambda: waypoint)
    address = await front.listen("127.0.0.1", 0)
    ztunnel = ForwardingHandler()  # the app pod's ztunnel: forwards each CONNECT to its authority
    app_ztunnel = HboneServer(ztunnel, credentials=lambda: server)
    await app_ztunnel.listen(APP_HOST, INBOUND_HBONE_PORT)
    try:
        yield Mesh(pki, front, address, registry, ztunnel)
    finally:
        proxy.upstreams.close()
        await front.close()
        await app_ztunnel.close()
        await pool.close()


async def request_through(
    mesh: Mesh, authority: str, raw: bytes, client: str = "client"
) -> tuple[int, bytes]:
    """Opens an HBONE connection to the waypoint as ``demo/<client>``, one CONNECT stream, one request."""
    return await request_over_hbone(
        mesh.address,
        client=material_for(mesh.pki, "demo", client),
        server=WorkloadIdentity.parse(mesh.pki.workload_uri("demo", "waypoint")),
        authority=authority,
        request=raw,
    )


async def test_a_stream_is_routed_by_its_authority_and_forwarded_over_hbone(mesh: Mesh) -> None:
    # The Host header names nothing the waypoint serves: the CONNECT authority (VIP:port) decides.
    raw = serialize_request("GET", "/hello", [("host", "not-a-service")], b"")
    status, body = await request_through(mesh, VIP, raw)
    assert status == 200
    echoed = json.loads(body)
    assert (echoed["version"], echoed["path"]) == ("v1", "/hello")
    (tunnel,) = mesh.ztunnel.requests  # the app's ztunnel saw the waypoint's identity and the pod's port
    assert tunnel.authority == f"{APP_HOST}:18180"
    assert tunnel.peer_identity.uri == mesh.pki.workload_uri("demo", "waypoint")
    text = render(mesh.registry).decode()
    assert f'source_principal="{mesh.pki.workload_uri("demo", "client")}"' in text
    assert 'connection_security_policy="mutual_tls"' in text


async def test_an_authority_the_waypoint_does_not_serve_is_404(mesh: Mesh) -> None:
    raw = serialize_request("GET", "/", [("host", "server.demo.svc.cluster.local")], b"")
    status, _ = await request_through(mesh, "10.96.9.9:80", raw)
    assert status == 404


async def test_a_refused_tunnel_is_503_uf(mesh: Mesh) -> None:
    mesh.ztunnel.deny[WorkloadIdentity.parse(mesh.pki.workload_uri("demo", "waypoint"))] = 401
    try:
        status, _ = await request_through(mesh, VIP, serialize_request("GET", "/", [("host", "x")], b""))
    finally:
        mesh.ztunnel.deny.clear()
    assert status == 503
    assert 'response_flags="UF"' in render(mesh.registry).decode()
