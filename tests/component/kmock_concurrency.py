"""kmock's Kubernetes API emulator with the API server's optimistic concurrency.

``kmock.KubernetesEmulator`` is a test double of the Kubernetes API (list/watch/get/create/patch in
process), but it keeps no ``metadata.resourceVersion`` and does not serve PUT. A leader election
is exactly about racing writers, so this subclass adds what the real API server does: every write
stamps the next ``resourceVersion``; an update (PUT, replacing the object) or a patch carrying a
``resourceVersion`` other than the stored one answers 409 Conflict; a PUT of a missing object 404.
``outage`` makes every write answer that status (an API server that reads but cannot write).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import k8s, rendering  # the emulator's request and error types

__all__ = ["ConcurrentEmulator"]


@attrs.define(kw_only=True)
class ConcurrentEmulator(kmock.KubernetesEmulator):
    """KubernetesEmulator plus resourceVersion stamping, 409 on a stale write, and PUT."""

    outage: int | None = None
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        method = str(request.method.value if request.method else "")
        if request.resource is None or method not in ("POST", "PUT", "PATCH"):
            return await super()._handle(request)
        if self.outage is not None:
            return aiohttp.web.json_response({"kind": "Status", "code": self.outage}, status=self.outage)
        key = (request.resource, request.namespace, request.name or "")
        stored = self.objects[key] if method != "POST" and key in self.objects else None
        if stored is not None and stored.deleted:
            stored = None
        asked = ((request.data or {}).get("metadata") or {}).get("resourceVersion")
        if method != "POST" and stored is not None and asked and asked != _version(stored):
            raise k8s.KubernetesObjectConflictError(
                reason="Conflict", message="the object has been modified; read it again"
            )
        if isinstance(request.data, dict):
            request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        if method != "PUT":
            return await super()._handle(request)
        if stored is None:
            raise k8s.KubernetesObjectNotFoundError()
        stored.create(copy.deepcopy(request.data))  # a new version that replaces the object whole
        return aiohttp.web.json_response(stored.raw)


def _version(obj: Any) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
