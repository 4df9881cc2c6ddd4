"""AuthorizationPolicy with ``targetRefs`` -> Envoy HTTP RBAC for the waypoint, shaped as Istio's
``pilot/pkg/security/authz`` builder does it.

A policy targets the waypoint (``kind: Gateway``, the waypoint's name, its namespace: every virtual
host) or Services (``kind: Service`` in the policy's namespace: their virtual hosts). Its action
chooses the RBAC filter (mesh.l7.authz.RBAC_FILTERS): DENY, AUDIT (Envoy's LOG) or ALLOW. CUSTOM is
not supported and is reported. Each rule is one RBAC policy ``ns[<ns>]-policy[<name>]-rule[<i>]``:
its ``to`` entries are OR'ed permissions, each the AND of its fields; its ``from`` entries are
OR'ed principals likewise; each ``when`` condition is AND'ed to every permission (operation keys)
or principal (source keys). A ``not*`` field is a ``not_rule``/``not_id`` of the OR of its values.

Fields: hosts (``:authority``, case-insensitive, with or without a port), ports, methods, paths
(exact, ``/x/*`` prefix ``/x/``, ``*x`` suffix, ``*`` any, ``{*}``/``{**}`` templates), principals
(``spiffe://`` + value), namespaces, ipBlocks (direct peer), remoteIpBlocks, requestPrincipals and
``request.auth.claims[...]`` (``istio_authn`` metadata, set by RequestAuthentication).

Fail closed: a policy that cannot be read is reported, and becomes one rule that matches every
request when it is a DENY (deny all) and no rule when it is an ALLOW (allow nothing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from google.protobuf import json_format

from istiod_lite.translate._fields import FieldError, check_fields, mapping, sequence, string, strings
from istiod_lite.translate.l7._envoy import pack
from istiod_lite.translate.model import Warnings
from istiod_lite.view import Json, KubeObject
from mesh.l7.authz import RBAC_FILTERS

__all__ = ["apply_authorization", "covers", "policy_targets", "waypoint_rbac"]

_ACTIONS = {"": rbac_pb2.RBAC.ALLOW, "ALLOW": rbac_pb2.RBAC.ALLOW, "DENY": rbac_pb2.RBAC.DENY,
            "AUDIT": rbac_pb2.RBAC.LOG}  # fmt: skip
_FILTER_OF = dict(
    zip((rbac_pb2.RBAC.DENY, rbac_pb2.RBAC.LOG, rbac_pb2.RBAC.ALLOW), RBAC_FILTERS, strict=True)
)
_SOURCE = ("principals", "namespaces", "ipBlocks", "remoteIpBlocks", "requestPrincipals")
_OPERATION = ("hosts", "ports", "methods", "paths")
_SOURCE_FIELDS = frozenset(_SOURCE + tuple(f"not{k[0].upper()}{k[1:]}" for k in _SOURCE))
_OPERATION_FIELDS = frozenset(_OPERATION + tuple(f"not{k[0].upper()}{k[1:]}" for k in _OPERATION))
_SOURCE_WHEN = ("source.ip", "remote.ip", "source.namespace", "source.principal", "request.auth.principal")
_TEMPLATE = re.compile(r"\{\*\*?\}")

Dict = dict[str, Any]


def policy_targets(obj: KubeObject, gateway: KubeObject) -> set[str] | None:
    """The Service names a policy (or RequestAuthentication) targets in this waypoint (an empty
    set: every Service), or None when it targets nothing here."""
    spec = mapping(obj.spec, "spec")
    refs = [*sequence(spec.get("targetRefs"), "spec.targetRefs")]
    if spec.get("targetRef") is not None:
        refs.append(spec.get("targetRef"))
    services: set[str] = set()
    whole = False
    for i, raw in enumerate(refs):
        ref = mapping(raw, f"spec.targetRefs[{i}]")
        kind, name = string(ref.get("kind"), f"spec.targetRefs[{i}].kind"), string(ref.get("name"), "name")
        if kind == "Gateway" and name == gateway.name and obj.namespace == gateway.namespace:
            whole = True
        elif kind == "Service":
            services.add(name)
    if whole:
        return set()
    return services or None


def waypoint_rbac(obj: KubeObject, problems: Warnings) -> tuple[int, list[rbac_pb2.Policy]]:
    """One policy's action and RBAC policies by rule (a fail-closed stand-in when unreadable)."""
    spec = mapping(obj.spec, "spec")
    action_name = string(spec.get("action"), "spec.action")
    action = _ACTIONS.get(action_name, rbac_pb2.RBAC.DENY)
    try:
        if action_name not in _ACTIONS:
            raise FieldError(
                "spec.action", f"{action_name!r} is not supported in the waypoint (ALLOW, DENY, AUDIT)"
            )
        rules = [
            _rule(raw, f"spec.rules[{i}]", obj.namespace)
            for i, raw in enumerate(sequence(spec.get("rules"), "spec.rules"))
        ]
    except FieldError as exc:
        problems.add(obj, exc.field, f"{exc.problem}; the policy fails closed")
        everything = rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(any=True)], principals=[rbac_pb2.Principal(any=True)]
        )
        return action, [everything] if action == rbac_pb2.RBAC.DENY else []
    return action, rules


