"""``make demo`` (the mesh demo) runs end to end on its own lab and shows what it promises."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from meshctl.lab.api import Lab
from meshctl.lab.testkit import SystemSnapshot, unique_lab_id
from meshctl.mesh_demo import run_mesh_demo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

USER_CONFIG = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "kept-by-the-demo", "namespace": "demo"},
    "data": {"note": "applied by the user between two demo runs"},
}


def test_the_demo_shows_the_mesh_working(tmp_path: Path) -> None:
    state, lab_id = tmp_path / "state", unique_lab_id()
    before = SystemSnapshot.take(lab_id)
    out = io.StringIO()
    lab = Lab(state, lab_id=lab_id)
    again = io.StringIO()
    try:
        assert run_mesh_demo(state_dir=state, lab_id=lab_id, out=out) == 0
        assert lab.settings.observability
        # What the user applies between two runs survives the second run, and the lab is not rebuilt.
        lab.apply([USER_CONFIG])
        daemon = lab.daemon_pid()
        assert run_mesh_demo(state_dir=state, lab_id=lab_id, out=again) == 0
        assert lab.daemon_pid() == daemon
        kept = [o["metadata"]["name"] for o in lab.objects("ConfigMap", "demo")]
        assert kept == ["istio-ca-root-cert", "kept-by-the-demo"]  # the mesh's root is istiod's
    finally:
        lab.down()
    second = again.getvalue()
    assert "a lab is running: kept, with what you applied" in second
    assert "converged in" in second and "FRESH=1" in second
    assert "taking it down" not in second
    text = out.getvalue()
    assert "HBONE" in text and "TCP" in text  # enrolled demo pods, the legacy one not
    assert "spiffe://cluster.local/ns/demo/sa/client" in text  # its certificate, and the log lines
    assert "chain verified against istiod_lite's root" in text
    assert '"direction": "inbound", "src.identity": "spiffe://cluster.local/ns/demo/sa/client"' in text
    assert '"dst.identity": "spiffe://cluster.local/ns/demo/sa/server"' in text
    assert '{"timestamp": "' in text  # what tells otherwise alike lines apart
    assert "connection_security_policy=mutual_tls" in text
    assert "Tear it down with:  .venv/bin/meshctl lab down" in text
    assert "dashboard   then open http://127.0.0.1:20001/" in text  # the lab runs Prometheus
    assert "through the waypoint (VirtualService: 90/10)" in text
    assert "with x-canary-test: true (the header route): {'v2': 10}" in text
    assert SystemSnapshot.take(lab_id).leftovers(before, lab_id=lab_id) == []
