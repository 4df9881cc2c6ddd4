"""Status conditions that tell users what translation made of their routing and policy objects.

After each build, every VirtualService, DestinationRule, AuthorizationPolicy and PeerAuthentication
gets ``status.conditions`` with one ``Accepted`` condition, and every HTTPRoute gets one per
Service parent under ``status.parents`` (as Gateway API controllers report, with
``controllerName: istio.io/mesh-controller``):

- ``Accepted=True`` (reason ``Accepted``) when translation had nothing to say about it;
- ``Accepted=False`` (reason ``Invalid``) when at least part of it was not applied as written;
  the message lists each problem (``field: what, and what was done instead``), the same text
  istiod_lite logs as a ``translate.warning``.

A Service that names a waypoint (its own or its namespace's ``istio.io/use-waypoint``) gets
Istio's ``istio.io/WaypointBound`` condition: ``True``/``WaypointAccepted`` once its traffic goes
through the waypoint, else ``False`` with why (``WaypointError``: no such waypoint, or a Gateway of
another class; ``WaypointNotForServices``; ``WaypointNotReady``: no ready waypoint pod yet).
Conditions of other types are left as they are.

``desired_statuses`` is pure; ``StatusReporter`` writes what changed, in a worker thread, and
only the latest state (a slow write never queues up stale ones). With several replicas only the
leader writes (``mesh.rt.election``): the reporter's ``run`` is a leader-only job, and the writers
check ``may_write`` before each write, so a replica that loses leadership stops at once; each
term's ``run`` starts from nothing written and writes the current statuses whole (another replica
may have written anything meanwhile). ``LabStatusWriter`` writes into
the lab's state directory with the lab's locking protocol (``mesh.rt.labstate``);
``KubeStatusWriter`` (``istiod_lite.sources.kube_status``) through the Kubernetes API's status
subresource. The warnings are logged either way.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog

from istiod_lite.translate.l7 import object_waypoint, waypoint_for
from istiod_lite.translate.l7.binding import USE_WAYPOINT_FIELD
from istiod_lite.translate.model import TranslationWarning
from istiod_lite.view import ClusterView, KubeObject, thaw
from mesh.rt.labstate import LabState

__all__ = [
    "CONTROLLER_NAME",
    "STATUS_KINDS",
    "WAYPOINT_BOUND",
    "LabStatusWriter",
    "StatusReporter",
    "StatusWriter",
    "always",
    "apply_status",
    "desired_statuses",
]

CONTROLLER_NAME = "istio.io/mesh-controller"
WAYPOINT_BOUND = "istio.io/WaypointBound"
STATUS_KINDS = ("VirtualService", "DestinationRule", "AuthorizationPolicy", "PeerAuthentication", "HTTPRoute")
_MAX_MESSAGE = 1024

ObjectKey3 = tuple[str, str, str]
"""(kind, namespace, name)."""


def _condition(problems: list[TranslationWarning], generation: int, now: float) -> dict[str, Any]:
    if not problems:
        status, reason, message = "True", "Accepted", "translated without problems"
    else:
        status, reason = "False", "Invalid"
        message = "; ".join(f"{p.field}: {p.message}" for p in problems)
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
    return {
        "type": "Accepted",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": _rfc3339(now),
    }


def _rfc3339(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _generation(obj: KubeObject) -> int:
    raw = obj.body.get("metadata")
    value = raw.get("generation") if isinstance(raw, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _service_parents(route: KubeObject) -> list[dict[str, Any]]:
    parents = route.spec.get("parentRefs")
    out: list[dict[str, Any]] = []
    for ref in parents if isinstance(parents, tuple) else ():
        if isinstance(ref, Mapping) and ref.get("kind") == "Service":
            out.append({str(k): thaw(v) for k, v in ref.items()})
    return out


def desired_statuses(
    view: ClusterView, problems: Iterable[TranslationWarning], *, now: float
) -> dict[ObjectKey3, dict[str, Any]]:
    """The status fields istiod_lite owns, per object of ``STATUS_KINDS``.

    ``lastTransitionTime`` is ``now``; ``StatusReporter`` keeps the stored one while the
    condition's status does not change.
    """
    by_object: dict[ObjectKey3, list[TranslationWarning]] = {}
    for problem in problems:
        by_object.setdefault((problem.kind, problem.namespace, problem.name), []).append(problem)
    out: dict[ObjectKey3, dict[str, Any]] = {}
    for kind in STATUS_KINDS:
        for obj in view.of_kind(kind).values():
            key = (kind, obj.namespace, obj.name)
            found = sorted(by_object.get(key, ()), key=str)
            condition = _condition(found, _generation(obj), now)
            if kind == "HTTPRoute":
                parents = [
                    {"parentRef": ref, "controllerName": CONTROLLER_NAME, "conditions": [dict(condition)]}
                    for ref in _service_parents(obj)
                ]
                out[key] = {"parents": parents}
            else:
                out[key] = {"conditions": [condition]}
    for service in view.services.values():
        bound = _waypoint_bound(
            view, service, by_object.get(("Service", service.namespace, service.name), []), now
        )
        if bound is not None:
            out[("Service", service.namespace, service.name)] = {"conditions": [bound]}
        elif _has_condition(service, WAYPOINT_BOUND):  # the label went away: so does the condition
            out[("Service", service.namespace, service.name)] = {"remove_conditions": [WAYPOINT_BOUND]}
    return out


def _has_condition(obj: KubeObject, kind: str) -> bool:
    conditions = obj.status.get("conditions")
    return isinstance(conditions, tuple) and any(
        isinstance(c, Mapping) and c.get("type") == kind for c in conditions
    )


def _waypoint_bound(
    view: ClusterView, service: KubeObject, problems: list[TranslationWarning], now: float
) -> dict[str, Any] | None:
    """Istio's ``istio.io/WaypointBound`` condition on a Service that names a waypoint, else None."""
    key = object_waypoint(view, service)
    if key is None:
        return None
    where = f"{key[0]}/{key[1]}"
    gateway = view.gateways.get(key)
    label_problems = [p.message for p in problems if p.field == USE_WAYPOINT_FIELD]
    if label_problems or gateway is None:
        ok, reason, message = False, "WaypointError", "; ".join(label_problems) or f"no waypoint {where}"
    elif waypoint_for(gateway) not in ("service", "all"):
        ok, reason = False, "WaypointNotForServices"
        message = (
            f"waypoint {where} takes workloads only (istio.io/waypoint-for); Service traffic goes to the pods"
        )
    elif not _programmed(gateway):
        ok, reason = False, "WaypointNotReady"
        message = f"waypoint {where} has no ready pod yet; traffic goes straight to the pods until it has"
    else:
        ok, reason, message = True, "WaypointAccepted", f"traffic goes through waypoint {where}"
    return {
        "type": WAYPOINT_BOUND,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": _rfc3339(now),
    }


