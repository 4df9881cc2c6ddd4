"""``meshctl analyze --kubeconfig``: the checks run on a cluster's objects, listed once through the
real ``kubernetes`` client, alone or with files applied on top (``--live -f``). The API server is
``kmock``, a test double of the Kubernetes API server (not a real cluster); it serves no Istio or
Gateway API kinds unless told, which is what a cluster without those CRDs answers (404)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kubernetes import client

from meshctl.analyze import cluster_objects, register, run
from tests.component.kmock_paths import serve_namespaces

STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "shop"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


def _namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def _pod(name: str, namespace: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [{"name": "app"}]}}


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> kmock.KubernetesEmulator:
    """Two namespaces (shop enrolled, legacy not) with a pod each; no mesh CRDs installed."""
    serve_namespaces(kmock, monkeypatch)
    kmock.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True)
    kmock.objects["v1/namespaces", None, "shop"] = _namespace("shop", {"istio.io/dataplane-mode": "ambient"})
    kmock.objects["v1/namespaces", None, "legacy"] = _namespace("legacy")
    kmock.objects["v1/pods", "shop", "web"] = _pod("web", "shop")
    kmock.objects["v1/pods", "legacy", "client"] = _pod("client", "legacy")
    return kmock


@pytest.fixture
def api(cluster: kmock.KubernetesEmulator) -> Iterator[client.ApiClient]:
    api = client.ApiClient(client.Configuration(host=str(cluster.url).rstrip("/")))
    yield api
    api.close()  # type: ignore[no-untyped-call]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["analyze", *argv])


async def test_the_clusters_objects_are_listed_with_their_kinds(api: client.ApiClient) -> None:
    objects = await asyncio.to_thread(cluster_objects, api, within=10)  # kmock serves on this loop
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("Namespace", "legacy"), ("Namespace", "shop"), ("Pod", "client"), ("Pod", "web"),
    ]  # fmt: skip


async def test_strict_is_checked_against_the_cluster_before_it_is_applied(
    api: client.ApiClient,
    cluster: kmock.KubernetesEmulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(STRICT))
    args = _args("--kubeconfig", "unused", "--live", "-f", str(strict), "-o", "json")
    assert await asyncio.to_thread(run, args, api=api) == 0
    (finding,) = json.loads(capsys.readouterr().out)
    assert (finding["code"], finding["resource"]) == ("MSH0102", "PeerAuthentication shop/default")
    assert "legacy" in finding["message"]
    # the same file alone (no cluster) has no pods to worry about
    assert run(_args("-f", str(strict), "-o", "json")) == 0
    assert json.loads(capsys.readouterr().out) == []
