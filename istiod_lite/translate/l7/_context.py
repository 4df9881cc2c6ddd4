"""What the route front ends share while one waypoint is translated: destinations and problems."""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.route.v3 import route_components_pb2 as rc

from istiod_lite.translate._fields import FieldError
from istiod_lite.translate.l7.binding import port_protocol
from istiod_lite.translate.l7.destinations import (
    ClusterRef,
    DestinationRules,
    HostIndex,
    LoadBalancer,
    load_balancer,
)
from istiod_lite.translate.model import Warnings
from istiod_lite.translate.services import ServiceInfo, ServicePort
from istiod_lite.view import KubeObject

__all__ = ["RouteContext", "RouteScope", "hash_policies", "is_catch_all"]


@dataclass(frozen=True, slots=True)
class RouteScope:
    """The Service port whose virtual host is being built."""

    service: ServiceInfo
    port: ServicePort


@dataclass(slots=True)
class RouteContext:
    """Destinations and problems of one waypoint's translation."""

    hosts: HostIndex
    rules: DestinationRules
    bound: frozenset[str]
    """FQDNs of the Services this waypoint serves (their clusters are ``inbound-vip|...``)."""
    waypoint_namespace: str
    problems: Warnings
    clusters: dict[str, ClusterRef] = field(default_factory=dict)
    """Every cluster a route points at (and that exists), by name."""

    def problem(self, obj: KubeObject, where: str, message: str) -> None:
        """Records a problem about ``obj``."""
        self.problems.add(obj, where, message)

    def destination(
        self, obj: KubeObject, where: str, service: ServiceInfo, port: int, subset: str = ""
    ) -> str:
        """The cluster name for a destination, recorded as needed; an unknown subset is a problem.

        The name is returned even for an unknown subset or port, so the route keeps its place
        and answers as Envoy does for a missing cluster.
        """
        spec = next((p for p in service.ports if p.port == port), None)
        protocol = "tcp" if spec is not None and port_protocol(spec) == "tcp" else "http"
        ref = ClusterRef(service, port, protocol, subset, inbound=service.hostname in self.bound)
        if spec is None:
            self.problem(obj, where, f"Service {service.namespace}/{service.name} has no port {port}")
            return ref.name
        if subset:
            rule = self.rules.for_service(service, waypoint_namespace=self.waypoint_namespace)
            if rule is None or subset not in rule.subsets:
                found = (
                    f"DestinationRule {rule.obj.namespace}/{rule.obj.name}" if rule else "no DestinationRule"
                )
                self.problem(
                    obj,
                    where,
                    f"subset {subset!r} of {service.hostname} is not defined ({found} for that host"
                    f" defines {', '.join(sorted(rule.subsets)) if rule and rule.subsets else 'no subsets'});"
                    " requests routed to it fail with 503 until it is",
                )
                return ref.name
        self.clusters.setdefault(ref.name, ref)
        return ref.name

    def hash_policy(
        self, service: ServiceInfo, port: int, subset: str = ""
    ) -> list[rc.RouteAction.HashPolicy]:
        """The route hash policy of the destination's consistent-hash load balancer, if any."""
        rule = self.rules.for_service(service, waypoint_namespace=self.waypoint_namespace)
        if rule is None:
            return []
        try:
            lb = load_balancer(
                rule.policy_for(port, subset).get("loadBalancer"), "spec.trafficPolicy.loadBalancer"
            )
        except FieldError:
            return []  # reported once, against the DestinationRule, when its clusters are built
        return hash_policies(lb)


def hash_policies(lb: LoadBalancer) -> list[rc.RouteAction.HashPolicy]:
    """Envoy's route ``hash_policy`` for a consistent-hash load balancer (empty otherwise)."""
    policy = rc.RouteAction.HashPolicy
    if lb.hash_key == "httpHeaderName":
        return [policy(header=policy.Header(header_name=lb.hash_name.lower()))]
    if lb.hash_key == "httpQueryParameterName":
        return [policy(query_parameter=policy.QueryParameter(name=lb.hash_name))]
    if lb.hash_key == "useSourceIp":
        return [policy(connection_properties=policy.ConnectionProperties(source_ip=True))]
    if lb.hash_key == "httpCookie":
        cookie = policy.Cookie(name=lb.hash_name, path=lb.cookie_path)
        if lb.cookie_ttl is not None:
            cookie.ttl.CopyFrom(lb.cookie_ttl)
        return [policy(cookie=cookie)]
    return []


def is_catch_all(match: rc.RouteMatch) -> bool:
    """True for a match every request meets (prefix ``/`` and nothing else)."""
    return (
        match.WhichOneof("path_specifier") == "prefix"
        and match.prefix == "/"
        and not match.headers
        and not match.query_parameters
    )
