"""HTTPRoutes (Gateway API, GAMMA: ``parentRefs`` of kind Service) -> Envoy routes for one Service port.

As Istio converts them: each rule becomes one route per ``match``; the routes of every HTTPRoute
attached to the Service are ordered by the Gateway API's precedence (Exact path, then the
longest prefix, then regular expressions; a method match first; more header matches, then more
query matches; then the oldest route and the rule order), with rules without matches last.
A ``PathPrefix`` matches whole path segments (``path_separated_prefix``). Backends default to
weight 1; weights summing to 0 answer 500, as does a backend that is not a known Service.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.v3 import percent_pb2

from istiod_lite.translate._fields import FieldError, mapping, port, sequence, string
from istiod_lite.translate.l7._context import RouteContext, RouteScope
from istiod_lite.translate.l7._envoy import (
    HeaderEdits,
    apply_edits,
    default_retry_policy,
    disabled_timeout,
    mirror_policy,
    redirect_code,
)
from istiod_lite.translate.l7._values import duration, regex
from istiod_lite.view import Json, JsonMap, KubeObject

__all__ = ["check_http_route_rule", "http_route_routes", "service_parents"]

_PATH_RANK = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}
_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "URLRewrite": "urlRewrite",
    "RequestRedirect": "requestRedirect",
    "RequestMirror": "requestMirror",
}
"""Supported filter types and the field holding each one's settings."""
_SortKey = tuple[int, int, int, int, int, int]


def service_parents(route: KubeObject) -> list[tuple[str, str, Json]]:
    """(namespace, name, port or None) of each Service the route's ``parentRefs`` name."""
    out = []
    for i, raw in enumerate(sequence(route.spec.get("parentRefs"), "spec.parentRefs")):
        ref = mapping(raw, f"spec.parentRefs[{i}]")
        if ref.get("kind") != "Service" or ref.get("group", "") not in ("", "core"):
            continue
        namespace = string(ref.get("namespace"), f"spec.parentRefs[{i}].namespace") or route.namespace
        out.append((namespace, string(ref.get("name"), f"spec.parentRefs[{i}].name"), ref.get("port")))
    return out


def http_route_routes(routes: list[KubeObject], scope: RouteScope, ctx: RouteContext) -> list[rc.Route]:
    """The routes of every HTTPRoute in ``routes`` (all attached to ``scope``), in precedence order."""
    entries: list[tuple[_SortKey, rc.Route]] = []
    for obj in sorted(routes, key=lambda o: (o.creation_timestamp, o.namespace, o.name)):
        if obj.namespace != scope.service.namespace:
            ctx.problem(
                obj,
                "spec.parentRefs",
                f"attaches to Service {scope.service.namespace}/{scope.service.name} from another namespace"
                " (a consumer route); waypoints apply only routes in the Service's namespace",
            )
            continue
        try:
            rules = sequence(obj.spec.get("rules"), "spec.rules")
        except FieldError as exc:
            ctx.problem(obj, exc.field, exc.problem)
            continue
        for i, raw in enumerate(rules):
            field = f"spec.rules[{i}]"
            try:
                entries.extend(_rule(obj, mapping(raw, field), field, index=i, scope=scope, ctx=ctx))
            except FieldError as exc:
                ctx.problem(obj, exc.field, f"{exc.problem}; the rule is skipped")
    entries.sort(key=lambda entry: entry[0])  # stable: creation order breaks ties
    return [route for _, route in entries]


def _rule(
    obj: KubeObject, rule: JsonMap, field: str, *, index: int, scope: RouteScope, ctx: RouteContext
) -> list[tuple[_SortKey, rc.Route]]:
    name = string(rule.get("name"), f"{field}.name") or f"{obj.namespace}.{obj.name}.{index}"
    matches = sequence(rule.get("matches"), f"{field}.matches")
    out = []
    for j, raw in enumerate(matches or (None,)):
        where = f"{field}.matches[{j}]"
        spec = mapping(raw, where)
        match, prefix = _match(spec, where)
        route = rc.Route(name=name, match=match)
        _action(obj, rule, field, prefix=prefix, scope=scope, ctx=ctx, route=route)
        out.append((_sort_key(spec, raw is None), route))
    return out


