"""The ztunnel DaemonSet rolled on both nodes five times under load (issue 17, catalogue 28).

Each roll changes the DaemonSet's pod template (a ``kubectl.kubernetes.io/restartedAt`` annotation,
as ``kubectl rollout restart`` does); with ``maxSurge: 1, maxUnavailable: 0`` the lab starts the new
ztunnel pod beside the old one on one node at a time: it gets every enrolled pod's network namespace
from the node agent and binds the same in-pod listeners (SO_REUSEPORT); once it is ready the old pod
is deleted and drains (SIGTERM, ``--drain-deadline``). A roll is complete when both nodes run a new,
ready pod and the old ones are gone.

The client pod on node1 opens 200 new connections a second all along: not one may be refused, reset
or fail otherwise (a closing listener's queued connections move to the new listener: the node agent
sets ``net.ipv4.tcp_migrate_req`` in the pod). Before each roll the client also holds three
long-lived connections through the old ztunnel: they stay usable until its drain deadline, are closed
then, and the old ztunnel counts them as cut.
"""

from __future__ import annotations

import copy
import datetime
import json
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshctl.lab.mesh import MESH_NAMESPACE
from meshctl.lab.meshview import ZTUNNEL, MeshPod, mesh_pods
from tests.e2e.conftest import CLIENT_NODE, CONNECTS, ECHO_PORT, HOLD, HTTP_PORT, SERVER_NODE, MeshLab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROLLS = 5
RATE = 200.0
"""New connections a second, as catalogue 28 asks at full scale."""
LOAD_SECONDS = 120.0
"""The most the load runs: it stops 2 s after the last roll (the five take about 10 s each; the test
checks that the load outlasted them)."""
DRAIN_DEADLINE = 5.0
"""ztunnel's default ``--drain-deadline`` (the DaemonSet runs it with the default)."""
HELD = 3
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


@dataclass(frozen=True, slots=True)
class Roll:
    """One roll of the DaemonSet: when it began and was complete, and the client node's old pod."""

    began: float
    complete: float
    old_client_ztunnel: MeshPod


def _ztunnel_pods(mesh: MeshLab) -> list[dict[str, Any]]:
    """Every ztunnel pod the lab stores, terminating ones included."""
    pods = mesh.lab.objects("Pod", MESH_NAMESPACE)
    return [p for p in pods if (p["metadata"].get("labels") or {}).get("app") == ZTUNNEL]


def _restart_daemonset(mesh: MeshLab) -> None:
    """Changes the ztunnel DaemonSet's pod template, as ``kubectl rollout restart`` does."""
    (stored,) = [d for d in mesh.lab.objects("DaemonSet", MESH_NAMESPACE) if d["metadata"]["name"] == ZTUNNEL]
    daemonset = copy.deepcopy(stored)
    template = daemonset["spec"]["template"]["metadata"]
    template["annotations"] = {**(template.get("annotations") or {}), RESTARTED_AT: f"{time.time():.6f}"}
    mesh.lab.apply([daemonset])


def _rolled(mesh: MeshLab, old: set[str]) -> bool:
    """A new ready ztunnel pod on each node and none of the ``old`` pods left."""
    pods = _ztunnel_pods(mesh)
    return not {p["metadata"]["uid"] for p in pods} & old and {
        p.node for p in mesh_pods(mesh.lab, ZTUNNEL) if p.ready
    } == {CLIENT_NODE, SERVER_NODE}


def _roll(mesh: MeshLab) -> Roll:
    """One roll of the DaemonSet, waited for until complete."""
    old = {p["metadata"]["uid"] for p in _ztunnel_pods(mesh)}
    assert len(old) == 2, f"not one ztunnel pod a node before the roll: {_ztunnel_pods(mesh)}"
    (client_ztunnel,) = [p for p in mesh_pods(mesh.lab, ZTUNNEL) if p.node == CLIENT_NODE]
    began = time.time()
    _restart_daemonset(mesh)
    mesh.wait_for(lambda: _rolled(mesh, old), what="the ztunnel DaemonSet rolled on both nodes", timeout=40)
    return Roll(began=began, complete=time.time(), old_client_ztunnel=client_ztunnel)


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    """The ``name`` events of a ztunnel pod's log."""
    lines = log.read_text(errors="replace").splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in events if e.get("event") == name]


