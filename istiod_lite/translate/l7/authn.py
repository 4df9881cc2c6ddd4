"""RequestAuthentication with ``targetRefs`` -> Envoy ``jwt_authn`` config for the waypoint.

Each ``jwtRules`` entry is a provider (issuer, audiences, JWKS inline from ``jwks`` or from a local
file given as ``jwksUri: file:///path``, ``fromHeaders``, ``fromParams``, ``forwardOriginalToken``,
``outputClaimToHeaders``); the providers of every RequestAuthentication covering a virtual host are
put together on it, as Istio merges them per workload.

Where it is carried: the ``JwtAuthentication`` of a virtual host rides in its
``typed_per_filter_config`` under ``envoy.filters.http.jwt_authn``. A real Envoy takes this config
on the HTTP connection manager's filter (Istio's place for it), with a ``PerRouteConfig`` on the
route; our waypoint gets only RouteConfigurations, so the per-host filter config is carried whole.

A rule that cannot be read is reported and left out: its tokens are never accepted, so a policy
that requires a request principal denies them (401 beside other rules, else 403).
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2

from istiod_lite.translate._fields import FieldError, check_fields, mapping, sequence, string, strings
from istiod_lite.translate.l7._envoy import pack
from istiod_lite.translate.l7.authz import covers, policy_targets
from istiod_lite.translate.model import Warnings
from istiod_lite.view import Json, KubeObject
from mesh.l7.jwt import JWT_FILTER

__all__ = ["apply_request_authentication", "request_authentication_errors"]

_RULE_FIELDS = frozenset(
    {"issuer", "audiences", "jwks", "jwksUri", "fromHeaders", "fromParams", "forwardOriginalToken",
     "outputClaimToHeaders", "outputPayloadToHeader", "fromCookies", "timeout"}
)  # fmt: skip


def _provider(raw: Json, field: str) -> config_pb2.JwtProvider:
    rule = mapping(raw, field)
    check_fields(rule, _RULE_FIELDS, field)
    provider = config_pb2.JwtProvider(issuer=string(rule.get("issuer"), f"{field}.issuer"))
    if not provider.issuer:
        raise FieldError(f"{field}.issuer", "is required")
    provider.audiences.extend(strings(rule.get("audiences"), f"{field}.audiences"))
    jwks, uri = string(rule.get("jwks"), f"{field}.jwks"), string(rule.get("jwksUri"), f"{field}.jwksUri")
    if jwks:
        provider.local_jwks.inline_string = jwks
    elif uri.startswith("file:///"):
        provider.local_jwks.filename = uri.removeprefix("file://")
    else:
        raise FieldError(
            f"{field}.jwksUri", "give jwks inline, or jwksUri as file:///path (remote JWKS are not fetched)"
        )
    for i, raw_header in enumerate(sequence(rule.get("fromHeaders"), f"{field}.fromHeaders")):
        header = mapping(raw_header, f"{field}.fromHeaders[{i}]")
        name = string(header.get("name"), f"{field}.fromHeaders[{i}].name")
        if not name:
            raise FieldError(f"{field}.fromHeaders[{i}].name", "is required")
        provider.from_headers.add(name=name, value_prefix=string(header.get("prefix"), "prefix"))
    provider.from_params.extend(strings(rule.get("fromParams"), f"{field}.fromParams"))
    if not provider.from_headers and not provider.from_params:  # Istio's default locations
        provider.from_headers.add(name="Authorization", value_prefix="Bearer ")
        provider.from_params.append("access_token")
    forward = rule.get("forwardOriginalToken", False)
    if not isinstance(forward, bool):
        raise FieldError(f"{field}.forwardOriginalToken", "must be true or false")
    provider.forward = forward
    for i, raw_out in enumerate(sequence(rule.get("outputClaimToHeaders"), f"{field}.outputClaimToHeaders")):
        out = mapping(raw_out, f"{field}.outputClaimToHeaders[{i}]")
        header_name = string(out.get("header"), f"{field}.outputClaimToHeaders[{i}].header")
        claim = string(out.get("claim"), f"{field}.outputClaimToHeaders[{i}].claim")
        if not header_name or not claim:
            raise FieldError(f"{field}.outputClaimToHeaders[{i}]", "give header and claim")
        provider.claim_to_headers.add(header_name=header_name, claim_name=claim)
    return provider


def request_authentication_errors(obj: KubeObject) -> list[FieldError]:
    """What is wrong with a RequestAuthentication (validation): its fields and every JWT rule."""
    errors = []
    try:
        spec = mapping(obj.spec, "spec")
        check_fields(spec, frozenset({"selector", "targetRef", "targetRefs", "jwtRules"}), "spec")
        rules = sequence(spec.get("jwtRules"), "spec.jwtRules")
    except FieldError as exc:
        return [exc]
    for i, raw in enumerate(rules):
        try:
            _provider(raw, f"spec.jwtRules[{i}]")
        except FieldError as exc:
            errors.append(exc)
    return errors


def apply_request_authentication(
    route_config: route_pb2.RouteConfiguration,
    objects: Iterable[KubeObject],
    gateway: KubeObject,
    cluster_domain: str,
    problems: Warnings,
) -> None:
    """Puts the JWT providers of the RequestAuthentications targeting this waypoint (or its
    Services) on the virtual hosts they cover (in place)."""
    per_host: dict[str, config_pb2.JwtAuthentication] = {}
    for obj in sorted(objects, key=lambda o: (o.namespace, o.name)):
        try:
            services = policy_targets(obj, gateway)
            rules = sequence(mapping(obj.spec, "spec").get("jwtRules"), "spec.jwtRules")
        except FieldError as exc:
            problems.add(obj, exc.field, exc.problem)
            continue
        if services is None:
            continue
        providers = {}
        for i, raw in enumerate(rules):
            try:
                providers[f"{obj.namespace}/{obj.name}/{i}"] = _provider(raw, f"spec.jwtRules[{i}]")
            except FieldError as exc:
                problems.add(
                    obj, exc.field, f"{exc.problem}; the rule is left out, its tokens are not accepted"
                )
        for vhost in route_config.virtual_hosts:
            if covers(vhost, services, obj.namespace, cluster_domain):
                config = per_host.setdefault(vhost.name, config_pb2.JwtAuthentication())
                for name, provider in providers.items():
                    config.providers[name].CopyFrom(provider)
    for vhost in route_config.virtual_hosts:
        if vhost.name in per_host:
            vhost.typed_per_filter_config[JWT_FILTER].CopyFrom(pack(per_host[vhost.name]))
