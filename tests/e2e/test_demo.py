"""``make demo`` (the mesh demo) runs end to end on its own lab and shows what it promises."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from meshctl.lab.api import Lab
from meshctl.lab.testkit import SystemSnapshot, unique_lab_id
from meshctl.mesh_demo import run_mesh_demo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_the_demo_shows_the_mesh_working(tmp_path: Path) -> None:
    state, lab_id = tmp_path / "state", unique_lab_id()
    before = SystemSnapshot.take(lab_id)
    out = io.StringIO()
    try:
        assert run_mesh_demo(state_dir=state, lab_id=lab_id, out=out) == 0
    finally:
        Lab(state, lab_id=lab_id).down()
    text = out.getvalue()
    assert "HBONE" in text and "TCP" in text  # enrolled demo pods, the legacy one not
    assert "spiffe://cluster.local/ns/demo/sa/client" in text  # its certificate, and the log lines
    assert "chain verified against istiod_lite's root" in text
    assert '"direction": "inbound", "src.identity": "spiffe://cluster.local/ns/demo/sa/client"' in text
    assert '"dst.identity": "spiffe://cluster.local/ns/demo/sa/server"' in text
    assert "connection_security_policy=mutual_tls" in text
    assert "Tear it down with:  .venv/bin/meshctl lab down" in text
    assert SystemSnapshot.take(lab_id).leftovers(before, lab_id=lab_id) == []
