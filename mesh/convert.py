"""Conversion of xDS resources (Istio's protobuf) into the frozen model, validating every field.

A resource that fails conversion is NACKed by the agent and its last good value kept.

Fields this build does not know (a newer istiod adds some in most releases) follow a fail-safe
version-skew policy (catalogue test 22, docs/mixed-version-mesh.md), each one reported to the
caller's ``on_ignored(type, field)``:

- Workload and Service: ignored, the rest applies (as Istio's ztunnel does).
- Authorization: an ALLOW clause carrying anything we do not understand (an unknown field, or
  ``Match.extensions``) never matches, so it admits nobody extra; a DENY clause with one matches as
  if it were absent, so it denies at least as much. Unknown fields elsewhere in a policy, and
  ``Authorization.extensions``, are ignored.

Unknown enum values in fields we act on are still rejected: there is no safe reading of them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from mesh.api.istio.security import authorization_pb2 as authz_pb
from mesh.api.istio.workload import workload_pb2 as wl_pb
from mesh.errors import MeshError
from mesh.identity.principals import MatchKind
from mesh.model import (
    DEFAULT_TRUST_DOMAIN,
    Action,
    Authorization,
    GatewayRef,
    IpAddress,
    IpNetwork,
    LoadBalancerMode,
    Match,
    PortMapping,
    Scope,
    Service,
    ServiceAccountMatch,
    StringMatch,
    TunnelProtocol,
    Workload,
)

__all__ = ["IgnoredFieldReporter", "ResourceError", "address_from_proto", "authorization_from_proto"]

IgnoredFieldReporter = Callable[[str, str], None]
"""Called with (message type, field path) for each field a conversion ignored, e.g.
``("istio.workload.Workload", "#99")``; unknown fields appear as ``#<field number>``."""

_WORKLOAD_TYPES = {0: "deployment", 1: "cronjob", 2: "pod", 3: "job"}
_LB_MODES = {
    0: LoadBalancerMode.UNSPECIFIED,
    1: LoadBalancerMode.STRICT,
    2: LoadBalancerMode.FAILOVER,
    3: LoadBalancerMode.PASSTHROUGH,
}


class ResourceError(MeshError):
    """An xDS resource is invalid; the message names the resource and the field."""

    def __init__(self, resource: str, field: str, problem: str) -> None:
        self.resource = resource
        self.field = field
        super().__init__(
            f"resource {resource!r}: field {field}: {problem}",
            hint="the control plane sent a resource this agent cannot apply; its last good value stays",
        )


def address_from_proto(
    name: str, address: wl_pb.Address, on_ignored: IgnoredFieldReporter | None = None
) -> Workload | Service:
    """Converts an ``istio.workload.Address`` (workload or service); unknown fields are ignored and
    reported to ``on_ignored``."""
    kind = address.WhichOneof("type")
    if kind == "workload":
        _report(address.workload, on_ignored)
        return _workload(name, address.workload)
    if kind == "service":
        _report(address.service, on_ignored)
        return _service(name, address.service)
    _report(address, on_ignored)
    raise ResourceError(name, "type", "neither workload nor service is set")


def authorization_from_proto(
    name: str, policy: authz_pb.Authorization, on_ignored: IgnoredFieldReporter | None = None
) -> Authorization:
    """Converts an ``istio.security.Authorization`` with the fail-safe skew policy of the module
    docstring; every field it could not honour is reported to ``on_ignored``."""
    scope = {0: Scope.GLOBAL, 1: Scope.NAMESPACE, 2: Scope.WORKLOAD_SELECTOR}.get(policy.scope)
    action = {0: Action.ALLOW, 1: Action.DENY}.get(policy.action)
    if scope is None:
        raise ResourceError(name, "scope", f"unknown value {policy.scope}")
    if action is None:
        raise ResourceError(name, "action", f"unknown value {policy.action}")
    if not policy.name or not policy.namespace:
        raise ResourceError(name, "name/namespace", "both must be set")
    not_understood = _not_understood(policy)
    if on_ignored is not None:
        for path in not_understood:
            on_ignored(policy.DESCRIPTOR.full_name, path)
    rules = tuple(
        tuple(
            _clause(name, f"rules[{r}].clauses[{c}]", clause, action)
            for c, clause in enumerate(_clauses(rule, action))
        )
        for r, rule in enumerate(policy.rules)
    )
    return Authorization(policy.name, policy.namespace, scope, action, rules, policy.dry_run)