def _rule(raw: Json, field: str, namespace: str) -> rbac_pb2.Policy:
    rule = mapping(raw, field)
    check_fields(rule, frozenset({"from", "to", "when"}), field)
    permissions = [
        _operation(e, f"{field}.to[{i}]") for i, e in enumerate(sequence(rule.get("to"), f"{field}.to"))
    ]
    principals = [
        _source(e, f"{field}.from[{i}]") for i, e in enumerate(sequence(rule.get("from"), f"{field}.from"))
    ]
    for i, raw_when in enumerate(sequence(rule.get("when"), f"{field}.when")):
        key, matcher = _when(raw_when, f"{field}.when[{i}]")
        if key in _SOURCE_WHEN:
            principals = [{"and_ids": {"ids": [p, matcher]}} for p in principals or [{"any": True}]]
        else:
            permissions = [{"and_rules": {"rules": [p, matcher]}} for p in permissions or [{"any": True}]]
    policy = {"permissions": permissions or [{"any": True}], "principals": principals or [{"any": True}]}
    return json_format.ParseDict(policy, rbac_pb2.Policy())


def _fields(item: Any, order: tuple[str, ...], build: Any, field: str, *, ids: bool) -> Dict:
    parts = []
    for key in order:
        for negate, name in ((False, key), (True, f"not{key[0].upper()}{key[1:]}")):
            values = strings(item.get(name), f"{field}.{name}")
            if not values:
                continue
            matchers = [build(key, v, f"{field}.{name}[{i}]") for i, v in enumerate(values)]
            either = {"or_ids": {"ids": matchers}} if ids else {"or_rules": {"rules": matchers}}
            parts.append(({"not_id": either} if ids else {"not_rule": either}) if negate else either)
    if not parts:
        return {"any": True}
    return {"and_ids": {"ids": parts}} if ids else {"and_rules": {"rules": parts}}


def _operation(raw: Json, field: str) -> Dict:
    item = mapping(raw, field)
    check_fields(item, frozenset({"operation"}), field)
    op = mapping(item.get("operation"), f"{field}.operation")
    check_fields(op, _OPERATION_FIELDS, f"{field}.operation")
    return _fields(op, _OPERATION, _operation_value, f"{field}.operation", ids=False)


def _source(raw: Json, field: str) -> Dict:
    item = mapping(raw, field)
    check_fields(item, frozenset({"source"}), field)
    src = mapping(item.get("source"), f"{field}.source")
    check_fields(src, _SOURCE_FIELDS, f"{field}.source")
    return _fields(src, _SOURCE, _source_value, f"{field}.source", ids=True)


def _string(value: str, *, prefix: str = "") -> Dict:
    """Istio's string match: ``*`` anything, ``*x`` suffix, ``x*`` prefix, else exact."""
    if value == "*":
        return {"safe_regex": {"regex": ".+"}}
    if value.startswith("*"):
        return {"suffix": value[1:]}
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1]}
    return {"exact": prefix + value}


def _host(value: str) -> Dict:
    if value == "*":
        return {"header": {"name": ":authority", "present_match": True}}
    body = ".*" + re.escape(value[1:]) if value.startswith("*") else re.escape(value)
    regex = f"(?i){body}(?::[0-9]+)?"
    return {"header": {"name": ":authority", "string_match": {"safe_regex": {"regex": regex}}}}


def _path(value: str, field: str) -> Dict:
    if _TEMPLATE.search(value):
        if "{**}" in value[:-4] and not value.endswith("{**}"):
            raise FieldError(field, f"{value!r}: {{**}} must be the last segment")
        config = uri_template_match_pb2.UriTemplateMatchConfig(path_template=value)
        packed = json_format.MessageToDict(pack(config))
        return {"uri_template": {"name": "uri-template", "typed_config": packed}}
    if not value.startswith(("/", "*")):
        raise FieldError(field, f"{value!r} must start with / (or be * or *suffix)")
    return {"url_path": {"path": _string(value)}}


def _operation_value(key: str, value: str, field: str) -> Dict:
    if key == "hosts":
        return _host(value)
    if key == "ports":
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise FieldError(field, f"{value!r} is not a port")
        return {"destination_port": int(value)}
    if key == "methods":
        return {"header": {"name": ":method", "string_match": _string(value)}}
    return _path(value, field)


