"""AuthorizationPolicy -> ``istio.security.Authorization``: the L4 policy ztunnel enforces.

Scope: a ``selector`` makes it WORKLOAD_SELECTOR (workloads list its key in
``authorization_policies``), no selector makes it NAMESPACE, and no selector in the root
namespace makes it GLOBAL. Policies with ``targetRef(s)`` belong to waypoints and are not sent.
AUDIT and CUSTOM are not enforceable by ztunnel: skipped with a warning.

Each Istio rule becomes one Rule (rules are OR'ed) whose clauses are AND'ed: one clause for the
``to`` entries (OR'ed), one for the ``from`` entries (OR'ed), one per ``when`` condition.
``rules: [{}]`` is a rule with no clauses, which matches every connection; a policy without
rules matches none, so an ALLOW without rules denies everything it selects.

L7 at L4 -- what ztunnel cannot see: ``hosts, methods, paths`` (and ``not*``),
``requestPrincipals, remoteIpBlocks`` (and ``not*``), and ``when`` keys other than
source.ip, source.namespace, source.principal, destination.ip, destination.port.

* ALLOW: a rule with any L7 field is dropped whole (it can never be shown to match, so it
  allows nothing: more restrictive). If every rule is dropped, the policy is still sent, with
  no rules, so the workloads it selects keep their deny-by-default.
* DENY: each L7 condition is treated as satisfied and the L4 rest is kept (more restrictive).
  **Decision** for a DENY rule whose conditions are *all* L7: it matches every connection and
  denies it. Istio HEAD sends such a rule as empty matches that ztunnel skips (a no-op with a
  status warning); Istio's documentation promises the opposite, "enforced without the HTTP
  rules ... more restrictive than requested". We follow the documentation: a DENY is a
  conjunction, dropping a condition only widens it, and a no-op would silently admit traffic
  the operator asked to block. Enforce HTTP rules precisely with a waypoint (``targetRefs``).
  See docs/policy-at-l4.md.

Invalid policies (unknown field, bad CIDR, bad port, bad value) fail closed: the policy is sent
with no rules when it is an ALLOW and with one match-everything rule when it is a DENY, with a
warning naming the field. A policy whose selector or action is invalid cannot be placed at all
and is skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import empty_pb2

from istiod_lite.translate._fields import (
    FieldError,
    check_fields,
    cidr,
    mapping,
    match_labels,
    port,
    selector_matches,
    sequence,
    string,
    strings,
)
from istiod_lite.translate.model import Warnings
from istiod_lite.view import Json, JsonMap, KubeObject
from mesh.api.istio.security import authorization_pb2 as pb

__all__ = [
    "L4_WHEN_KEYS",
    "CompiledPolicy",
    "SelectorIndex",
    "compile_authorization_policy",
    "compile_rule",
    "string_match",
]

L4_WHEN_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)
_L7_WHEN_KEYS = frozenset(
    {
        "remote.ip",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "connection.sni",
    }
)
_L7_WHEN_PREFIXES = ("request.headers[", "request.auth.claims[", "experimental.envoy.filters.")
_SPEC_FIELDS = frozenset({"selector", "action", "rules", "provider", "targetRef", "targetRefs"})
_SOURCE_L4 = ("principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks")
_SOURCE_SA = ("serviceAccounts", "notServiceAccounts")
_SOURCE_L7 = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
_OPERATION_L7 = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_SOURCE_ORDER = _SOURCE_L4 + _SOURCE_SA + _SOURCE_L7
_SOURCE_FIELDS = frozenset(_SOURCE_ORDER)
_OPERATION_ORDER = ("ports", "notPorts", *_OPERATION_L7)
_OPERATION_FIELDS = frozenset(_OPERATION_ORDER)
_ACTIONS = {"": pb.ALLOW, "ALLOW": pb.ALLOW, "DENY": pb.DENY}
_DRY_RUN_ANNOTATION = "istio.io/dry-run"


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One policy for ztunnel; ``selector`` is set for WORKLOAD_SELECTOR scope."""

    key: str
    authorization: pb.Authorization
    selector: Mapping[str, str] | None


