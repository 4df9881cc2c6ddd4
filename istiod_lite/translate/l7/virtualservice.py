"""VirtualService ``http`` rules -> Envoy routes for one Service port, as Istio's waypoint builds them.

Rules are read in order and each ``match`` entry becomes its own route; a rule without a match
(or whose match every request meets) ends the list. A match on another port does not apply;
a match on ``sourceLabels`` is dropped (a waypoint cannot see the client's labels) and
reported. A rule with a field that cannot be used is skipped and reported; the other rules
still apply.
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from google.protobuf import wrappers_pb2

from istiod_lite.translate._fields import FieldError, mapping, sequence, string
from istiod_lite.translate.l7._context import RouteContext, RouteScope, is_catch_all
from istiod_lite.translate.l7._envoy import (
    FAULT_FILTER,
    HeaderEdits,
    apply_edits,
    default_retry_policy,
    disabled_timeout,
    fault_config,
    header_matcher,
    istio_retry_policy,
    mirror_policy,
    query_matcher,
    redirect_code,
    string_matcher,
)
from istiod_lite.translate.l7._values import duration, fraction, regex
from istiod_lite.view import Json, JsonMap, KubeObject

__all__ = ["destination_weight", "route_destinations", "route_match", "virtual_service_routes"]


def virtual_service_routes(
    vs: KubeObject, scope: RouteScope, ctx: RouteContext
) -> tuple[list[rc.Route], bool]:
    """The routes of ``vs`` for ``scope``, and whether the last one catches every request."""
    routes: list[rc.Route] = []
    try:
        rules = sequence(vs.spec.get("http"), "spec.http")
    except FieldError as exc:
        ctx.problem(vs, exc.field, exc.problem)
        return routes, False
    for i, raw in enumerate(rules):
        field = f"spec.http[{i}]"
        try:
            rule_routes, done = _rule(vs, mapping(raw, field), field, scope=scope, ctx=ctx)
        except FieldError as exc:
            ctx.problem(vs, exc.field, f"{exc.problem}; the rule is skipped")
            continue
        routes.extend(rule_routes)
        if done:
            return routes, True
    return routes, False


def _rule(
    vs: KubeObject, http: JsonMap, field: str, *, scope: RouteScope, ctx: RouteContext
) -> tuple[list[rc.Route], bool]:
    template = _action(vs, http, field, scope=scope, ctx=ctx)
    name = string(http.get("name"), f"{field}.name")
    raw_matches = sequence(http.get("match"), f"{field}.match")
    if not raw_matches:
        route = _named(template, name, rc.RouteMatch(prefix="/"))
        return [route], True
    routes = []
    for j, raw in enumerate(raw_matches):
        where = f"{field}.match[{j}]"
        spec = mapping(raw, where)
        if spec.get("sourceLabels"):
            ctx.problem(
                vs, f"{where}.sourceLabels", "a waypoint cannot match on the client's labels; dropped"
            )
            continue
        if spec.get("port") is not None and spec.get("port") != scope.port.port:
            continue
        gateways = sequence(spec.get("gateways"), f"{where}.gateways")
        if gateways and "mesh" not in gateways:
            continue
        match_name = string(spec.get("name"), f"{where}.name")
        full_name = f"{name}.{match_name}" if name and match_name else name or match_name
        route = _named(template, full_name, route_match(spec, where))
        routes.append(route)
        if is_catch_all(route.match):
            return routes, True
    return routes, False


def _named(template: rc.Route, name: str, match: rc.RouteMatch) -> rc.Route:
    route = rc.Route()
    route.CopyFrom(template)
    route.name = name
    route.match.CopyFrom(match)
    return route


def route_match(spec: JsonMap, field: str) -> rc.RouteMatch:
    """The Envoy match of one VirtualService ``HTTPMatchRequest``; raises FieldError."""
    match = rc.RouteMatch()
    uri = mapping(spec.get("uri"), f"{field}.uri")
    matcher = string_matcher(uri, f"{field}.uri") if uri else None
    if matcher is None:
        match.prefix = "/"
    elif matcher.HasField("safe_regex"):
        match.safe_regex.CopyFrom(matcher.safe_regex)
    elif matcher.WhichOneof("match_pattern") == "exact":
        match.path = matcher.exact
    else:
        match.prefix = matcher.prefix
    if spec.get("ignoreUriCase"):
        match.case_sensitive.CopyFrom(wrappers_pb2.BoolValue(value=False))
    headers = mapping(spec.get("headers"), f"{field}.headers")
    for name in sorted(headers, key=str.lower):
        match.headers.append(header_matcher(name, headers[name], f"{field}.headers.{name}"))
    without = mapping(spec.get("withoutHeaders"), f"{field}.withoutHeaders")
    for name in sorted(without, key=str.lower):
        match.headers.append(
            header_matcher(name, without[name], f"{field}.withoutHeaders.{name}", invert=True)
        )
    for key, header in (("method", ":method"), ("authority", ":authority"), ("scheme", ":scheme")):
        if spec.get(key) is not None:
            match.headers.append(header_matcher(header, spec[key], f"{field}.{key}"))
    params = mapping(spec.get("queryParams"), f"{field}.queryParams")
    for name in sorted(params):
        match.query_parameters.append(query_matcher(name, params[name], f"{field}.queryParams.{name}"))
    return match


def route_destinations(http: JsonMap, field: str) -> tuple[Json, ...]:
    """A forwarding rule's ``route`` list, which must not be empty; raises FieldError."""
    destinations = sequence(http.get("route"), f"{field}.route")
    if not destinations:
        raise FieldError(f"{field}.route", "needs at least one destination (or a redirect or directResponse)")
    return destinations


