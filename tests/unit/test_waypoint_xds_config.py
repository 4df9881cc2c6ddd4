"""The waypoint's config from Envoy resources: endpoints over HBONE by Istio's transport socket match
metadata, and the pod's xDS node from its environment."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format

from istiod_lite.push.projection import parse_node_id
from mesh.errors import ConfigError
from waypoint.config import WaypointConfig
from waypoint.xds import WaypointPod

ENV = {
    "POD_NAME": "waypoint-7d9f-abc",
    "POD_NAMESPACE": "demo",
    "INSTANCE_IP": "10.244.1.99",
    "WAYPOINT_NAME": "waypoint",
}


def assignment(metadata: dict[str, Any] | None) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoint: dict[str, Any] = {
        "endpoint": {"address": {"socket_address": {"address": "10.244.1.11", "port_value": 9080}}}
    }
    if metadata is not None:
        lb_endpoint["metadata"] = {"filter_metadata": metadata}
    return json_format.ParseDict(
        {"cluster_name": "c", "endpoints": [{"lb_endpoints": [lb_endpoint]}]},
        endpoint_pb2.ClusterLoadAssignment(),
    )


@pytest.mark.parametrize(
    ("metadata", "hbone"),
    [
        ({"envoy.transport_socket_match": {"tunnel": "http"}}, True),
        ({"envoy.transport_socket_match": {"tunnel": "h2"}}, False),
        ({"envoy.transport_socket_match": {"other": "http"}}, False),
        ({"istio": {"tunnel": "http"}}, False),  # the key under another filter does not count
        (None, False),
    ],
    ids=["tunnel-http", "tunnel-other", "no-tunnel-key", "other-filter", "no-metadata"],
)
def test_an_endpoint_is_reached_over_hbone_when_its_metadata_says_tunnel_http(
    metadata: dict[str, Any] | None, hbone: bool
) -> None:
    cluster = cluster_pb2.Cluster(name="c", type=cluster_pb2.Cluster.EDS)
    config = WaypointConfig.build([cluster, assignment(metadata)])
    (endpoint,) = config.clusters["c"].endpoints
    assert (endpoint.host, endpoint.port, endpoint.hbone) == ("10.244.1.11", 9080, hbone)


def test_the_node_is_what_istiod_lite_expects_of_a_waypoint() -> None:
    node = WaypointPod.from_env(ENV).node()
    assert node.id == "waypoint~10.244.1.99~waypoint-7d9f-abc.demo~demo.svc.cluster.local"
    subscriber = parse_node_id(node.id, metadata=node.metadata)
    assert (subscriber.proxy_type, subscriber.ip, subscriber.pod, subscriber.waypoint) == (
        "waypoint",
        "10.244.1.99",
        "waypoint-7d9f-abc",
        "demo/waypoint",
    )


@pytest.mark.parametrize("missing", ["POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "WAYPOINT_NAME"])
def test_a_missing_environment_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        WaypointPod.from_env(env)
