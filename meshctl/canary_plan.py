"""Automated canary analysis, pure: which route a canary drives, the weights it writes, the PromQL
of the new version's golden signals, the decision at each step, and the state it keeps in the
route object's annotation (so a restarted ``meshctl canary`` carries on where it was).

The route is the one the user already has: a VirtualService rule whose destinations are the
Service's subsets ``--from`` and ``--to``, or an HTTPRoute rule (attached to the Service) whose
backendRefs are the Services ``--from`` and ``--to``. Only that rule's weights change.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mesh.errors import MeshError

__all__ = [
    "STATE_ANNOTATION",
    "CanaryError",
    "CanarySpec",
    "CanaryState",
    "Decision",
    "RouteRef",
    "Signals",
    "find_route",
    "judge",
    "read_state",
    "signal_queries",
    "with_state",
    "with_weight",
]

STATE_ANNOTATION = "canary.mesh.dev/state"
"""The canary's state on the route object it drives (JSON)."""
VIRTUAL_SERVICE, HTTP_ROUTE = "VirtualService", "HTTPRoute"
FAILED_CHECKS_LIMIT = 2
"""Checks without any traffic to the new version before rolling back (Flagger's threshold idea)."""
_LOOKBACK = "5m"
"""How far before a step its counters' last values are looked for (Prometheus's own lookback)."""


class CanaryError(MeshError):
    """The canary cannot run as asked."""


@dataclass(frozen=True, slots=True)
class CanarySpec:
    """What the user asked for."""

    service: str
    namespace: str
    from_version: str
    to_version: str
    steps: tuple[int, ...] = (5, 10, 25, 50, 100)
    interval: float = 30.0
    max_error_rate: float = 0.01
    max_p99_ms: float = 500.0


@dataclass(frozen=True, slots=True)
class RouteRef:
    """The rule a canary drives: ``kind``/``name`` and the index of the rule in ``http``/``rules``."""

    kind: str
    name: str
    rule: int
    version_labels: Mapping[str, str] = field(default_factory=dict)
    """Prometheus label matchers selecting the new version's requests at the waypoint."""


@dataclass(frozen=True, slots=True)
class Signals:
    """The new version's golden signals over one interval."""

    requests_per_s: float
    error_rate: float
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class Decision:
    """``advance``, ``hold`` (no data yet) or ``rollback``, and why."""

    action: str
    reason: str


@dataclass(slots=True)
class CanaryState:
    """What the route's annotation holds."""

    spec: dict[str, Any]
    phase: str = "Progressing"
    """``Progressing``, ``Promoted`` or ``RolledBack``."""
    step: int = 0
    weight: int = 0
    failed_checks: int = 0
    message: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