def check_http_route_rule(rule: JsonMap, field: str) -> None:
    """Raises FieldError for what translation refuses in one rule's matches and filter types."""
    for j, raw in enumerate(sequence(rule.get("matches"), f"{field}.matches")):
        _match(mapping(raw, f"{field}.matches[{j}]"), f"{field}.matches[{j}]")
    for k, raw in enumerate(sequence(rule.get("filters"), f"{field}.filters")):
        _filter_kind(mapping(raw, f"{field}.filters[{k}]"), f"{field}.filters[{k}]")


def _filter_kind(spec: JsonMap, field: str) -> str:
    kind = string(spec.get("type"), f"{field}.type")
    if kind not in _FILTER_FIELDS:
        raise FieldError(
            f"{field}.type",
            f"filter {kind!r} is not supported; use one of {', '.join(sorted(_FILTER_FIELDS))}",
        )
    return kind


def _sort_key(spec: JsonMap, no_match: bool) -> _SortKey:
    path = spec.get("path")
    kind, value = "PathPrefix", "/"
    if hasattr(path, "get"):
        kind = str(path.get("type") or "PathPrefix")  # type: ignore[union-attr]
        value = str(path.get("value") or "/")  # type: ignore[union-attr]
    return (
        int(no_match),
        _PATH_RANK.get(kind, 3),
        -len(value),
        0 if spec.get("method") else 1,
        -len(sequence(spec.get("headers"), "headers")),
        -len(sequence(spec.get("queryParams"), "queryParams")),
    )


def _match(spec: JsonMap, field: str) -> tuple[rc.RouteMatch, str]:
    """The Envoy match, and the path prefix it matched ("" unless PathPrefix)."""
    match = rc.RouteMatch()
    path = mapping(spec.get("path"), f"{field}.path")
    kind = string(path.get("type"), f"{field}.path.type") or "PathPrefix"
    value = string(path.get("value"), f"{field}.path.value") or "/"
    prefix = ""
    if kind == "Exact":
        match.path = value
    elif kind == "PathPrefix":
        trimmed = value.rstrip("/")
        prefix = trimmed or "/"
        if trimmed:
            match.path_separated_prefix = trimmed
        else:
            match.prefix = "/"
    elif kind == "RegularExpression":
        match.safe_regex.CopyFrom(regex(value, f"{field}.path.value"))
    else:
        raise FieldError(f"{field}.path.type", f"{kind!r} is not Exact, PathPrefix or RegularExpression")
    headers = [
        _named_match(h, f"{field}.headers[{k}]")
        for k, h in enumerate(sequence(spec.get("headers"), f"{field}.headers"))
    ]
    for name, kind_, value_, where in sorted(headers, key=lambda h: h[0].lower()):
        header = rc.HeaderMatcher(name=name.lower())
        if kind_ == "Exact":
            header.string_match.exact = value_
        else:
            header.string_match.safe_regex.CopyFrom(regex(value_, f"{where}.value"))
        match.headers.append(header)
    if spec.get("method") is not None:
        match.headers.append(rc.HeaderMatcher(name=":method"))
        match.headers[-1].string_match.exact = string(spec["method"], f"{field}.method")
    params = sequence(spec.get("queryParams"), f"{field}.queryParams")
    for name, kind_, value_, where in sorted(
        _named_match(q, f"{field}.queryParams[{k}]") for k, q in enumerate(params)
    ):
        query = rc.QueryParameterMatcher(name=name)
        if kind_ == "Exact":
            query.string_match.exact = value_
        else:
            query.string_match.safe_regex.CopyFrom(regex(value_, f"{where}.value"))
        match.query_parameters.append(query)
    return match, prefix


