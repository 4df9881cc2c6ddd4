"""Services -> ``istio.workload.Service``, and which pods are their ready endpoints.

A Service's resource name is ``<ns>/<name>.<ns>.svc.<cluster domain>``; its addresses are its
cluster IPs (none for a headless Service); each port carries the service port and the numeric
target port (0 when the target port is named: it is resolved per pod from the pod's container
ports, and a pod without that named port does not get that port). ExternalName Services are
not sent.

Endpoints come from the Service's EndpointSlices (label ``kubernetes.io/service-name``): a pod
is in a Service's map only while it is a ready endpoint there (``conditions.ready`` true or
unset) referenced by ``targetRef``. Istio also lists not-ready selected pods, marked UNHEALTHY;
the effect on routing is the same, and EndpointSlices are the one place both the lab and
Kubernetes keep readiness per Service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from istiod_lite.translate._fields import (
    FieldError,
    ip_bytes,
    mapping,
    port,
    sequence,
    string,
    strings,
)
from istiod_lite.translate.model import TranslateOptions, Warnings
from istiod_lite.view import ClusterView, Json, JsonMap, KubeObject, ObjectKey
from mesh.api.istio.workload import workload_pb2 as pb

__all__ = [
    "ServiceInfo",
    "ServicePort",
    "parse_service",
    "ready_endpoints",
    "service_address",
    "slice_endpoints",
]

_SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_APP_PROTOCOLS = {"http": pb.HTTP11, "http2": pb.HTTP2, "kubernetes.io/h2c": pb.HTTP2, "grpc": pb.GRPC}
_IP_FAMILIES: dict[tuple[str, ...], pb.IPFamilies.ValueType] = {
    ("IPv4",): pb.IPV4_ONLY,
    ("IPv6",): pb.IPV6_ONLY,
}


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One Service port; ``target_port`` is 0 when ``target_port_name`` names a container port."""

    port: int
    target_port: int
    target_port_name: str = ""
    name: str = ""
    app_protocol: pb.AppProtocol.ValueType = pb.UNKNOWN
    app_protocol_name: str = ""
    """``appProtocol`` as written, lowercased (waypoints choose HTTP or TCP handling by it)."""
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A validated Service."""

    namespace: str
    name: str
    hostname: str
    cluster_ips: tuple[bytes, ...]
    ports: tuple[ServicePort, ...]
    ip_families: pb.IPFamilies.ValueType = pb.AUTOMATIC

    @property
    def key(self) -> str:
        """The resource name, ``<ns>/<hostname>``."""
        return f"{self.namespace}/{self.hostname}"


def _service_port(raw: Json, field: str) -> ServicePort:
    item = mapping(raw, field)
    number = port(item.get("port"), f"{field}.port")
    target = item.get("targetPort")
    name = string(item.get("name"), f"{field}.name")
    app_name = string(item.get("appProtocol"), f"{field}.appProtocol").lower()
    protocol = string(item.get("protocol"), f"{field}.protocol") or "TCP"
    common = ServicePort(
        number,
        number,
        name=name,
        app_protocol=_APP_PROTOCOLS.get(app_name, pb.UNKNOWN),
        app_protocol_name=app_name,
        protocol=protocol,
    )
    if target is None:
        return common
    if isinstance(target, str) and not target.isdigit():
        return replace(common, target_port=0, target_port_name=target)
    return replace(common, target_port=port(target, f"{field}.targetPort"))


def _cluster_ips(spec: JsonMap) -> list[str]:
    ips = list(strings(spec.get("clusterIPs"), "spec.clusterIPs"))
    single = string(spec.get("clusterIP"), "spec.clusterIP")
    if not ips and single:
        ips = [single]
    return [ip for ip in ips if ip != "None"]


def _ip_families(families: tuple[str, ...], ips: tuple[bytes, ...]) -> pb.IPFamilies.ValueType:
    if not families:
        families = tuple(sorted({"IPv4" if len(ip) == 4 else "IPv6" for ip in ips}))
    if set(families) == {"IPv4", "IPv6"}:
        return pb.DUAL
    return _IP_FAMILIES.get(families, pb.AUTOMATIC)


def parse_service(obj: KubeObject, *, cluster_domain: str) -> ServiceInfo | None:
    """Validates a Service; None for ExternalName. Raises ``FieldError`` naming the bad field."""
    spec = obj.spec
    if string(spec.get("type"), "spec.type") == "ExternalName":
        return None
    ips = tuple(ip_bytes(ip, "spec.clusterIP") for ip in _cluster_ips(spec))
    ports = tuple(
        _service_port(p, f"spec.ports[{i}]") for i, p in enumerate(sequence(spec.get("ports"), "spec.ports"))
    )
    families = _ip_families(strings(spec.get("ipFamilies"), "spec.ipFamilies"), ips)
    hostname = f"{obj.name}.{obj.namespace}.svc.{cluster_domain}"
    return ServiceInfo(obj.namespace, obj.name, hostname, ips, ports, families)


def service_address(
    info: ServiceInfo, options: TranslateOptions, *, waypoint: pb.GatewayAddress | None = None
) -> pb.Address:
    """The ``Address{service}`` resource for one Service (with its waypoint, if it uses one)."""
    service = pb.Service(
        name=info.name,
        namespace=info.namespace,
        hostname=info.hostname,
        addresses=[pb.NetworkAddress(network=options.network, address=ip) for ip in info.cluster_ips],
        ports=[
            pb.Port(service_port=p.port, target_port=p.target_port, app_protocol=p.app_protocol)
            for p in info.ports
        ],
        ip_families=info.ip_families,
    )
    if waypoint is not None:
        service.waypoint.CopyFrom(waypoint)
    return pb.Address(service=service)


def slice_endpoints(es: KubeObject) -> list[tuple[ObjectKey, str]]:
    """(pod key, pod uid or "") of the ready, pod-backed endpoints of one EndpointSlice."""
    body = es.body
    if string(body.get("addressType"), "addressType") == "FQDN":
        return []
    found = []
    for i, raw in enumerate(sequence(body.get("endpoints"), "endpoints")):
        endpoint = mapping(raw, f"endpoints[{i}]")
        ready = mapping(endpoint.get("conditions"), f"endpoints[{i}].conditions").get("ready")
        ref = mapping(endpoint.get("targetRef"), f"endpoints[{i}].targetRef")
        if ready is False or string(ref.get("kind"), f"endpoints[{i}].targetRef.kind") != "Pod":
            continue
        namespace = string(ref.get("namespace"), f"endpoints[{i}].targetRef.namespace") or es.namespace
        name = string(ref.get("name"), f"endpoints[{i}].targetRef.name")
        if not name:
            raise FieldError(f"endpoints[{i}].targetRef.name", "must be set")
        found.append(((namespace, name), string(ref.get("uid"), f"endpoints[{i}].targetRef.uid")))
    return found


def ready_endpoints(
    view: ClusterView,
    services: Mapping[ObjectKey, ServiceInfo],
    warnings: Warnings,
    *,
    parse: Callable[[KubeObject], list[tuple[ObjectKey, str]]] = slice_endpoints,
) -> dict[ObjectKey, list[tuple[ServiceInfo, str]]]:
    """For each pod key: the Services it is a ready endpoint of, with the targetRef uid seen.

    ``parse`` reads one EndpointSlice (``slice_endpoints``, or a memoized form of it).
    """
    index: dict[ObjectKey, list[tuple[ServiceInfo, str]]] = {}
    for es in view.endpoint_slices.values():
        service = services.get((es.namespace, es.labels.get(_SERVICE_NAME_LABEL, "")))
        if service is None:
            continue
        try:
            endpoints = parse(es)
        except FieldError as exc:
            warnings.add(es, exc.field, f"{exc.problem}; the EndpointSlice is skipped")
            continue
        for pod_key, uid in endpoints:
            entries = index.setdefault(pod_key, [])
            if all(s is not service for s, _ in entries):
                entries.append((service, uid))
    return index