def _source_value(key: str, value: str, field: str) -> Dict:
    if key == "principals":
        if value == "*":
            return {"authenticated": {}}
        return {"authenticated": {"principal_name": _string(value, prefix="spiffe://")}}
    if key == "namespaces":
        return {
            "authenticated": {"principal_name": {"safe_regex": {"regex": f".*/ns/{re.escape(value)}/.*"}}}
        }
    if key in ("ipBlocks", "remoteIpBlocks"):
        address, _, length = value.partition("/")
        if not re.fullmatch(r"[0-9a-fA-F:.]+", address) or (length and not length.isdigit()):
            raise FieldError(field, f"{value!r} is not an IP address or CIDR range")
        cidr: Dict = {"address_prefix": address}
        if length:
            cidr["prefix_len"] = int(length)
        return {"direct_remote_ip" if key == "ipBlocks" else "remote_ip": cidr}
    return _authn("request.auth.principal", _string(value))


def _authn(key: str, match: Dict, *, claim: str = "") -> Dict:
    path = [{"key": key}] + ([{"key": claim}] if claim else [])
    value = {
        "or_match": {
            "value_matchers": [{"string_match": match}, {"list_match": {"one_of": {"string_match": match}}}]
        }
    }
    return {"metadata": {"filter": "istio_authn", "path": path, "value": value}}


def _when(raw: Json, field: str) -> tuple[str, Dict]:
    item = mapping(raw, field)
    check_fields(item, frozenset({"key", "values", "notValues"}), field)
    key = string(item.get("key"), f"{field}.key")
    values = strings(item.get("values"), f"{field}.values")
    not_values = strings(item.get("notValues"), f"{field}.notValues")
    if not values and not not_values:
        raise FieldError(field, "give values or notValues")
    build = _when_builder(key, field)
    parts = []
    ids = key in _SOURCE_WHEN
    for negate, group in ((False, values), (True, not_values)):
        if group:
            matchers = [build(v, f"{field}.values[{i}]") for i, v in enumerate(group)]
            either = {"or_ids": {"ids": matchers}} if ids else {"or_rules": {"rules": matchers}}
            parts.append(({"not_id": either} if ids else {"not_rule": either}) if negate else either)
    return key, ({"and_ids": {"ids": parts}} if ids else {"and_rules": {"rules": parts}})


def _when_builder(key: str, field: str) -> Any:
    simple = {
        "source.ip": lambda v, f: _source_value("ipBlocks", v, f),
        "remote.ip": lambda v, f: _source_value("remoteIpBlocks", v, f),
        "source.namespace": lambda v, f: _source_value("namespaces", v, f),
        "source.principal": lambda v, f: _source_value("principals", v, f),
        "request.auth.principal": lambda v, f: _source_value("requestPrincipals", v, f),
        "destination.port": lambda v, f: _operation_value("ports", v, f),
    }
    if key in simple:
        return simple[key]
    header = re.fullmatch(r"request\.headers\[([^\]]+)\]", key)
    if header:
        name = header.group(1).lower()
        return lambda v, f: {"header": {"name": name, "string_match": _string(v)}}
    claim = re.fullmatch(r"request\.auth\.claims\[([^\]]+)\]", key)
    if claim:
        return lambda v, f: _authn("request.auth.claims", _string(v), claim=claim.group(1))
    raise FieldError(f"{field}.key", f"{key!r} is not a condition the waypoint supports")


def covers(vhost: Any, services: set[str], namespace: str, cluster_domain: str) -> bool:
    """Whether a virtual host serves one of ``services`` of ``namespace`` (empty set: every one)."""
    hosts = {f"{name}.{namespace}.svc.{cluster_domain}" for name in services}
    return not hosts or vhost.name.rsplit(":", 1)[0] in hosts


def apply_authorization(
    route_config: route_pb2.RouteConfiguration,
    policies: Iterable[KubeObject],
    gateway: KubeObject,
    cluster_domain: str,
    problems: Warnings,
) -> None:
    """Puts the RBAC filters of the policies targeting this waypoint (or its Services) on the
    virtual hosts they cover (in place), each filter under its RBAC_FILTERS name."""
    per_host: dict[str, dict[int, rbac_pb2.RBAC]] = {}
    for obj in sorted(policies, key=lambda o: (o.namespace, o.name)):
        try:
            services = policy_targets(obj, gateway)
        except FieldError as exc:
            problems.add(obj, exc.field, exc.problem)
            continue
        if services is None:
            continue
        action, rules = waypoint_rbac(obj, problems)
        for vhost in route_config.virtual_hosts:
            if not covers(vhost, services, obj.namespace, cluster_domain):
                continue
            rbac = per_host.setdefault(vhost.name, {}).setdefault(action, rbac_pb2.RBAC(action=action))
            for i, policy in enumerate(rules):
                rbac.policies[f"ns[{obj.namespace}]-policy[{obj.name}]-rule[{i}]"].CopyFrom(policy)
    for vhost in route_config.virtual_hosts:
        for action, rbac in per_host.get(vhost.name, {}).items():
            config = http_rbac_pb2.RBACPerRoute(rbac=http_rbac_pb2.RBAC(rules=rbac))
            vhost.typed_per_filter_config[_FILTER_OF[action]].CopyFrom(pack(config))