_NEVER_MATCHES: tuple[Match, ...] = ()
"""A clause with no matches: matches are OR'ed, so it never matches."""

_ALWAYS_MATCHES: tuple[Match, ...] = (Match(),)
"""A clause whose one match constrains nothing: it always matches."""


def _clauses(rule: authz_pb.Rule, action: Action) -> list[authz_pb.Clause]:
    """A rule's clauses; an ALLOW rule with unknown fields of its own gets one that never matches
    (clauses are AND'ed, so the rule cannot match)."""
    clauses = list(rule.clauses)
    if action is Action.ALLOW and len(UnknownFieldSet(rule)):
        clauses.append(authz_pb.Clause(matches=[authz_pb.Match(extensions=[wl_pb.Extension()])]))
    return clauses


def _clause(name: str, field: str, clause: authz_pb.Clause, action: Action) -> tuple[Match, ...]:
    matches = tuple(_match(name, f"{field}.matches[{m}]", match) for m, match in enumerate(clause.matches))
    if not _not_understood(clause):
        return matches
    if action is Action.ALLOW:
        return _NEVER_MATCHES
    # DENY: what we do not understand counts as satisfied, so the clause denies at least as much.
    return matches or _ALWAYS_MATCHES


def _not_understood(message: Message, path: str = "") -> list[str]:
    """Paths of what this build cannot honour in ``message``: unknown fields (``#<number>``) and
    ``extensions`` (configuration for features we do not have), at any depth; no indices, so the
    paths suit a metric label."""
    found = [
        f"{path}.#{field.field_number}" if path else f"#{field.field_number}"
        for field in list(UnknownFieldSet(message))  # type: ignore[call-overload]  # iterable, stubs say not
    ]
    for descriptor, value in message.ListFields():
        child = f"{path}.{descriptor.name}" if path else descriptor.name
        if descriptor.name == "extensions":
            found.append(child)
        elif descriptor.message_type is None:
            continue
        elif descriptor.message_type.GetOptions().map_entry:
            for item in value.values():
                if isinstance(item, Message):
                    found.extend(_not_understood(item, child))
        elif descriptor.is_repeated:
            for item in value:
                found.extend(_not_understood(item, child))
        else:
            found.extend(_not_understood(value, child))
    return list(dict.fromkeys(found))


def _report(message: Message, on_ignored: IgnoredFieldReporter | None) -> None:
    if on_ignored is None:
        return
    for path in _not_understood(message):
        if not path.endswith("extensions"):  # a known field we do not use is not "ignored"
            on_ignored(message.DESCRIPTOR.full_name, path)


def _workload(name: str, w: wl_pb.Workload) -> Workload:
    if not w.uid:
        raise ResourceError(name, "workload.uid", "must be set")
    if w.tunnel_protocol not in (wl_pb.NONE, wl_pb.HBONE):
        raise ResourceError(name, "workload.tunnel_protocol", f"unsupported value {w.tunnel_protocol}")
    if w.workload_type not in _WORKLOAD_TYPES:
        raise ResourceError(name, "workload.workload_type", f"unknown value {w.workload_type}")
    services = tuple(
        sorted(
            (key, tuple(_port(name, f"workload.services[{key}]", p) for p in ports.ports))
            for key, ports in w.services.items()
        )
    )
    return Workload(
        uid=w.uid,
        name=w.name,
        namespace=w.namespace,
        addresses=tuple(_ip(name, "workload.addresses", raw) for raw in w.addresses),
        service_account=w.service_account or "default",
        trust_domain=w.trust_domain or DEFAULT_TRUST_DOMAIN,
        node=w.node,
        network=w.network,
        protocol=TunnelProtocol.HBONE if w.tunnel_protocol == wl_pb.HBONE else TunnelProtocol.NONE,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_name=w.workload_name,
        workload_type=_WORKLOAD_TYPES[w.workload_type],
        cluster_id=w.cluster_id or "Kubernetes",
        healthy=w.status == wl_pb.HEALTHY,
        services=services,
        authorization_policies=tuple(w.authorization_policies),
        waypoint=_gateway(name, "workload.waypoint", w.waypoint) if w.HasField("waypoint") else None,
    )