def _programmed(gateway: KubeObject) -> bool:
    addresses = gateway.status.get("addresses")
    return isinstance(addresses, tuple) and any(isinstance(a, Mapping) and a.get("value") for a in addresses)


def _same_conditions(stored: Any, wanted: Any) -> bool:
    """Equal but for ``lastTransitionTime`` (which is kept while the status stays)."""
    return bool(_strip_times(stored) == _strip_times(wanted))


def _keep_times(stored: Any, wanted: list[dict[str, Any]]) -> None:
    olds = {c.get("type"): c for c in stored if isinstance(c, dict)} if isinstance(stored, list) else {}
    for condition in wanted:
        old = olds.get(condition["type"])
        if old is not None and old.get("status") == condition["status"] and old.get("lastTransitionTime"):
            condition["lastTransitionTime"] = old["lastTransitionTime"]


def apply_status(obj: dict[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Merges istiod_lite's status fields into a stored object; False when nothing changes."""
    status = obj.get("status")
    if status is None:
        status = obj["status"] = {}
    elif not isinstance(status, dict):
        return False  # a status we cannot merge into; leave the object alone
    changed = False
    if "conditions" in wanted:
        stored = [c for c in status.get("conditions") or () if isinstance(c, dict)]
        types = {c["type"] for c in wanted["conditions"]}
        ours = [c for c in stored if c.get("type") in types]
        conditions = [dict(c) for c in wanted["conditions"]]
        if not _same_conditions(ours, conditions):
            _keep_times(ours, conditions)
            status["conditions"] = [c for c in stored if c.get("type") not in types] + conditions
            changed = True
    if "remove_conditions" in wanted:
        current = status.get("conditions")
        removed = set(wanted["remove_conditions"])
        if isinstance(current, list):
            kept = [c for c in current if not (isinstance(c, dict) and c.get("type") in removed)]
            if len(kept) != len(current):
                status["conditions"] = kept
                changed = True
    if "parents" in wanted:
        mine = [p for p in status.get("parents") or () if isinstance(p, dict)]
        others = [p for p in mine if p.get("controllerName") != CONTROLLER_NAME]
        ours = [p for p in mine if p.get("controllerName") == CONTROLLER_NAME]
        parents = [dict(p) for p in wanted["parents"]]
        same = len(ours) == len(parents) and all(
            o.get("parentRef") == p["parentRef"] and _same_conditions(o.get("conditions"), p["conditions"])
            for o, p in zip(ours, parents, strict=True)
        )
        if not same:
            for old, new in zip(ours, parents, strict=False):
                _keep_times(old.get("conditions"), new["conditions"])
            status["parents"] = others + parents
            changed = True
    return changed


class StatusWriter(Protocol):
    """Writes status fields onto stored objects."""

    def write(self, statuses: Mapping[ObjectKey3, Mapping[str, Any]]) -> int:
        """Applies each status; returns how many objects changed. Called in a worker thread."""
        ...


def always() -> bool:
    """The default ``may_write``: a single replica always may."""
    return True


class LabStatusWriter:
    """Writes status into the lab's state directory (one locked transaction per batch)."""

    def __init__(self, state_dir: Any, *, may_write: Callable[[], bool] = always) -> None:
        self._state = LabState(state_dir)
        self._may_write = may_write

    def write(self, statuses: Mapping[ObjectKey3, Mapping[str, Any]]) -> int:
        """Read-modify-write of each object's status; objects deleted meanwhile are skipped; stops
        when ``may_write`` turns false (leadership lost)."""
        changed = 0
        with self._state.transaction() as txn:
            for key, wanted in statuses.items():
                if not self._may_write():
                    break
                changed += txn.update(key, lambda obj, w=wanted: apply_status(obj, w))  # type: ignore[misc]
        return changed


class StatusReporter:
    """Turns each build's problems into status writes, latest state only, off the event loop."""

    def __init__(
        self,
        writer: StatusWriter,
        *,
        now: Callable[[], float],
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._writer = writer
        self._now = now
        self._log = logger or structlog.get_logger().bind(component="istiod_lite.status")
        self._pending: dict[ObjectKey3, dict[str, Any]] | None = None
        self._latest: dict[ObjectKey3, dict[str, Any]] | None = None
        """Every status the last build implies (what a new term writes first)."""
        self._written: dict[ObjectKey3, dict[str, Any]] = {}
        self._wake = asyncio.Event()

    def submit(self, view: ClusterView, problems: Iterable[TranslationWarning]) -> None:
        """Records the statuses one build implies (cheap; the write happens in ``run``)."""
        wanted = desired_statuses(view, problems, now=self._now())
        self._latest = wanted
        unchanged = {k for k, v in wanted.items() if _same_status(self._written.get(k), v)}
        self._pending = {k: v for k, v in wanted.items() if k not in unchanged}
        if self._pending:
            self._wake.set()

    async def run(self) -> None:
        """Writes pending statuses until cancelled; a failed write is logged and tried again later.

        Each call starts afresh: whatever an earlier call wrote may have been overwritten since
        (by another replica while this one followed), so the latest build's statuses are all
        written again, those already right being left alone by the writer."""
        self._written = {}
        if self._latest is not None:
            self._pending = dict(self._latest)
            self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending or {}, None
            try:
                changed = await asyncio.to_thread(self._writer.write, batch)
            except Exception as exc:  # the API or the disk failing: logged, retried
                self._log.warning("status.write_failed", error=str(exc), objects=len(batch))
                await asyncio.sleep(1.0)
                if self._pending is None:
                    self._pending = batch
                self._wake.set()
                continue
            self._written.update(batch)
            if changed:
                self._log.info("status.written", objects=changed)


def _same_status(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return old is not None and _same_conditions(old, new)


def _strip_times(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_times(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list | tuple):
        return [_strip_times(v) for v in value]
    return value
