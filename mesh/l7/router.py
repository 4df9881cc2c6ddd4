"""Route selection with Envoy's semantics, compiled once from an Envoy v3 ``RouteConfiguration``.

Virtual host: the ``:authority`` (Host) matched against each virtual host's domains, as Envoy does:
an exact domain first, then the longest ``*.suffix`` wildcard, then the longest ``prefix.*``, then
``*``; a domain with a port matches only that authority, a domain without one matches the host part
too. Route: the first route of that virtual host whose match holds (path ``prefix``/``path``/
``safe_regex``/``path_separated_prefix``, ``case_sensitive``, every header and query parameter
matcher); the query string is not part of the path matched. Weighted clusters: one pick in
``[0, total weight)``. Regexes are RE2 (``google-re2``), as Envoy's.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

import re2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.type.matcher.v3 import string_pb2

from mesh.errors import ConfigError
from mesh.l7.authz import RBAC_FILTERS, AuthzConfigError, RbacEngine, compile_rbac
from mesh.l7.faults import FAULT_FILTER, FaultConfig, compile_fault
from mesh.l7.jwt import JWT_FILTER, JwtConfigError, JwtVerifier, compile_jwt
from mesh.l7.ratelimit import RATE_LIMIT_FILTER, RateLimitConfig, compile_rate_limit
from mesh.l7.retries import RetryConfig, compile_retry

__all__ = ["HeaderEdits", "Request", "RouteConfigError", "RouteDecision", "Router", "compile_routes"]


class RouteConfigError(ConfigError):
    """A RouteConfiguration this engine cannot apply; names the route and field."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}", hint="fix the route configuration; the last good one stays")


@dataclass(frozen=True, slots=True)
class Request:
    """What routing looks at: method, the path with its query string, the authority, and the
    headers (lower-case names, each with all its values in order)."""

    method: str
    path: str
    authority: str
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Headers to add (``append`` keeps existing values, else they are replaced) and to remove."""

    add: tuple[tuple[str, str, bool], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a request goes. Exactly one of ``cluster``, ``redirect`` and ``direct_status`` is set."""

    route_name: str
    cluster: str = ""
    redirect: str = ""
    redirect_status: int = 0
    direct_status: int = 0
    direct_body: bytes = b""
    upstream_path: str = ""
    """The path (with query) to send upstream after a ``prefix_rewrite``; empty: unchanged."""
    host_rewrite: str = ""
    timeout: float | None = 15.0
    """Seconds for the whole upstream exchange, retries included; None: no limit (Envoy: 15 s)."""
    retry: RetryConfig | None = None
    fault: FaultConfig | None = None
    request_headers: HeaderEdits = HeaderEdits()
    response_headers: HeaderEdits = HeaderEdits()
    mirrors: tuple[tuple[str, float], ...] = ()
    """(cluster, fraction of requests) to copy the request to, fire and forget."""
    sampling_percent: float | None = None
    """The route's ``tracing.random_sampling`` in percent; None: the proxy's default."""
    rate_limit: RateLimitConfig | None = None
    """The route's local rate limit (a token bucket per route), if any."""
    trace_tags: tuple[tuple[str, str, str], ...] = ()
    """The route's tracing custom tags: (tag, ``header`` or ``literal``, header name or value);
    environment tags are resolved to literals when the routes are compiled."""


_Matcher = Callable[[Request, str, Mapping[str, tuple[str, ...]]], bool]


_Decide = Callable[[random.Random, str], RouteDecision]
"""(rng, the request's path with its query) -> the decision."""


@dataclass(frozen=True, slots=True)
class _Route:
    name: str
    matches: _Matcher
    decide: _Decide


@dataclass(frozen=True, slots=True)
class _VirtualHost:
    name: str
    routes: tuple[_Route, ...]
    authz: RbacEngine
    jwt: JwtVerifier


