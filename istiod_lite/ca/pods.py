"""Which service accounts run on which node: what the CA needs to authorize impersonation.

``PodIndex`` is the one question the CA asks. The config plane will feed an implementation from
its informer caches; here are an in-memory index and one that reads the lab state directory
(``objects/Pod/<ns>/<name>.yaml``, see docs/lab-state.md), re-reading only changed files.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import yaml

__all__ = [
    "InMemoryPodIndex",
    "LabStatePodIndex",
    "PodIndex",
    "PodLocator",
    "PodPlacement",
    "placement_of",
]

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
_MAX_POD_FILE_BYTES = 1024 * 1024


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


class LabStatePodIndex:
    """Reads pods from a lab state directory, caching each file by (mtime, size, inode).

    A file that cannot be read or parsed (e.g. a half-written object from a foreign writer) counts
    as no pod: the index never grants on a guess.
    """

    def __init__(self, state_dir: Path) -> None:
        self._pods_dir = state_dir / "objects" / "Pod"
        self._cache: dict[Path, tuple[tuple[int, int, int], PodPlacement | None]] = {}
        self._lock = threading.Lock()

    def service_account_on_node(self, namespace: str, service_account: str, node: str) -> bool:
        """True when a live pod file in ``namespace`` has this service account and node."""
        return node in self.nodes_for_service_account(namespace, service_account)

    def nodes_for_service_account(self, namespace: str, service_account: str) -> frozenset[str]:
        """The nodes of the live pods of ``namespace/service_account``."""
        placements = self._scan(self._pods_dir / namespace)
        return frozenset(
            p.node for p in placements if p.namespace == namespace and p.service_account == service_account
        )

    def _scan(self, directory: Path) -> list[PodPlacement]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found: list[PodPlacement] = []
        with self._lock:
            seen: set[Path] = set()
            for entry in entries:
                if not entry.name.endswith(".yaml") or entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                seen.add(path)
                placement = self._load(path)
                if placement is not None:
                    found.append(placement)
            for stale in [p for p in self._cache if p.parent == directory and p not in seen]:
                del self._cache[stale]
        return found

    def _load(self, path: Path) -> PodPlacement | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        placement = _parse_pod(path) if stat.st_size <= _MAX_POD_FILE_BYTES else None
        self._cache[path] = (key, placement)
        return placement


def _parse_pod(path: Path) -> PodPlacement | None:
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(obj, dict):
        return None
    metadata, spec, status = (obj.get(k) or {} for k in ("metadata", "spec", "status"))
    if not all(isinstance(part, Mapping) for part in (metadata, spec, status)):
        return None
    return placement_of(
        metadata.get("namespace"), spec, status, deleting=bool(metadata.get("deletionTimestamp"))
    )


def placement_of(
    namespace: object, spec: Mapping[str, object], status: Mapping[str, object], *, deleting: bool
) -> PodPlacement | None:
    """Where a pod runs and as whom, from its namespace, spec and status; None unless live and scheduled.

    A pod without ``serviceAccountName`` runs as ``default``; finished (Succeeded/Failed) and
    deleting pods count as gone; anything of the wrong type counts as no pod.
    """
    node, service_account = spec.get("nodeName"), spec.get("serviceAccountName") or "default"
    if status.get("phase") in _TERMINAL_PHASES or deleting:
        return None
    if not (isinstance(namespace, str) and isinstance(node, str) and isinstance(service_account, str)):
        return None
    if not (namespace and node):
        return None
    return PodPlacement(namespace=namespace, service_account=service_account, node=node)


def _group(placements: Iterable[PodPlacement]) -> dict[tuple[str, str], frozenset[str]]:
    grouped: dict[tuple[str, str], set[str]] = {}
    for p in placements:
        grouped.setdefault((p.namespace, p.service_account), set()).add(p.node)
    return {k: frozenset(v) for k, v in grouped.items()}
