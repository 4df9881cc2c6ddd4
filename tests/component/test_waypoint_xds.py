"""The waypoint's WaypointXds against istiod_lite's real push plane (informers -> translation ->
ConfigPusher -> Delta ADS server on loopback): it gets its routes, clusters and endpoints, routes
as the VirtualService says, follows changes, and keeps its last good config when a resource is bad.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from istiod_lite.ca.auth import Caller, LabTokenAuthenticator
from istiod_lite.push.snapshot import scoped_type
from istiod_lite.push.status import syncz
from mesh.identity import WorkloadIdentity
from mesh.l7.router import Request
from mesh.model import Service, Workload
from mesh.rt.clock import SystemClock
from mesh.testing.pki import TestPki
from mesh.testing.polling import wait_until
from mesh.testing.ports import free_port
from tests.component.ca_support import running_ca
from tests.component.test_xds_push import Plane, start_plane
from tests.component.test_xds_waypoint import InformerSource
from tests.unit.l7_world import SUBSETS, destination_rule, gateway, virtual_service, world
from tests.unit.test_translate_scenarios import endpoint_slice, namespace, pod, service
from waypoint.config import ROUTES_TYPE, WaypointConfig
from waypoint.xds import WaypointPod, WaypointXds

pytestmark = pytest.mark.timeout(30)

REVIEWS = "reviews.demo.svc.cluster.local"
ROUTE_NAME = "demo/waypoint"
V1 = f"inbound-vip|9080|http/v1|{REVIEWS}"
V2 = f"inbound-vip|9080|http/v2|{REVIEWS}"
POD = WaypointPod(name="waypoint-abc", namespace="demo", ip="10.244.1.99", waypoint="waypoint")


def weighted(v1: int, v2: int) -> dict[str, Any]:
    return virtual_service(
        "reviews",
        [
            {
                "route": [
                    {"destination": {"host": "reviews", "subset": "v1"}, "weight": v1},
                    {"destination": {"host": "reviews", "subset": "v2"}, "weight": v2},
                ]
            }
        ],
    )


class TamperingSource(InformerSource):
    """The translated build, with the waypoint's RouteConfiguration replaced by ``bad`` when set
    (what a newer istiod_lite could send that this waypoint cannot apply)."""

    bad: route_pb2.RouteConfiguration | None = None

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        super().__init__(objects)
        translated = self.build

        def build() -> Mapping[str, Mapping[str, Message]]:
            out = dict(translated())
            if self.bad is not None:
                key = scoped_type(ROUTES_TYPE, ROUTE_NAME)
                out[key] = {**out[key], ROUTE_NAME: self.bad}
            return out

        self.build = build

    def tamper(self, bad: route_pb2.RouteConfiguration | None) -> None:
        self.bad = bad
        self._changed()


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[TamperingSource, Plane, WaypointXds]]:
    source = TamperingSource([*world(weighted(100, 0)), destination_rule(subsets=SUBSETS)])
    plane = await start_plane(source)  # type: ignore[arg-type]
    xds = WaypointXds(plane.target, node=POD.node(), rng=random.Random(3))
    task = asyncio.create_task(xds.run())
    yield source, plane, xds
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await plane.stop()


def routed(config: WaypointConfig, path: str = "/") -> str:
    """The cluster a request to reviews:9080 goes to on ``config``."""
    decision = config.routers[ROUTE_NAME].route(Request("GET", path, f"{REVIEWS}:9080"), random.Random(1))
    assert decision is not None, "no route for reviews"
    return decision.cluster


def endpoints(config: WaypointConfig, cluster: str) -> list[tuple[str, int, bool]]:
    return [(e.host, e.port, e.hbone) for e in config.clusters[cluster].endpoints]


async def test_the_waypoint_gets_its_config_routes_by_it_and_follows_changes(
    mesh: tuple[TamperingSource, Plane, WaypointXds],
) -> None:
    source, _, xds = mesh
    assert not xds.synced
    await asyncio.wait_for(xds.wait_synced(), 5)
    assert xds.synced
    config = xds.config()
    assert set(config.routers) == {ROUTE_NAME}
    assert {V1, V2} <= set(config.clusters)
    assert endpoints(config, V1) == [("10.244.1.11", 9080, True)]  # enrolled pods: over HBONE
    assert endpoints(config, V2) == [("10.244.1.12", 9080, True)]
    assert {routed(config) for _ in range(20)} == {V1}
    assert isinstance(xds.addresses.get("Kubernetes//Pod/demo/reviews-v1"), Workload)
    assert any(isinstance(a, Service) for a in xds.addresses.values())

    source.put(weighted(0, 100))
    await wait_until(lambda: routed(xds.config()) == V2, what="the new weights")
    assert xds.config() is not config  # swapped whole, the old one untouched
    assert routed(config) == V1

    source.put(
        pod("reviews-v2", ip="10.244.1.12", labels={"app": "reviews", "version": "v2"}, enrolled=False)
    )
    await wait_until(
        lambda: endpoints(xds.config(), V2) == [("10.244.1.12", 9080, False)], what="a plain-TCP endpoint"
    )


async def test_a_bad_route_configuration_is_nacked_and_the_last_good_config_stays(
    mesh: tuple[TamperingSource, Plane, WaypointXds],
) -> None:
    source, plane, xds = mesh
    await asyncio.wait_for(xds.wait_synced(), 5)
    good = xds.config()
    bad = route_pb2.RouteConfiguration()
    bad.CopyFrom(good.resources[ROUTES_TYPE][ROUTE_NAME])
    bad.virtual_hosts[0].routes[0].filter_action.SetInParent()  # an action this engine does not apply
    source.tamper(bad)

    def nack() -> str:
        (conn,) = syncz(plane.hub)["subscribers"]
        status = next(t for t in conn["types"] if t["type_url"] == ROUTES_TYPE)
        return str((status["nacked"] or {}).get("error", ""))

    await wait_until(nack, what="a NACK of the RouteConfiguration")
    assert ROUTE_NAME in nack() and "filter_action" in nack()
    assert xds.synced
    assert xds.config().resources[ROUTES_TYPE][ROUTE_NAME] == good.resources[ROUTES_TYPE][ROUTE_NAME]
    assert routed(xds.config()) == V1

    source.tamper(None)  # a good one again, with new weights: applied
    source.put(weighted(0, 100))
    await wait_until(lambda: routed(xds.config()) == V2, what="the next good config")


SERVER_NAME = "istiod.istio-system.svc"
ECHOES = (("v1", "127.0.0.2"), ("v2", "127.0.0.3"))


def http_get(port: int, host: str, path: str = "/") -> tuple[int, str]:
    """A GET to 127.0.0.1:``port`` with ``Host: host``; (status, body), errors included."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def echo_port() -> Iterator[int]:
    """httpecho for reviews v1 and v2 on two loopback addresses, one port."""
    port = free_port()
    echoes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshctl.apps.httpecho",
                "--host",
                ip,
                "--port",
                str(port),
                "--version",
                version,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for version, ip in ECHOES
    ]
    yield port
    for echo in echoes:
        echo.terminate()
        echo.wait()


