"""Envoy route pieces both front ends (VirtualService, HTTPRoute) build, the way Istio builds them.

Matchers, header mutations, retry policies (Istio's default when none is given), faults, mirrors.
Every function is pure and raises ``FieldError`` for a value it cannot use.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from istiod_lite.translate._fields import FieldError, mapping, string
from istiod_lite.translate.l7._values import GRPC_STATUS, duration, fraction, regex
from istiod_lite.view import Json

__all__ = [
    "DEFAULT_RETRY_ON",
    "FAULT_FILTER",
    "redirect_code",
    "HeaderEdits",
    "apply_edits",
    "default_retry_policy",
    "fault_config",
    "header_matcher",
    "istio_retry_policy",
    "mirror_policy",
    "query_matcher",
    "string_matcher",
]

FAULT_FILTER = "envoy.filters.http.fault"
_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_PSEUDO_OR_HOST = frozenset({"host", ":authority"})


def pack(message: Message) -> any_pb2.Any:
    """``message`` packed into an ``Any``."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def string_matcher(spec: Json, field: str) -> string_pb2.StringMatcher | None:
    """Istio's ``StringMatch`` (exact, prefix or regex); None for "present" (regex ``*`` or empty)."""
    match = mapping(spec, field)
    if len(match) > 1:
        raise FieldError(field, f"set exactly one of exact, prefix, regex; got {', '.join(sorted(match))}")
    if "exact" in match:
        return string_pb2.StringMatcher(exact=string(match["exact"], f"{field}.exact"))
    if "prefix" in match:
        return string_pb2.StringMatcher(prefix=string(match["prefix"], f"{field}.prefix"))
    if "regex" in match:
        pattern = string(match["regex"], f"{field}.regex")
        if pattern in ("*", ""):
            return None
        return string_pb2.StringMatcher(safe_regex=regex(pattern, f"{field}.regex"))
    if match:
        raise FieldError(field, f"unknown match type {next(iter(match))!r}; use exact, prefix or regex")
    return None


def header_matcher(name: str, spec: Json, field: str, *, invert: bool = False) -> rc.HeaderMatcher:
    """A header match; ``invert`` is Istio's ``withoutHeaders`` (an absent header then matches)."""
    matcher = string_matcher(spec, field)
    lowered = name.lower()
    if matcher is None:
        return rc.HeaderMatcher(name=lowered, present_match=True, invert_match=invert)
    return rc.HeaderMatcher(
        name=lowered, string_match=matcher, invert_match=invert, treat_missing_header_as_empty=invert
    )


def query_matcher(name: str, spec: Json, field: str) -> rc.QueryParameterMatcher:
    """A query parameter match (``present_match`` for regex ``*`` or an empty match)."""
    matcher = string_matcher(spec, field)
    if matcher is None:
        return rc.QueryParameterMatcher(name=name, present_match=True)
    return rc.QueryParameterMatcher(name=name, string_match=matcher)


class HeaderEdits:
    """Header set/add/remove for one direction, collected in Istio's order (sorted by name)."""

    def __init__(self) -> None:
        self.add: list[base_pb2.HeaderValueOption] = []
        self.remove: list[str] = []
        self.host_rewrite = ""

    def extend(
        self,
        *,
        set_: Iterable[tuple[str, str]] = (),
        add: Iterable[tuple[str, str]] = (),
        remove: Iterable[str] = (),
        request: bool,
    ) -> None:
        """Adds edits; on requests, setting ``host``/``:authority`` becomes a host rewrite."""
        overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        append = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        for action, pairs in ((overwrite, sorted(set_)), (append, sorted(add))):
            for name, value in pairs:
                lowered = name.lower()
                if lowered in _PSEUDO_OR_HOST:
                    if request and (action == overwrite or not self.host_rewrite):
                        self.host_rewrite = value
                    continue
                if lowered.startswith(":"):
                    continue  # pseudo-headers are not edited (as Istio drops them)
                header = base_pb2.HeaderValue(key=lowered, value=value)
                self.add.append(base_pb2.HeaderValueOption(header=header, append_action=action))
        self.remove.extend(sorted(n.lower() for n in remove if n.lower() not in _PSEUDO_OR_HOST))


