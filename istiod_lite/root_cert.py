"""The mesh's trust bundle in every namespace: the ``istio-ca-root-cert`` ConfigMap (key
``root-cert.pem``, label ``istio.io/config: "true"``), as istiod's namespace controller keeps it.
ztunnel, waypoints and workloads mount it to verify istiod and their peers.

Every namespace gets it, new ones too, except Kubernetes' own ``kube-public``,
``kube-node-lease`` and ``local-path-storage`` (Istio skips them; ``kube-system`` is kept, where
ztunnel may run) and namespaces being deleted. A ConfigMap whose root or label someone changed, or
that someone deleted, is put back; other keys and labels in it are left alone (a merge patch).
Only the elected leader writes: :meth:`RootCertController.run` is a leader-only job, and each write
asks ``may_write`` first.

Deciding is pure (:func:`plan_root_configmaps`); where the ConfigMaps live is a
:class:`RootCertStore`: the Kubernetes API (``istiod_lite.sources.kube_root_cert``: a watch of the
ConfigMaps of that name, creates and merge patches) or the lab's state directory
(:class:`LabRootCertStore`: polled, written in one locked transaction). The namespaces come from
istiod_lite's informers, in either mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from istiod_lite.status import always
from istiod_lite.view import KubeObject
from mesh.errors import MeshError
from mesh.rt.labstate import LabState, load_yaml

__all__ = [
    "CONFIG_LABEL",
    "IGNORED_NAMESPACES",
    "ROOT_CERT_KEY",
    "ROOT_CONFIGMAP",
    "LabRootCertStore",
    "RootCertController",
    "RootCertStore",
    "RootConfigMap",
    "RootWrite",
    "WriteOutcome",
    "plan_root_configmaps",
    "root_configmap",
    "root_patch",
]

ROOT_CONFIGMAP = "istio-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
CONFIG_LABEL = ("istio.io/config", "true")
IGNORED_NAMESPACES = frozenset({"kube-public", "kube-node-lease", "local-path-storage"})
"""Istio's ignored namespaces but ``kube-system`` (istiod's namespace controller)."""


@dataclass(frozen=True, slots=True)
class RootConfigMap:
    """What this controller looks at in a namespace's root ConfigMap."""

    namespace: str
    root_pem: str | None
    labelled: bool

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> RootConfigMap:
        """From a ConfigMap object as the API (or the lab) has it."""
        meta = obj.get("metadata") or {}
        data = obj.get("data") or {}
        labels = meta.get("labels") or {}
        pem = data.get(ROOT_CERT_KEY) if isinstance(data, Mapping) else None
        labelled = isinstance(labels, Mapping) and labels.get(CONFIG_LABEL[0]) == CONFIG_LABEL[1]
        return cls(str(meta.get("namespace") or ""), pem if isinstance(pem, str) else None, labelled)

    def right_for(self, root_pem: str) -> bool:
        """Holds ``root_pem`` and the label."""
        return self.root_pem == root_pem and self.labelled


@dataclass(frozen=True, slots=True)
class RootWrite:
    """One write: create the ConfigMap in ``namespace``, or patch the one there."""

    namespace: str
    create: bool


@dataclass(slots=True)
class WriteOutcome:
    """What a store's ``write`` did: the ConfigMaps as written, and how many writes failed."""

    written: dict[str, RootConfigMap] = field(default_factory=dict)
    failed: int = 0


