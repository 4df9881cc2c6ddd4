"""The node agent in the lab knows an uninstall from an upgrade as on Kubernetes: its DaemonSet gone
from the state directory, or being deleted, means uninstall; present means upgrade (rules stay); an
unreadable state directory counts as an upgrade (pods stay captured)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mesh.rt.labstate import LabState
from ztunnel.cni.pods import LabPodSource


def _daemonset(**metadata: Any) -> dict[str, Any]:
    meta = {"name": "istio-cni-node", "namespace": "istio-system", **metadata}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta, "spec": {}}


@pytest.mark.parametrize(
    ("stored", "uninstalling"),
    [
        (None, True),
        (_daemonset(), False),
        (_daemonset(deletionTimestamp="2026-12-06T00:30:00Z"), True),
        (_daemonset(name="other"), True),
    ],
)
async def test_the_agents_daemonset_in_the_lab_says_whether_the_mesh_is_uninstalled(
    tmp_path: Path, stored: dict[str, Any] | None, uninstalling: bool
) -> None:
    state = LabState(tmp_path)
    if stored is not None:
        with state.transaction() as txn:
            txn.put(stored)
    source = LabPodSource(tmp_path, node="node1")
    assert await source.uninstalling("istio-system", "istio-cni-node") is uninstalling


async def test_an_unreadable_daemonset_keeps_the_pods_captured(tmp_path: Path) -> None:
    state = LabState(tmp_path)
    with state.transaction() as txn:
        txn.put(_daemonset())
    state.object_path(("DaemonSet", "istio-system", "istio-cni-node")).write_text("{not: [yaml")
    assert await LabPodSource(tmp_path, node="node1").uninstalling("istio-system", "istio-cni-node") is False
