"""The opt-in rollout procedure of docs/install.md, end to end on the lab: a running namespace is
enrolled live (label it, check ``meshctl proxy-status`` and the ztunnels' view, analyze the STRICT
policy against the live objects, then apply it) and taken out again (policy first, then the label),
while its server keeps answering the clients the procedure says it should, and is never restarted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from meshctl.lab import builders as b
from meshctl.proxy_status import xds_status
from tests.e2e.conftest import HTTP_PORT, REDIRECTION, SERVER_NODE, MeshLab, spiffe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SHOP = "shop"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}
STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": SHOP},
    "spec": {"mtls": {"mode": "STRICT"}},
}


def _meshctl(mesh: MeshLab, *argv: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as an operator runs it against this lab."""
    command = [sys.executable, "-m", "meshctl.cli", *argv, "--state", str(mesh.lab.paths.root)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _web(mesh: MeshLab) -> dict[str, Any]:
    return mesh.pod(f"{SHOP}/web")


def _answers(mesh: MeshLab, client: str, ip: str) -> bool:
    return mesh.curl(client, f"http://{ip}:{HTTP_PORT}/rollout", timeout=3).returncode == 0


def _all_synced(mesh: MeshLab) -> bool:
    done = _meshctl(mesh, "proxy-status", "-o", "json")
    assert done.returncode == 0, done.stderr
    subscribers = json.loads(done.stdout)["subscribers"]
    return bool(subscribers) and all(
        xds_status(t["sent"]["version"], (t.get("acked") or {}).get("version", "")) == "SYNCED"
        for sub in subscribers
        for t in sub["types"]
    )


@pytest.fixture
def shop(mesh: MeshLab) -> Iterator[str]:
    """A namespace outside the mesh with an HTTP server on the server's node; its IP. Removed after."""
    objects = [
        b.namespace(SHOP),
        b.deployment(
            "web", SHOP, command=[*b.HTTPECHO, "--port", str(HTTP_PORT)], ports=[HTTP_PORT], node=SERVER_NODE
        ),
    ]
    mesh.lab.apply(objects)
    try:
        ip = mesh.wait_for(
            lambda: _web(mesh)["status"].get("podIP"), what="shop/web to get an IP", timeout=30
        )
        mesh.wait_for(lambda: _answers(mesh, "legacy/client", ip), what="shop/web to answer", timeout=30)
        yield ip
    finally:
        mesh.lab.delete([STRICT, *reversed(objects)])


def test_a_namespace_is_rolled_into_the_mesh_and_out_again_live(
    mesh: MeshLab, shop: str, tmp_path: Any
) -> None:
    web_uid = _web(mesh)["metadata"]["uid"]

    # 1. Label the namespace: the running pod is enrolled, not restarted.
    mesh.lab.apply([b.namespace(SHOP, labels=AMBIENT)])
    mesh.wait_for(
        lambda: (_web(mesh)["metadata"].get("annotations") or {}).get(REDIRECTION) == "enabled",
        what=f"shop/web annotated {REDIRECTION}: enabled",
    )
    # 2. Check: every proxy has the latest config, and the server's ztunnel serves the pod over HBONE.
    mesh.wait_for(lambda: _all_synced(mesh), what="meshctl proxy-status: every proxy SYNCED")
    web_name = _web(mesh)["metadata"]["name"]
    mesh.wait_for(
        lambda: (mesh.workload(SERVER_NODE, web_name) or {}).get("protocol") == "HBONE",
        what="ztunnel to see shop/web as HBONE",
    )
    table = _meshctl(mesh, "proxy-status")
    assert table.returncode == 0 and "STALE" not in table.stdout and "NOT SENT" not in table.stdout, (
        table.stdout
    )
    # Still PERMISSIVE: a client outside the mesh keeps working; a meshed one arrives with its identity.
    logged = len(mesh.access_log(SERVER_NODE))
    assert _answers(mesh, "legacy/client", shop)
    assert _answers(mesh, "demo/client", shop)
    mesh.wait_for(
        lambda: any(
            e.get("dst.addr") == f"{shop}:{HTTP_PORT}" and e.get("src.identity") == spiffe("demo", "client")
            for e in mesh.access_log(SERVER_NODE)[logged:]
        ),
        what="an HBONE access-log line for shop/web with the demo client's identity",
    )

    # 3. Before STRICT, analyze it against the live lab: it names the namespace still outside the mesh.
    strict_file = tmp_path / "strict.yaml"
    strict_file.write_text(yaml.safe_dump(STRICT))
    analyzed = _meshctl(mesh, "analyze", "--live", "-f", str(strict_file), "-o", "json")
    assert analyzed.returncode == 0, analyzed.stderr  # a warning, not an error
    warnings = [f for f in json.loads(analyzed.stdout) if f["code"] == "MSH0102"]
    assert [(f["resource"], "legacy" in f["message"]) for f in warnings] == [
        (f"PeerAuthentication {SHOP}/default", True)
    ]
    # 4. STRICT: the plaintext client is refused, the meshed one still gets through.
    mesh.lab.apply([STRICT])
    mesh.wait_for(
        lambda: not _answers(mesh, "legacy/client", shop), what="STRICT to refuse the legacy client"
    )
    assert _answers(mesh, "demo/client", shop)

    # 5. Out again: the policy first (so no client is refused meanwhile), then the label.
    mesh.lab.delete([STRICT])
    mesh.wait_for(
        lambda: _answers(mesh, "legacy/client", shop), what="PERMISSIVE again for the legacy client"
    )
    mesh.lab.apply([b.namespace(SHOP)])
    mesh.wait_for(
        lambda: REDIRECTION not in (_web(mesh)["metadata"].get("annotations") or {}),
        what=f"shop/web to lose {REDIRECTION}",
    )
    mesh.wait_for(
        lambda: "ISTIO" not in mesh.iptables(f"{SHOP}/web"), what="the capture rules to leave shop/web"
    )
    mesh.wait_for(
        lambda: (mesh.workload(SERVER_NODE, web_name) or {}).get("protocol") == "TCP",
        what="ztunnel to see shop/web as TCP",
    )
    assert _answers(mesh, "legacy/client", shop) and _answers(mesh, "demo/client", shop)
    assert _web(mesh)["metadata"]["uid"] == web_uid, "the procedure replaced the pod"
    restarts = sum(int(c.get("restartCount", 0)) for c in _web(mesh)["status"].get("containerStatuses", []))
    assert restarts == 0
