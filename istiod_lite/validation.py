"""Validation of the Istio and Gateway API objects the mesh reads, with the checks translation uses.

One module for both places that need it: ``meshctl lab apply`` refuses an invalid object before
anything is written (as Istio's CRD schemas and validating webhook do on Kubernetes), and
istiod_lite reports invalid objects that reached it another way (a warning, a status condition,
``istiod_lite_config_invalid_total{kind}``) while translation skips them. Every check here calls
the same field readers translation calls, so the two cannot disagree on what is valid.

Only what Istio itself refuses is invalid: a field of the wrong type or out of range, an unknown
enum value, an invalid RE2 regex, a rule without destinations. What is valid Istio but not
applied as written (HTTP fields in a policy ztunnel enforces at L4, a subset no DestinationRule
defines) is a translation warning, not a validation error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from istiod_lite.sources.objects import ObjectError, parse_object
from istiod_lite.translate._fields import (
    FieldError,
    check_fields,
    mapping,
    match_labels,
    port,
    sequence,
    string,
    strings,
)
from istiod_lite.translate.authz import compile_rule
from istiod_lite.translate.l7._envoy import fault_config, istio_retry_policy, redirect_code
from istiod_lite.translate.l7._values import duration, fraction
from istiod_lite.translate.l7.authn import request_authentication_errors
from istiod_lite.translate.l7.destinations import DestinationRule, load_balancer
from istiod_lite.translate.l7.httproute import check_http_route_rule
from istiod_lite.translate.l7.ratelimit import API_GROUP as RATE_LIMIT_GROUP
from istiod_lite.translate.l7.ratelimit import rate_limit_errors
from istiod_lite.translate.l7.telemetry import telemetry_errors
from istiod_lite.translate.l7.virtualservice import destination_weight, route_destinations, route_match
from istiod_lite.translate.peerauth import parse_peer_authentication
from istiod_lite.view import JsonMap, KubeObject

__all__ = ["MESH_KINDS", "FieldError", "validate_kube_object", "validate_mesh_object"]

_SECURITY = frozenset({"security.istio.io/v1", "security.istio.io/v1beta1"})
_NETWORKING = frozenset(
    {"networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"}
)
_GATEWAY_API = frozenset({"gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"})
_TELEMETRY = frozenset({"telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"})
_AP_ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")


def _peer_authentication(obj: KubeObject) -> None:
    parse_peer_authentication(obj)


def _authorization_policy(obj: KubeObject) -> list[FieldError]:
    spec = obj.spec
    problems: list[FieldError] = []
    try:
        check_fields(
            spec, frozenset({"selector", "action", "rules", "provider", "targetRef", "targetRefs"}), "spec"
        )
        if "selector" in spec:
            match_labels(spec["selector"], "spec.selector")
        action = string(spec.get("action"), "spec.action") or "ALLOW"
        if action not in _AP_ACTIONS:
            raise FieldError("spec.action", f"{action!r} is not one of {', '.join(_AP_ACTIONS)}")
        rules = sequence(spec.get("rules"), "spec.rules")
    except FieldError as exc:
        return [exc]
    for i, rule in enumerate(rules):
        try:
            compile_rule(rule, f"spec.rules[{i}]", obj.namespace)
        except FieldError as exc:
            problems.append(exc)
    return problems


def _destination_rule(obj: KubeObject) -> list[FieldError]:
    problems: list[FieldError] = []
    try:
        parsed = DestinationRule(obj, "cluster.local")
    except FieldError as exc:
        return [exc]
    if not string(obj.spec.get("host"), "spec.host"):
        problems.append(FieldError("spec.host", "is required: the service the rule is for"))
    policies = [("spec.trafficPolicy", parsed.policy)] + [
        (f"spec.subsets[{i}].trafficPolicy", s.policy) for i, s in enumerate(parsed.subsets.values())
    ]
    for field, policy in policies:
        try:
            if policy.get("loadBalancer") is not None:
                load_balancer(policy["loadBalancer"], f"{field}.loadBalancer")
        except FieldError as exc:
            problems.append(exc)
    return problems


def _virtual_service(obj: KubeObject) -> list[FieldError]:
    spec = obj.spec
    try:
        hosts = strings(spec.get("hosts"), "spec.hosts")
        if not hosts:
            raise FieldError("spec.hosts", "needs at least one host")
        rules = sequence(spec.get("http"), "spec.http")
    except FieldError as exc:
        return [exc]
    problems: list[FieldError] = []
    for i, raw in enumerate(rules):
        try:
            _http_rule(mapping(raw, f"spec.http[{i}]"), f"spec.http[{i}]")
        except FieldError as exc:
            problems.append(exc)
    return problems


def _http_rule(http: JsonMap, field: str) -> None:
    for j, match in enumerate(sequence(http.get("match"), f"{field}.match")):
        route_match(mapping(match, f"{field}.match[{j}]"), f"{field}.match[{j}]")
    if http.get("redirect") is not None:
        redirect = mapping(http["redirect"], f"{field}.redirect")
        if redirect.get("redirectCode") is not None:
            redirect_code(redirect["redirectCode"], f"{field}.redirect.redirectCode")
    elif http.get("directResponse") is None:
        destinations = route_destinations(http, field)
        for k, raw in enumerate(destinations):
            where = f"{field}.route[{k}]"
            spec = mapping(raw, where)
            destination = mapping(spec.get("destination"), f"{where}.destination")
            if not string(destination.get("host"), f"{where}.destination.host"):
                raise FieldError(f"{where}.destination.host", "is required")
            if destination.get("port") is not None:
                port(
                    mapping(destination["port"], f"{where}.destination.port").get("number"),
                    f"{where}.destination.port.number",
                )
            destination_weight(spec, where, only=len(destinations) == 1)
    if http.get("fault") is not None:
        fault_config(http["fault"], f"{field}.fault")
    if http.get("retries") is not None:
        istio_retry_policy(http["retries"], f"{field}.retries")
    if http.get("timeout") is not None:
        duration(http["timeout"], f"{field}.timeout")
    if http.get("mirrorPercentage") is not None:
        fraction(http["mirrorPercentage"], f"{field}.mirrorPercentage", default=None)


def _gateway(obj: KubeObject) -> list[FieldError]:
    spec = obj.spec
    try:
        if not string(spec.get("gatewayClassName"), "spec.gatewayClassName"):
            raise FieldError("spec.gatewayClassName", "is required (istio-waypoint for a waypoint)")
        listeners = sequence(spec.get("listeners"), "spec.listeners")
    except FieldError as exc:
        return [exc]
    problems: list[FieldError] = []
    for i, raw in enumerate(listeners):
        where = f"spec.listeners[{i}]"
        try:
            listener = mapping(raw, where)
            if not string(listener.get("name"), f"{where}.name"):
                raise FieldError(f"{where}.name", "is required")
            port(listener.get("port"), f"{where}.port")
            if not string(listener.get("protocol"), f"{where}.protocol"):
                raise FieldError(f"{where}.protocol", "is required (HBONE for a waypoint)")
        except FieldError as exc:
            problems.append(exc)
    return problems


def _http_route(obj: KubeObject) -> list[FieldError]:
    spec = obj.spec
    try:
        sequence(spec.get("parentRefs"), "spec.parentRefs")
        rules = sequence(spec.get("rules"), "spec.rules")
    except FieldError as exc:
        return [exc]
    problems: list[FieldError] = []
    for i, raw in enumerate(rules):
        where = f"spec.rules[{i}]"
        try:
            rule = mapping(raw, where)
            check_http_route_rule(rule, where)
        except FieldError as exc:
            problems.append(exc)
    return problems


def _one(check: Callable[[KubeObject], None]) -> Callable[[KubeObject], list[FieldError]]:
    def run(obj: KubeObject) -> list[FieldError]:
        try:
            check(obj)
        except FieldError as exc:
            return [exc]
        return []

    return run


_VALIDATORS: Mapping[str, tuple[frozenset[str], Callable[[KubeObject], list[FieldError]]]] = MappingProxyType(
    {
        "PeerAuthentication": (_SECURITY, _one(_peer_authentication)),
        "AuthorizationPolicy": (_SECURITY, _authorization_policy),
        "RequestAuthentication": (_SECURITY, request_authentication_errors),
        "VirtualService": (_NETWORKING, _virtual_service),
        "DestinationRule": (_NETWORKING, _destination_rule),
        "Gateway": (_GATEWAY_API, _gateway),
        "HTTPRoute": (_GATEWAY_API, _http_route),
        "Telemetry": (_TELEMETRY, telemetry_errors),
        "LocalRateLimit": (frozenset({f"{RATE_LIMIT_GROUP}/v1alpha1"}), rate_limit_errors),
    }
)

MESH_KINDS: Mapping[str, frozenset[str]] = MappingProxyType({k: v[0] for k, v in _VALIDATORS.items()})
"""The Istio and Gateway API kinds the mesh reads, with the apiVersions it accepts for each."""


def validate_mesh_object(raw: Mapping[str, object]) -> list[FieldError]:
    """Every problem found in one Istio or Gateway API object (empty when valid); each names its
    field path and what is allowed. The kind must be one of :data:`MESH_KINDS`."""
    try:
        obj = parse_object(raw)
    except ObjectError as exc:
        return [FieldError("metadata", exc.message)]
    return validate_kube_object(obj)


def validate_kube_object(obj: KubeObject) -> list[FieldError]:
    """:func:`validate_mesh_object` for an object a source already parsed. Objects listed from the
    API server may carry no apiVersion (the watch chose it); it is checked when present."""
    versions, validate = _VALIDATORS[obj.kind]
    api_version = str(obj.body.get("apiVersion") or "")
    if obj.kind == "Gateway" and api_version in _NETWORKING:
        return []  # Istio's ingress/egress Gateway: another kind of the same name, not read by the mesh
    if api_version and api_version not in versions:
        return [
            FieldError(
                "apiVersion", f"{api_version!r} is not one of {', '.join(sorted(versions))} for {obj.kind}"
            )
        ]
    return validate(obj)
