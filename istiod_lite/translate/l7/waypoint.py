"""``translate_waypoint``: a cluster view and one waypoint Gateway in, that waypoint's Envoy config out."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from istiod_lite.translate._fields import FieldError
from istiod_lite.translate.l7._context import RouteContext, RouteScope
from istiod_lite.translate.l7.authn import apply_request_authentication
from istiod_lite.translate.l7.authz import apply_authorization
from istiod_lite.translate.l7.binding import (
    api_group,
    not_a_waypoint,
    object_waypoint,
    port_protocol,
    waypoint_for,
)
from istiod_lite.translate.l7.clusters import PodEndpoint, build_cluster, build_load_assignment
from istiod_lite.translate.l7.destinations import ClusterRef, DestinationRules, HostIndex
from istiod_lite.translate.l7.ratelimit import apply_rate_limits
from istiod_lite.translate.l7.routes import RouteSources, http_ports, virtual_host
from istiod_lite.translate.l7.telemetry import apply_tracing, tracing_for
from istiod_lite.translate.model import TranslateOptions, TranslationWarning, Warnings
from istiod_lite.translate.services import ServiceInfo, parse_service, ready_endpoints
from istiod_lite.translate.workloads import (
    canonical_service,
    container_ports,
    pod_ips,
    speaks_hbone,
    workload_name_and_type,
)
from istiod_lite.view import ClusterView, KubeObject, ObjectKey

__all__ = [
    "CLUSTER_TYPE_URL",
    "ENDPOINT_TYPE_URL",
    "ROUTE_TYPE_URL",
    "WaypointConfig",
    "translate_waypoint",
]

ROUTE_TYPE_URL = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE_URL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_ISTIO_NETWORKING = "networking.istio.io"
_GATEWAY_API = "gateway.networking.k8s.io"


@dataclass(frozen=True, slots=True)
class WaypointConfig:
    """One waypoint's Envoy v3 resources, by type URL then resource name, and the problems found.

    The route configuration is named ``<namespace>/<gateway name>``; its virtual hosts are named
    ``<service fqdn>:<port>``; clusters and load assignments share Istio's cluster names.
    Messages must not be mutated.
    """

    namespace: str
    name: str
    resources: Mapping[str, Mapping[str, Message]]
    problems: tuple[TranslationWarning, ...] = ()
    services: tuple[str, ...] = field(default=())
    """FQDNs of the Services that use this waypoint."""

    @property
    def route_configuration(self) -> route_pb2.RouteConfiguration | None:
        """The waypoint's RouteConfiguration (None when the Gateway is not a waypoint)."""
        found = self.resources.get(ROUTE_TYPE_URL, {}).get(f"{self.namespace}/{self.name}")
        return found if isinstance(found, route_pb2.RouteConfiguration) else None


def translate_waypoint(
    view: ClusterView, gateway: KubeObject, *, options: TranslateOptions | None = None
) -> WaypointConfig:
    """Translates the routes, clusters and endpoints of the Services that use ``gateway``.

    Pure. Anything that cannot be translated is a problem naming its object and field; the
    rest still translates. A Gateway that is not a waypoint gives no resources and one problem.
    """
    options = options or TranslateOptions()
    problems = Warnings()
    reason = not_a_waypoint(gateway)
    if reason is not None:
        field = "spec.gatewayClassName" if "gatewayClassName" in reason else "apiVersion"
        problems.add(gateway, field, reason)
        return WaypointConfig(gateway.namespace, gateway.name, MappingProxyType({}), problems.frozen())
    services = _services(view, options.cluster_domain)
    bound = _bound(view, gateway, services, problems)
    ctx = _context(view, gateway, services=services, bound=bound, options=options, problems=problems)
    sources = RouteSources(
        _of_group(view.http_routes.values(), _GATEWAY_API, problems),
        _of_group(view.virtual_services.values(), _ISTIO_NETWORKING, problems),
        ctx,
    )
    route_config = route_pb2.RouteConfiguration(name=f"{gateway.namespace}/{gateway.name}")
    route_config.validate_clusters.value = False
    for obj, info in sorted(bound, key=lambda b: b[1].hostname):
        for port in http_ports(info):
            route_config.virtual_hosts.append(virtual_host(RouteScope(info, port), obj, ctx, sources))
        _serve_clusters(info, ctx)
    apply_tracing(
        route_config, tracing_for(view.telemetries.values(), gateway, options.root_namespace, problems)
    )
    apply_rate_limits(route_config, view.local_rate_limits.values(), options.cluster_domain, problems)
    apply_authorization(
        route_config, view.authorization_policies.values(), gateway, options.cluster_domain, problems
    )
    apply_request_authentication(
        route_config, view.request_authentications.values(), gateway, options.cluster_domain, problems
    )
    clusters, assignments = _clusters(view, ctx, services, options)
    resources = {
        ROUTE_TYPE_URL: MappingProxyType({route_config.name: route_config}),
        CLUSTER_TYPE_URL: MappingProxyType(dict(sorted(clusters.items()))),
        ENDPOINT_TYPE_URL: MappingProxyType(dict(sorted(assignments.items()))),
    }
    return WaypointConfig(
        gateway.namespace,
        gateway.name,
        MappingProxyType(resources),
        tuple(dict.fromkeys(problems.frozen())),
        tuple(sorted(ctx.bound)),
    )