class Router:
    """A compiled RouteConfiguration; :meth:`route` is pure (randomness from the caller's ``rng``)."""

    def __init__(
        self,
        name: str,
        exact: Mapping[str, _VirtualHost],
        suffixes: Sequence[tuple[str, _VirtualHost]],
        prefixes: Sequence[tuple[str, _VirtualHost]],
        default: _VirtualHost | None,
    ) -> None:
        self.name = name
        self._exact = exact
        self._suffixes = suffixes
        self._prefixes = prefixes
        self._default = default

    def virtual_host(self, authority: str) -> str | None:
        """The name of the virtual host serving ``authority``, or None (Envoy answers 404)."""
        vhost = self._vhost(authority)
        return vhost.name if vhost is not None else None

    def authorization(self, authority: str) -> tuple[JwtVerifier, RbacEngine] | None:
        """The request authentication and L7 policy of the virtual host serving ``authority``
        (None: no virtual host)."""
        vhost = self._vhost(authority)
        return (vhost.jwt, vhost.authz) if vhost is not None else None

    def route(self, request: Request, rng: random.Random) -> RouteDecision | None:
        """The decision of the first route that matches, or None (no route: Envoy answers 404 NR)."""
        vhost = self._vhost(request.authority)
        if vhost is None:
            return None
        path, _, query = request.path.partition("?")
        params = _query(query)
        for route in vhost.routes:
            if route.matches(request, path, params):
                return route.decide(rng, request.path)
        return None

    def _vhost(self, authority: str) -> _VirtualHost | None:
        for candidate in _authorities(authority.lower()):
            if candidate in self._exact:
                return self._exact[candidate]
            for suffix, vhost in self._suffixes:
                if candidate.endswith(suffix) and len(candidate) > len(suffix):
                    return vhost
            for prefix, vhost in self._prefixes:
                if candidate.startswith(prefix) and len(candidate) > len(prefix):
                    return vhost
        return self._default


def _authorities(authority: str) -> tuple[str, ...]:
    """The authority as given, then without its port (a domain without a port matches any port).
    A bare IPv6 address (colons, no brackets) has no port."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and (":" not in host or host.endswith("]")):
        return (authority, host)
    return (authority,)


def _query(query: str) -> dict[str, tuple[str, ...]]:
    params: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(key, []).append(value)
    return {key: tuple(values) for key, values in params.items()}


def compile_routes(config: route_pb2.RouteConfiguration) -> Router:
    """Compiles ``config``; raises :class:`RouteConfigError` naming what it cannot apply."""
    exact: dict[str, _VirtualHost] = {}
    suffixes: list[tuple[str, _VirtualHost]] = []
    prefixes: list[tuple[str, _VirtualHost]] = []
    default: _VirtualHost | None = None
    for i, vh in enumerate(config.virtual_hosts):
        where = f"virtual_hosts[{i}] {vh.name!r}"
        vhost = _VirtualHost(
            vh.name,
            tuple(_route(r, f"{where}.routes[{j}]") for j, r in enumerate(vh.routes)),
            _authz(vh, where),
            _jwt(vh, where),
        )
        for domain in (d.lower() for d in vh.domains):
            if domain == "*":
                default = default or vhost
            elif domain.startswith("*"):
                suffixes.append((domain[1:], vhost))
            elif domain.endswith("*"):
                prefixes.append((domain[:-1], vhost))
            elif domain in exact:
                raise RouteConfigError(
                    where, f"domain {domain!r} is also in virtual host {exact[domain].name!r}"
                )
            else:
                exact[domain] = vhost
    suffixes.sort(key=lambda item: -len(item[0]))
    prefixes.sort(key=lambda item: -len(item[0]))
    return Router(config.name, exact, suffixes, prefixes, default)


def _authz(vh: rc.VirtualHost, where: str) -> RbacEngine:
    """The virtual host's RBAC filters (RBAC_FILTERS, in chain order) from its per-filter config."""
    filters = []
    for name in RBAC_FILTERS:
        if name not in vh.typed_per_filter_config:
            continue
        per_route = rbac_pb2.RBACPerRoute()
        if not vh.typed_per_filter_config[name].Unpack(per_route):
            packed = vh.typed_per_filter_config[name]
            raise RouteConfigError(where, f"typed_per_filter_config[{name}] is a {packed.TypeName()}")
        filters.append(per_route.rbac)
    try:
        return compile_rbac(filters)
    except AuthzConfigError as exc:
        raise RouteConfigError(where, exc.message) from None


