"""A pod index fed by any istiod_lite source (``sources.CacheSink``): Kubernetes watch or lab files.

It keeps only what the CA needs from each Pod (namespace, service account, node), so the CA can
run on its own with a pods-only watch; once the config plane's informers are wired in, they can
feed the same sink or answer :class:`~istiod_lite.ca.pods.PodIndex` themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

from istiod_lite.ca.pods import PodPlacement, placement_of
from istiod_lite.sources.objects import KubeObject

__all__ = ["PodIndexSink"]

_POD = "Pod"


class PodIndexSink:
    """``CacheSink`` for Pods and ``PodIndex``/``PodLocator`` over them; used on the event loop only."""

    def __init__(self) -> None:
        self._pods: dict[tuple[str, str], PodPlacement] = {}
        self._nodes: dict[tuple[str, str], frozenset[str]] | None = {}
        self.synced = False

    def upsert(self, obj: KubeObject) -> None:
        """Adds, moves or (when it finished or is deleting) drops one pod."""
        if obj.kind != _POD:
            return
        placement = _placement(obj)
        if placement is None:
            self._pods.pop(obj.key, None)
        else:
            self._pods[obj.key] = placement
        self._nodes = None

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Forgets one pod."""
        if kind == _POD and self._pods.pop((namespace, name), None) is not None:
            self._nodes = None

    def replace(self, kind: str, objects: Iterable[KubeObject]) -> None:
        """Makes ``objects`` all the pods there are."""
        if kind != _POD:
            return
        self._pods = {}
        for obj in objects:
            placement = _placement(obj)
            if placement is not None:
                self._pods[obj.key] = placement
        self._nodes = None

    def mark_synced(self) -> None:
        """The initial list is in."""
        self.synced = True

    def service_account_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        """True when a live pod of ``namespace/service_account`` is on ``node``."""
        return node in self.nodes_for_service_account(namespace, service_account)

    def nodes_for_service_account(self, namespace: str, service_account: str) -> frozenset[str]:
        """The nodes running ``namespace/service_account``."""
        if self._nodes is None:
            grouped: dict[tuple[str, str], set[str]] = {}
            for p in self._pods.values():
                grouped.setdefault((p.namespace, p.service_account), set()).add(p.node)
            self._nodes = {k: frozenset(v) for k, v in grouped.items()}
        return self._nodes.get((namespace, service_account), frozenset())


def _placement(obj: KubeObject) -> PodPlacement | None:
    return placement_of(obj.namespace, obj.spec, obj.status, deleting=bool(obj.deletion_timestamp))