def _named_match(raw: Json, field: str) -> tuple[str, str, str, str]:
    spec = mapping(raw, field)
    name = string(spec.get("name"), f"{field}.name")
    kind = string(spec.get("type"), f"{field}.type") or "Exact"
    if not name:
        raise FieldError(f"{field}.name", "is required")
    if kind not in ("Exact", "RegularExpression"):
        raise FieldError(f"{field}.type", f"{kind!r} is not Exact or RegularExpression")
    return name, kind, string(spec.get("value"), f"{field}.value"), field


def _action(
    obj: KubeObject,
    rule: JsonMap,
    field: str,
    *,
    prefix: str,
    scope: RouteScope,
    ctx: RouteContext,
    route: rc.Route,
) -> None:
    """Filters, then a redirect or the backends, of one rule for one of its matches."""
    requests, responses = HeaderEdits(), HeaderEdits()
    redirect = rewrite = None
    mirrors: list[rc.RouteAction.RequestMirrorPolicy] = []
    for k, raw in enumerate(sequence(rule.get("filters"), f"{field}.filters")):
        where = f"{field}.filters[{k}]"
        spec = mapping(raw, where)
        kind = _filter_kind(spec, where)
        body = mapping(spec.get(_FILTER_FIELDS[kind]), f"{where}.{_FILTER_FIELDS[kind]}")
        if kind == "RequestHeaderModifier":
            _modifier(body, f"{where}.requestHeaderModifier", requests, request=True)
        elif kind == "ResponseHeaderModifier":
            _modifier(body, f"{where}.responseHeaderModifier", responses, request=False)
        elif kind == "RequestRedirect":
            redirect = _redirect(body, f"{where}.requestRedirect", prefix)
        elif kind == "URLRewrite":
            rewrite = (body, f"{where}.urlRewrite")
        else:
            mirrors.append(_mirror(obj, body, f"{where}.requestMirror", ctx=ctx))
    if redirect is not None:
        route.redirect.CopyFrom(redirect)
    else:
        _forward(obj, rule, field, ctx=ctx, route=route)
        if route.HasField("route"):
            if rewrite is not None:
                _rewrite(*rewrite, prefix, route.route)
            route.route.request_mirror_policies.extend(mirrors)
    apply_edits(route, requests, responses)


def _modifier(spec: JsonMap, field: str, edits: HeaderEdits, *, request: bool) -> None:
    def pairs(key: str) -> list[tuple[str, str]]:
        items = sequence(spec.get(key), f"{field}.{key}")
        return [n[:2] for n in (_named_value(item, f"{field}.{key}[{i}]") for i, item in enumerate(items))]

    remove = [string(n, f"{field}.remove[]") for n in sequence(spec.get("remove"), f"{field}.remove")]
    edits.extend(set_=pairs("set"), add=pairs("add"), remove=remove, request=request)


def _named_value(raw: Json, field: str) -> tuple[str, str, str]:
    spec = mapping(raw, field)
    name = string(spec.get("name"), f"{field}.name")
    if not name:
        raise FieldError(f"{field}.name", "is required")
    return name, string(spec.get("value"), f"{field}.value"), field


def _forward(obj: KubeObject, rule: JsonMap, field: str, *, ctx: RouteContext, route: rc.Route) -> None:
    backends = []
    for k, raw in enumerate(sequence(rule.get("backendRefs"), f"{field}.backendRefs")):
        where = f"{field}.backendRefs[{k}]"
        spec = mapping(raw, where)
        weight = spec.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise FieldError(f"{where}.weight", f"{weight!r} is not a whole number >= 0")
        if spec.get("filters"):
            ctx.problem(obj, f"{where}.filters", "filters on a backendRef are not supported yet; ignored")
        backends.append((*_backend(obj, spec, where, ctx=ctx), weight))
    live = [(name, hashes, weight) for name, hashes, weight in backends if weight > 0]
    if not live:
        why = "the backendRefs weights sum to 0" if backends else "the rule has no backendRefs"
        ctx.problem(obj, f"{field}.backendRefs", f"{why}; requests get 500")
        route.direct_response.status = 500
        return
    action = route.route
    if len(live) == 1:
        action.cluster = live[0][0]
    else:
        for name, _, weight in live:
            action.weighted_clusters.clusters.add(name=name).weight.value = weight
    if all(hashes == live[0][1] for _, hashes, _ in live):
        action.hash_policy.extend(live[0][1])  # one hash policy only when every backend agrees
    action.cluster_not_found_response_code = rc.RouteAction.INTERNAL_SERVER_ERROR
    _timeouts(rule, field, action)


