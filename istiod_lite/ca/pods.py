"""Which service accounts run on which node: what the CA needs to authorize impersonation.

``PodIndex`` is the one question the CA asks. In istiod_lite the config plane's informer caches
answer it (``istiod_lite.view.Informers``); here is an in-memory index for tests and embedding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "InMemoryPodIndex",
    "PodIndex",
    "PodLocator",
    "PodPlacement",
]


class PodIndex(Protocol):
    """Answers whether a pod with a given service account is scheduled on a node."""

    def service_account_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        """True when at least one live pod in ``namespace`` runs as ``service_account`` on ``node``."""
        ...


@runtime_checkable
class PodLocator(Protocol):
    """Optional extra an index may offer, so denials can say where the service account does run."""

    def nodes_for_service_account(self, namespace: str, service_account: str) -> frozenset[str]:
        """The nodes with at least one live pod of ``namespace/service_account``."""
        ...


@dataclass(frozen=True, slots=True)
class PodPlacement:
    """One pod's namespace, service account and node."""

    namespace: str
    service_account: str
    node: str


class InMemoryPodIndex:
    """A pod index held in memory; ``replace`` swaps the whole set atomically."""

    def __init__(self, placements: Iterable[PodPlacement] = ()) -> None:
        self._nodes: dict[tuple[str, str], frozenset[str]] = _group(placements)

    def replace(self, placements: Iterable[PodPlacement]) -> None:
        """Replaces every placement with ``placements``."""
        self._nodes = _group(placements)

    def service_account_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        """True when ``namespace/service_account`` has a pod on ``node``."""
        return node in self._nodes.get((namespace, service_account), frozenset())

    def nodes_for_service_account(self, namespace: str, service_account: str) -> frozenset[str]:
        """The nodes running ``namespace/service_account``."""
        return self._nodes.get((namespace, service_account), frozenset())


def _group(placements: Iterable[PodPlacement]) -> dict[tuple[str, str], frozenset[str]]:
    grouped: dict[tuple[str, str], set[str]] = {}
    for p in placements:
        grouped.setdefault((p.namespace, p.service_account), set()).add(p.node)
    return {k: frozenset(v) for k, v in grouped.items()}
