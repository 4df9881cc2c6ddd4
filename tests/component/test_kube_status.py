"""istiod_lite writes status conditions through the Kubernetes API's status subresource.

The API server is ``kmock``, a test double of the Kubernetes API server (list/watch/get/patch
semantics in process), as in test_kube_source.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import kmock
import pytest
from kubernetes import client

from istiod_lite.sources.kube_status import KubeStatusWriter

pytestmark = pytest.mark.kmock(cls=kmock.KubernetesEmulator)

PA = "security.istio.io/v1/peerauthentications"
KEY = ("PeerAuthentication", "demo", "strict")
INVALID = {
    "conditions": [
        {
            "type": "Accepted",
            "status": "False",
            "reason": "Invalid",
            "message": "spec.mtls.mode: 'STRICTT' is not one of UNSET, DISABLE, PERMISSIVE, STRICT",
            "observedGeneration": 1,
            "lastTransitionTime": "2026-12-05T12:00:00Z",
        }
    ]
}


@pytest.fixture
def api(kmock: kmock.KubernetesEmulator) -> Iterator[client.ApiClient]:
    kmock.resources[PA] = kmock.ResourceInfo(kind="PeerAuthentication", namespaced=True)
    api = client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/")))
    yield api
    api.close()  # type: ignore[no-untyped-call]


def stored(server: kmock.KubernetesEmulator) -> dict[str, Any]:
    return dict(server.objects[PA, "demo", "strict"])


async def test_conditions_are_merged_into_the_objects_status(
    kmock: kmock.KubernetesEmulator, api: client.ApiClient
) -> None:
    kmock.objects[PA, "demo", "strict"] = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "strict", "namespace": "demo", "generation": 1},
        "spec": {"mtls": {"mode": "STRICTT"}},
        "status": {"conditions": [{"type": "Other", "status": "True"}]},
    }
    writer = KubeStatusWriter(api)
    assert await asyncio.to_thread(writer.write, {KEY: INVALID}) == 1
    conditions = stored(kmock)["status"]["conditions"]
    assert [c["type"] for c in conditions] == ["Other", "Accepted"]  # another controller's is kept
    assert conditions[1]["reason"] == "Invalid" and "STRICTT" in conditions[1]["message"]
    assert await asyncio.to_thread(writer.write, {KEY: INVALID}) == 0  # unchanged: no write


async def test_a_deleted_object_is_skipped(api: client.ApiClient) -> None:
    writer = KubeStatusWriter(api)
    assert await asyncio.to_thread(writer.write, {KEY: INVALID}) == 0
