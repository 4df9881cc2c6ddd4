"""Clusters and their ClusterLoadAssignments, from DestinationRules and the Services' ready pods.

A cluster is EDS over ADS, named like Istio's (``ClusterRef.name``). Its policy is the
DestinationRule's for that port and subset: the load balancer (LEAST_REQUEST by default;
ROUND_ROBIN, RANDOM; a consistent hash becomes RING_HASH or MAGLEV, the hash key going on the
route), ``connectionPool`` as circuit-breaker thresholds (Istio's default for each is 2^32-1,
not Envoy's 1024) and connection settings, ``outlierDetection`` as Envoy's. HTTP clusters say
which protocol to speak upstream: HTTP/2 for ``http2``/``grpc`` ports, HTTP/1.1 for ``http``,
else the downstream's. Endpoints are the ready pods behind the Service (with a subset's labels),
at the resolved target port, with Istio's ``istio.workload`` metadata for telemetry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2

from istiod_lite.translate._fields import FieldError, mapping
from istiod_lite.translate.l7._envoy import pack
from istiod_lite.translate.l7._values import duration, percentage
from istiod_lite.translate.l7.binding import port_protocol
from istiod_lite.translate.l7.destinations import ClusterRef, DestinationRule, load_balancer
from istiod_lite.translate.model import Warnings
from istiod_lite.view import Json

__all__ = ["PodEndpoint", "build_cluster", "build_load_assignment"]

_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_SOCKET_MATCH = "envoy.transport_socket_match"
_MAX = 2**32 - 1
_CONNECT_TIMEOUT = duration_pb2.Duration(seconds=10)
_LB = {
    "ROUND_ROBIN": cluster_pb2.Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": cluster_pb2.Cluster.LEAST_REQUEST,
    "RANDOM": cluster_pb2.Cluster.RANDOM,
}
_H2_PROTOCOLS = frozenset({"http2", "grpc", "grpc-web", "h2c", "kubernetes.io/h2c"})


@dataclass(frozen=True, slots=True)
class PodEndpoint:
    """A ready pod behind a Service port."""

    ip: str
    port: int
    labels: Mapping[str, str]
    workload: str
    """Istio's endpoint metadata: ``<workload>;<ns>;<canonical name>;<canonical revision>;<cluster id>``."""
    hbone: bool = True
    """Reached through an HBONE tunnel (an enrolled pod); else plain TCP to ``ip:port``."""


def build_cluster(ref: ClusterRef, rule: DestinationRule | None, problems: Warnings) -> cluster_pb2.Cluster:
    """The Cluster for ``ref`` with the DestinationRule's policy (a bad policy field is a problem)."""
    cluster = cluster_pb2.Cluster(
        name=ref.name, type=cluster_pb2.Cluster.EDS, connect_timeout=_CONNECT_TIMEOUT
    )
    cluster.eds_cluster_config.service_name = ref.name
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cluster.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    cluster.circuit_breakers.thresholds.append(_thresholds({}))
    cluster.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST
    options = _protocol_options(ref)
    if rule is not None:
        policy = rule.policy_for(ref.port, ref.subset)
        for key, apply in (
            ("loadBalancer", _load_balancer),
            ("connectionPool", _connection_pool),
            ("outlierDetection", _outlier_detection),
        ):
            if policy.get(key) is None:
                continue
            try:
                apply(policy[key], f"spec.trafficPolicy.{key}", cluster, options)
            except FieldError as exc:
                problems.add(rule.obj, exc.field, f"{exc.problem}; cluster {ref.name} uses the default")
    if options is not None:
        cluster.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(options))
    _metadata(ref, cluster.metadata)
    return cluster


def _protocol_options(ref: ClusterRef) -> upstream_http.HttpProtocolOptions | None:
    if ref.protocol != "http":
        return None
    spec = next((p for p in ref.service.ports if p.port == ref.port), None)
    declared = "" if spec is None else spec.app_protocol_name or spec.name.split("-", 1)[0].lower()
    options = upstream_http.HttpProtocolOptions()
    if declared in _H2_PROTOCOLS:
        options.explicit_http_config.http2_protocol_options.SetInParent()
    elif spec is not None and port_protocol(spec) == "http":
        options.explicit_http_config.http_protocol_options.SetInParent()
    else:
        options.use_downstream_protocol_config.http_protocol_options.SetInParent()
        options.use_downstream_protocol_config.http2_protocol_options.SetInParent()
    return options


def _load_balancer(
    value: Json, field: str, cluster: cluster_pb2.Cluster, _: upstream_http.HttpProtocolOptions | None
) -> None:
    lb = load_balancer(value, field)
    if lb.simple == "PASSTHROUGH":
        raise FieldError(f"{field}.simple", "PASSTHROUGH is not supported by waypoints")
    if not lb.hash_key:
        cluster.lb_policy = _LB[lb.simple]
    elif lb.maglev:
        cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
    else:
        cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
        cluster.ring_hash_lb_config.minimum_ring_size.value = lb.ring_size


