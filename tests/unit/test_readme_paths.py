"""The README's "Where things are" names the paths the lab really uses (so it cannot drift)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl.lab.store import Store

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
STATE = Path("/state")
PATHS = Store(STATE).paths


@pytest.mark.parametrize(
    ("path", "written"),
    [
        (PATHS.pod_log("demo", "client"), "logs/<namespace>_<pod>.log"),
        (PATHS.daemon_log, "logs/daemon.log"),
        (PATHS.pod_log("istio-system", "client"), "logs/istio-system_<pod>.log"),
        (PATHS.tokens, "mesh/tokens.yaml"),
        (
            PATHS.objects / "ConfigMap" / "istio-system" / "istio-ca-root-cert.yaml",
            "objects/ConfigMap/istio-system/istio-ca-root-cert.yaml",
        ),
    ],
)
def test_where_things_are(path: Path, written: str) -> None:
    relative = str(path.relative_to(STATE))
    pattern = written.replace("<namespace>", "demo").replace("<pod>", "client").replace("<node>", "node1")
    assert relative == pattern
    assert f"`{written}`" in README