def string_match(value: str) -> pb.StringMatch:
    """Istio's string matching: ``*`` is presence, ``*x`` a suffix, ``x*`` a prefix, else exact."""
    if value == "*":
        return pb.StringMatch(presence=empty_pb2.Empty())
    if value.startswith("*"):
        return pb.StringMatch(suffix=value[1:])
    if value.endswith("*"):
        return pb.StringMatch(prefix=value[:-1])
    return pb.StringMatch(exact=value)


def _addresses(values: tuple[str, ...], field: str) -> list[pb.Address]:
    out = []
    for i, value in enumerate(values):
        raw, length = cidr(value, f"{field}[{i}]")
        out.append(pb.Address(address=raw, length=length))
    return out


def _service_accounts(values: tuple[str, ...], namespace: str) -> list[pb.ServiceAccountMatch]:
    out = []
    for value in values:
        ns, _, sa = value.rpartition("/")
        out.append(pb.ServiceAccountMatch(namespace=ns or namespace, serviceAccount=sa))
    return out


def _source_match(entry: Json, field: str, namespace: str) -> tuple[pb.Match | None, list[str]]:
    item = mapping(entry, field)
    check_fields(item, frozenset({"source"}), field)
    src = mapping(item.get("source"), f"{field}.source")
    check_fields(src, _SOURCE_FIELDS, f"{field}.source")
    values = {k: strings(src.get(k), f"{field}.source.{k}") for k in _SOURCE_ORDER}
    l7 = [k for k in _SOURCE_L7 if values[k]]
    match = pb.Match(
        principals=[string_match(v) for v in values["principals"]],
        not_principals=[string_match(v) for v in values["notPrincipals"]],
        namespaces=[string_match(v) for v in values["namespaces"]],
        not_namespaces=[string_match(v) for v in values["notNamespaces"]],
        source_ips=_addresses(values["ipBlocks"], f"{field}.source.ipBlocks"),
        not_source_ips=_addresses(values["notIpBlocks"], f"{field}.source.notIpBlocks"),
        service_accounts=_service_accounts(values["serviceAccounts"], namespace),
        not_service_accounts=_service_accounts(values["notServiceAccounts"], namespace),
    )
    if not l7 and match.ByteSize() == 0:
        raise FieldError(f"{field}.source", "must set at least one field")
    return (match if match.ByteSize() else None), l7


def _operation_match(entry: Json, field: str) -> tuple[pb.Match | None, list[str]]:
    item = mapping(entry, field)
    check_fields(item, frozenset({"operation"}), field)
    op = mapping(item.get("operation"), f"{field}.operation")
    check_fields(op, _OPERATION_FIELDS, f"{field}.operation")
    values = {k: strings(op.get(k), f"{field}.operation.{k}") for k in _OPERATION_ORDER}
    l7 = [k for k in _OPERATION_L7 if values[k]]
    match = pb.Match(
        destination_ports=[port(p, f"{field}.operation.ports[{i}]") for i, p in enumerate(values["ports"])],
        not_destination_ports=[
            port(p, f"{field}.operation.notPorts[{i}]") for i, p in enumerate(values["notPorts"])
        ],
    )
    if not l7 and match.ByteSize() == 0:
        raise FieldError(f"{field}.operation", "must set at least one field")
    return (match if match.ByteSize() else None), l7


def _when_values(key: str, values: tuple[str, ...], field: str, *, negate: bool) -> dict[str, object]:
    prefix = "not_" if negate else ""
    if key == "source.ip":
        return {f"{prefix}source_ips": _addresses(values, field)}
    if key == "destination.ip":
        return {f"{prefix}destination_ips": _addresses(values, field)}
    if key == "destination.port":
        return {f"{prefix}destination_ports": [port(v, f"{field}[{i}]") for i, v in enumerate(values)]}
    target = "namespaces" if key == "source.namespace" else "principals"
    return {f"{prefix}{target}": [string_match(v) for v in values]}