def _count(spec: Mapping[str, Json], key: str, field: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError(f"{field}.{key}", f"{value!r} is not a whole number >= 0")
    return value


def _thresholds(limits: Mapping[str, int | None]) -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    def value(key: str) -> wrappers_pb2.UInt32Value:
        found = limits.get(key)
        return wrappers_pb2.UInt32Value(value=_MAX if found is None else found)

    return circuit_breaker_pb2.CircuitBreakers.Thresholds(
        max_connections=value("max_connections"),
        max_pending_requests=value("max_pending_requests"),
        max_requests=value("max_requests"),
        max_retries=value("max_retries"),
    )


def _connection_pool(
    value: Json, field: str, cluster: cluster_pb2.Cluster, options: upstream_http.HttpProtocolOptions | None
) -> None:
    spec = mapping(value, field)
    tcp = mapping(spec.get("tcp"), f"{field}.tcp")
    http = mapping(spec.get("http"), f"{field}.http")
    limits = {
        "max_connections": _count(tcp, "maxConnections", f"{field}.tcp"),
        "max_pending_requests": _count(http, "http1MaxPendingRequests", f"{field}.http"),
        "max_requests": _count(http, "http2MaxRequests", f"{field}.http"),
        "max_retries": _count(http, "maxRetries", f"{field}.http"),
    }
    del cluster.circuit_breakers.thresholds[:]
    cluster.circuit_breakers.thresholds.append(_thresholds(limits))
    if tcp.get("connectTimeout") is not None:
        cluster.connect_timeout.CopyFrom(duration(tcp["connectTimeout"], f"{field}.tcp.connectTimeout"))
    if options is None:
        return
    common = options.common_http_protocol_options
    per_connection = _count(http, "maxRequestsPerConnection", f"{field}.http")
    if per_connection:
        common.max_requests_per_connection.value = per_connection
    idle = http.get("idleTimeout") or tcp.get("idleTimeout")
    if idle is not None:
        common.idle_timeout.CopyFrom(duration(idle, f"{field}.http.idleTimeout"))


def _outlier_detection(
    value: Json, field: str, cluster: cluster_pb2.Cluster, _: upstream_http.HttpProtocolOptions | None
) -> None:
    spec = mapping(value, field)
    outlier = cluster.outlier_detection
    outlier.enforcing_success_rate.value = 0
    errors = _count(spec, "consecutive5xxErrors", field)
    if errors is not None:
        outlier.consecutive_5xx.value = errors
        outlier.enforcing_consecutive_5xx.value = 100 if errors > 0 else 0
    gateway = _count(spec, "consecutiveGatewayErrors", field)
    if gateway:
        outlier.consecutive_gateway_failure.value = gateway
        outlier.enforcing_consecutive_gateway_failure.value = 100
    for key, target in (("interval", outlier.interval), ("baseEjectionTime", outlier.base_ejection_time)):
        if spec.get(key) is not None:
            target.CopyFrom(duration(spec[key], f"{field}.{key}"))
    if spec.get("maxEjectionPercent") is not None:
        outlier.max_ejection_percent.value = int(
            percentage(spec["maxEjectionPercent"], f"{field}.maxEjectionPercent")
        )
    panic = spec.get("minHealthPercent", 0)
    cluster.common_lb_config.healthy_panic_threshold.value = percentage(panic, f"{field}.minHealthPercent")


def _metadata(ref: ClusterRef, metadata: base_pb2.Metadata) -> None:
    istio = struct_pb2.Struct()
    service = {"host": ref.service.hostname, "name": ref.service.name, "namespace": ref.service.namespace}
    istio.update({"services": [service], "default_original_port": ref.port})
    if ref.subset:
        istio.update({"subset": ref.subset})
    metadata.filter_metadata["istio"].CopyFrom(istio)


def _order(endpoint: PodEndpoint) -> tuple[int, bytes, int]:
    """IPv4 before IPv6, then by address and port (text compare would put 10.0.0.10 before 10.0.0.9)."""
    packed = ipaddress.ip_address(endpoint.ip).packed
    return (len(packed), packed, endpoint.port)


def build_load_assignment(
    ref: ClusterRef, endpoints: Sequence[PodEndpoint], subset_labels: Mapping[str, str]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The ClusterLoadAssignment of ``ref``: the pods carrying every ``subset_labels`` label."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=ref.name)
    locality = assignment.endpoints.add()
    for pod in sorted(endpoints, key=_order):
        if any(pod.labels.get(k) != v for k, v in subset_labels.items()):
            continue
        lb_endpoint = locality.lb_endpoints.add(health_status=health_check_pb2.HEALTHY)
        lb_endpoint.endpoint.address.socket_address.CopyFrom(
            address_pb2.SocketAddress(address=pod.ip, port_value=pod.port)
        )
        istio = struct_pb2.Struct()
        istio.update({"workload": pod.workload})
        lb_endpoint.metadata.filter_metadata["istio"].CopyFrom(istio)
        if pod.hbone:  # Istio's marker: this endpoint is reached through an HBONE tunnel (to its 15008)
            lb_endpoint.metadata.filter_metadata[_SOCKET_MATCH].update({"tunnel": "http"})
    if not locality.lb_endpoints:
        del assignment.endpoints[:]
    return assignment