def _service(name: str, s: wl_pb.Service) -> Service:
    if not s.hostname or not s.namespace:
        raise ResourceError(name, "service.hostname/namespace", "both must be set")
    if s.load_balancing.mode not in _LB_MODES:
        raise ResourceError(name, "service.load_balancing.mode", f"unknown value {s.load_balancing.mode}")
    return Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname,
        vips=tuple((a.network, _ip(name, "service.addresses", a.address)) for a in s.addresses),
        ports=tuple(_port(name, "service.ports", p) for p in s.ports),
        subject_alt_names=tuple(s.subject_alt_names),
        waypoint=_gateway(name, "service.waypoint", s.waypoint) if s.HasField("waypoint") else None,
        lb_mode=_LB_MODES[s.load_balancing.mode],
        only_healthy=s.load_balancing.health_policy != wl_pb.LoadBalancing.ALLOW_ALL,
    )


def _gateway(name: str, field: str, g: wl_pb.GatewayAddress) -> GatewayRef:
    port = g.hbone_mtls_port or 15008
    if not 0 < port < 65536:
        raise ResourceError(name, f"{field}.hbone_mtls_port", f"{port} is not a TCP port")
    kind = g.WhichOneof("destination")
    if kind == "address":
        return GatewayRef(_ip(name, f"{field}.address", g.address.address), "", "", port)
    if kind == "hostname":
        return GatewayRef(None, g.hostname.hostname, g.hostname.namespace, port)
    raise ResourceError(name, field, "neither address nor hostname is set")


def _port(name: str, field: str, p: wl_pb.Port) -> PortMapping:
    for value in (p.service_port, p.target_port):
        if value > 65535:
            raise ResourceError(name, field, f"{value} is not a TCP port")
    if p.service_port == 0:
        raise ResourceError(name, field, "service_port must be set")
    return PortMapping(p.service_port, p.target_port)


def _ip(name: str, field: str, raw: bytes) -> IpAddress:
    if len(raw) not in (4, 16):
        raise ResourceError(name, field, f"{len(raw)} bytes is neither IPv4 (4) nor IPv6 (16)")
    return ipaddress.ip_address(raw)


def _cidr(name: str, field: str, a: authz_pb.Address) -> IpNetwork:
    address = _ip(name, field, a.address)
    if a.length > address.max_prefixlen:
        raise ResourceError(name, field, f"prefix length {a.length} is too long for {address}")
    try:
        return ipaddress.ip_network(f"{address}/{a.length}", strict=False)
    except ValueError as exc:
        raise ResourceError(name, field, str(exc)) from None


def _string(name: str, field: str, s: authz_pb.StringMatch) -> StringMatch:
    kind = s.WhichOneof("match_type")
    if kind is None:
        raise ResourceError(name, field, "empty string match")
    if kind == "presence":
        return StringMatch.presence()
    return StringMatch(MatchKind(kind), str(getattr(s, kind)))


def _match(name: str, field: str, m: authz_pb.Match) -> Match:
    def strings(attr: str) -> tuple[StringMatch, ...]:
        return tuple(_string(name, f"{field}.{attr}", s) for s in getattr(m, attr))

    def cidrs(attr: str) -> tuple[IpNetwork, ...]:
        return tuple(_cidr(name, f"{field}.{attr}", a) for a in getattr(m, attr))

    def ports(attr: str) -> tuple[int, ...]:
        values = tuple(int(p) for p in getattr(m, attr))
        bad = [p for p in values if not 0 < p < 65536]
        if bad:
            raise ResourceError(name, f"{field}.{attr}", f"{bad[0]} is not a TCP port")
        return values

    def accounts(attr: str) -> tuple[ServiceAccountMatch, ...]:
        return tuple(ServiceAccountMatch(a.namespace, a.serviceAccount) for a in getattr(m, attr))

    return Match(
        namespaces=strings("namespaces"),
        not_namespaces=strings("not_namespaces"),
        principals=strings("principals"),
        not_principals=strings("not_principals"),
        source_ips=cidrs("source_ips"),
        not_source_ips=cidrs("not_source_ips"),
        destination_ips=cidrs("destination_ips"),
        not_destination_ips=cidrs("not_destination_ips"),
        destination_ports=ports("destination_ports"),
        not_destination_ports=ports("not_destination_ports"),
        service_accounts=accounts("service_accounts"),
        not_service_accounts=accounts("not_service_accounts"),
    )