def _jwt(vh: rc.VirtualHost, where: str) -> JwtVerifier:
    """The virtual host's JWT providers (mesh.l7.jwt), none when it has no jwt_authn config."""
    config = jwt_pb2.JwtAuthentication()
    if JWT_FILTER in vh.typed_per_filter_config and not vh.typed_per_filter_config[JWT_FILTER].Unpack(config):
        packed = vh.typed_per_filter_config[JWT_FILTER]
        raise RouteConfigError(where, f"typed_per_filter_config[{JWT_FILTER}] is a {packed.TypeName()}")
    try:
        return compile_jwt(config)
    except JwtConfigError as exc:
        raise RouteConfigError(where, exc.message) from None


def _route(route: rc.Route, where: str) -> _Route:
    name = route.name or where
    matches = _route_match(route.match, f"{where}.match")
    fault = None
    if FAULT_FILTER in route.typed_per_filter_config:
        packed = route.typed_per_filter_config[FAULT_FILTER]
        config = fault_pb2.HTTPFault()
        if not packed.Unpack(config):
            raise RouteConfigError(where, f"typed_per_filter_config[{FAULT_FILTER}] is a {packed.TypeName()}")
        fault = compile_fault(config)
    requests = _edits(route.request_headers_to_add, route.request_headers_to_remove)
    responses = _edits(route.response_headers_to_add, route.response_headers_to_remove)
    limit = _rate_limit(route, where)
    common = RouteDecision(name, fault=fault, response_headers=responses, rate_limit=limit, **_tracing(route))
    kind = route.WhichOneof("action")
    if kind == "route":
        prefix = route.match.prefix if route.match.WhichOneof("path_specifier") == "prefix" else ""
        decide = _forward(
            route.route, common, f"{where}.route", requests=requests, matched_prefix=prefix
        )  # fmt: skip
        return _Route(name, matches, decide)
    if kind == "redirect":
        redirect = route.redirect
        code = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}[redirect.response_code]
        decision = replace(common, redirect_status=code)
        return _Route(name, matches, lambda rng, path: _redirected(decision, redirect, path))
    if kind == "direct_response":
        direct = route.direct_response
        body = direct.body.inline_string.encode() or direct.body.inline_bytes
        decision = replace(common, direct_status=direct.status, direct_body=body)
        return _Route(name, matches, lambda rng, path: decision)
    raise RouteConfigError(where, f"action {kind!r} is not supported; use route, redirect or direct_response")


def _rate_limit(route: rc.Route, where: str) -> RateLimitConfig | None:
    if RATE_LIMIT_FILTER not in route.typed_per_filter_config:
        return None
    packed = route.typed_per_filter_config[RATE_LIMIT_FILTER]
    config = local_rate_limit_pb2.LocalRateLimit()
    if not packed.Unpack(config):
        raise RouteConfigError(
            where, f"typed_per_filter_config[{RATE_LIMIT_FILTER}] is a {packed.TypeName()}"
        )
    try:
        return compile_rate_limit(config, f"typed_per_filter_config[{RATE_LIMIT_FILTER}]")
    except ValueError as exc:
        raise RouteConfigError(where, str(exc)) from None


def _tracing(route: rc.Route) -> dict[str, Any]:
    """The route's ``tracing``: its random sampling in percent and its custom tags."""
    if not route.HasField("tracing"):
        return {}
    tracing = route.tracing
    percent = None
    if tracing.HasField("random_sampling"):
        percent = 100 * _fraction(tracing.random_sampling)
    tags: list[tuple[str, str, str]] = []
    for tag in tracing.custom_tags:
        kind = tag.WhichOneof("type")
        if kind == "literal":
            tags.append((tag.tag, "literal", tag.literal.value))
        elif kind == "environment":
            tags.append(
                (tag.tag, "literal", os.environ.get(tag.environment.name, tag.environment.default_value))
            )
        elif kind == "request_header":
            tags.append((tag.tag, "header", tag.request_header.name.lower()))
    return {"sampling_percent": percent, "trace_tags": tuple(tags)}