def _backend(
    obj: KubeObject, spec: JsonMap, field: str, *, ctx: RouteContext
) -> tuple[str, list[rc.RouteAction.HashPolicy]]:
    """The cluster of a Service backendRef and its hash policy."""
    name = string(spec.get("name"), f"{field}.name")
    namespace = string(spec.get("namespace"), f"{field}.namespace") or obj.namespace
    if spec.get("kind", "Service") != "Service" or spec.get("group", "") not in ("", "core"):
        raise FieldError(f"{field}.kind", "only Service backends are supported")
    number = port(spec.get("port"), f"{field}.port")
    service = ctx.hosts.resolve(f"{name}.{namespace}", namespace)
    if service is None:
        ctx.problem(obj, f"{field}.name", f"no Service {namespace}/{name}; its share of requests gets 500")
        return f"outbound|{number}||{name}.{namespace}.svc.{ctx.hosts.cluster_domain}", []
    return ctx.destination(obj, field, service, number), ctx.hash_policy(service, number)


def _timeouts(rule: JsonMap, field: str, action: rc.RouteAction) -> None:
    """``timeouts`` and ``retry`` (GEP-1731) as Istio converts them.

    ``request`` is the route timeout; ``backendRequest`` is the per-try timeout when the rule
    retries, else it caps the route timeout. Without ``retry``, Istio's default retry policy.
    """
    timeouts = mapping(rule.get("timeouts"), f"{field}.timeouts")
    request = duration(timeouts["request"], f"{field}.timeouts.request") if timeouts.get("request") else None
    backend = None
    if timeouts.get("backendRequest"):
        backend = duration(timeouts["backendRequest"], f"{field}.timeouts.backendRequest")
    consistent_hash = bool(action.hash_policy)
    policy = default_retry_policy(consistent_hash=consistent_hash)
    if rule.get("retry") is not None:
        policy = _retry(rule["retry"], f"{field}.retry", consistent_hash=consistent_hash)
        if policy is not None and backend is not None:
            policy.per_try_timeout.CopyFrom(backend)
            backend = None
    values = [d for d in (request, backend) if d is not None]
    timeout = min(values, key=lambda d: (d.seconds, d.nanos)) if values else disabled_timeout()
    action.timeout.CopyFrom(timeout)
    action.max_stream_duration.grpc_timeout_header_max.CopyFrom(timeout)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)


def _retry(raw: Json, field: str, *, consistent_hash: bool) -> rc.RetryPolicy | None:
    """A rule's ``retry``: ``attempts`` (default 2; 0 disables), ``codes``, ``backoff``."""
    spec = mapping(raw, field)
    attempts = spec.get("attempts", 2)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise FieldError(f"{field}.attempts", f"{attempts!r} is not a whole number >= 0")
    if attempts == 0:
        return None
    policy = default_retry_policy(consistent_hash=consistent_hash)
    policy.num_retries.value = attempts
    codes = sequence(spec.get("codes"), f"{field}.codes")
    for i, code in enumerate(codes):
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise FieldError(f"{field}.codes[{i}]", f"{code!r} is not an HTTP error status (400-599)")
        policy.retriable_status_codes.append(code)
    if spec.get("backoff") is not None:
        policy.retry_back_off.base_interval.CopyFrom(duration(spec["backoff"], f"{field}.backoff"))
    return policy


