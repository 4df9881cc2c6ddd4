"""The Telemetry API's tracing for a waypoint (``telemetry.istio.io/v1`` Telemetry), as Envoy's
``Route.tracing`` on every route of the waypoint's RouteConfiguration.

Scope as Istio: a Telemetry in the root namespace without a selector is the mesh default; one in
the waypoint's namespace without a selector or targetRefs applies to the namespace; one whose
``targetRefs`` name the waypoint's Gateway (or whose ``selector`` matches its pods' labels)
applies to the waypoint. The most specific scope that sets a field wins (sampling, span reporting);
custom tags are merged, the more specific overriding a tag of the same name.
``randomSamplingPercentage`` becomes ``random_sampling``; ``disableSpanReporting: true`` makes it
0 (failures are still kept by the waypoint's tail keep); ``customTags`` literal/header/environment
become Envoy's custom tags. Where spans go (``providers``) is the waypoint's exporter setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2

from istiod_lite.translate._fields import (
    FieldError,
    mapping,
    match_labels,
    selector_matches,
    sequence,
    string,
)
from istiod_lite.translate.l7._values import percentage
from istiod_lite.translate.model import Warnings
from istiod_lite.view import Json, KubeObject

__all__ = ["apply_tracing", "telemetry_errors", "tracing_for"]

_GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
_API = "telemetry.istio.io/"


def _applies(obj: KubeObject, gateway: KubeObject, root_namespace: str) -> int | None:
    """The scope rank of ``obj`` for the waypoint (0 mesh, 1 namespace, 2 the waypoint), or None."""
    spec = mapping(obj.spec, "spec")
    targets = sequence(spec.get("targetRefs") or (), "spec.targetRefs")
    selector = spec.get("selector")
    if targets:
        for i, raw in enumerate(targets):
            ref = mapping(raw, f"spec.targetRefs[{i}]")
            if (obj.namespace, ref.get("kind"), ref.get("name")) == (
                gateway.namespace,
                "Gateway",
                gateway.name,
            ):
                return 2
        return None
    if selector is not None:
        labels = {_GATEWAY_NAME_LABEL: gateway.name}
        wanted = match_labels(
            mapping(selector, "spec.selector").get("matchLabels"), "spec.selector.matchLabels"
        )
        matched = selector_matches(wanted, labels)
        return 2 if matched and obj.namespace == gateway.namespace else None
    if obj.namespace == gateway.namespace:
        return 1
    return 0 if obj.namespace == root_namespace else None


def _selector(raw: Json) -> Mapping[str, str]:
    return match_labels(mapping(raw, "spec.selector").get("matchLabels"), "spec.selector.matchLabels")


@dataclass(frozen=True, slots=True)
class _Settings:
    """One ``spec.tracing`` entry: what it sets (None: not set)."""

    sampling: float | None = None
    disabled: bool | None = None
    tags: Mapping[str, custom_tag_pb2.CustomTag] = field(default_factory=dict)


def _tags(raw: Json, field: str) -> dict[str, custom_tag_pb2.CustomTag]:
    tags: dict[str, custom_tag_pb2.CustomTag] = {}
    for name, value in mapping(raw, field).items():
        where = f"{field}.{name}"
        spec = mapping(value, where)
        tag = custom_tag_pb2.CustomTag(tag=str(name))
        if "literal" in spec:
            literal = mapping(spec["literal"], f"{where}.literal")
            tag.literal.value = string(literal.get("value"), f"{where}.literal.value")
        elif "header" in spec:
            header = mapping(spec["header"], f"{where}.header")
            tag.request_header.name = string(header.get("name"), f"{where}.header.name")
            tag.request_header.default_value = str(header.get("defaultValue", ""))
        elif "environment" in spec:
            environment = mapping(spec["environment"], f"{where}.environment")
            tag.environment.name = string(environment.get("name"), f"{where}.environment.name")
            tag.environment.default_value = str(environment.get("defaultValue", ""))
        else:
            raise FieldError(where, "give literal, header or environment")
        tags[str(name)] = tag
    return tags


def _tracing_settings(obj: KubeObject) -> list[_Settings]:
    """Each ``spec.tracing`` entry's sampling, span reporting and tags; raises FieldError."""
    out = []
    for i, raw in enumerate(sequence(mapping(obj.spec, "spec").get("tracing") or (), "spec.tracing")):
        where = f"spec.tracing[{i}]"
        entry = mapping(raw, where)
        sampling, disabled, tags = (
            entry.get("randomSamplingPercentage"),
            entry.get("disableSpanReporting"),
            entry.get("customTags"),
        )
        out.append(
            _Settings(
                sampling=None
                if sampling is None
                else percentage(sampling, f"{where}.randomSamplingPercentage"),
                disabled=None if disabled is None else bool(disabled),
                tags={} if tags is None else _tags(tags, f"{where}.customTags"),
            )
        )
    return out


def telemetry_errors(obj: KubeObject) -> list[FieldError]:
    """What is wrong with a Telemetry's tracing and scope fields (validation)."""
    try:
        _tracing_settings(obj)
        spec = mapping(obj.spec, "spec")
        for i, raw in enumerate(sequence(spec.get("targetRefs") or (), "spec.targetRefs")):
            mapping(raw, f"spec.targetRefs[{i}]")
        if spec.get("selector") is not None:
            match_labels(
                mapping(spec["selector"], "spec.selector").get("matchLabels"), "spec.selector.matchLabels"
            )
    except FieldError as exc:
        return [exc]
    return []


def tracing_for(
    telemetries: Iterable[KubeObject], gateway: KubeObject, root_namespace: str, problems: Warnings
) -> rc.Tracing | None:
    """The waypoint's effective tracing settings as Envoy's route ``Tracing`` (None: no Telemetry
    says anything about tracing); a Telemetry that cannot be read is a problem and is skipped."""
    scoped: list[tuple[int, str, _Settings]] = []
    for obj in telemetries:
        if not str(obj.body.get("apiVersion", "")).startswith(_API):
            continue
        try:
            rank = _applies(obj, gateway, root_namespace)
            if rank is not None:
                scoped += [
                    (rank, f"{obj.namespace}/{obj.name}", settings) for settings in _tracing_settings(obj)
                ]
        except FieldError as exc:
            problems.add(obj, exc.field, exc.problem)
    if not scoped:
        return None
    sampling: float | None = None
    disabled = False
    tags: dict[str, custom_tag_pb2.CustomTag] = {}
    for _, _, settings in sorted(scoped, key=lambda s: (s[0], s[1])):  # broad first: specific overrides
        sampling = settings.sampling if settings.sampling is not None else sampling
        disabled = settings.disabled if settings.disabled is not None else disabled
        tags.update(settings.tags)
    tracing = rc.Tracing()
    if disabled:
        tracing.random_sampling.CopyFrom(percent_pb2.FractionalPercent(numerator=0))
    elif sampling is not None:
        tracing.random_sampling.CopyFrom(
            percent_pb2.FractionalPercent(
                numerator=round(sampling * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
            )
        )
    tracing.custom_tags.extend(tags[name] for name in sorted(tags))
    return tracing


def apply_tracing(route_config: route_pb2.RouteConfiguration, tracing: rc.Tracing | None) -> None:
    """Sets ``tracing`` on every route of ``route_config`` (in place)."""
    if tracing is None:
        return
    for host in route_config.virtual_hosts:
        for route in host.routes:
            route.tracing.CopyFrom(tracing)