def _forward(
    action: rc.RouteAction, common: RouteDecision, where: str, *, requests: HeaderEdits, matched_prefix: str
) -> _Decide:
    timeout = action.timeout.ToTimedelta().total_seconds() if action.HasField("timeout") else 15.0
    base = replace(
        common,
        timeout=timeout or None,
        retry=compile_retry(action.retry_policy) if action.HasField("retry_policy") else None,
        host_rewrite=action.host_rewrite_literal,
        request_headers=requests,
        mirrors=tuple(
            (
                m.cluster,
                _fraction(m.runtime_fraction.default_value) if m.HasField("runtime_fraction") else 1.0,
            )
            for m in action.request_mirror_policies
        ),
    )
    rewrite = action.prefix_rewrite
    if rewrite and not matched_prefix:
        raise RouteConfigError(f"{where}.prefix_rewrite", "needs a route that matches on a prefix")
    specifier = action.WhichOneof("cluster_specifier")
    if specifier == "cluster":
        decision = replace(base, cluster=action.cluster)
        return lambda rng, path: _rewrite(decision, matched_prefix, rewrite, path)
    if specifier == "weighted_clusters":
        clusters = [(c.name, c.weight.value) for c in action.weighted_clusters.clusters if c.weight.value > 0]
        total = sum(weight for _, weight in clusters)
        if not clusters:
            raise RouteConfigError(f"{where}.weighted_clusters", "the weights sum to 0")
        decisions = [(weight, replace(base, cluster=cluster)) for cluster, weight in clusters]

        def pick(rng: random.Random, path: str) -> RouteDecision:
            ticket = rng.randrange(total)
            for weight, decision in decisions:
                if ticket < weight:
                    return _rewrite(decision, matched_prefix, rewrite, path)
                ticket -= weight
            raise AssertionError("unreachable: the tickets cover the total weight")

        return pick
    raise RouteConfigError(
        where, f"cluster specifier {specifier!r} is not supported; use cluster or weighted_clusters"
    )


def _rewrite(decision: RouteDecision, matched_prefix: str, rewrite: str, path: str) -> RouteDecision:
    """Envoy's ``prefix_rewrite``: the matched prefix of the path is replaced, the rest kept."""
    if not rewrite:
        return decision
    return replace(decision, upstream_path=rewrite + path[len(matched_prefix) :])


def _redirected(decision: RouteDecision, redirect: rc.RedirectAction, path: str) -> RouteDecision:
    scheme = "https" if redirect.https_redirect else redirect.scheme_redirect or ""
    host = redirect.host_redirect
    if redirect.port_redirect:
        host = f"{host}:{redirect.port_redirect}"
    new_path = redirect.path_redirect or (path.partition("?")[0] if redirect.strip_query else path)
    location = (
        f"{scheme}://{host}{new_path}" if scheme and host else f"//{host}{new_path}" if host else new_path
    )
    return replace(decision, redirect=location)


def _edits(add: Sequence[base_pb2.HeaderValueOption], remove: Sequence[str]) -> HeaderEdits:
    added = []
    for option in add:
        append = option.append_action == base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        if option.HasField("append"):
            append = option.append.value
        added.append((option.header.key.lower(), option.header.value, append))
    return HeaderEdits(tuple(added), tuple(name.lower() for name in remove))


def _fraction(percent: object) -> float:
    denominators = {0: 100, 1: 10_000, 2: 1_000_000}
    numerator = getattr(percent, "numerator", 0)
    return numerator / denominators[getattr(percent, "denominator", 0)]


def _route_match(match: rc.RouteMatch, where: str) -> _Matcher:
    sensitive = match.case_sensitive.value if match.HasField("case_sensitive") else True
    kind = match.WhichOneof("path_specifier")
    path_ok: Callable[[str], bool]
    if kind == "prefix":
        prefix = match.prefix if sensitive else match.prefix.lower()
        path_ok = (lambda p: p.startswith(prefix)) if sensitive else (lambda p: p.lower().startswith(prefix))
    elif kind == "path":
        exact = match.path
        path_ok = (lambda p: p == exact) if sensitive else (lambda p: p.lower() == exact.lower())
    elif kind == "safe_regex":
        pattern = _regex(match.safe_regex.regex, f"{where}.safe_regex")
        path_ok = lambda p: pattern.fullmatch(p) is not None  # noqa: E731
    elif kind == "path_separated_prefix":
        sep_prefix = match.path_separated_prefix
        path_ok = lambda p: p == sep_prefix or p.startswith(sep_prefix + "/")  # noqa: E731
    else:
        raise RouteConfigError(where, f"path specifier {kind!r} is not supported")
    headers = tuple(_header_matcher(h, f"{where}.headers[{i}]") for i, h in enumerate(match.headers))
    params = tuple(
        _query_matcher(q, f"{where}.query_parameters[{i}]") for i, q in enumerate(match.query_parameters)
    )

    def matches(request: Request, path: str, query: Mapping[str, tuple[str, ...]]) -> bool:
        return (
            path_ok(path)
            and all(check(request.headers) for check in headers)
            and all(check(query) for check in params)
        )

    return matches