def redirect_code(value: Json, field: str) -> rc.RedirectAction.RedirectResponseCode.ValueType:
    """Envoy's redirect response code for an HTTP status 301, 302, 303, 307 or 308."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in _REDIRECT_CODES:
        raise FieldError(field, f"{value!r} is not one of 301, 302, 303, 307, 308")
    return _REDIRECT_CODES[value]


def default_retry_policy(*, consistent_hash: bool = False) -> rc.RetryPolicy:
    """Istio's DEFAULT retry policy, used when a route sets none.

    With a consistent-hash load balancer, retries stay on the hashed host (no previous_hosts).
    """
    policy = rc.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=2),
        host_selection_retry_max_attempts=5,
    )
    if not consistent_hash:
        policy.retry_host_predicate.append(
            rc.RetryPolicy.RetryHostPredicate(
                name=_PREVIOUS_HOSTS, typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate())
            )
        )
    return policy


def istio_retry_policy(retries: Json, field: str, *, consistent_hash: bool = False) -> rc.RetryPolicy | None:
    """A VirtualService ``retries`` block; ``attempts <= 0`` means no retries (None)."""
    spec = mapping(retries, field)
    attempts = spec.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise FieldError(f"{field}.attempts", f"{attempts!r} is not a whole number")
    if attempts <= 0:
        return None
    policy = default_retry_policy(consistent_hash=consistent_hash)
    policy.num_retries.value = attempts
    retry_on = string(spec.get("retryOn"), f"{field}.retryOn")
    if retry_on:
        conditions, codes = [], []
        for item in (part.strip() for part in retry_on.split(",")):
            if item.isdigit():
                codes.append(int(item))
            elif item:
                conditions.append(item)
        if codes and "retriable-status-codes" not in conditions:
            conditions.append("retriable-status-codes")
        policy.retry_on = ",".join(conditions)
        policy.retriable_status_codes.extend(codes)
    if spec.get("perTryTimeout") is not None:
        policy.per_try_timeout.CopyFrom(duration(spec["perTryTimeout"], f"{field}.perTryTimeout"))
    if spec.get("backoff") is not None:
        policy.retry_back_off.base_interval.CopyFrom(duration(spec["backoff"], f"{field}.backoff"))
    if spec.get("retryIgnorePreviousHosts") is False:
        del policy.retry_host_predicate[:]
    return policy


def fault_config(fault: Json, field: str) -> any_pb2.Any | None:
    """A VirtualService ``fault`` as the per-route ``HTTPFault`` (None when it injects nothing)."""
    spec = mapping(fault, field)
    config = fault_pb2.HTTPFault()
    delay = mapping(spec.get("delay"), f"{field}.delay")
    if delay:
        if delay.get("fixedDelay") is None:
            raise FieldError(f"{field}.delay.fixedDelay", "is required (exponentialDelay is not supported)")
        config.delay.fixed_delay.CopyFrom(duration(delay["fixedDelay"], f"{field}.delay.fixedDelay"))
        config.delay.percentage.CopyFrom(_fault_fraction(delay, f"{field}.delay"))
    abort = mapping(spec.get("abort"), f"{field}.abort")
    if abort:
        config.abort.CopyFrom(_abort(abort, f"{field}.abort"))
    if not delay and not abort:
        return None
    return pack(config)


def _fault_fraction(spec: Json, field: str) -> percent_pb2.FractionalPercent:
    # Istio: no percentage means nothing is faulted (0 %), not every request
    found = fraction(spec, field, default=0.0)
    assert found is not None
    return found


def _abort(abort: Json, field: str) -> fault_pb2.FaultAbort:
    spec = mapping(abort, field)
    out = fault_pb2.FaultAbort(percentage=_fault_fraction(spec, field))
    if spec.get("httpStatus") is not None:
        status = spec["httpStatus"]
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise FieldError(f"{field}.httpStatus", f"{status!r} is not an HTTP status code (200-599)")
        out.http_status = status
    elif spec.get("grpcStatus") is not None:
        name = string(spec["grpcStatus"], f"{field}.grpcStatus").upper()
        if name not in GRPC_STATUS:
            raise FieldError(
                f"{field}.grpcStatus", f"{name!r} is not a gRPC status name (e.g. UNAVAILABLE, NOT_FOUND)"
            )
        out.grpc_status = GRPC_STATUS[name]
    else:
        raise FieldError(field, "set httpStatus or grpcStatus")
    return out


def mirror_policy(cluster: str, percent: percent_pb2.FractionalPercent) -> rc.RouteAction.RequestMirrorPolicy:
    """A mirror to ``cluster`` for ``percent`` of requests (never traced as sampled, as Istio)."""
    return rc.RouteAction.RequestMirrorPolicy(
        cluster=cluster,
        runtime_fraction=base_pb2.RuntimeFractionalPercent(default_value=percent),
        trace_sampled=wrappers_pb2.BoolValue(value=False),
    )


def disabled_timeout() -> duration_pb2.Duration:
    """0 s: Envoy's route timeout disabled (Istio never lets Envoy's 15 s default apply)."""
    return duration_pb2.Duration()


def apply_edits(
    target: rc.Route | rc.WeightedCluster.ClusterWeight, requests: HeaderEdits, responses: HeaderEdits
) -> None:
    """Adds header edits to a route (or a weighted cluster); a host set becomes a host rewrite."""
    target.request_headers_to_add.extend(requests.add)
    target.request_headers_to_remove.extend(requests.remove)
    target.response_headers_to_add.extend(responses.add)
    target.response_headers_to_remove.extend(responses.remove)
    if requests.host_rewrite:
        if isinstance(target, rc.Route):
            if target.HasField("route"):
                target.route.host_rewrite_literal = requests.host_rewrite
        else:
            target.host_rewrite_literal = requests.host_rewrite
