"""Local rate limits as a first-class resource: ``LocalRateLimit`` (``policy.mesh.dev/v1alpha1``),
rendered for the waypoint as Envoy's ``envoy.filters.http.local_ratelimit`` per-route config.

Istio offers local rate limiting only through EnvoyFilter; this is the small resource it lacks::

    apiVersion: policy.mesh.dev/v1alpha1
    kind: LocalRateLimit
    metadata: {name: reviews, namespace: demo}
    spec:
      targetRefs: [{kind: Service, name: reviews}]
      tokenBucket: {maxTokens: 10, tokensPerFill: 10, fillInterval: 1s}

Every route of the targeted Services' virtual hosts (in the LocalRateLimit's namespace) gets a
token bucket of its own in each waypoint: requests over it are answered 429 with the
``x-ratelimit-*`` headers (draft 03).
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.type.v3 import percent_pb2

from istiod_lite.translate._fields import FieldError, check_fields, mapping, sequence, string
from istiod_lite.translate.l7._envoy import pack
from istiod_lite.translate.l7._values import duration
from istiod_lite.translate.model import Warnings
from istiod_lite.view import KubeObject

__all__ = ["API_GROUP", "FILTER", "apply_rate_limits", "rate_limit_errors"]

API_GROUP = "policy.mesh.dev"
FILTER = "envoy.filters.http.local_ratelimit"
_BUCKET_FIELDS = frozenset({"maxTokens", "tokensPerFill", "fillInterval"})


def _positive(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise FieldError(field, f"{value!r} is not a whole number > 0")
    return value


def _parse(obj: KubeObject) -> tuple[list[str], local_rate_limit_pb2.LocalRateLimit]:
    """The targeted Service names and the filter config; raises FieldError."""
    spec = mapping(obj.spec, "spec")
    services = []
    targets = sequence(spec.get("targetRefs"), "spec.targetRefs")
    if not targets:
        raise FieldError("spec.targetRefs", "name at least one Service")
    for i, raw in enumerate(targets):
        ref = mapping(raw, f"spec.targetRefs[{i}]")
        if ref.get("kind") != "Service" or ref.get("group", "") not in ("", "core"):
            raise FieldError(f"spec.targetRefs[{i}].kind", f"{ref.get('kind')!r}: only Service is supported")
        services.append(string(ref.get("name"), f"spec.targetRefs[{i}].name"))
    bucket = mapping(spec.get("tokenBucket"), "spec.tokenBucket")
    check_fields(bucket, _BUCKET_FIELDS, "spec.tokenBucket")
    config = local_rate_limit_pb2.LocalRateLimit(stat_prefix="local_rate_limit")
    config.token_bucket.max_tokens = _positive(bucket.get("maxTokens"), "spec.tokenBucket.maxTokens")
    per_fill = bucket.get("tokensPerFill", config.token_bucket.max_tokens)
    config.token_bucket.tokens_per_fill.value = _positive(per_fill, "spec.tokenBucket.tokensPerFill")
    interval = duration(bucket.get("fillInterval", "1s"), "spec.tokenBucket.fillInterval")
    if interval.ToTimedelta().total_seconds() <= 0:
        raise FieldError("spec.tokenBucket.fillInterval", "must be longer than 0")
    config.token_bucket.fill_interval.CopyFrom(interval)
    everyone = base_pb2.RuntimeFractionalPercent(default_value=percent_pb2.FractionalPercent(numerator=100))
    config.filter_enabled.CopyFrom(everyone)
    config.filter_enforced.CopyFrom(everyone)
    config.enable_x_ratelimit_headers = ratelimit_pb2.DRAFT_VERSION_03
    return services, config


def rate_limit_errors(obj: KubeObject) -> list[FieldError]:
    """What is wrong with a LocalRateLimit (validation)."""
    try:
        _parse(obj)
    except FieldError as exc:
        return [exc]
    return []


def apply_rate_limits(
    route_config: route_pb2.RouteConfiguration,
    limits: Iterable[KubeObject],
    cluster_domain: str,
    problems: Warnings,
) -> None:
    """Puts each LocalRateLimit's bucket on the routes of the virtual hosts of its Services (in place);
    one that cannot be read is a problem and is skipped."""
    for obj in limits:
        if not str(obj.body.get("apiVersion", "")).startswith(f"{API_GROUP}/"):
            continue
        try:
            services, config = _parse(obj)
        except FieldError as exc:
            problems.add(obj, exc.field, exc.problem)
            continue
        packed = pack(config)
        hosts = {f"{name}.{obj.namespace}.svc.{cluster_domain}" for name in services}
        for vhost in route_config.virtual_hosts:
            if vhost.name.rsplit(":", 1)[0] in hosts:
                for route in vhost.routes:
                    route.typed_per_filter_config[FILTER].CopyFrom(packed)
