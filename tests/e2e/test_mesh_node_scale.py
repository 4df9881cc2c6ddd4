"""Issue 20 and catalogue 30 at node scale: node1 runs 110 enrolled pods (``demo/client`` and
sleepers of namespace ``scale``), the default pod limit of a Kubernetes node.

- The node agent's container killed with SIGKILL comes back (the lab restarts it in the same pod,
  as kubelet does) and replays its snapshot without touching any pod: every pod's rules as they
  were (packet counters not reset), no pod object written, ztunnel keeping every proxy, and a
  connection open through the mesh all along exchanging data without an error.
- ztunnel's container killed with SIGKILL comes back in the same pod and takes all 110 pods again;
  the time until it is ready (listeners bound, a certificate for every identity) is measured,
  printed and under catalogue 30's 5 s. New connections from an enrolled pod during the gap fail
  closed (refused, none reaches the server in plaintext) and fail for no longer than that time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.lab import builders as b
from meshctl.lab.meshview import MeshPod, node_agent, ztunnel
from meshctl.nethttp import http_get
from tests.e2e.conftest import (
    CLIENT_NODE,
    ECHO_PORT,
    HOLD,
    HTTP_PORT,
    REDIRECTION,
    SERVER_NODE,
    MeshLab,
    spiffe,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

PER_NODE = 110
SCALE = "scale"
READINESS_PORT = 15021


# Opens a new connection every 100 ms and sends one HTTP request; prints "<unix time> <outcome>"
# per attempt until 20 in a row succeeded after a failure, or argv[3] seconds passed.
PROBE = r"""
import socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline, failed, streak = time.monotonic() + limit, False, 0
while time.monotonic() < deadline and not (failed and streak >= 20):
    started = time.time()
    try:
        with socket.create_connection((host, port), 1) as sock:
            sock.settimeout(2)
            sock.sendall(b"GET /scale HTTP/1.0\r\nHost: server\r\n\r\n")
            outcome = "ok" if sock.recv(12).startswith(b"HTTP/1.") else "no-answer"
    except ConnectionRefusedError:
        outcome = "refused"
    except OSError as exc:
        outcome = type(exc).__name__
    failed, streak = failed or outcome != "ok", streak + 1 if outcome == "ok" else 0
    print(f"{started:.3f} {outcome}", flush=True)
    time.sleep(max(0.0, 0.1 - (time.time() - started)))
"""


def _enrolled_on(mesh: MeshLab, node: str) -> list[str]:
    refs = []
    for pod in mesh.lab.pods():
        annotations = pod["metadata"].get("annotations") or {}
        if pod["spec"].get("nodeName") == node and annotations.get(REDIRECTION) == "enabled":
            refs.append(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")
    return sorted(refs)


@pytest.fixture(scope="module")
def crowded(mesh: MeshLab) -> Iterator[list[str]]:
    """node1 with 110 enrolled pods; the ``scale`` namespace removed afterwards."""
    fill = PER_NODE - len(_enrolled_on(mesh, CLIENT_NODE))
    objects = [
        b.namespace(SCALE, labels={"istio.io/dataplane-mode": "ambient"}),
        b.deployment("fill", SCALE, command=b.SLEEPER, node=CLIENT_NODE, replicas=fill),
    ]
    try:
        mesh.lab.apply(objects)
        mesh.lab.wait_ready(timeout=180)
        mesh.wait_for(
            lambda: len(_enrolled_on(mesh, CLIENT_NODE)) == PER_NODE,
            what=f"{PER_NODE} enrolled pods on {CLIENT_NODE}",
            timeout=60,
        )
        yield _enrolled_on(mesh, CLIENT_NODE)
    finally:
        mesh.lab.delete(objects[::-1])
        mesh.wait_for(
            lambda: not mesh.lab.pods(SCALE), what=f"the pods of {SCALE} to be removed", timeout=120
        )
        left = len(_enrolled_on(mesh, CLIENT_NODE))
        mesh.wait_for(lambda: _proxies(mesh) == left, what=f"{CLIENT_NODE}'s ztunnel to stop their proxies")


def _proxies(mesh: MeshLab) -> float:
    """The pod proxies running in node1's ztunnel."""
    started = mesh.metric(CLIENT_NODE, "workload_manager_proxies_started_total")
    return started - mesh.metric(CLIENT_NODE, "workload_manager_proxies_stopped_total")