def destination_weight(spec: JsonMap, field: str, *, only: bool) -> int:
    """A destination's ``weight`` (100 when it is the only one, else 0 when unset); raises FieldError."""
    weight = spec.get("weight", 100 if only else 0)
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
        raise FieldError(f"{field}.weight", f"{weight!r} is not a whole number >= 0")
    return weight


def _action(vs: KubeObject, http: JsonMap, field: str, *, scope: RouteScope, ctx: RouteContext) -> rc.Route:
    """Everything of a rule but its match and name."""
    route = rc.Route()
    if http.get("redirect") is not None:
        route.redirect.CopyFrom(_redirect(http["redirect"], f"{field}.redirect"))
    elif http.get("directResponse") is not None:
        route.direct_response.CopyFrom(_direct_response(http["directResponse"], f"{field}.directResponse"))
    else:
        _forward(vs, http, field, scope=scope, ctx=ctx, route=route)
    requests, responses = HeaderEdits(), HeaderEdits()
    _headers(http.get("headers"), f"{field}.headers", requests, responses)
    apply_edits(route, requests, responses)
    if http.get("fault") is not None:
        fault = fault_config(http["fault"], f"{field}.fault")
        if fault is not None:
            route.typed_per_filter_config[FAULT_FILTER].CopyFrom(fault)
    if http.get("corsPolicy") is not None:
        ctx.problem(vs, f"{field}.corsPolicy", "CORS is not supported by this waypoint yet; ignored")
    return route


def _forward(
    vs: KubeObject, http: JsonMap, field: str, *, scope: RouteScope, ctx: RouteContext, route: rc.Route
) -> None:
    action = route.route
    destinations = route_destinations(http, field)
    weighted: list[tuple[str, int, HeaderEdits, HeaderEdits]] = []
    hashes = None
    for k, raw in enumerate(destinations):
        where = f"{field}.route[{k}]"
        spec = mapping(raw, where)
        name, hash_policy = _destination(
            vs, spec.get("destination"), f"{where}.destination", scope=scope, ctx=ctx
        )
        hashes = hash_policy if hashes is None or hashes == hash_policy else []
        weight = destination_weight(spec, where, only=len(destinations) == 1)
        requests, responses = HeaderEdits(), HeaderEdits()
        _headers(spec.get("headers"), f"{where}.headers", requests, responses)
        weighted.append((name, weight, requests, responses))
    live = [w for w in weighted if w[1] > 0]
    if not live:
        ctx.problem(vs, f"{field}.route", "the destination weights sum to 0; requests get 500")
        route.ClearField("route")
        route.direct_response.status = 500
        return
    if len(live) == 1:
        name, _, requests, responses = live[0]
        action.cluster = name
        apply_edits(route, requests, responses)
    else:
        for name, weight, requests, responses in live:
            cluster = action.weighted_clusters.clusters.add(name=name)
            cluster.weight.value = weight
            apply_edits(cluster, requests, responses)
    action.hash_policy.extend(hashes or [])
    _timeouts_and_retries(http, field, action, consistent_hash=bool(hashes))
    _rewrite(http.get("rewrite"), f"{field}.rewrite", action)
    _mirrors(vs, http, field, scope=scope, ctx=ctx, action=action)


def _destination(
    vs: KubeObject, raw: Json, field: str, *, scope: RouteScope, ctx: RouteContext
) -> tuple[str, list[rc.RouteAction.HashPolicy]]:
    spec = mapping(raw, field)
    host = string(spec.get("host"), f"{field}.host")
    if not host:
        raise FieldError(f"{field}.host", "is required")
    service = ctx.hosts.resolve(host, vs.namespace)
    subset = string(spec.get("subset"), f"{field}.subset")
    number = mapping(spec.get("port"), f"{field}.port").get("number")
    if service is None:
        ctx.problem(vs, f"{field}.host", f"no Service is named {host!r}; requests routed to it get 503")
        port = number if isinstance(number, int) else scope.port.port
        return f"outbound|{port}|{subset}|{host}", []
    if number is None:
        number = service.ports[0].port if len(service.ports) == 1 else scope.port.port
    if isinstance(number, bool) or not isinstance(number, int):
        raise FieldError(f"{field}.port.number", f"{number!r} is not a port number")
    name = ctx.destination(vs, field, service, number, subset)
    return name, ctx.hash_policy(service, number, subset)


