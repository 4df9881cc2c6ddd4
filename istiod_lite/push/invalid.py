"""Invalid Istio and Gateway API objects that reached istiod_lite without passing validation (the
Kubernetes source has no webhook of ours; a lab file edited by hand): a warning naming each object
and its problems, once per object version, and ``istiod_lite_config_invalid_total{kind}``.

Translation skips what is invalid on its own (and the status reporter marks it
``Accepted=False``); this only makes it visible with the same checks ``meshctl lab apply`` makes.
"""

from __future__ import annotations

import structlog

from istiod_lite.validation import MESH_KINDS, validate_kube_object
from istiod_lite.view import ClusterView
from mesh.rt.metrics import Counter, Registry

__all__ = ["InvalidConfig"]


class InvalidConfig:
    """Validates the mesh objects of each view that changed since the last one."""

    def __init__(self, registry: Registry, log: structlog.typing.FilteringBoundLogger) -> None:
        self._counter = Counter(
            "istiod_lite_config_invalid",
            "Istio and Gateway API objects found invalid (each version counted once); translation skips them",
            ("kind",),
            registry=registry,
        )
        self._log = log
        self._checked: dict[tuple[str, str, str], str] = {}

    def check(self, view: ClusterView) -> int:
        """Validates new object versions; returns how many of them were invalid."""
        current: dict[tuple[str, str, str], str] = {}
        invalid = 0
        for kind in MESH_KINDS:
            for obj in view.of_kind(kind).values():
                key = (kind, obj.namespace, obj.name)
                current[key] = obj.resource_version
                if self._checked.get(key) == obj.resource_version:
                    continue
                problems = validate_kube_object(obj)
                if problems:
                    invalid += 1
                    self._counter.labels(kind).inc()
                    self._log.warning(
                        "config.invalid",
                        object=f"{kind} {obj.namespace}/{obj.name}",
                        problems=[f"{p.field}: {p.problem}" for p in problems],
                        hint="fix the object; istiod_lite skips what is invalid (docs/validation.md)",
                    )
        self._checked = current
        return invalid
