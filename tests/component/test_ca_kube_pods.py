"""The CA's pod index is the config plane's informers, fed by the Kubernetes watch (``--auth kubernetes``).

The API server is ``kmock``'s KubernetesEmulator: a test double of the Kubernetes API server
(in-process, with list/watch semantics over objects held in memory), not a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kmock
import structlog
from kubernetes import client

from istiod_lite.ca.auth import Caller
from istiod_lite.ca.authz import DEFAULT_TRUSTED_NODE_ACCOUNTS, authorize
from istiod_lite.sources.kube import RESOURCES, KubeSource
from istiod_lite.view import Informers
from mesh.identity import WorkloadIdentity
from mesh.rt.kube.watch import WatchSettings
from mesh.testing.polling import wait_until

TD = "cluster.local"
PODS = kmock.resource("", "v1", "pods")
ZTUNNEL_N1 = Caller(WorkloadIdentity(TD, "istio-system", "ztunnel"), node="n1")
SLEEP = WorkloadIdentity(TD, "default", "sleep")


def _pod(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {"nodeName": node, "serviceAccountName": "sleep"},
        "status": {"phase": "Running"},
    }


async def test_impersonation_follows_pods_from_the_api_server(kmock: kmock.KubernetesEmulator) -> None:
    kmock.objects[PODS, "default", "sleep-1"] = _pod("sleep-1", "n2")
    informers = Informers()
    sink = informers.sink("kubernetes")
    settings = WatchSettings(watch_timeout=5, connect_timeout=2.0, read_timeout=6.0)
    with client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/"))) as api:
        pods_only = [r for r in RESOURCES if r.kind == "Pod"]
        source = KubeSource(api, sink, resources=pods_only, settings=settings, logger=structlog.get_logger())
        feeder = asyncio.create_task(source.run())
        try:
            await wait_until(lambda: informers.synced)

            def allowed() -> bool:
                decision = authorize(
                    ZTUNNEL_N1,
                    SLEEP,
                    trust_domain=TD,
                    node_accounts=DEFAULT_TRUSTED_NODE_ACCOUNTS,
                    pods=informers,
                )
                return decision.allowed

            assert not allowed(), "sleep runs only on n2"
            await kmock.post("/api/v1/namespaces/default/pods", json=_pod("sleep-2", "n1"))
            await wait_until(allowed)
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