def _unix(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


def _hold(mesh: MeshLab, echo: str) -> subprocess.Popen[str]:
    hold = subprocess.Popen(
        mesh.lab.exec_argv("demo/client", ["python", "-c", HOLD, echo, str(ECHO_PORT), "40"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mesh.lab.exec_env(),
    )  # fmt: skip
    assert hold.stdout is not None
    if hold.stdout.readline().strip() != "connected":
        raise AssertionError(f"a held connection to {echo}:{ECHO_PORT} failed: {hold.communicate()[1]}")
    return hold


def _check_held(roll: Roll, held: list[dict[str, Any]]) -> int:
    """The held connections lived until the old ztunnel's drain deadline and were cut then; returns
    the number the old ztunnel counted as cut."""
    log = roll.old_client_ztunnel.log
    draining = _events(log, "ztunnel.draining")[-1]  # its last container's (it may have restarted)
    stopped = _events(log, "ztunnel.stopped")[-1]
    deadline = _unix(draining["timestamp"]) + DRAIN_DEADLINE
    for hold in held:
        assert hold["how"] != "limit" and hold["trips"] > 20, held
        assert deadline - 0.5 <= hold["ended"] <= deadline + 2.0, (held, draining)
    return int(stopped["connections_cut"])


def test_ztunnel_rolled_five_times_under_load_fails_no_new_connection(mesh: MeshLab, tmp_path: Path) -> None:
    server_ip, echo = mesh.pod_ip("demo/server"), mesh.pod_ip("demo/tcpecho")
    stop = tmp_path / "stop-load"
    rolls: list[Roll] = []
    cut: list[int] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        load_began = time.time()
        load = pool.submit(
            mesh.exec, "demo/client", "python", "-c", CONNECTS, server_ip, str(HTTP_PORT), f"{RATE}",
            f"{LOAD_SECONDS}", str(stop), timeout=LOAD_SECONDS + 30,
        )  # fmt: skip
        time.sleep(1.0)
        for _ in range(ROLLS):
            holds = [_hold(mesh, echo) for _ in range(HELD)]  # all through the node's one ztunnel
            rolls.append(_roll(mesh))
            cut.append(_check_held(rolls[-1], [json.loads(h.communicate(timeout=60)[0]) for h in holds]))
        time.sleep(2.0)  # new connections through the last new pods, then the load stops
        stop.touch()
        done = load.result(timeout=LOAD_SECONDS + 60)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    failed = [entry.split(" ", 1) for entry in result["failed"]]
    outcomes = Counter(outcome if outcome in ("refused", "reset") else "other" for _, outcome in failed)
    for number, (roll, count) in enumerate(zip(rolls, cut, strict=True), 1):
        during = sum(roll.began <= float(t) <= roll.complete for t, _ in failed)
        print(
            f"roll {number}: {roll.complete - roll.began:.1f} s, {during} new connections failed, "
            f"{count} held connections cut at the drain deadline"
        )
    print(
        f"ztunnel rolled {ROLLS} times on both nodes: {result['ok']} new connections ok at "
        f"{result['rate']:.0f}/s, {len(failed)} failed ({outcomes['refused']} refused, "
        f"{outcomes['reset']} reset, {outcomes['other']} other): {result['failed'][:10]}"
    )
    assert rolls[-1].complete < load_began + LOAD_SECONDS, "the load ended before the last roll did"
    assert result["failed"] == [], result["failed"]
    assert result["rate"] >= 0.9 * RATE, result["rate"]
    assert cut == [HELD] * ROLLS, "the old ztunnel on the client's node cut its held connections"
