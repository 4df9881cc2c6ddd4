"""ztunnel's local config file (when run without istiod): Istio ztunnel's camelCase YAML format.

Three lists, ``workloads``, ``services`` and ``policies`` (istio-ambient-facts.md section 5).
Every key is checked: an unknown key or a bad value is an error naming the file, the item and the
field, so a typo never silently weakens a policy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mesh.errors import ConfigError
from mesh.identity.principals import MatchKind
from mesh.model import (
    DEFAULT_TRUST_DOMAIN,
    Action,
    Authorization,
    IpAddress,
    IpNetwork,
    Match,
    PortMapping,
    Scope,
    Service,
    ServiceAccountMatch,
    StringMatch,
    TunnelProtocol,
    Workload,
)
from ztunnel.state import ProxyState

__all__ = ["load_local_config", "parse_local_config"]

_T = TypeVar("_T")
_WORKLOAD_KEYS = {
    "uid", "name", "namespace", "serviceAccount", "workloadIps", "protocol", "node", "network",
    "trustDomain", "canonicalName", "canonicalRevision", "workloadName", "workloadType", "status",
    "clusterId", "authorizationPolicies", "services", "hostname",
}  # fmt: skip
_SERVICE_KEYS = {"name", "namespace", "hostname", "vips", "ports", "subjectAltNames"}
_POLICY_KEYS = {"name", "namespace", "scope", "action", "rules", "dryRun"}
_MATCH_KEYS = {
    "namespaces", "notNamespaces", "principals", "notPrincipals", "sourceIps", "notSourceIps",
    "destinationIps", "notDestinationIps", "destinationPorts", "notDestinationPorts",
    "serviceAccounts", "notServiceAccounts",
}  # fmt: skip


class _Where:
    def __init__(self, source: str, path: str = "") -> None:
        self.source = source
        self.path = path

    def at(self, part: str | int) -> _Where:
        suffix = f"[{part}]" if isinstance(part, int) else (f".{part}" if self.path else part)
        return _Where(self.source, self.path + suffix)

    def error(self, problem: str) -> ConfigError:
        return ConfigError(
            f"{self.source}: {self.path or 'top level'}: {problem}", hint="fix the local config file"
        )


def load_local_config(path: Path) -> ProxyState:
    """Reads and validates the file at ``path``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read local config {path}: {exc.strerror}", hint="check LOCAL_XDS_PATH"
        ) from None
    return parse_local_config(text, source=str(path))


def parse_local_config(text: str, *, source: str = "<inline>") -> ProxyState:
    """Parses the YAML ``text`` into a ProxyState."""
    import yaml  # noqa: PLC0415 - here, not at the top: a ztunnel fed by istiod never loads it (0.8 MB)

    where = _Where(source)
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise where.error(f"not valid YAML: {exc}") from None
    top = _mapping(document, where, {"workloads", "services", "policies"})
    return ProxyState.build(
        workloads=_items(top, "workloads", where, _workload),
        services=_items(top, "services", where, _service),
        policies=_items(top, "policies", where, _policy),
    )


def _items(top: Mapping[str, Any], key: str, where: _Where, convert: Callable[[Any, _Where], _T]) -> list[_T]:
    values = top.get(key)
    if values is None:
        return []
    if not isinstance(values, list):
        raise where.at(key).error("must be a list")
    return [convert(item, where.at(key).at(i)) for i, item in enumerate(values)]


