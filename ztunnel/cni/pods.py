"""Where the node agent learns about pods: the pods of its node, their namespace labels, and where
it writes their enrollment status (the ``ambient.istio.io/redirection`` annotation).

``PodSource`` is the interface; ``LabPodSource`` reads the lab's state directory
(docs/lab-state.md), polling the resourceVersion counter (default every 200 ms, plus a full
re-read every few seconds) and patching annotations with the lab's writers' protocol;
``kube_pods.KubePodSource`` watches the Kubernetes API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mesh.rt.labstate import LabState, LabStateError, patch_pod_annotations
from ztunnel.cni.enroll import REDIRECTION, PodFacts

__all__ = ["LabPodSource", "PodInfo", "PodSource", "int_or_zero", "pod_info", "pods_on_node", "str_map"]

_FULL_EVERY = 25


@dataclass(frozen=True, slots=True)
class PodInfo:
    """One pod as the node agent sees it."""

    uid: str
    namespace: str
    name: str
    node: str
    service_account: str
    facts: PodFacts
    resource_version: int = 0
    """A resourceVersion at which this information was current: the pod object's own in a view;
    for a direct ``fetch`` the highest of the state counter, the pod's and its namespace's."""
    ips: tuple[str, ...] = ()
    """The pod's addresses from its status (``podIPs``), once it has them."""

    @property
    def redirection(self) -> str:
        """The pod's ``ambient.istio.io/redirection`` annotation ("" when absent)."""
        return str(self.facts.annotations.get(REDIRECTION, ""))


