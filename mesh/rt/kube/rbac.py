"""The Kubernetes API calls a component makes, declared next to the code that makes them, and the
RBAC rules they need: the manifests' ClusterRoles (and, for calls in the component's own namespace,
its Role there) must grant exactly these (a test compares them), so a new watch without its rule,
or a rule no code uses, fails the build."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ApiCall", "rules_for"]


@dataclass(frozen=True, slots=True)
class ApiCall:
    """Verbs on one resource (``plural`` or ``plural/subresource``) of an API group ("" is core)."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    own_namespace: bool = False
    """Only in the component's own namespace (a Role there, least privilege), not cluster-wide."""


def rules_for(calls: Iterable[ApiCall]) -> list[dict[str, list[str]]]:
    """Role or ClusterRole rules granting ``calls``: one rule per group and verb set, sorted."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for call in calls:
        verbs.setdefault((call.group, call.resource), set()).update(call.verbs)
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (group, resource), found in verbs.items():
        grouped.setdefault((group, tuple(sorted(found))), []).append(resource)
    return [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": list(verb_set)}
        for (group, verb_set), resources in sorted(grouped.items())
    ]
