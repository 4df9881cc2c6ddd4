"""Which ztunnel ``meshctl ztunnel-config`` asks: --admin, --node, the lab's only node, or the host's."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from mesh.errors import MeshError
from meshctl.lab.api import Lab
from meshctl.lab.settings import build_settings
from meshctl.lab.supervisor import process_start_time
from meshctl.ztunnel_config import HOST_ADMIN, choose_ztunnel


def _args(state: Path, *, node: str | None = None, admin: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(state=str(state), node=node, admin=admin, view="workloads")


def test_admin_address_is_used_as_given(tmp_path: Path) -> None:
    assert choose_ztunnel(_args(tmp_path, admin="10.0.0.1:15000")) == (
        "10.0.0.1:15000",
        None,
        "10.0.0.1:15000",
    )


def test_without_a_running_lab_the_hosts_ztunnel_is_asked(tmp_path: Path) -> None:
    assert choose_ztunnel(_args(tmp_path / "no-lab")) == (HOST_ADMIN, None, HOST_ADMIN)


def _running_lab(state: Path, nodes: int) -> Lab:
    """A lab state directory whose daemon PID file names this (running) test process, with a ready
    ztunnel pod (uid ``zt<N>``) on each node."""
    lab = Lab(state, lab_id="zc")
    settings = build_settings(lab_id="zc", node_count=nodes, mesh=True)
    lab.store.write_settings(settings)
    lab.paths.daemon_pid.parent.mkdir(parents=True, exist_ok=True)
    lab.paths.daemon_pid.write_text(f"{os.getpid()} {process_start_time(os.getpid())}\n")
    with lab.store.transaction() as txn:
        for number, node in enumerate(settings.node_names(), 1):
            txn.put({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"ztunnel-{number}", "namespace": "istio-system", "uid": f"zt{number}",
                             "labels": {"app": "ztunnel"}, "creationTimestamp": "2026-12-06T00:00:00Z"},
                "spec": {"nodeName": node, "containers": [{"name": "istio-proxy"}]},
                "status": {"phase": "Running", "podIP": f"10.244.{number}.2",
                           "conditions": [{"type": "Ready", "status": "True"}]},
            })  # fmt: skip
    return lab


def test_a_running_lab_with_one_node_needs_no_flag(tmp_path: Path) -> None:
    lab = _running_lab(tmp_path, nodes=1)
    assert choose_ztunnel(_args(tmp_path)) == (HOST_ADMIN, lab.settings.pod_netns("zt1"), "node1")


def test_a_running_lab_with_several_nodes_asks_which(tmp_path: Path) -> None:
    lab = _running_lab(tmp_path, nodes=3)
    with pytest.raises(MeshError) as info:
        choose_ztunnel(_args(tmp_path))
    assert "the lab has 3 nodes (node1, node2, node3)" in str(info.value)
    assert info.value.hint == "meshctl ztunnel-config workloads --node node1"
    assert choose_ztunnel(_args(tmp_path, node="node2")) == (
        HOST_ADMIN,
        lab.settings.pod_netns("zt2"),
        "node2",
    )