def root_configmap(namespace: str, root_pem: str) -> dict[str, Any]:
    """The ConfigMap to create in ``namespace``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ROOT_CONFIGMAP, "namespace": namespace, "labels": dict([CONFIG_LABEL])},
        "data": {ROOT_CERT_KEY: root_pem},
    }


def root_patch(root_pem: str) -> dict[str, Any]:
    """The JSON merge patch that makes a ConfigMap right (other keys and labels stay)."""
    return {"metadata": {"labels": dict([CONFIG_LABEL])}, "data": {ROOT_CERT_KEY: root_pem}}


def write_for(namespace: str, current: RootConfigMap | None, root_pem: str) -> RootWrite | None:
    """The write ``namespace`` needs, if any."""
    if current is None:
        return RootWrite(namespace, create=True)
    return None if current.right_for(root_pem) else RootWrite(namespace, create=False)


def _wanted(namespace: KubeObject) -> bool:
    terminating = namespace.status.get("phase") == "Terminating" or bool(namespace.deletion_timestamp)
    return not terminating and namespace.name not in IGNORED_NAMESPACES


def plan_root_configmaps(
    namespaces: Iterable[KubeObject], current: Mapping[str, RootConfigMap], root_pem: str
) -> list[RootWrite]:
    """The writes that give every namespace the right root ConfigMap, by namespace name."""
    names = sorted(ns.name for ns in namespaces if _wanted(ns))
    return [w for name in names if (w := write_for(name, current.get(name), root_pem)) is not None]


class RootCertStore(Protocol):
    """Where the root ConfigMaps live (the Kubernetes API, or the lab's state directory)."""

    async def watch(self, deliver: Callable[[Mapping[str, RootConfigMap]], None]) -> None:
        """Until cancelled: calls ``deliver`` (on the event loop) with every namespace's root
        ConfigMap, by namespace, after the first read and after each change."""
        ...

    def write(
        self, writes: Sequence[RootWrite], root_pem: str, *, may_write: Callable[[], bool]
    ) -> WriteOutcome:
        """Creates or patches; stops when ``may_write`` turns false. Blocking (a worker thread)."""
        ...


class RootCertController:
    """Keeps the root ConfigMap right in every namespace while :meth:`run` runs (leader-only)."""

    def __init__(
        self,
        store: RootCertStore,
        root_pem: str,
        *,
        namespaces: Callable[[], Iterable[KubeObject]],
        may_write: Callable[[], bool] = always,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
    ) -> None:
        self._store = store
        self._root_pem = root_pem
        self._namespaces = namespaces
        self._may_write = may_write
        self._log = logger or structlog.get_logger().bind(component="istiod_lite.root_cert")
        self._retry = (retry_initial, retry_max)
        self._current: dict[str, RootConfigMap] | None = None
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Says the namespaces may have changed (cheap: the work happens in ``run``)."""
        self._wake.set()

    async def run(self) -> None:
        """Watches the ConfigMaps and writes what the namespaces need, until cancelled. Each call
        starts from a fresh read of the ConfigMaps (another replica may have written meanwhile)."""
        self._current = None
        watcher = asyncio.create_task(self._store.watch(self._delivered))
        watcher.add_done_callback(lambda _: self._wake.set())
        failures = 0
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if watcher.done():
                    watcher.result()  # the watch ended: say why
                    raise MeshError("the root ConfigMaps' watch ended", hint="a bug: please report it")
                failed = await self._pass()
                failures = failures + 1 if failed else 0
                if failed:
                    await asyncio.sleep(min(self._retry[1], self._retry[0] * 2 ** (failures - 1)))
                    self._wake.set()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _pass(self) -> int:
        """One round of writes; how many failed."""
        if self._current is None:
            return 0  # not read yet
        writes = plan_root_configmaps(self._namespaces(), self._current, self._root_pem)
        if not writes:
            return 0
        try:
            outcome = await asyncio.to_thread(
                self._store.write, writes, self._root_pem, may_write=self._may_write
            )
        except Exception as exc:  # the API or the disk failing: logged, tried again
            self._log.warning("root_cert.write_failed", error=str(exc), namespaces=len(writes))
            return len(writes)
        self._current.update(outcome.written)  # before the watch says so: no second write meanwhile
        if outcome.written:
            created = sum(1 for w in writes if w.create and w.namespace in outcome.written)
            self._log.info(
                "root_cert.written",
                configmap=ROOT_CONFIGMAP,
                created=created,
                repaired=len(outcome.written) - created,
                namespaces=",".join(sorted(outcome.written)[:20]),
            )
        return outcome.failed

    def _delivered(self, found: Mapping[str, RootConfigMap]) -> None:
        self._current = dict(found)
        self._wake.set()


class LabRootCertStore:
    """``RootCertStore`` on the lab's state directory: ``objects/ConfigMap/<ns>/istio-ca-root-cert.yaml``
    read whenever the state's ``resource-version`` moves (polled), written in one transaction
    that looks at each object again under the lock."""

    def __init__(
        self,
        state_dir: Path,
        *,
        poll_every: float = 0.2,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._state = LabState(state_dir)
        self._poll_every = poll_every
        self._log = logger or structlog.get_logger().bind(component="istiod_lite.root_cert")

    async def watch(self, deliver: Callable[[Mapping[str, RootConfigMap]], None]) -> None:
        """Polls the state's counter; re-reads the root ConfigMaps when it moved."""
        seen: int | None = None
        last: dict[str, RootConfigMap] | None = None
        while True:
            try:
                version = await asyncio.to_thread(self._state.current_rv)
                if version != seen:
                    found = await asyncio.to_thread(self._read_all)
                    seen = version
                    if found != last:
                        last = found
                        deliver(found)
            except (MeshError, OSError) as exc:  # a broken file or the disk: logged, read again
                self._log.warning("root_cert.read_failed", error=str(exc))
            await asyncio.sleep(self._poll_every)

    def _read_all(self) -> dict[str, RootConfigMap]:
        found: dict[str, RootConfigMap] = {}
        for path in self._state.objects.glob(f"ConfigMap/*/{ROOT_CONFIGMAP}.yaml"):
            obj = load_yaml(path)
            if isinstance(obj, dict):
                found[path.parent.name] = RootConfigMap.of(obj)
        return found

    def write(
        self, writes: Sequence[RootWrite], root_pem: str, *, may_write: Callable[[], bool]
    ) -> WriteOutcome:
        """Creates or repairs each ConfigMap (decided again under the lock), in one transaction."""
        outcome = WriteOutcome()
        with self._state.transaction() as txn:
            for namespace in (w.namespace for w in writes):
                if not may_write():
                    break
                stored = txn.get(("ConfigMap", namespace, ROOT_CONFIGMAP))
                needed = write_for(namespace, RootConfigMap.of(stored) if stored else None, root_pem)
                if needed is None:
                    continue
                if stored is None:
                    stored = root_configmap(namespace, root_pem)
                    txn.create(stored)
                else:
                    _merge(stored, root_patch(root_pem))
                    txn.put(stored)
                outcome.written[namespace] = RootConfigMap.of(stored)
        return outcome


def _merge(obj: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """A JSON merge patch of mappings (what the API server does with ``root_patch``)."""
    for key, value in patch.items():
        if isinstance(value, Mapping):
            target = obj.get(key)
            if not isinstance(target, dict):
                target = obj[key] = {}
            _merge(target, value)
        else:
            obj[key] = value