def _when_match(entry: Json, field: str) -> tuple[pb.Match | None, list[str]]:
    cond = mapping(entry, field)
    check_fields(cond, frozenset({"key", "values", "notValues"}), field)
    key = string(cond.get("key"), f"{field}.key")
    values = strings(cond.get("values"), f"{field}.values")
    not_values = strings(cond.get("notValues"), f"{field}.notValues")
    if not values and not not_values:
        raise FieldError(field, "must set values or notValues")
    if key not in L4_WHEN_KEYS:
        if key in _L7_WHEN_KEYS or key.startswith(_L7_WHEN_PREFIXES):
            return None, [key]
        raise FieldError(f"{field}.key", f"{key!r} is not a known attribute")
    fields: dict[str, object] = {}
    if values:
        fields.update(_when_values(key, values, f"{field}.values", negate=False))
    if not_values:
        fields.update(_when_values(key, not_values, f"{field}.notValues", negate=True))
    return pb.Match(**fields), []  # type: ignore[arg-type]


_Builder = Callable[[Json, str], tuple[pb.Match | None, list[str]]]


def _clause(entries: tuple[Json, ...], field: str, build: _Builder) -> tuple[pb.Clause | None, list[str]]:
    """One clause from OR'ed entries; None when an entry held only L7 fields (always true)."""
    matches: list[pb.Match] = []
    l7: list[str] = []
    always = False
    for i, entry in enumerate(entries):
        match, found = build(entry, f"{field}[{i}]")
        l7 += found
        if match is None:
            always = True
        else:
            matches.append(match)
    return (None if always else pb.Clause(matches=matches)), l7


def compile_rule(rule: Json, field: str, namespace: str) -> tuple[pb.Rule, list[str]]:
    """The L4 form of one rule with every L7 condition taken as satisfied, and the L7 fields seen;
    raises FieldError for an invalid rule."""
    body = mapping(rule, field)
    check_fields(body, frozenset({"from", "to", "when"}), field)
    clauses: list[pb.Clause] = []
    l7: list[str] = []
    builders: tuple[tuple[str, _Builder], ...] = (
        ("to", _operation_match),
        ("from", lambda entry, where: _source_match(entry, where, namespace)),
    )
    for key, build in builders:
        entries = sequence(body.get(key), f"{field}.{key}")
        if entries:
            clause, found = _clause(entries, f"{field}.{key}", build)
            l7 += found
            if clause is not None:
                clauses.append(clause)
    for i, cond in enumerate(sequence(body.get("when"), f"{field}.when")):
        match, found = _when_match(cond, f"{field}.when[{i}]")
        l7 += found
        if match is not None:
            clauses.append(pb.Clause(matches=[match]))
    return pb.Rule(clauses=clauses), l7


def _compile_rules(obj: KubeObject, action: int, warnings: Warnings) -> list[pb.Rule]:
    spec = obj.spec
    check_fields(spec, _SPEC_FIELDS, "spec")
    rules: list[pb.Rule] = []
    for i, raw in enumerate(sequence(spec.get("rules"), "spec.rules")):
        rule, l7 = compile_rule(raw, f"spec.rules[{i}]", obj.namespace)
        if not l7:
            rules.append(rule)
            continue
        found = ", ".join(sorted(set(l7)))
        if action == pb.ALLOW:
            warnings.add(
                obj,
                f"spec.rules[{i}]",
                f"HTTP attributes ({found}) are not visible at L4: "
                "this ALLOW rule is omitted, which is more restrictive; use a waypoint",
            )
            continue
        rules.append(rule)
        consequence = "denies every connection" if not rule.clauses else "is enforced without them"
        warnings.add(
            obj,
            f"spec.rules[{i}]",
            f"HTTP attributes ({found}) are not visible at L4: this DENY rule "
            f"{consequence}, which is more restrictive; use a waypoint",
        )
    return rules