def str_map(value: Any) -> dict[str, str]:
    """A mapping's keys and values as strings ({} for anything else: labels, annotations)."""
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def pod_info(obj: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> PodInfo | None:
    """A PodInfo from a Kubernetes-shaped Pod object (None when it lacks a name or uid)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if not meta.get("name") or not meta.get("uid"):
        return None
    facts = PodFacts(
        namespace_labels=dict(namespace_labels),
        labels=str_map(meta.get("labels")),
        annotations=str_map(meta.get("annotations")),
        host_network=bool(spec.get("hostNetwork", False)),
        deleted=bool(meta.get("deletionTimestamp")),
    )
    return PodInfo(
        uid=str(meta["uid"]),
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta["name"]),
        node=str(spec.get("nodeName") or ""),
        service_account=str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"),
        facts=facts,
        resource_version=int_or_zero(meta.get("resourceVersion")),
        ips=_pod_ips(obj.get("status") or {}),
    )


def _pod_ips(status: Mapping[str, Any]) -> tuple[str, ...]:
    listed = status.get("podIPs")
    if isinstance(listed, list):
        return tuple(str(e["ip"]) for e in listed if isinstance(e, dict) and e.get("ip"))
    return (str(status["podIP"]),) if status.get("podIP") else ()


def int_or_zero(value: Any) -> int:
    """``value`` as an int, 0 when it is not one (a resourceVersion)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def pods_on_node(
    pods: list[dict[str, Any]], namespaces: list[dict[str, Any]], *, node: str
) -> dict[str, PodInfo]:
    """The node's pods by uid, each with its namespace's labels."""
    labels = {
        str((ns.get("metadata") or {}).get("name")): str_map((ns.get("metadata") or {}).get("labels"))
        for ns in namespaces
    }
    result: dict[str, PodInfo] = {}
    for obj in pods:
        namespace = str((obj.get("metadata") or {}).get("namespace") or "default")
        info = pod_info(obj, labels.get(namespace, {}))
        if info is not None and info.node == node:
            result[info.uid] = info
    return result


class PodSource(Protocol):
    """The node agent's view of its node's pods."""

    def pods(self) -> Mapping[str, PodInfo]:
        """The node's pods by uid, as of the last refresh."""
        ...

    def version(self) -> int:
        """The resourceVersion the view is complete up to: every write at or below it is in it."""
        ...

    async def wait_changed(self) -> None:
        """Returns when the view changed since the last call (bound it with ``asyncio.timeout``)."""
        ...

    async def fetch(self, namespace: str, name: str) -> PodInfo | None:
        """Reads one pod and its namespace now, bypassing the cached view."""
        ...

    async def set_redirection(self, pod: PodInfo, value: str | None) -> None:
        """Sets (or with None removes) the pod's redirection annotation."""
        ...

    def find_netns(self, pods: Mapping[str, PodInfo]) -> dict[str, str]:
        """Where the network namespaces of running pods the agent has no sandbox for are, by uid, for
        those the source can find (pods that were running before the agent was)."""
        ...


class LabPodSource:
    """Pods of one node from the lab's state directory."""

    def __init__(self, root: Path | str, *, node: str, poll_interval: float = 0.2) -> None:
        self.state = LabState(root)
        self._node = node
        self._interval = poll_interval
        self._pods: dict[str, PodInfo] = {}
        self._rv = -1
        self._polls = 0
        self._changed = asyncio.Event()

    def pods(self) -> Mapping[str, PodInfo]:
        """The node's pods by uid, as of the last refresh."""
        return self._pods

    def version(self) -> int:
        """The counter read before the objects of the last refresh (-1 before the first)."""
        return self._rv

    def _read(self) -> dict[str, PodInfo]:
        pods, namespaces = self.state.list("Pod", shared=True), self.state.list("Namespace", shared=True)
        return pods_on_node(pods, namespaces, node=self._node)

    async def refresh(self, *, force: bool = False) -> bool:
        """Re-reads the pods when the counter moved (or ``force``); True when the view changed."""
        rv = await asyncio.to_thread(self.state.current_rv)
        if rv == self._rv and not force:
            return False
        pods = await asyncio.to_thread(self._read)
        self._rv = rv
        if pods == self._pods:
            return False
        self._pods = pods
        self._changed.set()
        return True

    async def wait_loaded(self) -> None:
        """Reads the state directory once (the view the agent recovers from)."""
        await self.refresh(force=True)

    async def run(self) -> None:
        """Polls until cancelled; a malformed state file is skipped until the next change."""
        while True:
            self._polls += 1
            try:
                await self.refresh(force=self._polls % _FULL_EVERY == 0)
            except (LabStateError, OSError):
                self._rv = -1  # unreadable now (a file being fixed, a permission): re-read next poll
            await asyncio.sleep(self._interval)

    async def wait_changed(self) -> None:
        """Returns when the view changed since the last call (bound it with ``asyncio.timeout``)."""
        await self._changed.wait()
        self._changed.clear()

    async def fetch(self, namespace: str, name: str) -> PodInfo | None:
        """Reads one pod and its namespace now (newer than the cached view, see ``resource_version``)."""

        def read() -> PodInfo | None:
            counter = self.state.current_rv()
            obj = self.state.read(("Pod", namespace, name))
            if obj is None:
                return None
            ns = self.state.read(("Namespace", "", namespace)) or {}
            meta = ns.get("metadata") or {}
            info = pod_info(obj, str_map(meta.get("labels")))
            if info is None:
                return None
            seen = max(counter, info.resource_version, int_or_zero(meta.get("resourceVersion")))
            return dataclasses.replace(info, resource_version=seen)

        return await asyncio.to_thread(read)

    async def set_redirection(self, pod: PodInfo, value: str | None) -> None:
        """Patches the annotation on this incarnation (uid) of the pod."""
        await asyncio.to_thread(
            patch_pod_annotations, self.state, pod.namespace, pod.name, {REDIRECTION: value}, uid=pod.uid
        )

    async def uninstalling(self, namespace: str, name: str) -> bool:
        """Whether the DaemonSet ``namespace/name`` (the agent's own) is gone from the lab or being
        deleted: the mesh is being uninstalled. An unreadable state directory counts as no, so pods
        stay captured (as on Kubernetes when the API cannot be read)."""
        try:
            found = await asyncio.to_thread(self.state.read, ("DaemonSet", namespace, name))
        except (LabStateError, OSError):
            return False
        return found is None or bool((found.get("metadata") or {}).get("deletionTimestamp"))

    def find_netns(self, pods: Mapping[str, PodInfo]) -> dict[str, str]:
        """The sandbox paths from the lab runtime's CNI result cache (``run/cni/<uid>.json``)."""
        return {uid: path for uid in pods if (path := self._cni_sandbox(uid))}

    def _cni_sandbox(self, uid: str) -> str | None:
        try:
            result = json.loads((self.state.root / "run" / "cni" / f"{uid}.json").read_text())
        except (OSError, ValueError):
            return None
        interfaces = result.get("interfaces") if isinstance(result, dict) else None
        for interface in interfaces if isinstance(interfaces, list) else []:
            if isinstance(interface, dict) and isinstance(interface.get("sandbox"), str):
                return str(interface["sandbox"])
        return None
        interfaces = result.get("interfaces") if isinstance(result, dict) else None
        for interface in interfaces if isinstance(interfaces, list) else []:
            if isinstance(interface, dict) and isinstance(interface.get("sandbox"), str):
                return str(interface["sandbox"])
        return None