class WaypointProcess:
    """``waypoint --xds-address`` as the lab runs it: TLS to istiod_lite, a bearer token, the pod's
    environment; logs in a file."""

    def __init__(self, tmp: Path, xds_port: int, root_pem: bytes, ca_address: str) -> None:
        (tmp / "root.pem").write_bytes(root_pem)
        (tmp / "token").write_text("tok-waypoint\n")
        self.log = tmp / "waypoint.log"
        env = {**os.environ, "POD_NAME": POD.name, "POD_NAMESPACE": POD.namespace, "INSTANCE_IP": POD.ip,
               "WAYPOINT_NAME": POD.waypoint}  # fmt: skip
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "waypoint.app", "--xds-address", f"127.0.0.1:{xds_port}",
                 "--root-cert", str(tmp / "root.pem"), "--token-file", str(tmp / "token"),
                 "--http-listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                 "--readiness", "127.0.0.1:0", "--ca-address", ca_address, "--hbone-listen", "127.0.0.1:0"],
                stderr=sink, stdout=subprocess.DEVNULL, env=env,
            )  # fmt: skip

    def started(self) -> dict[str, Any] | None:
        """The ``waypoint.started`` log event once it is there."""
        if self.proc.poll() is not None:
            raise AssertionError(f"the waypoint exited: {self.log.read_text()[-2000:]}")
        for line in self.log.read_text().splitlines():
            if '"waypoint.started"' in line:
                return dict(json.loads(line))
        return None

    def stop(self) -> int:
        """SIGTERM; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


def reviews_world(port: int, v1: int, v2: int) -> list[dict[str, Any]]:
    """Service reviews (9080 -> ``port``) with pods v1 and v2 out of the mesh, on the echoes."""
    return [
        namespace("demo", {"istio.io/use-waypoint": "waypoint"}),
        gateway(),
        service("reviews", ip="10.96.0.20", ports=[{"name": "http", "port": 9080, "targetPort": port}]),
        *(
            pod(f"reviews-{v}", ip=ip, labels={"app": "reviews", "version": v}, enrolled=False)
            for v, ip in ECHOES
        ),
        endpoint_slice("reviews", endpoints=[(f"reviews-{v}", ip, True) for v, ip in ECHOES]),
        weighted(v1, v2),
        destination_rule(subsets=SUBSETS),
    ]


async def test_the_waypoint_process_takes_its_config_from_istiod_lite(tmp_path: Path, echo_port: int) -> None:
    """Not ready until the config and its certificate are in; then it routes plain HTTP as the
    VirtualService says, and follows a change."""
    pki = TestPki.create()
    leaf = pki.issue_leaf(
        uri_sans=["spiffe://cluster.local/ns/istio-system/sa/istiod"], dns_sans=[SERVER_NAME]
    )
    xds_port = free_port()
    waypoint_caller = {"tok-waypoint": Caller(WorkloadIdentity("cluster.local", "demo", "waypoint"))}
    async with running_ca(tmp_path / "ca", tokens=waypoint_caller) as ca:
        # One trust bundle for both: the xDS server's test root and the CA's own.
        waypoint = WaypointProcess(tmp_path, xds_port, pki.root_pem + ca.root_pem, ca.address)
        await _run_waypoint(waypoint, xds_port, leaf, echo_port)


async def _run_waypoint(waypoint: WaypointProcess, xds_port: int, leaf: Any, echo_port: int) -> None:
    plane = None
    try:
        await wait_until(waypoint.started, within=30, what="the waypoint starting")
        started = waypoint.started()
        assert started is not None
        http, ready = started["http.port"], started["ports"]["readiness"]

        def readiness() -> tuple[int, str]:
            return http_get(ready, "localhost", "/healthz/ready")

        def version() -> str:
            status, body = http_get(http, f"{REVIEWS}:9080")
            return str(json.loads(body)["version"]) if status == 200 else f"status {status}: {body}"

        assert await asyncio.to_thread(readiness) == (
            503,
            "not ready: config not received from istiod_lite yet\n",
        )
        source = InformerSource(reviews_world(echo_port, 100, 0))
        plane = await start_plane(
            source,  # type: ignore[arg-type]
            port=xds_port,
            credentials=grpc.ssl_server_credentials([(leaf.key_pem, leaf.cert_pem)]),
            authenticator=LabTokenAuthenticator(
                {"tok-waypoint": Caller(WorkloadIdentity("cluster.local", "demo", "waypoint"))},
                clock=SystemClock(),
            ),
        )
        await wait_until_async(lambda: asyncio.to_thread(readiness), (200, "ready\n"), what="readiness")
        await wait_until_async(lambda: asyncio.to_thread(version), "v1", what="routing to v1")
        source.put(weighted(0, 100))
        await wait_until_async(lambda: asyncio.to_thread(version), "v2", what="the new weights")
    finally:
        assert await asyncio.to_thread(waypoint.stop) == 0
        if plane is not None:
            await plane.stop()


async def wait_until_async(
    get: Callable[[], Awaitable[object]], wanted: object, *, what: str, within: float = 10.0
) -> None:
    """Polls ``get`` (blocking work runs in a thread, so the plane keeps serving) until it is ``wanted``."""
    deadline = time.monotonic() + within
    while (got := await get()) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {got!r} after {within} s")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        ([], {}, "no config: give --xds-address (istiod_lite) or --local-config FILE"),
        (["--xds-address", "127.0.0.1:1"], {}, "--xds-address needs --root-cert and --token-file"),
        (
            ["--xds-address", "127.0.0.1:1", "--root-cert", "ROOT", "--token-file", "TOKEN"],
            {"POD_NAME": "waypoint-abc", "POD_NAMESPACE": "demo"},
            "the waypoint needs INSTANCE_IP, WAYPOINT_NAME in its environment",
        ),
    ],
    ids=["no-config", "no-credentials", "no-pod-environment"],
)
def test_what_is_missing_for_xds_is_named(
    tmp_path: Path, args: list[str], env: dict[str, str], error: str
) -> None:
    (tmp_path / "root.pem").write_bytes(TestPki.create().root_pem)
    (tmp_path / "token").write_text("tok-waypoint\n")
    paths = {"ROOT": str(tmp_path / "root.pem"), "TOKEN": str(tmp_path / "token")}
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "WAYPOINT_NAME"}
    }
    done = subprocess.run(
        [sys.executable, "-m", "waypoint.app", *(paths.get(a, a) for a in args)],
        capture_output=True, text=True, timeout=30, check=False, env={**base, **env},
    )  # fmt: skip
    assert done.returncode == 2
    assert error in done.stderr, done.stderr
