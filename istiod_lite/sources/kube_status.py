"""Status conditions written to the Kubernetes API (the status subresource of Istio's and the
Gateway API's kinds), the Kubernetes side of ``istiod_lite.status.StatusWriter``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from istiod_lite.sources.kube import RESOURCES
from istiod_lite.status import ObjectKey3, always, apply_status
from istiod_lite.validation import MESH_KINDS
from mesh.rt.kube.rbac import ApiCall
from mesh.rt.kube.rest import call_api
from mesh.rt.kube.watch import Resource

__all__ = ["KubeStatusWriter"]

_BY_KIND = {r.kind: r for r in RESOURCES if r.kind in MESH_KINDS}
"""Only the mesh's own kinds get status conditions from istiod_lite."""
API_CALLS = (
    *(ApiCall(r.group, r.plural, ("get",)) for r in _BY_KIND.values()),
    *(ApiCall(r.group, f"{r.plural}/status", ("patch",)) for r in _BY_KIND.values()),
)
"""Status writes: read the object, merge-patch its status subresource."""
_TIMEOUT = (5.0, 10.0)


class KubeStatusWriter:
    """Read-modify-write of each object's ``status`` through its ``/status`` subresource (a JSON
    merge patch of the whole status, so conditions of other controllers are kept by
    ``apply_status``). An object deleted meanwhile, or a kind whose CRD is not served, is skipped.
    ``may_write`` is asked before each write (a replica that lost leadership stops at once)."""

    def __init__(
        self,
        api: Any,
        *,
        may_write: Callable[[], bool] = always,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._api = api
        self._may_write = may_write
        self._log = logger or structlog.get_logger().bind(component="istiod_lite.status")

    def write(self, statuses: Mapping[ObjectKey3, Mapping[str, Any]]) -> int:
        """Applies each status; returns how many objects changed. Called in a worker thread."""
        changed = 0
        for (kind, namespace, name), wanted in statuses.items():
            resource = _BY_KIND.get(kind)
            if resource is None:
                continue
            for version in resource.versions:
                path = f"{_collection(resource, version, namespace)}/{name}"
                status, body = self._call("GET", path)
                if status == 404:
                    continue  # not served at this version, or deleted
                if status != 200:
                    self._log.warning(
                        "status.read_failed", object=f"{kind} {namespace}/{name}", status=status
                    )
                    break
                obj = json.loads(body)
                if not self._may_write():
                    return changed
                if apply_status(obj, wanted):
                    patched, _ = self._call("PATCH", f"{path}/status", {"status": obj["status"]})
                    if patched == 200:
                        changed += 1
                    else:
                        self._log.warning(
                            "status.write_failed", object=f"{kind} {namespace}/{name}", status=patched
                        )
                break
        return changed

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        return call_api(self._api, method, path, body, timeout=_TIMEOUT)


def _collection(resource: Resource, version: str, namespace: str) -> str:
    prefix = f"/apis/{resource.group}/{version}" if resource.group else f"/api/{version}"
    return f"{prefix}/namespaces/{namespace}/{resource.plural}"
