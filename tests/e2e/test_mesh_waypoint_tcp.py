"""TCP through a waypoint in the lab: redis-cli to a real redis-server behind a Service that uses a
waypoint, on a declared TCP port (``tcp-redis``) and on a port of unknown protocol (sniffed: not
HTTP, so passed through); the waypoint counts the connections with ``reporter="waypoint"``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.lab import builders as b
from tests.e2e.conftest import CLIENT_NODE, SERVER_NODE, MeshLab
from tests.e2e.waypoint_lab import applied_behind_waypoint, enrolled_namespace_with_waypoint, waypoint_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NS = "tcpwp"
REDIS_PORT = 6379


def objects() -> list[dict[str, Any]]:
    command = ["redis-server", "--port", str(REDIS_PORT), "--protected-mode", "no", "--save", ""]
    declared = b.service("db", NS, selector={"app": "redis"}, port=REDIS_PORT, target_port=REDIS_PORT)
    declared["spec"]["ports"][0]["name"] = "tcp-redis"
    unknown = b.service("db-any", NS, selector={"app": "redis"}, port=REDIS_PORT, target_port=REDIS_PORT)
    unknown["spec"]["ports"][0]["name"] = "data"  # no protocol: the waypoint sniffs
    for svc in (declared, unknown):
        svc["metadata"]["labels"] = {"istio.io/use-waypoint": "waypoint"}
    return [
        *enrolled_namespace_with_waypoint(NS),
        b.deployment("redis", NS, command=command, ports=[REDIS_PORT], node=SERVER_NODE),
        b.deployment("client", NS, command=b.SLEEPER, node=CLIENT_NODE),
        declared,
        unknown,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def shop(mesh: MeshLab) -> Iterator[MeshLab]:
    with applied_behind_waypoint(mesh, NS, objects(), "db", "db-any") as applied:
        yield applied


def redis(mesh: MeshLab, host: str, *command: str) -> str:
    done = mesh.exec(f"{NS}/client", "redis-cli", "-h", host, "-p", str(REDIS_PORT), *command, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("service", ["db", "db-any"])
def test_redis_works_through_the_waypoint_as_tcp(shop: MeshLab, service: str) -> None:
    assert shop.wait_for(lambda: redis(shop, service, "PING") == "PONG" or None, what=f"redis via {service}")
    assert redis(shop, service, "SET", f"key-{service}", "through the waypoint") == "OK"
    assert redis(shop, service, "GET", f"key-{service}") == "through the waypoint"
    hostname = f'destination_service="{service}.{NS}.svc.cluster.local"'
    opened = [
        line
        for line in waypoint_metrics(shop, NS).splitlines()
        if line.startswith("istio_tcp_connections_opened_total{") and hostname in line
    ]
    assert (
        opened
        and 'reporter="waypoint"' in opened[0]
        and 'connection_security_policy="mutual_tls"' in opened[0]
    )
    assert float(opened[0].split()[-1]) >= 3