def _placement(
    obj: KubeObject, root_namespace: str, warnings: Warnings
) -> tuple[pb.Scope.ValueType, Mapping[str, str] | None] | None:
    spec = obj.spec
    try:
        selector = match_labels(spec["selector"], "spec.selector") if "selector" in spec else None
        action_name = string(spec.get("action"), "spec.action")
    except FieldError as exc:
        warnings.add(obj, exc.field, f"{exc.problem}; the policy is skipped")
        return None
    if action_name in ("AUDIT", "CUSTOM"):
        warnings.add(
            obj, "spec.action", f"{action_name} is not supported by ztunnel at L4; the policy is skipped"
        )
        return None
    if action_name not in _ACTIONS:
        warnings.add(obj, "spec.action", f"unknown action {action_name!r}; the policy is skipped")
        return None
    if selector is None:
        scope = pb.GLOBAL if obj.namespace == root_namespace else pb.NAMESPACE
    else:
        scope = pb.WORKLOAD_SELECTOR
    return scope, selector


def compile_authorization_policy(
    obj: KubeObject, *, root_namespace: str, warnings: Warnings
) -> CompiledPolicy | None:
    """Translates one AuthorizationPolicy, or returns None when it is not for ztunnel."""
    spec: JsonMap = obj.spec
    if spec.get("targetRef") or spec.get("targetRefs"):
        return None
    placed = _placement(obj, root_namespace, warnings)
    if placed is None:
        return None
    scope, selector = placed
    action = _ACTIONS[string(spec.get("action"), "spec.action")]
    try:
        rules = _compile_rules(obj, action, warnings)
    except FieldError as exc:
        closed = "it matches nothing (ALLOW)" if action == pb.ALLOW else "it denies every connection (DENY)"
        warnings.add(obj, exc.field, f"{exc.problem}; the policy is sent in its fail-closed form: {closed}")
        rules = [] if action == pb.ALLOW else [pb.Rule()]
    authorization = pb.Authorization(
        name=obj.name,
        namespace=obj.namespace,
        scope=scope,
        action=action,
        rules=rules,
        dry_run=obj.annotations.get(_DRY_RUN_ANNOTATION) == "true",
    )
    return CompiledPolicy(f"{obj.namespace}/{obj.name}", authorization, selector)


class SelectorIndex:
    """Finds the WORKLOAD_SELECTOR policies that select a workload, without scanning them all.

    A policy applies to workloads of its own namespace and, from the root namespace, to all.
    Each policy is filed under one of its labels; a workload looks up only its own labels.
    """

    def __init__(self, policies: Iterable[CompiledPolicy], *, root_namespace: str) -> None:
        self._root = root_namespace
        self._all: dict[str, list[CompiledPolicy]] = {}
        self._by_label: dict[tuple[str, str, str], list[CompiledPolicy]] = {}
        for policy in policies:
            if policy.selector is None:
                continue
            namespace = policy.authorization.namespace
            if not policy.selector:
                self._all.setdefault(namespace, []).append(policy)
            else:
                key, value = min(policy.selector.items())
                self._by_label.setdefault((namespace, key, value), []).append(policy)

    def keys_for(self, namespace: str, labels: Mapping[str, str]) -> list[str]:
        """The sorted keys of the selector policies that apply to a workload."""
        found: set[str] = set()
        for space in {namespace, self._root}:
            found.update(p.key for p in self._all.get(space, ()))
            for key, value in labels.items():
                for policy in self._by_label.get((space, key, value), ()):
                    if selector_matches(policy.selector or {}, labels):
                        found.add(policy.key)
        return sorted(found)
