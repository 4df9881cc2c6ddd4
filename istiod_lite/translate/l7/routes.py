"""The waypoint's virtual hosts: one per HTTP port of each Service it serves, routes chosen by rule.

A virtual host ``<fqdn>:<port>`` answers to the Service's names with that port
(``<fqdn>:<port>``, ``<name>.<ns>.svc:<port>``, ``<name>.<ns>:<port>``, ``<name>:<port>`` when the
Service is in the waypoint's namespace) and to each cluster IP as ``<vip>:<port>`` (the authority
ztunnel puts on the CONNECT). The names without a port (a ``Host`` header without one) go to port
80 when the Service has it as an HTTP port, else to its first HTTP port, so no domain is listed
twice in one RouteConfiguration (Envoy refuses that).

Which routes (the rule, documented in docs/waypoints.md): HTTPRoutes attached to the Service
(and port) win. VirtualServices for the host apply only when no HTTPRoute is attached; when
both exist, each VirtualService is reported as ignored for that host. Several VirtualServices
for one host are concatenated oldest first (Istio's IST0109 warns about that). Without any,
the route ``default`` forwards everything to the Service with Istio's default retry policy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2 as rc

from istiod_lite.translate._fields import FieldError, sequence, string
from istiod_lite.translate.l7._context import RouteContext, RouteScope
from istiod_lite.translate.l7._envoy import default_retry_policy, disabled_timeout
from istiod_lite.translate.l7.binding import port_protocol
from istiod_lite.translate.l7.destinations import HostPatterns, expand_host
from istiod_lite.translate.l7.httproute import http_route_routes, service_parents
from istiod_lite.translate.l7.virtualservice import virtual_service_routes
from istiod_lite.translate.services import ServiceInfo, ServicePort
from istiod_lite.view import Json, KubeObject

__all__ = ["RouteSources", "http_ports", "portless_port", "service_domains", "virtual_host"]


def http_ports(service: ServiceInfo) -> list[ServicePort]:
    """The Service ports a waypoint serves as HTTP (declared HTTP, or unknown and sniffed)."""
    return [p for p in service.ports if port_protocol(p) in ("http", "unknown")]


def portless_port(service: ServiceInfo) -> int | None:
    """The HTTP port whose virtual host also takes the Service's names without a port."""
    ports = [p.port for p in http_ports(service)]
    if not ports:
        return None
    return 80 if 80 in ports else ports[0]


def service_domains(service: ServiceInfo, port: int, *, waypoint_namespace: str) -> list[str]:
    """The ``domains`` of the virtual host for one Service port."""
    short = f"{service.name}.{service.namespace}"
    names = [service.hostname, f"{short}.svc", short]
    if service.namespace == waypoint_namespace:
        names.append(service.name)
    ips = [_ip_text(ip) for ip in service.cluster_ips]
    domains = [f"{name}:{port}" for name in names] + [f"{ip}:{port}" for ip in ips]
    if portless_port(service) == port:
        domains += names + ips
    return domains


def _ip_text(packed: bytes) -> str:
    address = ipaddress.ip_address(packed)
    return f"[{address}]" if address.version == 6 else str(address)


