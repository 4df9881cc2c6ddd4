"""A control-plane outage (catalogue 23): while istiod_lite (the one pod of its Deployment) is frozen
and then killed, the ztunnels keep serving new connections with their last known config and
certificates; once it is back (the lab restarts the container in the same pod, as kubelet does) they
reconnect and take new config again."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from meshctl.lab.meshview import istiods
from tests.e2e.conftest import CLIENT_NODE, HTTP_PORT, SERVER_NODE, MeshLab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MARKER_POLICY = "e2e-outage-marker"


def _marker_policy() -> dict[str, Any]:
    """A policy that binds no workload: it only shows whether config reaches the ztunnels."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": MARKER_POLICY, "namespace": "demo"},
        "spec": {
            "selector": {"matchLabels": {"app": "nothing-has-this-label"}},
            "action": "DENY",
            "rules": [{}],
        },
    }


def _requests(mesh: MeshLab, rounds: int) -> list[str]:
    """Failures of ``rounds`` new connections by pod IP and by Service name."""
    failures = []
    for url in (f"http://{mesh.pod_ip('demo/server')}:{HTTP_PORT}/outage", "http://server.demo/outage"):
        for _ in range(rounds):
            done = mesh.curl("demo/client", url)
            if done.returncode != 0:
                failures.append(f"{url}: {done.stderr.strip()}")
    return failures


def test_ztunnels_serve_through_a_control_plane_outage_and_resync_after(mesh: MeshLab) -> None:
    assert _requests(mesh, 1) == []
    (istiod,) = istiods(mesh.lab)
    frozen = istiod.pid()
    assert frozen is not None, f"the container of {istiod.ref} is not running"
    os.kill(frozen, signal.SIGSTOP)
    try:
        time.sleep(3.0)
        assert _requests(mesh, 10) == [], "new connections failed while istiod_lite was frozen"
    finally:
        os.kill(frozen, signal.SIGKILL)  # it dies frozen: no goodbye to the ztunnels
    mesh.wait_for(
        lambda: istiod.pid() not in (None, frozen), what=f"the lab to start {istiod.ref} again", timeout=30
    )
    assert _requests(mesh, 5) == [], "new connections failed while istiod_lite was restarting"
    mesh.lab.apply([_marker_policy()])
    try:
        for node in (CLIENT_NODE, SERVER_NODE):
            mesh.wait_policy(node, MARKER_POLICY, present=True, timeout=45)
    finally:
        mesh.lab.delete([_marker_policy()])
    for node in (CLIENT_NODE, SERVER_NODE):
        mesh.wait_policy(node, MARKER_POLICY, present=False, timeout=20)
    assert _requests(mesh, 2) == []