def _pid(pod: MeshPod) -> int:
    pid = pod.pid()
    assert pid is not None, f"the container of {pod.ref} is not running"
    return pid


def _event(path: Path, offset: int, name: str) -> dict[str, Any] | None:
    """The first ``name`` event logged after ``offset``."""
    return next((e for e in _events_after(path, offset) if e.get("event") == name), None)


def _events_after(path: Path, offset: int) -> list[dict[str, Any]]:
    with path.open("rb") as handle:
        handle.seek(offset)
        lines = handle.read().decode(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _capture(mesh: MeshLab, pod: str) -> tuple[str, int]:
    """The pod's rules (without counters and comments) and its outbound REDIRECT's packet count."""
    saved = mesh.exec(pod, "iptables-save", "-c").stdout
    lines = [line for line in saved.splitlines() if not line.startswith("#")]
    packets = next(
        (
            int(m.group(1))
            for line in lines
            if "--to-ports 15001" in line and (m := re.match(r"\[(\d+):", line))
        ),
        -1,
    )
    rules = re.sub(r"\[\d+:\d+\]", "", "\n".join(lines))
    routing = (
        mesh.exec(pod, "ip", "rule").stdout + mesh.exec(pod, "ip", "route", "show", "table", "100").stdout
    )
    return rules + routing, packets


def _resource_versions(mesh: MeshLab, pods: list[str]) -> dict[str, str]:
    return {ref: mesh.pod(ref)["metadata"]["resourceVersion"] for ref in pods}


def test_a_restarted_node_agent_replays_110_pods_and_touches_none(mesh: MeshLab, crowded: list[str]) -> None:
    before = {ref: _capture(mesh, ref) for ref in crowded}
    versions = _resource_versions(mesh, crowded)
    agent = node_agent(mesh.lab, CLIENT_NODE)
    agent_log, ztunnel_log = agent.log, ztunnel(mesh.lab, CLIENT_NODE).log
    agent_offset, ztunnel_offset = agent_log.stat().st_size, ztunnel_log.stat().st_size
    stop = mesh.lab.paths.root / "hold.stop"
    echo = mesh.pod_ip("demo/tcpecho")
    hold = subprocess.Popen(
        mesh.lab.exec_argv("demo/client", ["python", "-c", HOLD, echo, str(ECHO_PORT), "120", str(stop)]),
        stdout=subprocess.PIPE, text=True, env=mesh.lab.exec_env(),
    )  # fmt: skip
    try:
        assert hold.stdout is not None and hold.stdout.readline().strip() == "connected"
        killed = _pid(agent)
        started = time.monotonic()
        os.kill(killed, signal.SIGKILL)
        recovered = mesh.wait_for(
            lambda: _event(agent_log, agent_offset, "agent.recovered"),
            what="the restarted node agent to recover its pods",
            timeout=60,
        )
        mesh.wait_for(
            lambda: _event(ztunnel_log, ztunnel_offset, "zds.snapshot_applied"),
            what="ztunnel to take the new agent's snapshot",
            timeout=30,
        )
        replayed = time.monotonic() - started
        time.sleep(1.0)  # the held connection keeps exchanging after the replay
    finally:
        stop.touch()
        out, _ = hold.communicate(timeout=30)
        stop.unlink(missing_ok=True)
    print(f"node agent: killed, restarted and replayed {PER_NODE} pods in {replayed:.2f} s")
    assert agent.pid() not in (None, killed), f"the lab restarted the container in {agent.ref}"

    assert recovered["pods.enabled"] >= PER_NODE, recovered
    agent_events = [e.get("event") for e in _events_after(agent_log, agent_offset)]
    assert "agent.recover_rules_repaired" not in agent_events, "a rule already in place was rewritten"
    ztunnel_events = [e.get("event") for e in _events_after(ztunnel_log, ztunnel_offset)]
    assert ztunnel_events.count("proxy.kept") >= PER_NODE
    assert "proxy.stopped" not in ztunnel_events and "proxy.started" not in ztunnel_events
    held = json.loads(out.splitlines()[-1])
    assert held["how"] == "stopped" and held["trips"] > 10, held
    assert _resource_versions(mesh, crowded) == versions, "a pod object was written (annotation flap)"
    for ref, (rules, packets) in before.items():
        now_rules, now_packets = _capture(mesh, ref)
        assert now_rules == rules, f"the rules of {ref} changed"
        assert now_packets >= packets, f"the capture of {ref} was rebuilt (its counters were reset)"


def _ready(pod: MeshPod) -> bool:
    try:
        status, _ = http_get(pod.ip, READINESS_PORT, "/healthz/ready", netns=pod.netns, timeout=1)
    except OSError:
        return False
    return status == 200


def test_a_restarted_ztunnel_takes_110_pods_back_and_fails_closed_meanwhile(
    mesh: MeshLab, crowded: list[str]
) -> None:
    server = mesh.pod_ip("demo/server")
    pod = ztunnel(mesh.lab, CLIENT_NODE)
    offset = pod.log.stat().st_size
    killed = _pid(pod)
    probe = subprocess.Popen(
        mesh.lab.exec_argv("demo/client", ["python", "-c", PROBE, server, str(HTTP_PORT), "90"]),
        stdout=subprocess.PIPE, text=True, env=mesh.lab.exec_env(),
    )  # fmt: skip
    try:
        time.sleep(0.5)  # a few good attempts first
        killed_at = time.time()
        os.kill(killed, signal.SIGKILL)
        mesh.wait_for(lambda: not _ready(pod), what="the killed ztunnel to stop answering", timeout=5)
        mesh.wait_for(lambda: _ready(pod), what="the new ztunnel to be ready", timeout=90)
        ready_after = time.time() - killed_at
    finally:
        out, _ = probe.communicate(timeout=120)
    print(f"ztunnel: killed and ready again with {PER_NODE} pods in {ready_after:.2f} s")
    assert ready_after < 5.0, "catalogue 30: listeners again in every pod within 5 s"

    assert pod.pid() not in (None, killed), f"the lab restarted the container in {pod.ref}"
    applied = [e for e in _events_after(pod.log, offset) if e.get("event") == "zds.snapshot_applied"]
    assert applied and applied[-1]["proxies"] >= PER_NODE, applied
    attempts = [(float(t), outcome) for t, outcome in (line.split() for line in out.splitlines())]
    failures = [(t, outcome) for t, outcome in attempts if outcome != "ok"]
    assert failures, "no new connection failed while ztunnel was down"
    assert {outcome for _, outcome in failures} <= {"refused"}, f"not failed closed: {failures}"
    assert attempts[-1][1] == "ok"
    failing_for = failures[-1][0] - killed_at
    assert failing_for <= ready_after + 0.5, (
        f"failed for {failing_for:.2f} s, ready after {ready_after:.2f} s"
    )
    client_ip = mesh.pod_ip("demo/client")
    inbound = [
        e
        for e in mesh.access_log(SERVER_NODE)
        if e.get("direction") == "inbound" and str(e.get("src.addr", "")).startswith(f"{client_ip}:")
    ]
    assert inbound and all(e.get("src.identity") == spiffe("demo", "client") for e in inbound), (
        "a connection reached the server without the client's mTLS identity"
    )