class RouteSources:
    """The HTTPRoutes and VirtualServices of a view, read once and indexed by the Service they route.

    An unreadable ``parentRefs``, ``hosts`` or ``gateways`` is reported once and the object ignored.
    """

    def __init__(
        self, http_routes: Iterable[KubeObject], virtual_services: Iterable[KubeObject], ctx: RouteContext
    ) -> None:
        self._routes: dict[tuple[str, str], list[tuple[KubeObject, Json]]] = {}
        for route in sorted(http_routes, key=_age):
            try:
                parents = service_parents(route)
            except FieldError as exc:
                ctx.problem(route, exc.field, f"{exc.problem}; the HTTPRoute is ignored")
                continue
            for namespace, name, port in parents:
                self._routes.setdefault((namespace, name), []).append((route, port))
        self._services: HostPatterns[KubeObject] = HostPatterns()
        domain = ctx.hosts.cluster_domain
        for vs in sorted(virtual_services, key=_age):
            try:
                gateways = sequence(vs.spec.get("gateways"), "spec.gateways")
                hosts = [string(h, "spec.hosts[]") for h in sequence(vs.spec.get("hosts"), "spec.hosts")]
            except FieldError as exc:
                ctx.problem(vs, exc.field, f"{exc.problem}; the VirtualService is ignored")
                continue
            if gateways and "mesh" not in gateways:
                continue  # bound to ingress gateways only, not to the mesh
            for host in dict.fromkeys(expand_host(h, vs.namespace, domain) for h in hosts):
                self._services.add(host, vs)

    def http_routes(self, scope: RouteScope) -> list[KubeObject]:
        """The HTTPRoutes attached to the Service of ``scope`` (and its port, when a parentRef names one)."""
        found = self._routes.get((scope.service.namespace, scope.service.name), ())
        port = scope.port.port
        return _unique(route for route, wanted in found if wanted is None or wanted == port)

    def virtual_services(self, service: ServiceInfo, *, waypoint_namespace: str) -> list[KubeObject]:
        """The VirtualServices for the Service's host, in its or the waypoint's namespace, oldest first."""
        namespaces = (service.namespace, waypoint_namespace)
        found = [vs for vs in self._services.matching(service.hostname) if vs.namespace in namespaces]
        return sorted(_unique(found), key=_age)


def _unique(objects: Iterable[KubeObject]) -> list[KubeObject]:
    """Each object once, in order (objects hash by identity here: their bodies are not hashable)."""
    return list({id(obj): obj for obj in objects}.values())


def _age(obj: KubeObject) -> tuple[str, str, str]:
    return (obj.creation_timestamp, obj.namespace, obj.name)


def virtual_host(
    scope: RouteScope, service_obj: KubeObject, ctx: RouteContext, sources: RouteSources
) -> rc.VirtualHost:
    """The virtual host of one Service port, with its routes."""
    service = scope.service
    vhost = rc.VirtualHost(
        name=f"{service.hostname}:{scope.port.port}",
        domains=service_domains(service, scope.port.port, waypoint_namespace=ctx.waypoint_namespace),
    )
    attached = sources.http_routes(scope)
    applicable = sources.virtual_services(service, waypoint_namespace=ctx.waypoint_namespace)
    routes: list[rc.Route] = []
    if attached:
        names = ", ".join(f"{r.namespace}/{r.name}" for r in attached)
        for vs in applicable:
            ctx.problem(
                vs,
                "spec.hosts",
                f"HTTPRoute {names} also routes {service.hostname}; HTTPRoutes win over VirtualServices"
                " for the same Service, so this VirtualService is ignored for it",
            )
        routes = http_route_routes(attached, scope, ctx)
    else:
        for index, vs in enumerate(applicable):
            if index:
                first = applicable[0]
                ctx.problem(
                    vs,
                    "spec.hosts",
                    f"VirtualService {first.namespace}/{first.name} also routes {service.hostname};"
                    " their rules are used oldest first (Istio IST0109: one VirtualService per host)",
                )
            found, catch_all = virtual_service_routes(vs, scope, ctx)
            routes.extend(found)
            if catch_all:
                break
    vhost.routes.extend(routes or [default_route(scope, service_obj, ctx)])
    return vhost


def default_route(scope: RouteScope, service_obj: KubeObject, ctx: RouteContext) -> rc.Route:
    """Everything to the Service, as Istio's waypoint does without routes for it."""
    service, port = scope.service, scope.port.port
    route = rc.Route(name="default", match=rc.RouteMatch(prefix="/"))
    action = route.route
    action.cluster = ctx.destination(service_obj, "spec.ports", service, port)
    hashes = ctx.hash_policy(service, port)
    action.hash_policy.extend(hashes)
    action.timeout.CopyFrom(disabled_timeout())
    action.max_stream_duration.grpc_timeout_header_max.CopyFrom(disabled_timeout())
    action.retry_policy.CopyFrom(default_retry_policy(consistent_hash=bool(hashes)))
    route.decorator.operation = f"{service.hostname}:{port}/*"
    return route
