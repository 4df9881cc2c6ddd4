"""Two ``istiod-lite --auth kubernetes --ca-secret`` processes, each with an empty state directory of
its own (the manifests' emptyDir), started together on a fresh cluster: one root between them (the
Secret istio-system/istio-ca-secret, created once), nothing of the key on their disks, and the
leader writes that root as istio-ca-root-cert into every namespace. The API server is ``kmock``, a
test double of the Kubernetes API server with the API server's optimistic concurrency
(kmock_concurrency.py: the Lease election needs it) and the cluster-scoped Namespaces
(kmock_paths.py); the kinds it does not serve count as not installed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from istiod_lite.ca.secret import CA_SECRET
from istiod_lite.root_cert import ROOT_CONFIGMAP
from mesh.testing.polling import wait_until
from tests.component.kmock_concurrency import ConcurrentEmulator
from tests.component.kmock_paths import serve_namespaces
from tests.component.test_istiod_leader_lab import Istiod

pytestmark = [pytest.mark.kmock(cls=ConcurrentEmulator), pytest.mark.timeout(60)]


@pytest.fixture
def server(kmock: ConcurrentEmulator, monkeypatch: pytest.MonkeyPatch) -> ConcurrentEmulator:
    serve_namespaces(kmock, monkeypatch)
    kmock.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", namespaced=True)
    kmock.resources["v1/configmaps"] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True)
    kmock.resources["coordination.k8s.io/v1/leases"] = kmock.ResourceInfo(kind="Lease", namespaced=True)
    for name in ("istio-system", "shop"):
        kmock.objects["v1/namespaces", None, name] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name},
        }
    return kmock


async def start(tmp_path: Path, server: ConcurrentEmulator, name: str) -> Istiod:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        })
    )  # fmt: skip
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name, "POD_NAMESPACE": "istio-system"}
    env.pop("KUBERNETES_SERVICE_HOST", None)  # never the real cluster of whoever runs the tests
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "istiod_lite.app", "--auth", "kubernetes", "--ca-secret",
          "--state-dir", str(tmp_path / name), "--listen", "127.0.0.1:0",
          "--readiness-listen", "127.0.0.1:0"],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    istiod = Istiod(proc)
    istiod.reader = asyncio.create_task(istiod.read())
    await wait_until(lambda: istiod.logged("istiod.started"), within=30, what=f"{name} serves")
    return istiod


def stored(server: ConcurrentEmulator, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = server.objects[resource, namespace, name]
    except KeyError:
        return None
    return None if found.deleted else dict(found)


async def test_two_replicas_on_a_fresh_cluster_share_one_root_and_publish_it(
    tmp_path: Path, server: ConcurrentEmulator
) -> None:
    running: list[Istiod] = []
    try:
        running += await asyncio.gather(*(start(tmp_path, server, name) for name in ("istiod-a", "istiod-b")))
        roots = [istiod.logged("ca.root") or {} for istiod in running]
        assert len({r.get("ca.root_sha256") for r in roots}) == 1, roots
        assert sorted(str(r["ca.source"]) for r in roots) == [
            f"Secret istio-system/{CA_SECRET} (created)",
            f"Secret istio-system/{CA_SECRET} (loaded)",
        ]
        secret = stored(server, "v1/secrets", "istio-system", CA_SECRET)
        assert secret is not None
        root_pem = base64.b64decode(secret["data"]["root-cert.pem"]).decode()
        files = await asyncio.to_thread(lambda: [p for p in tmp_path.glob("istiod-*/**/*") if p.is_file()])
        assert files == [], "nothing of the CA on the replicas' disks"

        def published() -> bool:
            maps = [stored(server, "v1/configmaps", ns, ROOT_CONFIGMAP) for ns in ("istio-system", "shop")]
            return all(m is not None and m["data"] == {"root-cert.pem": root_pem} for m in maps)

        await wait_until(published, within=30, what="the leader publishes the root in every namespace")
    finally:
        for istiod in running:
            with contextlib.suppress(ProcessLookupError):
                istiod.proc.send_signal(signal.SIGTERM)
            await istiod.proc.wait()
            if istiod.reader is not None:
                await istiod.reader