def _rewrite(spec: JsonMap, field: str, prefix: str, action: rc.RouteAction) -> None:
    if spec.get("hostname") is not None:
        action.host_rewrite_literal = string(spec["hostname"], f"{field}.hostname")
    path = mapping(spec.get("path"), f"{field}.path")
    kind = string(path.get("type"), f"{field}.path.type")
    if kind == "ReplaceFullPath":
        action.regex_rewrite.pattern.regex = "/.*"
        action.regex_rewrite.substitution = string(
            path.get("replaceFullPath"), f"{field}.path.replaceFullPath"
        )
    elif kind == "ReplacePrefixMatch":
        if not prefix:
            raise FieldError(f"{field}.path", "ReplacePrefixMatch needs a PathPrefix match")
        replacement = string(path.get("replacePrefixMatch"), f"{field}.path.replacePrefixMatch") or "/"
        if replacement == "/" and prefix != "/":
            # "/" would leave "//rest"; keep exactly one slash after the matched segments
            action.regex_rewrite.pattern.regex = f"^{_re2_escape(prefix)}/*"
            action.regex_rewrite.substitution = "/"
        else:
            action.prefix_rewrite = replacement
    elif kind:
        raise FieldError(f"{field}.path.type", f"{kind!r} is not ReplaceFullPath or ReplacePrefixMatch")


def _re2_escape(text: str) -> str:
    return "".join(f"\\{c}" if not c.isalnum() and c not in "/-_" else c for c in text)


def _redirect(spec: JsonMap, field: str, prefix: str) -> rc.RedirectAction:
    redirect = rc.RedirectAction()
    if spec.get("scheme") is not None:
        redirect.scheme_redirect = string(spec["scheme"], f"{field}.scheme")
    if spec.get("hostname") is not None:
        redirect.host_redirect = string(spec["hostname"], f"{field}.hostname")
    if spec.get("port") is not None:
        redirect.port_redirect = port(spec["port"], f"{field}.port")
    path = mapping(spec.get("path"), f"{field}.path")
    kind = string(path.get("type"), f"{field}.path.type")
    if kind == "ReplaceFullPath":
        redirect.path_redirect = string(path.get("replaceFullPath"), f"{field}.path.replaceFullPath")
    elif kind == "ReplacePrefixMatch":
        if not prefix:
            raise FieldError(f"{field}.path", "ReplacePrefixMatch needs a PathPrefix match")
        redirect.prefix_rewrite = (
            string(path.get("replacePrefixMatch"), f"{field}.path.replacePrefixMatch") or "/"
        )
    code = spec.get("statusCode", 302)
    redirect.response_code = redirect_code(code, f"{field}.statusCode")
    return redirect


def _mirror(
    obj: KubeObject, spec: JsonMap, field: str, *, ctx: RouteContext
) -> rc.RouteAction.RequestMirrorPolicy:
    backend = mapping(spec.get("backendRef"), f"{field}.backendRef")
    name, _ = _backend(obj, backend, f"{field}.backendRef", ctx=ctx)
    percent = percent_pb2.FractionalPercent(
        numerator=1_000_000, denominator=percent_pb2.FractionalPercent.MILLION
    )
    if spec.get("percent") is not None:
        value = spec["percent"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise FieldError(f"{field}.percent", f"{value!r} is not a whole percentage 0-100")
        percent.numerator = value * 10_000
    elif spec.get("fraction") is not None:
        frac = mapping(spec["fraction"], f"{field}.fraction")
        numerator, denominator = frac.get("numerator"), frac.get("denominator", 100)
        if (
            not isinstance(numerator, int)
            or not isinstance(denominator, int)
            or not 0 <= numerator <= denominator
            or denominator <= 0
        ):
            raise FieldError(f"{field}.fraction", "needs 0 <= numerator <= denominator and denominator > 0")
        percent.numerator = numerator * 1_000_000 // denominator
    return mirror_policy(name, percent)