def _mapping(value: Any, where: _Where, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise where.error("must be a mapping")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise where.error(f"unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(allowed))}")
    return value


def _str(item: Mapping[str, Any], key: str, where: _Where, default: str = "") -> str:
    value = item.get(key, default)
    if not isinstance(value, str):
        raise where.at(key).error("must be a string")
    return value


def _ip(value: Any, where: _Where) -> IpAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise where.error(f"{value!r} is not an IP address") from None


def _port(value: Any, where: _Where) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise where.error(f"{value!r} is not a TCP port (1-65535)")
    return value


def _ports(value: Any, where: _Where) -> tuple[PortMapping, ...]:
    if not isinstance(value, dict):
        raise where.error("must map service ports to target ports, e.g. {80: 8080}")
    # Keys may be quoted ("80"), as JSON requires.
    pairs = [(int(k) if isinstance(k, str) and k.isdigit() else k, v) for k, v in value.items()]
    return tuple(PortMapping(_port(k, where), _port(v, where.at(str(k)))) for k, v in sorted(pairs))


def _workload(raw: Any, where: _Where) -> Workload:
    item = _mapping(raw, where, _WORKLOAD_KEYS)
    protocol = _str(item, "protocol", where, "TCP")
    if protocol not in ("HBONE", "TCP"):
        raise where.at("protocol").error(f"{protocol!r} is neither HBONE nor TCP")
    status = _str(item, "status", where, "Healthy")
    if status not in ("Healthy", "Unhealthy"):
        raise where.at("status").error(f"{status!r} is neither Healthy nor Unhealthy")
    services = item.get("services") or {}
    if not isinstance(services, dict):
        raise where.at("services").error('must map "ns/hostname" to port mappings')
    name = _str(item, "name", where)
    namespace = _str(item, "namespace", where)
    if not name or not namespace:
        raise where.error("name and namespace are required")
    return Workload(
        uid=_str(item, "uid", where)
        or f"{_str(item, 'clusterId', where, 'Kubernetes')}//Pod/{namespace}/{name}",
        name=name,
        namespace=namespace,
        addresses=tuple(_ip(ip, where.at("workloadIps")) for ip in item.get("workloadIps") or []),
        service_account=_str(item, "serviceAccount", where, "default"),
        trust_domain=_str(item, "trustDomain", where, DEFAULT_TRUST_DOMAIN),
        node=_str(item, "node", where),
        network=_str(item, "network", where),
        protocol=TunnelProtocol.HBONE if protocol == "HBONE" else TunnelProtocol.NONE,
        canonical_name=_str(item, "canonicalName", where),
        canonical_revision=_str(item, "canonicalRevision", where),
        workload_name=_str(item, "workloadName", where),
        workload_type=_str(item, "workloadType", where, "deployment").lower(),
        cluster_id=_str(item, "clusterId", where, "Kubernetes"),
        healthy=status == "Healthy",
        services=tuple(
            sorted((str(k), _ports(v, where.at("services").at(str(k)))) for k, v in services.items())
        ),
        authorization_policies=tuple(str(p) for p in item.get("authorizationPolicies") or []),
    )


def _service(raw: Any, where: _Where) -> Service:
    item = _mapping(raw, where, _SERVICE_KEYS)
    vips = []
    for i, vip in enumerate(item.get("vips") or []):
        network, sep, address = str(vip).rpartition("/")
        if not sep:
            raise where.at("vips").at(i).error(f'{vip!r} must be "<network>/<ip>" (network may be empty)')
        vips.append((network, _ip(address, where.at("vips").at(i))))
    hostname = _str(item, "hostname", where)
    namespace = _str(item, "namespace", where)
    if not hostname or not namespace:
        raise where.error("hostname and namespace are required")
    return Service(
        name=_str(item, "name", where, hostname.split(".", 1)[0]),
        namespace=namespace,
        hostname=hostname,
        vips=tuple(vips),
        ports=_ports(item.get("ports") or {}, where.at("ports")),
        subject_alt_names=tuple(str(s) for s in item.get("subjectAltNames") or []),
    )


def _policy(raw: Any, where: _Where) -> Authorization:
    item = _mapping(raw, where, _POLICY_KEYS)
    scopes = {s.value: s for s in Scope}
    actions = {a.value: a for a in Action}
    scope = _str(item, "scope", where, "Namespace")
    action = _str(item, "action", where, "Allow")
    if scope not in scopes:
        raise where.at("scope").error(f"{scope!r} is not one of {', '.join(scopes)}")
    if action not in actions:
        raise where.at("action").error(f"{action!r} is not one of {', '.join(actions)}")
    rules = item.get("rules") or []
    if not isinstance(rules, list) or not all(isinstance(r, list) for r in rules):
        raise where.at("rules").error(
            "must be a list of rules, each a list of clauses, each a list of matches"
        )
    converted = tuple(
        tuple(
            tuple(_match(m, where.at("rules").at(r).at(c).at(i)) for i, m in enumerate(_list(clause, where)))
            for c, clause in enumerate(rule)
        )
        for r, rule in enumerate(rules)
    )
    dry_run = item.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise where.at("dryRun").error("must be true or false")
    return Authorization(
        _str(item, "name", where),
        _str(item, "namespace", where),
        scopes[scope],
        actions[action],
        converted,
        dry_run,
    )


def _list(value: Any, where: _Where) -> list[Any]:
    if not isinstance(value, list):
        raise where.error("a clause must be a list of matches")
    return value


def _match(raw: Any, where: _Where) -> Match:
    item = _mapping(raw, where, _MATCH_KEYS)

    def each(key: str, convert: Callable[[Any, _Where], _T]) -> tuple[_T, ...]:
        values = item.get(key) or []
        if not isinstance(values, list):
            raise where.at(key).error("must be a list")
        return tuple(convert(v, where.at(key).at(i)) for i, v in enumerate(values))

    return Match(
        namespaces=each("namespaces", _string_match),
        not_namespaces=each("notNamespaces", _string_match),
        principals=each("principals", _string_match),
        not_principals=each("notPrincipals", _string_match),
        source_ips=each("sourceIps", _network),
        not_source_ips=each("notSourceIps", _network),
        destination_ips=each("destinationIps", _network),
        not_destination_ips=each("notDestinationIps", _network),
        destination_ports=each("destinationPorts", _port),
        not_destination_ports=each("notDestinationPorts", _port),
        service_accounts=each("serviceAccounts", _account),
        not_service_accounts=each("notServiceAccounts", _account),
    )


def _string_match(value: Any, where: _Where) -> StringMatch:
    if value == "Presence" or (isinstance(value, dict) and list(value) == ["Presence"]):
        return StringMatch.presence()
    if isinstance(value, dict) and len(value) == 1:
        ((kind, text),) = value.items()
        if kind in ("Exact", "Prefix", "Suffix") and isinstance(text, str):
            return StringMatch(MatchKind(kind.lower()), text)
    raise where.error(f"{value!r} must be {{Exact|Prefix|Suffix: text}} or Presence")


def _network(value: Any, where: _Where) -> IpNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise where.error(f"{value!r} is not an IP address or CIDR") from None


def _account(value: Any, where: _Where) -> ServiceAccountMatch:
    item = _mapping(value, where, {"namespace", "serviceAccount"})
    return ServiceAccountMatch(_str(item, "namespace", where), _str(item, "serviceAccount", where))