def _bound(
    view: ClusterView,
    gateway: KubeObject,
    services: Mapping[ObjectKey, tuple[KubeObject, ServiceInfo]],
    problems: Warnings,
) -> list[tuple[KubeObject, ServiceInfo]]:
    """The Services that use this waypoint (none unless it takes Services: waypoint-for)."""
    mode = waypoint_for(gateway)
    if mode is None:
        message = "istio.io/waypoint-for must be service, workload, all or none; treated as service"
        problems.add(gateway, "metadata.labels", message)
        mode = "service"
    if mode not in ("service", "all"):
        return []
    return [(obj, info) for obj, info in services.values() if object_waypoint(view, obj) == gateway.key]


def _context(
    view: ClusterView,
    gateway: KubeObject,
    *,
    services: Mapping[ObjectKey, tuple[KubeObject, ServiceInfo]],
    bound: list[tuple[KubeObject, ServiceInfo]],
    options: TranslateOptions,
    problems: Warnings,
) -> RouteContext:
    """Destinations (every Service, the DestinationRules) and problems, shared by the route builders."""
    rule_problems: list[tuple[KubeObject, FieldError]] = []
    rules = DestinationRules(
        _of_group(view.destination_rules.values(), _ISTIO_NETWORKING, problems),
        cluster_domain=options.cluster_domain,
        root_namespace=options.root_namespace,
        problems=rule_problems,
    )
    for obj, exc in rule_problems:
        problems.add(obj, exc.field, f"{exc.problem}; the DestinationRule is ignored")
    return RouteContext(
        hosts=HostIndex({info.hostname: info for _, info in services.values()}, options.cluster_domain),
        rules=rules,
        bound=frozenset(info.hostname for _, info in bound),
        waypoint_namespace=gateway.namespace,
        problems=problems,
    )


def _of_group(objects: Iterable[KubeObject], group: str, problems: Warnings) -> list[KubeObject]:
    """The objects of ``group``; another group's object of the same kind is reported and skipped."""
    out = []
    for obj in objects:
        if api_group(obj) == group:
            out.append(obj)
        elif obj.kind != "Gateway":  # Istio's own Gateway kind shares the name; not ours to judge
            problems.add(
                obj, "apiVersion", f"{obj.body.get('apiVersion')!r} is not a {group} version; ignored"
            )
    return out


def _services(view: ClusterView, cluster_domain: str) -> dict[ObjectKey, tuple[KubeObject, ServiceInfo]]:
    """Every readable Service (the ztunnel translation reports unreadable ones)."""
    out = {}
    for obj in view.services.values():
        try:
            info = parse_service(obj, cluster_domain=cluster_domain)
        except FieldError:
            continue
        if info is not None:
            out[obj.key] = (obj, info)
    return out


def _serve_clusters(info: ServiceInfo, ctx: RouteContext) -> None:
    """The clusters a served Service always has: per port (http and/or tcp) and per subset."""
    rule = ctx.rules.for_service(info, waypoint_namespace=ctx.waypoint_namespace)
    subsets = ["", *sorted(rule.subsets)] if rule is not None else [""]
    for port in info.ports:
        protocol = port_protocol(port)
        kinds = {"http": ("http",), "tcp": ("tcp",), "unknown": ("http", "tcp")}.get(protocol, ())
        for kind in kinds:
            for subset in subsets:
                ref = ClusterRef(info, port.port, kind, subset, inbound=True)
                ctx.clusters.setdefault(ref.name, ref)


def _clusters(
    view: ClusterView,
    ctx: RouteContext,
    services: Mapping[ObjectKey, tuple[KubeObject, ServiceInfo]],
    options: TranslateOptions,
) -> tuple[dict[str, Message], dict[str, Message]]:
    infos = {key: info for key, (_, info) in services.items()}
    endpoints = _endpoints(view, infos, options)
    clusters: dict[str, Message] = {}
    assignments: dict[str, Message] = {}
    for name, ref in ctx.clusters.items():
        rule = ctx.rules.for_service(ref.service, waypoint_namespace=ctx.waypoint_namespace)
        clusters[name] = build_cluster(ref, rule, ctx.problems)
        labels = rule.subsets[ref.subset].labels if rule is not None and ref.subset in rule.subsets else {}
        pods = endpoints.get((ref.service.namespace, ref.service.name, ref.port), [])
        assignments[name] = build_load_assignment(ref, pods, labels)
    return clusters, assignments


def _endpoints(
    view: ClusterView, infos: Mapping[ObjectKey, ServiceInfo], options: TranslateOptions
) -> dict[tuple[str, str, int], list[PodEndpoint]]:
    """Ready pods per (namespace, service, port), at the resolved target port."""
    out: dict[tuple[str, str, int], list[PodEndpoint]] = {}
    scratch = Warnings()  # EndpointSlice problems are reported by the ztunnel translation
    for pod_key, entries in ready_endpoints(view, infos, scratch).items():
        pod = view.pods.get(pod_key)
        if pod is None:
            continue
        try:
            ips, named = pod_ips(pod), container_ports(pod)
        except FieldError:
            continue
        if not ips:
            continue
        workload, _ = workload_name_and_type(pod, view)
        canonical, revision = canonical_service(pod.labels, workload)
        meta = f"{workload};{pod.namespace};{canonical};{revision};{options.cluster_id}"
        hbone = speaks_hbone(pod)
        ip = str(ipaddress.ip_address(ips[0]))
        for info, uid in entries:
            if uid and pod.uid and uid != pod.uid:
                continue
            for port in info.ports:
                target = named.get(port.target_port_name, 0) if port.target_port_name else port.target_port
                if target:
                    key = (info.namespace, info.name, port.port)
                    out.setdefault(key, []).append(PodEndpoint(ip, target, pod.labels, meta, hbone))
    return out
