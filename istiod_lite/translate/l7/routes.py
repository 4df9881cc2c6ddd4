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
from collections.abc import Sequence

from envoy.config.route.v3 import route_components_pb2 as rc

from istiod_lite.translate._fields import FieldError, sequence, string
from istiod_lite.translate.l7._context import RouteContext, RouteScope
from istiod_lite.translate.l7._envoy import default_retry_policy, disabled_timeout
from istiod_lite.translate.l7.binding import port_protocol
from istiod_lite.translate.l7.destinations import expand_host, host_matches
from istiod_lite.translate.l7.httproute import attaches_to, http_route_routes
from istiod_lite.translate.l7.virtualservice import virtual_service_routes
from istiod_lite.translate.services import ServiceInfo, ServicePort
from istiod_lite.view import KubeObject

__all__ = ["http_ports", "portless_port", "service_domains", "virtual_host"]


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


def virtual_host(
    scope: RouteScope,
    service_obj: KubeObject,
    ctx: RouteContext,
    *,
    http_routes: Sequence[KubeObject],
    virtual_services: Sequence[KubeObject],
) -> rc.VirtualHost:
    """The virtual host of one Service port, with its routes."""
    service = scope.service
    vhost = rc.VirtualHost(
        name=f"{service.hostname}:{scope.port.port}",
        domains=service_domains(service, scope.port.port, waypoint_namespace=ctx.waypoint_namespace),
    )
    attached = [r for r in http_routes if _attached(r, scope, ctx)]
    applicable = [vs for vs in virtual_services if _applies(vs, service, ctx)]
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


def _attached(route: KubeObject, scope: RouteScope, ctx: RouteContext) -> bool:
    try:
        return attaches_to(route, scope)
    except FieldError as exc:
        ctx.problem(route, exc.field, f"{exc.problem}; the HTTPRoute is ignored")
        return False


def _applies(vs: KubeObject, service: ServiceInfo, ctx: RouteContext) -> bool:
    """A VirtualService in the Service's or the waypoint's namespace, bound to the mesh, naming the host."""
    if vs.namespace not in (service.namespace, ctx.waypoint_namespace):
        return False
    try:
        gateways = sequence(vs.spec.get("gateways"), "spec.gateways")
        hosts = [string(h, "spec.hosts[]") for h in sequence(vs.spec.get("hosts"), "spec.hosts")]
    except FieldError as exc:
        ctx.problem(vs, exc.field, f"{exc.problem}; the VirtualService is ignored")
        return False
    if gateways and "mesh" not in gateways:
        return False
    domain = ctx.hosts.cluster_domain
    return any(host_matches(expand_host(h, vs.namespace, domain), service.hostname) for h in hosts)


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
