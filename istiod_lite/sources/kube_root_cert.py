"""The root ConfigMaps (``istiod_lite.root_cert``) through the Kubernetes API: a list/watch of the
ConfigMaps named ``istio-ca-root-cert`` in every namespace (field selector ``metadata.name``, the
shared informer loop of ``mesh.rt.kube.watch``), a create where one is missing, a JSON merge patch
where one is wrong. A create answered 409 (it appeared meanwhile) or a patch answered 404 (it went
meanwhile) waits for the watch to say what is there now."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
import urllib3

from istiod_lite.root_cert import (
    ROOT_CONFIGMAP,
    RootConfigMap,
    RootWrite,
    WriteOutcome,
    root_configmap,
    root_patch,
)
from mesh.rt.kube.rbac import ApiCall
from mesh.rt.kube.rest import call_api
from mesh.rt.kube.watch import Resource, WatchSettings, watch_resources

__all__ = ["API_CALLS", "KubeRootCertStore"]

RESOURCE = Resource("ConfigMap", "", "v1", "configmaps", field_selector=f"metadata.name={ROOT_CONFIGMAP}")
API_CALLS = (ApiCall("", "configmaps", ("create", "list", "patch", "watch")),)
"""The root ConfigMaps of every namespace: watched, created, repaired."""


class KubeRootCertStore:
    """``RootCertStore`` on the Kubernetes API."""

    def __init__(
        self,
        api: Any,
        *,
        settings: WatchSettings | None = None,
        rng: random.Random | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._api = api
        self._settings = settings or WatchSettings()
        self._rng = rng or random.Random()
        self._log = logger or structlog.get_logger().bind(component="istiod_lite.root_cert")

    async def watch(self, deliver: Callable[[Mapping[str, RootConfigMap]], None]) -> None:
        """Lists and watches the root ConfigMaps until cancelled."""
        cache: dict[str, RootConfigMap] = {}

        def apply(op: str, *args: Any) -> None:
            if op == "replace":
                cache.clear()
                cache.update((found.namespace, found) for found in args[1])
            elif op == "upsert":
                cache[args[0].namespace] = args[0]
            elif op == "delete" and args[2] == ROOT_CONFIGMAP:
                cache.pop(args[1], None)
            deliver(dict(cache))

        await watch_resources(
            self._api,
            [RESOURCE],
            parse=_parse,
            deliver=apply,
            settings=self._settings,
            rng=self._rng,
            log=self._log,
        )

    def write(
        self, writes: Sequence[RootWrite], root_pem: str, *, may_write: Callable[[], bool]
    ) -> WriteOutcome:
        """One create or merge patch per write; stops when ``may_write`` turns false."""
        outcome = WriteOutcome()
        for write in writes:
            if not may_write():
                break
            collection = f"/api/v1/namespaces/{write.namespace}/configmaps"
            try:
                if write.create:
                    status, body = call_api(
                        self._api, "POST", collection, root_configmap(write.namespace, root_pem)
                    )
                else:
                    path = f"{collection}/{ROOT_CONFIGMAP}"
                    status, body = call_api(self._api, "PATCH", path, root_patch(root_pem))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                status, body = 0, str(exc).encode()
            if status in (200, 201):
                outcome.written[write.namespace] = RootConfigMap.of(json.loads(body))
            elif (status, write.create) not in ((409, True), (404, False)):
                outcome.failed += 1
                self._log.warning(
                    "root_cert.write_failed",
                    namespace=write.namespace,
                    status=status,
                    answer=body[:300].decode(errors="replace"),
                )
        return outcome


def _parse(kind: str, raw: dict[str, Any]) -> RootConfigMap | None:
    """Only the ConfigMaps of the root's name (the field selector already says so on a real API
    server)."""
    return RootConfigMap.of(raw) if (raw.get("metadata") or {}).get("name") == ROOT_CONFIGMAP else None