def _timeouts_and_retries(
    http: JsonMap, field: str, action: rc.RouteAction, *, consistent_hash: bool
) -> None:
    timeout = disabled_timeout()
    if http.get("timeout") is not None:
        timeout = duration(http["timeout"], f"{field}.timeout")
    action.timeout.CopyFrom(timeout)
    action.max_stream_duration.grpc_timeout_header_max.CopyFrom(timeout)
    if http.get("retries") is None:
        action.retry_policy.CopyFrom(default_retry_policy(consistent_hash=consistent_hash))
        return
    policy = istio_retry_policy(http["retries"], f"{field}.retries", consistent_hash=consistent_hash)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)


def _rewrite(raw: Json, field: str, action: rc.RouteAction) -> None:
    spec = mapping(raw, field)
    if spec.get("uri") is not None:
        action.prefix_rewrite = string(spec["uri"], f"{field}.uri")
    regex_rewrite = mapping(spec.get("uriRegexRewrite"), f"{field}.uriRegexRewrite")
    if regex_rewrite:
        action.regex_rewrite.pattern.CopyFrom(
            regex(regex_rewrite.get("match"), f"{field}.uriRegexRewrite.match")
        )
        action.regex_rewrite.substitution = string(
            regex_rewrite.get("rewrite"), f"{field}.uriRegexRewrite.rewrite"
        )
    if spec.get("authority") is not None:
        action.host_rewrite_literal = string(spec["authority"], f"{field}.authority")


def _mirrors(
    vs: KubeObject, http: JsonMap, field: str, *, scope: RouteScope, ctx: RouteContext, action: rc.RouteAction
) -> None:
    if http.get("mirror") is not None:
        name, _ = _destination(vs, http["mirror"], f"{field}.mirror", scope=scope, ctx=ctx)
        percent = fraction(
            {"percentage": http.get("mirrorPercentage"), "percent": http.get("mirrorPercent")},
            field,
            default=100.0,
        )
        if percent is not None and percent.numerator > 0:
            action.request_mirror_policies.append(mirror_policy(name, percent))
    for k, raw in enumerate(sequence(http.get("mirrors"), f"{field}.mirrors")):
        where = f"{field}.mirrors[{k}]"
        spec = mapping(raw, where)
        name, _ = _destination(vs, spec.get("destination"), f"{where}.destination", scope=scope, ctx=ctx)
        percent = fraction(spec, where, default=100.0)
        if percent is not None and percent.numerator > 0:
            action.request_mirror_policies.append(mirror_policy(name, percent))


def _redirect(raw: Json, field: str) -> rc.RedirectAction:
    spec = mapping(raw, field)
    redirect = rc.RedirectAction()
    if spec.get("uri") is not None:
        redirect.path_redirect = string(spec["uri"], f"{field}.uri")
    if spec.get("authority") is not None:
        redirect.host_redirect = string(spec["authority"], f"{field}.authority")
    if spec.get("scheme") is not None:
        redirect.scheme_redirect = string(spec["scheme"], f"{field}.scheme")
    if spec.get("port") is not None:
        port = spec["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise FieldError(f"{field}.port", f"{port!r} is not a port number")
        redirect.port_redirect = port
    code = spec.get("redirectCode", 301) or 301
    redirect.response_code = redirect_code(code, f"{field}.redirectCode")
    return redirect


def _direct_response(raw: Json, field: str) -> rc.DirectResponseAction:
    spec = mapping(raw, field)
    status = spec.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise FieldError(f"{field}.status", f"{status!r} is not an HTTP status code (200-599)")
    response = rc.DirectResponseAction(status=status)
    body = mapping(spec.get("body"), f"{field}.body")
    if body.get("string") is not None:
        response.body.inline_string = string(body["string"], f"{field}.body.string")
    return response


def _headers(raw: Json, field: str, requests: HeaderEdits, responses: HeaderEdits) -> None:
    spec = mapping(raw, field)
    for direction, edits in (("request", requests), ("response", responses)):
        where = f"{field}.{direction}"
        part = mapping(spec.get(direction), where)
        set_ = mapping(part.get("set"), f"{where}.set")
        add = mapping(part.get("add"), f"{where}.add")
        edits.extend(
            set_=[(k, string(v, f"{where}.set.{k}")) for k, v in set_.items()],
            add=[(k, string(v, f"{where}.add.{k}")) for k, v in add.items()],
            remove=[string(n, f"{where}.remove[]") for n in sequence(part.get("remove"), f"{where}.remove")],
            request=direction == "request",
        )
