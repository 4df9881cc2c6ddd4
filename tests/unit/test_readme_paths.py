"""The README's "Where things are" names the paths the lab really uses (so it cannot drift)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.lab.mesh import MeshLayout
from meshctl.lab.store import Store

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
STATE = Path("/state")
MESH = MeshLayout(STATE / "mesh")
PATHS = Store(STATE).paths


@pytest.mark.parametrize(
    ("path", "written"),
    [
        (PATHS.pod_log("demo", "client"), "logs/<namespace>_<pod>.log"),
        (PATHS.daemon_log, "logs/daemon.log"),
        (MESH.log("istiod"), "mesh/logs/istiod.log"),
        (MESH.log("node-agent-node1"), "mesh/logs/node-agent-<node>.log"),
        (MESH.log("ztunnel-node1"), "mesh/logs/ztunnel-<node>.log"),
        (MESH.istiod_state / "ca" / "root-cert.pem", "mesh/istiod/ca/root-cert.pem"),
    ],
)
def test_where_things_are(path: Path, written: str) -> None:
    relative = str(path.relative_to(STATE))
    pattern = written.replace("<namespace>", "demo").replace("<pod>", "client").replace("<node>", "node1")
    assert relative == pattern
    assert f"`{written}`" in README
