"""The waypoint's configuration: Envoy v3 RouteConfigurations, Clusters and ClusterLoadAssignments,
compiled into what the proxy uses per request. From ``--local-config`` (Envoy's own JSON/YAML, the
``resources`` list of a discovery response, so the same file loads into a real Envoy) or, later,
from the Delta ADS stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from mesh.errors import ConfigError
from mesh.l7.balancing import Endpoint, EndpointPicker
from mesh.l7.resilience import Limits, OutlierPolicy
from mesh.l7.router import RouteConfigError, Router, compile_routes

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINTS_TYPE",
    "ROUTES_TYPE",
    "WaypointConfig",
    "endpoints_of",
    "load_local_config",
]

ROUTES_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
KNOWN_EXTENSIONS = (previous_hosts_pb2, http_protocol_options_pb2)
"""Types istiod_lite packs into ``Any`` fields (retry host predicates, upstream HTTP options):
imported so the waypoint can decode and dump them (the fault filter's comes with mesh.l7)."""
_TYPES: Mapping[str, type[Message]] = {
    ROUTES_TYPE: route_pb2.RouteConfiguration,
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINTS_TYPE: endpoint_pb2.ClusterLoadAssignment,
}
_SOCKET_MATCH = "envoy.transport_socket_match"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
"""Istio marks an endpoint reached through an HBONE tunnel with ``{tunnel: http}`` under this filter."""


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    """How a cluster's upstream is used: its circuit breakers, outlier detection and connections."""

    limits: Limits = field(default_factory=Limits)
    outlier: OutlierPolicy | None = None
    http2: bool = False
    http2_if_downstream: bool = False
    """Envoy's ``use_downstream_protocol_config``: HTTP/2 upstream when the client spoke it."""
    max_requests_per_connection: int = 0
    """0: no limit."""
    idle_timeout: float = 3600.0
    """Seconds an idle upstream connection is kept (Envoy: 1 h)."""

    @classmethod
    def of(cls, cluster: cluster_pb2.Cluster) -> ClusterPolicy:
        """The policy of ``cluster`` (its upstream HTTP protocol options included)."""
        options = http_protocol_options_pb2.HttpProtocolOptions()
        packed = cluster.typed_extension_protocol_options.get(_HTTP_OPTIONS)
        if packed is not None:
            packed.Unpack(options)
        explicit = options.explicit_http_config
        http2 = explicit.HasField("http2_protocol_options")
        downstream = options.use_downstream_protocol_config.HasField("http2_protocol_options")
        common = options.common_http_protocol_options
        idle = (
            common.idle_timeout.ToTimedelta().total_seconds() if common.HasField("idle_timeout") else 3600.0
        )
        per_connection = common.max_requests_per_connection.value
        return cls(Limits.of(cluster), OutlierPolicy.of(cluster), http2, downstream, per_connection, idle)


@dataclass(slots=True)
class WaypointConfig:
    """Compiled routes (one router per RouteConfiguration, by name) and each cluster's endpoints."""

    routers: dict[str, Router] = field(default_factory=dict)
    clusters: dict[str, EndpointPicker] = field(default_factory=dict)
    policies: dict[str, ClusterPolicy] = field(default_factory=dict)
    resources: dict[str, dict[str, Message]] = field(default_factory=dict)
    """The resources as received (for ``/config_dump``), by type URL and name."""

    @classmethod
    def build(cls, resources: Iterable[Message]) -> WaypointConfig:
        """Compiles ``resources``; raises ConfigError naming the resource it cannot apply."""
        config = cls()
        assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
        for resource in resources:
            type_url = f"type.googleapis.com/{resource.DESCRIPTOR.full_name}"
            name = str(getattr(resource, "name", "") or getattr(resource, "cluster_name", ""))
            config.resources.setdefault(type_url, {})[name] = resource
            if isinstance(resource, route_pb2.RouteConfiguration):
                try:
                    config.routers[name] = compile_routes(resource)
                except RouteConfigError as exc:
                    raise ConfigError(f"RouteConfiguration {name!r}: {exc.message}", hint=exc.hint) from None
            elif isinstance(resource, endpoint_pb2.ClusterLoadAssignment):
                assignments[name] = resource
        for name, cluster in config.resources.get(CLUSTER_TYPE, {}).items():
            assert isinstance(cluster, cluster_pb2.Cluster)
            assignment = assignments.get(name) or cluster.load_assignment
            config.clusters[name] = EndpointPicker(cluster.lb_policy, endpoints_of(assignment, name))
            config.policies[name] = ClusterPolicy.of(cluster)
        return config


def endpoints_of(assignment: endpoint_pb2.ClusterLoadAssignment, cluster: str) -> list[Endpoint]:
    """The endpoints of ``cluster``'s assignment, each marked ``hbone`` when its metadata says it is
    reached through an HBONE tunnel; raises ConfigError for an endpoint without an address."""
    endpoints = []
    for locality in assignment.endpoints:
        for lb in locality.lb_endpoints:
            address = lb.endpoint.address.socket_address
            if not address.address or not address.port_value:
                raise ConfigError(
                    f"cluster {cluster!r}: an endpoint without socket_address address and port_value",
                    hint="give each endpoint an address and a port",
                )
            match = lb.metadata.filter_metadata.get(_SOCKET_MATCH)
            hbone = (
                match is not None
                and "tunnel" in match.fields
                and match.fields["tunnel"].string_value == "http"
            )
            endpoints.append(Endpoint(address.address, address.port_value, hbone=hbone))
    return endpoints


def load_local_config(path: Path) -> WaypointConfig:
    """Reads Envoy v3 resources from a JSON or YAML file: ``{"resources": [{"@type": ..., ...}]}``,
    the form of an Envoy discovery response (and of its file-based xDS)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="check --local-config") from None
    try:
        document: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid JSON/YAML: {exc}", hint="fix the file") from None
    if not isinstance(document, dict) or not isinstance(document.get("resources"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'resources' list", hint="see docs/waypoints.md")
    resources = []
    for i, raw in enumerate(document["resources"]):
        type_url = str(raw.get("@type")) if isinstance(raw, dict) else ""
        if type_url not in _TYPES:
            raise ConfigError(
                f"{path}: resources[{i}] has @type {type_url!r}",
                hint=f"use one of {', '.join(sorted(_TYPES))}",
            )
        packed = any_pb2.Any()
        try:
            json_format.ParseDict(raw, packed)
        except json_format.ParseError as exc:
            raise ConfigError(f"{path}: resources[{i}]: {exc}", hint="fix the field it names") from None
        message = _TYPES[type_url]()
        packed.Unpack(message)
        resources.append(message)
    return WaypointConfig.build(resources)