def _regex(pattern: str, where: str) -> Any:  # re2 has no type stubs
    try:
        return re2.compile(pattern)
    except re2.error as exc:
        raise RouteConfigError(where, f"{pattern!r} is not a valid RE2 regular expression ({exc})") from None


def _string_matcher(m: string_pb2.StringMatcher, where: str) -> Callable[[str], bool]:
    kind = m.WhichOneof("match_pattern")
    fold = m.ignore_case

    def norm(value: str) -> str:
        return value.lower() if fold else value

    if kind == "exact":
        want = norm(m.exact)
        return lambda v: norm(v) == want
    if kind == "prefix":
        want = norm(m.prefix)
        return lambda v: norm(v).startswith(want)
    if kind == "suffix":
        want = norm(m.suffix)
        return lambda v: norm(v).endswith(want)
    if kind == "contains":
        want = norm(m.contains)
        return lambda v: want in norm(v)
    if kind == "safe_regex":
        pattern = _regex(m.safe_regex.regex, f"{where}.safe_regex")
        return lambda v: bool(pattern.fullmatch(v) is not None)
    raise RouteConfigError(where, f"string match {kind!r} is not supported")


def _header_matcher(h: rc.HeaderMatcher, where: str) -> Callable[[Mapping[str, tuple[str, ...]]], bool]:
    name = str(h.name).lower()
    kind = h.WhichOneof("header_match_specifier")
    invert = bool(h.invert_match)
    missing_is_empty = bool(h.treat_missing_header_as_empty)
    value_ok: Callable[[str], bool]
    if kind == "present_match":
        present = bool(h.present_match)

        def check_present(headers: Mapping[str, tuple[str, ...]]) -> bool:
            return ((name in headers) == present) != invert

        return check_present
    if kind == "string_match":
        value_ok = _string_matcher(h.string_match, f"{where}.string_match")
    elif kind == "exact_match":
        exact = h.exact_match
        value_ok = lambda v: v == exact  # noqa: E731
    elif kind == "prefix_match":
        prefix = h.prefix_match
        value_ok = lambda v: v.startswith(prefix)  # noqa: E731
    elif kind == "suffix_match":
        suffix = h.suffix_match
        value_ok = lambda v: v.endswith(suffix)  # noqa: E731
    elif kind == "contains_match":
        contained = h.contains_match
        value_ok = lambda v: contained in v  # noqa: E731
    elif kind == "safe_regex_match":
        pattern = _regex(h.safe_regex_match.regex, f"{where}.safe_regex_match")
        value_ok = lambda v: pattern.fullmatch(v) is not None  # noqa: E731
    elif kind == "range_match":
        low, high = h.range_match.start, h.range_match.end
        value_ok = lambda v: v.lstrip("-").isdigit() and low <= int(v) < high  # noqa: E731
    elif kind is None:
        value_ok = lambda v: True  # noqa: E731 - no specifier: the header must be present
    else:
        raise RouteConfigError(where, f"header match {kind!r} is not supported")

    def check(headers: Mapping[str, tuple[str, ...]]) -> bool:
        values = headers.get(name)
        if values is None:
            return value_ok("") != invert if missing_is_empty else invert
        # Envoy matches a repeated header on its values joined with commas.
        return value_ok(",".join(values)) != invert

    return check


def _query_matcher(
    q: rc.QueryParameterMatcher, where: str
) -> Callable[[Mapping[str, tuple[str, ...]]], bool]:
    name = q.name
    if q.WhichOneof("query_parameter_match_specifier") == "present_match":
        return lambda params: name in params
    value_ok = _string_matcher(q.string_match, f"{where}.string_match")
    return lambda params: name in params and value_ok(params[name][0])