def _destinations(rule: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    key = "route" if kind == VIRTUAL_SERVICE else "backendRefs"
    value = rule.get(key)
    return value if isinstance(value, list) else []


def _version_of(destination: Mapping[str, Any], kind: str) -> str:
    if kind == VIRTUAL_SERVICE:
        return str((destination.get("destination") or {}).get("subset", ""))
    return str(destination.get("name", ""))


def _hosts_service(host: str, service: str, namespace: str) -> bool:
    return host in (service, f"{service}.{namespace}", f"{service}.{namespace}.svc") or host.startswith(
        f"{service}.{namespace}.svc."
    )


def find_route(objects: Sequence[Mapping[str, Any]], spec: CanarySpec) -> RouteRef:
    """The one rule splitting ``spec.service`` between the two versions; raises CanaryError naming
    what is missing or ambiguous. ``objects`` are the namespace's VirtualServices, HTTPRoutes and
    DestinationRules."""
    found: list[RouteRef] = []
    for obj in objects:
        kind, meta = obj.get("kind"), obj.get("metadata") or {}
        spec_doc = obj.get("spec") or {}
        if kind == VIRTUAL_SERVICE:
            if not any(
                _hosts_service(str(h), spec.service, spec.namespace) for h in spec_doc.get("hosts") or ()
            ):
                continue
            rules = spec_doc.get("http") or []
        elif kind == HTTP_ROUTE:
            parents = spec_doc.get("parentRefs") or []
            if not any(p.get("kind") == "Service" and p.get("name") == spec.service for p in parents):
                continue
            rules = spec_doc.get("rules") or []
        else:
            continue
        for index, rule in enumerate(rules):
            versions = {_version_of(d, str(kind)) for d in _destinations(rule, str(kind))}
            if {spec.from_version, spec.to_version} <= versions:
                labels = _version_labels(str(kind), spec, objects)
                found.append(RouteRef(str(kind), str(meta.get("name")), index, labels))
    if not found:
        raise CanaryError(
            f"no VirtualService or HTTPRoute in {spec.namespace} splits {spec.service} between "
            f"{spec.from_version!r} and {spec.to_version!r}",
            hint="give the route a rule with both (VirtualService: subsets; HTTPRoute: backendRefs), "
            "e.g. weights 100 and 0",
        )
    if len(found) > 1:
        names = ", ".join(f"{r.kind}/{r.name} rule {r.rule}" for r in found)
        raise CanaryError(f"more than one rule splits {spec.service}: {names}", hint="keep one")
    return found[0]


def _version_labels(kind: str, spec: CanarySpec, objects: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    if kind == HTTP_ROUTE:  # each version is its own Service
        return {"destination_service_name": spec.to_version, "destination_service_namespace": spec.namespace}
    version = spec.to_version
    for obj in objects:
        if obj.get("kind") != "DestinationRule":
            continue
        host = str((obj.get("spec") or {}).get("host", ""))
        if not _hosts_service(host, spec.service, spec.namespace):
            continue
        for subset in (obj.get("spec") or {}).get("subsets") or ():
            if subset.get("name") == spec.to_version:
                labels = subset.get("labels") or {}
                version = str(
                    labels.get("version") or labels.get("service.istio.io/canonical-revision") or version
                )
    return {
        "destination_service_name": spec.service,
        "destination_service_namespace": spec.namespace,
        "destination_version": version,
    }


def with_weight(obj: Mapping[str, Any], ref: RouteRef, spec: CanarySpec, to_weight: int) -> dict[str, Any]:
    """A copy of the route object with ``to_weight`` % to the new version and the rest to the old."""
    updated = copy.deepcopy(dict(obj))
    rules = updated["spec"]["http" if ref.kind == VIRTUAL_SERVICE else "rules"]
    for destination in _destinations(rules[ref.rule], ref.kind):
        version = _version_of(destination, ref.kind)
        if version == spec.to_version:
            destination["weight"] = to_weight
        elif version == spec.from_version:
            destination["weight"] = 100 - to_weight
    return updated


def read_state(obj: Mapping[str, Any]) -> CanaryState | None:
    """The canary state on the route object, if any; raises CanaryError when it is unreadable."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(STATE_ANNOTATION)
    if raw is None:
        return None
    try:
        return CanaryState(**json.loads(raw))
    except (TypeError, ValueError) as exc:
        raise CanaryError(
            f"the {STATE_ANNOTATION} annotation is not a canary state: {exc}",
            hint="remove the annotation to start over",
        ) from None


def with_state(obj: Mapping[str, Any], state: CanaryState) -> dict[str, Any]:
    """A copy of the route object carrying ``state`` in its annotation."""
    updated = copy.deepcopy(dict(obj))
    annotations = updated.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[STATE_ANNOTATION] = json.dumps(asdict(state), separators=(",", ":"))
    return updated


def signal_queries(ref: RouteRef, window_s: int) -> dict[str, str]:
    """PromQL for the new version's requests, 5xx and latency buckets at the waypoint, counted over
    the last ``window_s`` seconds (see :func:`counted`)."""
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(ref.version_labels.items()))
    selector = f'reporter="waypoint",{matchers}'
    window = f"{window_s}s"
    requests = f"istio_requests_total{{{selector}}}"
    errors = f'istio_requests_total{{{selector},response_code=~"5.."}}'
    buckets = f"istio_request_duration_milliseconds_bucket{{{selector}}}"
    return {
        "requests": f"sum({counted(requests, window)})",
        "errors": f"sum({counted(errors, window)})",
        "buckets": f"sum by (le) ({counted(buckets, window)})",
    }


def counted(series: str, window: str) -> str:
    """Each counter's increase over ``window``, a series first seen inside it counted from zero.

    ``rate()`` and ``increase()`` only see what grows between a series' samples: the value a new
    series is first scraped with is lost, and a series with one sample in the window is left out.
    A canary step is short and its first 5xx makes a new series (``response_code="503"``), so a
    version failing from its first request could pass a step. The values at both ends are the last
    samples (``last_over_time``), not instant lookups: a failed scrape marks every series of its
    target stale, and an instant lookup just after it finds none, which would count the whole
    counter as new. A counter that went back (its proxy restarted) counts from zero as well.
    A window starts at the last scrape before its step began, so one step's checks take over
    where the previous one's ended and every request is judged once: a step's first check also
    judges what the new version answered between that scrape and the step's start.
    """
    now = f"last_over_time({series}[{window}])"
    before = f"last_over_time({series}[{_LOOKBACK}] offset {window})"
    return f"(({now} - {before}) >= 0 or {now})"


def judge(spec: CanarySpec, signals: Signals, *, failed_checks: int) -> Decision:
    """The decision after one interval at the current weight."""
    if signals.requests_per_s <= 0 or math.isnan(signals.requests_per_s):
        if failed_checks + 1 >= FAILED_CHECKS_LIMIT:
            return Decision(
                "rollback", f"no requests reached {spec.to_version} in {failed_checks + 1} checks"
            )
        return Decision("hold", f"no requests reached {spec.to_version} yet")
    if signals.error_rate > spec.max_error_rate:
        measured, limit = 100 * signals.error_rate, 100 * spec.max_error_rate
        return Decision("rollback", f"error rate of {spec.to_version} {measured:.1f} % > {limit:g} %")
    if signals.p99_ms is not None and signals.p99_ms > spec.max_p99_ms:
        return Decision(
            "rollback", f"p99 of {spec.to_version} {signals.p99_ms:.0f} ms > {spec.max_p99_ms:g} ms"
        )
    return Decision("advance", "within thresholds")
