"""Destinations: host names to Services, cluster names, and the DestinationRule that applies.

Cluster names follow Istio's waypoint: a port of a Service this waypoint serves is
``inbound-vip|<port>|<http or tcp>[/<subset>]|<fqdn>``; any other Service is
``outbound|<port>|<subset>|<fqdn>``. A DestinationRule applies to a Service when its ``host``
names it (short names are read in the rule's namespace; ``*.suffix`` wildcards match); the
first in the waypoint's namespace, then the Service's, then the root namespace is used, the
oldest first within one namespace. Its policy for a cluster is the top-level ``trafficPolicy``
overlaid by the port's ``portLevelSettings``, then by the subset's policy and its port level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

from google.protobuf import duration_pb2

from istiod_lite.translate._fields import FieldError, mapping, sequence, string
from istiod_lite.translate.l7._values import duration
from istiod_lite.translate.services import ServiceInfo
from istiod_lite.view import Json, JsonMap, KubeObject

__all__ = [
    "ClusterRef",
    "DestinationRule",
    "DestinationRules",
    "HostIndex",
    "HostPatterns",
    "LoadBalancer",
    "Subset",
    "expand_host",
    "host_matches",
    "load_balancer",
]

T = TypeVar("T")
_POLICY_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection")
_EMPTY: JsonMap = MappingProxyType({})


def expand_host(host: str, namespace: str, cluster_domain: str) -> str:
    """``reviews`` -> ``reviews.<namespace>.svc.<domain>``; ``reviews.ns`` and ``reviews.ns.svc`` likewise."""
    if "*" in host or host.endswith(f".svc.{cluster_domain}"):
        return host
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.{cluster_domain}"
    if len(parts) == 2:
        return f"{host}.svc.{cluster_domain}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.{cluster_domain}"
    return host


def host_matches(pattern: str, fqdn: str) -> bool:
    """Exact, ``*`` or ``*.suffix`` matching of an expanded host against a Service FQDN."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return fqdn.endswith(pattern[1:])
    return pattern == fqdn


@dataclass(frozen=True, slots=True)
class ClusterRef:
    """One upstream cluster a route or the waypoint needs."""

    service: ServiceInfo
    port: int
    protocol: str = "http"
    subset: str = ""
    inbound: bool = True

    @property
    def name(self) -> str:
        """Istio's cluster name for it."""
        if self.inbound:
            subset = f"/{self.subset}" if self.subset else ""
            return f"inbound-vip|{self.port}|{self.protocol}{subset}|{self.service.hostname}"
        return f"outbound|{self.port}|{self.subset}|{self.service.hostname}"


class HostPatterns(Generic[T]):
    """Items keyed by host pattern (an FQDN, ``*.suffix`` or ``*``), looked up by FQDN in insertion order."""

    def __init__(self) -> None:
        self._exact: dict[str, list[tuple[int, T]]] = {}
        self._wildcards: list[tuple[str, int, T]] = []
        self._count = 0

    def add(self, pattern: str, item: T) -> None:
        """Adds ``item`` under ``pattern``."""
        self._count += 1
        if pattern.startswith("*"):
            self._wildcards.append((pattern, self._count, item))
        else:
            self._exact.setdefault(pattern, []).append((self._count, item))

    def matching(self, fqdn: str) -> list[T]:
        """The items whose pattern matches ``fqdn``, in the order they were added."""
        found = list(self._exact.get(fqdn, ()))
        found += [(n, item) for pattern, n, item in self._wildcards if host_matches(pattern, fqdn)]
        return [item for _, item in sorted(found, key=lambda entry: entry[0])]


@dataclass(frozen=True, slots=True)
class HostIndex:
    """Services by FQDN, for resolving destination hosts."""

    by_hostname: Mapping[str, ServiceInfo]
    cluster_domain: str

    def resolve(self, host: str, namespace: str) -> ServiceInfo | None:
        """The Service a destination host names (short names read in ``namespace``), or None."""
        return self.by_hostname.get(expand_host(host, namespace, self.cluster_domain))


@dataclass(frozen=True, slots=True)
class Subset:
    """A DestinationRule subset: a name, pod labels and its own traffic policy."""

    name: str
    labels: Mapping[str, str]
    policy: JsonMap


