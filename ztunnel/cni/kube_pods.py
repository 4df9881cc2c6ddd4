"""The node agent's pods from the Kubernetes API: its node's pods (field selector
``spec.nodeName=<node>``) and every namespace's labels, listed and watched by the shared informer
loop (``mesh.rt.kube.watch``: list then watch, 410 re-list, bookmarks, backoff); one pod read
directly when the CNI plugin asks about it; the ``ambient.istio.io/redirection`` annotation written
with a JSON merge patch that names the pod's uid, so a pod deleted and created again under the
same name is never annotated for its predecessor (the API server refuses a uid change).

Pods created before the mesh was installed have no sandbox in the agent's cache and the Kubernetes
API does not say where their network namespace is: when the agent starts it finds them through
their processes' cgroups in /proc (``ztunnel.cni.procscan``, as Istio's node agent does), so a
running namespace labelled afterwards is enrolled without restarting its pods.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from typing import Any

import structlog
import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from mesh.errors import MeshError
from mesh.rt.kube.rbac import ApiCall
from mesh.rt.kube.watch import Resource, WatchSettings, watch_resources
from ztunnel.cni.enroll import REDIRECTION
from ztunnel.cni.pods import PodInfo, int_or_zero, pod_info, pods_on_node, str_map
from ztunnel.cni.procscan import find_pod_netns

__all__ = ["API_CALLS", "KubePodSource", "PodSourceError"]

API_CALLS = (
    ApiCall("", "pods", ("list", "watch")),  # the informer, this node's pods only
    ApiCall("", "pods", ("get", "patch")),  # fetch; the redirection annotation
    ApiCall("", "namespaces", ("list", "watch", "get")),  # their dataplane-mode labels
    ApiCall("apps", "daemonsets", ("get",)),  # on SIGTERM: is its own DaemonSet being uninstalled?
)
"""What the node agent calls (RBAC: the istio-cni ClusterRole grants exactly these)."""

_READ_TIMEOUT = 10.0


class PodSourceError(MeshError):
    """The Kubernetes API could not be read or written for a pod."""


class KubePodSource:
    """Pods of one node from the Kubernetes API (run :meth:`run`; :meth:`wait_loaded` before use)."""

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        node: str,
        settings: WatchSettings | None = None,
        rng: random.Random | None = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._api = api
        self._core = k8s.CoreV1Api(api)
        self._node = node
        self._settings = settings or WatchSettings()
        self._rng = rng or random.Random()
        self._log = log or structlog.get_logger().bind(component="node-agent.kube")
        self._resources = (
            Resource("Pod", "", "v1", "pods", field_selector=f"spec.nodeName={node}"),
            Resource("Namespace", "", "v1", "namespaces"),
        )
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {"Pod": {}, "Namespace": {}}
        self._listed: set[str] = set()
        self._loaded = asyncio.Event()
        self._changed = asyncio.Event()
        self._view: dict[str, PodInfo] = {}
        self._version = 0

    def pods(self) -> Mapping[str, PodInfo]:
        """The node's pods by uid, as of the last event."""
        return self._view

    def version(self) -> int:
        """The highest resourceVersion delivered so far (the view holds every write up to it)."""
        return self._version

    async def run(self) -> None:
        """Lists and watches until cancelled."""
        await watch_resources(
            self._api,
            self._resources,
            parse=lambda kind, raw: (kind, raw),
            deliver=self._apply,
            settings=self._settings,
            rng=self._rng,
            log=self._log,
        )

    async def wait_loaded(self) -> None:
        """Returns once pods and namespaces were both listed (bound it with ``asyncio.timeout``)."""
        await self._loaded.wait()

    async def wait_changed(self) -> None:
        """Returns when the view changed since the last call (bound it with ``asyncio.timeout``)."""
        await self._changed.wait()
        self._changed.clear()

    def _apply(self, op: str, *args: Any) -> None:
        if op == "replace":
            kind, listed = args
            self._objects[kind] = {_key(raw): raw for _, raw in listed}
            self._listed.add(kind)
            for _, raw in listed:
                self._seen(raw)
        elif op == "upsert":
            ((kind, raw),) = args
            self._objects[kind][_key(raw)] = raw
            self._seen(raw)
        else:
            kind, namespace, name = args
            self._objects[kind].pop((namespace, name), None)
        if len(self._listed) < len(self._resources):
            return
        view = pods_on_node(
            list(self._objects["Pod"].values()), list(self._objects["Namespace"].values()), node=self._node
        )
        if view != self._view or not self._loaded.is_set():
            self._view = view
            self._loaded.set()
            self._changed.set()

    def _seen(self, raw: Mapping[str, Any]) -> None:
        self._version = max(self._version, int_or_zero((raw.get("metadata") or {}).get("resourceVersion")))

    async def fetch(self, namespace: str, name: str) -> PodInfo | None:
        """Reads the pod and its namespace now (the watch may not have delivered a new pod yet)."""
        pod = await asyncio.to_thread(self._read, self._core.read_namespaced_pod, name, namespace)
        if pod is None:
            return None
        ns = await asyncio.to_thread(self._read, self._core.read_namespace, namespace) or {}
        info = pod_info(pod, str_map((ns.get("metadata") or {}).get("labels")))
        return info if info is not None and info.node == self._node else None

    def _read(self, call: Any, *args: str) -> dict[str, Any] | None:
        try:
            response = call(*args, _preload_content=False, _request_timeout=_READ_TIMEOUT)
            data = json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise PodSourceError(
                f"the API server answered {exc.status} reading {'/'.join(args)}",
                hint="the node agent needs get on pods, namespaces and daemonsets (its ClusterRole)",
            ) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise PodSourceError(
                f"cannot read {'/'.join(args)} from the API server: {exc}",
                hint="check that the API server is reachable from the node; the CNI plugin retries",
            ) from None
        return data if isinstance(data, dict) else None

    async def set_redirection(self, pod: PodInfo, value: str | None) -> None:
        """Merge-patches the annotation (None removes it) on this incarnation of the pod; a pod that
        is gone, or is another incarnation now, is left alone."""
        body = {"metadata": {"uid": pod.uid, "annotations": {REDIRECTION: value}}}

        def patch() -> None:
            try:
                self._core.patch_namespaced_pod(
                    pod.name, pod.namespace, body,
                    _content_type="application/merge-patch+json", _request_timeout=_READ_TIMEOUT,
                )  # fmt: skip
            except ApiException as exc:
                if exc.status in (404, 409, 422):  # gone, or another pod by that name (uid differs)
                    return
                raise PodSourceError(
                    f"the API server answered {exc.status} annotating {pod.namespace}/{pod.name}",
                    hint="the node agent needs get and patch on pods (its ClusterRole)",
                ) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise PodSourceError(
                    f"cannot annotate {pod.namespace}/{pod.name}: {exc}",
                    hint="check that the API server is reachable from the node; the agent retries",
                ) from None

        await asyncio.to_thread(patch)

    async def uninstalling(self, namespace: str, name: str) -> bool:
        """Whether the DaemonSet ``namespace/name`` (the agent's own) is gone or being deleted: the
        mesh is being uninstalled, not upgraded. Unknown (the API cannot be read) counts as no, so
        pods stay captured: an unreachable API never opens a way around the mesh."""
        apps = k8s.AppsV1Api(self._api)
        try:
            found = await asyncio.to_thread(self._read, apps.read_namespaced_daemon_set, name, namespace)
        except PodSourceError as exc:
            self._log.warning("agent.uninstall_check_failed", error=str(exc))
            return False
        return found is None or bool((found.get("metadata") or {}).get("deletionTimestamp"))

    def find_netns(self, pods: Mapping[str, PodInfo]) -> dict[str, str]:
        """Found by walking /proc for processes in each pod's cgroup (``ztunnel.cni.procscan``): the
        API does not say where a pod's network namespace is. Host-network pods are never looked for."""
        return find_pod_netns([uid for uid, pod in pods.items() if not pod.facts.host_network])


def _key(raw: Mapping[str, Any]) -> tuple[str, str]:
    meta = raw.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")
