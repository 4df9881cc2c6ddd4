"""gRPC through a waypoint in the lab: a grpcio client and grpcio servers v1/v2 (``meshctl.apps.
grpcecho``) behind a Service with a ``grpc`` port that uses a waypoint; a VirtualService routes
the ``x-canary: true`` calls to v2, splits the rest 50/50, and aborts the ``x-fault: abort`` ones
with the gRPC status UNAVAILABLE, which the client sees as that status."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.lab import builders as b
from tests.e2e.conftest import CLIENT_NODE, SERVER_NODE, MeshLab
from tests.e2e.waypoint_lab import applied_behind_waypoint, enrolled_namespace_with_waypoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NS = "grpcwp"
PORT = 50051
GRPCECHO = ["python", "-m", "meshctl.apps.grpcecho"]
SUBSETS = [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]


def objects() -> list[dict[str, Any]]:
    service = b.service("echo", NS, selector={"app": "echo"}, port=PORT, target_port=PORT)
    service["spec"]["ports"][0]["name"] = "grpc"
    service["metadata"]["labels"] = {"istio.io/use-waypoint": "waypoint"}
    deployments = [
        b.deployment(f"echo-{v}", NS, command=[*GRPCECHO, "serve", "--port", str(PORT), "--version", v],
                     labels={"app": "echo", "version": v}, ports=[PORT], node=node)
        for v, node in (("v1", SERVER_NODE), ("v2", CLIENT_NODE))
    ]  # fmt: skip
    v1, v2 = ({"destination": {"host": "echo", "subset": s}, "weight": 50} for s in ("v1", "v2"))
    return [
        *enrolled_namespace_with_waypoint(NS),
        *deployments,
        service,
        b.deployment("client", NS, command=b.SLEEPER, node=CLIENT_NODE),
        {
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "echo", "namespace": NS},
            "spec": {"host": "echo", "subsets": SUBSETS},
        },
        {
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "echo", "namespace": NS},
            "spec": {"hosts": ["echo"], "http": [
                {"match": [{"headers": {"x-canary": {"exact": "true"}}}],
                 "route": [{"destination": {"host": "echo", "subset": "v2"}}]},
                {"match": [{"headers": {"x-fault": {"exact": "abort"}}}],
                 "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}},
                 "route": [{"destination": {"host": "echo", "subset": "v1"}}]},
                {"route": [v1, v2]},
            ]},
        },
    ]  # fmt: skip


@pytest.fixture(scope="module")
def shop(mesh: MeshLab) -> Iterator[MeshLab]:
    def ready() -> bool:
        return calls(mesh, 3, "x-canary=true") == ["ok v2"] * 3

    with applied_behind_waypoint(
        mesh, NS, objects(), "echo", ready=ready, what="the routes in the waypoint"
    ) as applied:
        yield applied


def calls(mesh: MeshLab, count: int, *metadata: str) -> list[str]:
    """Each call's outcome: ``ok <version>`` or ``error <status>``."""
    extra = [arg for item in metadata for arg in ("--metadata", item)]
    done = mesh.exec(
        f"{NS}/client",
        *GRPCECHO,
        "call",
        "--target",
        f"echo:{PORT}",
        "--count",
        str(count),
        *extra,
        timeout=60,
    )
    return [" ".join(line.split()[:2]).split(":")[0] for line in done.stdout.splitlines() if line]


def test_grpc_calls_follow_the_virtual_service_through_the_waypoint(shop: MeshLab) -> None:
    assert calls(shop, 10, "x-canary=true") == ["ok v2"] * 10
    split = Counter(calls(shop, 200))
    assert set(split) == {"ok v1", "ok v2"} and min(split.values()) >= 60, split  # 50/50, far from 0
    assert calls(shop, 5, "x-fault=abort") == ["error UNAVAILABLE"] * 5