_SIMPLE = {"ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "UNSPECIFIED"}
_HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """A DestinationRule ``loadBalancer``: a simple policy, or a consistent hash on one key."""

    simple: str = "LEAST_REQUEST"
    hash_key: str = ""
    """``httpHeaderName``, ``httpCookie``, ``useSourceIp`` or ``httpQueryParameterName``; "" if none."""
    hash_name: str = ""
    cookie_path: str = ""
    cookie_ttl: duration_pb2.Duration | None = None
    ring_size: int = 1024
    maglev: bool = False


def load_balancer(value: Json, field: str) -> LoadBalancer:
    """Reads a ``loadBalancer`` (None reads as Istio's default, LEAST_REQUEST)."""
    spec = mapping(value, field)
    if spec.get("consistentHash") is None:
        simple = string(spec.get("simple"), f"{field}.simple") or "LEAST_REQUEST"
        if simple not in _SIMPLE:
            raise FieldError(f"{field}.simple", f"{simple!r} is not one of {', '.join(sorted(_SIMPLE))}")
        return LoadBalancer(simple="LEAST_REQUEST" if simple in ("LEAST_CONN", "UNSPECIFIED") else simple)
    where = f"{field}.consistentHash"
    chash = mapping(spec["consistentHash"], where)
    keys = [k for k in _HASH_KEYS if chash.get(k) not in (None, False, "")]
    if len(keys) != 1:
        raise FieldError(where, f"set exactly one of {', '.join(_HASH_KEYS)}")
    key = keys[0]
    ring = mapping(chash.get("ringHash"), f"{where}.ringHash").get("minimumRingSize") or chash.get(
        "minimumRingSize"
    )
    if ring is not None and (isinstance(ring, bool) or not isinstance(ring, int) or ring <= 0):
        raise FieldError(f"{where}.ringHash.minimumRingSize", f"{ring!r} is not a positive whole number")
    name, path, ttl = "", "", None
    if key == "httpCookie":
        cookie = mapping(chash[key], f"{where}.httpCookie")
        name = string(cookie.get("name"), f"{where}.httpCookie.name")
        path = string(cookie.get("path"), f"{where}.httpCookie.path")
        if not name:
            raise FieldError(f"{where}.httpCookie.name", "is required")
        if cookie.get("ttl") is not None:
            ttl = duration(cookie["ttl"], f"{where}.httpCookie.ttl")
    elif key != "useSourceIp":
        name = string(chash[key], f"{where}.{key}")
    return LoadBalancer(
        simple="",
        hash_key=key,
        hash_name=name,
        cookie_path=path,
        cookie_ttl=ttl,
        ring_size=int(ring or 1024),
        maglev=chash.get("maglev") is not None,
    )


def _port_level(policy: JsonMap, port: int, field: str) -> JsonMap:
    for i, raw in enumerate(sequence(policy.get("portLevelSettings"), f"{field}.portLevelSettings")):
        setting = mapping(raw, f"{field}.portLevelSettings[{i}]")
        number = mapping(setting.get("port"), f"{field}.portLevelSettings[{i}].port").get("number")
        if number == port:
            return setting
    return _EMPTY


def _overlay(base: dict[str, Json], policy: JsonMap) -> None:
    for key in _POLICY_FIELDS:
        if policy.get(key) is not None:
            base[key] = policy[key]


class DestinationRule:
    """One parsed DestinationRule."""

    def __init__(self, obj: KubeObject, cluster_domain: str) -> None:
        self.obj = obj
        spec = obj.spec
        self.host = expand_host(string(spec.get("host"), "spec.host"), obj.namespace, cluster_domain)
        self.policy = mapping(spec.get("trafficPolicy"), "spec.trafficPolicy")
        subsets: dict[str, Subset] = {}
        for i, raw in enumerate(sequence(spec.get("subsets"), "spec.subsets")):
            field = f"spec.subsets[{i}]"
            item = mapping(raw, field)
            name = string(item.get("name"), f"{field}.name")
            labels = mapping(item.get("labels"), f"{field}.labels")
            if not name:
                raise FieldError(f"{field}.name", "every subset needs a name")
            if not all(isinstance(v, str) for v in labels.values()):
                raise FieldError(f"{field}.labels", "label values must be strings")
            policy = mapping(item.get("trafficPolicy"), f"{field}.trafficPolicy")
            subsets[name] = Subset(name, labels, policy)  # type: ignore[arg-type]
        self.subsets: Mapping[str, Subset] = subsets

    def policy_for(self, port: int, subset: str = "") -> Mapping[str, Json]:
        """The effective ``loadBalancer``/``connectionPool``/``outlierDetection`` for one cluster."""
        effective: dict[str, Json] = {}
        _overlay(effective, self.policy)
        _overlay(effective, _port_level(self.policy, port, "spec.trafficPolicy"))
        chosen = self.subsets.get(subset)
        if chosen is not None:
            _overlay(effective, chosen.policy)
            _overlay(effective, _port_level(chosen.policy, port, "spec.subsets[].trafficPolicy"))
        return effective


class DestinationRules:
    """The DestinationRules of a view, parsed once; problems of unreadable ones go to ``problems``."""

    def __init__(
        self,
        objects: Iterable[KubeObject],
        *,
        cluster_domain: str,
        root_namespace: str,
        problems: list[tuple[KubeObject, FieldError]],
    ) -> None:
        self._rules: HostPatterns[DestinationRule] = HostPatterns()
        self._root = root_namespace
        self._chosen: dict[tuple[str, str, str], DestinationRule | None] = {}
        for obj in sorted(objects, key=lambda o: (o.creation_timestamp, o.namespace, o.name)):
            try:
                rule = DestinationRule(obj, cluster_domain)
            except FieldError as exc:
                problems.append((obj, exc))
                continue
            self._rules.add(rule.host, rule)

    def for_service(self, service: ServiceInfo, *, waypoint_namespace: str) -> DestinationRule | None:
        """The rule that applies to ``service`` seen from the waypoint, or None."""
        key = (service.hostname, service.namespace, waypoint_namespace)
        if key not in self._chosen:
            self._chosen[key] = self._choose(service, waypoint_namespace)
        return self._chosen[key]

    def _choose(self, service: ServiceInfo, waypoint_namespace: str) -> DestinationRule | None:
        matching = self._rules.matching(service.hostname)
        for namespace in (waypoint_namespace, service.namespace, self._root):
            for rule in matching:
                if rule.obj.namespace == namespace:
                    return rule
        return None
