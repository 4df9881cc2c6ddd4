"""Retries and delays through a waypoint in the lab, with curl and httpecho: a backend that fails the
first 2 requests of each key is 100 % successful with ``retries: {attempts: 3}`` (it saw 3 attempts),
and one that keeps failing gives up with 503 and flag URX; a 2 s fixed delay on 100 % of requests
is measured from the client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.lab import builders as b
from tests.e2e.conftest import CLIENT_NODE, SERVER_NODE, MeshLab
from tests.e2e.waypoint_lab import applied_behind_waypoint, enrolled_namespace_with_waypoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NS = "retrywp"


def objects() -> list[dict[str, Any]]:
    service = b.service("flaky", NS, selector={"app": "flaky"}, port=80, target_port=8080)
    service["metadata"]["labels"] = {"istio.io/use-waypoint": "waypoint"}
    return [
        *enrolled_namespace_with_waypoint(NS),
        b.httpecho_deployment("flaky", NS, labels={"app": "flaky", "version": "v1"}, node=SERVER_NODE),
        service,
        b.deployment("client", NS, command=b.SLEEPER, node=CLIENT_NODE),
        {
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "flaky", "namespace": NS},
            "spec": {"hosts": ["flaky"], "http": [
                {"match": [{"uri": {"prefix": "/slow"}}],
                 "fault": {"delay": {"fixedDelay": "2s", "percentage": {"value": 100}}},
                 "route": [{"destination": {"host": "flaky"}}]},
                {"route": [{"destination": {"host": "flaky"}}],
                 "retries": {"attempts": 3, "retryOn": "5xx", "perTryTimeout": "2s"}},
            ]},
        },
    ]  # fmt: skip


@pytest.fixture(scope="module")
def shop(mesh: MeshLab) -> Iterator[MeshLab]:
    def ready() -> bool:
        return curl(shop_mesh=mesh, path="/fail-first/2/warm-up")[0] == 200

    with applied_behind_waypoint(
        mesh, NS, objects(), "flaky", ready=ready, what="retries in force"
    ) as applied:
        yield applied


def curl(shop_mesh: MeshLab, path: str) -> tuple[int, str, float]:
    """(status, body, seconds) of one request from the client through the waypoint."""
    done = shop_mesh.exec(
        f"{NS}/client", "curl", "-s", "-m", "10", "-w", "\\n%{http_code} %{time_total}", f"http://flaky{path}"
    )
    body, _, tail = done.stdout.rpartition("\n")
    status, seconds = tail.split()
    return int(status), body, float(seconds)


def test_retries_turn_two_failures_into_success_with_three_attempts(shop: MeshLab) -> None:
    for _ in range(10):
        status, body, _ = curl(shop, f"/fail-first/2/{uuid.uuid4().hex}")
        assert status == 200 and '"attempt": 3' in body, body


def test_retries_give_up_with_503_urx_when_the_backend_keeps_failing(shop: MeshLab) -> None:
    key = uuid.uuid4().hex
    status, body, _ = curl(shop, f"/fail-first/10/{key}")
    assert status == 503 and '"attempt": 4' in body  # the first try and 3 retries
    pod = next(
        p["metadata"]["name"] for p in shop.lab.pods(NS) if p["metadata"]["name"].startswith("waypoint")
    )
    metrics = shop.exec(f"{NS}/{pod}", "curl", "-s", "-m", "5", "http://127.0.0.1:15020/metrics").stdout
    assert any(
        'response_flags="URX"' in line and 'response_code="503"' in line for line in metrics.splitlines()
    )


def test_a_fixed_delay_of_2_s_on_every_request(shop: MeshLab) -> None:
    timings = [curl(shop, "/slow")[2] for _ in range(3)]
    assert all(2.0 <= seconds < 2.5 for seconds in timings), timings
