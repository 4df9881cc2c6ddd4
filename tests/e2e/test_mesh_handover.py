"""Handing a node over to a new ztunnel while its pods keep opening connections (catalogue 28).

As in an Istio DaemonSet update: a second ztunnel on the node connects to the node agent, gets the
snapshot and binds the same in-pod ports next to the first one (SO_REUSEPORT); the first one is then
stopped (SIGTERM: it drains) and the lab's supervisor starts it again, as kubelet would; finally the
second one is stopped too. A client pod on that node opens 200 new connections a second all along,
and holds three long-lived ones. No new connection may fail: a closing listener's queued connections
move to the other ztunnel's listener (the node agent sets ``net.ipv4.tcp_migrate_req`` in the pod).
The long-lived ones stay usable until their ztunnel's drain deadline, are closed then, and each
ztunnel counts the connections it cut.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.testing.processes import stop_process
from meshctl.nethttp import http_get
from tests.e2e.conftest import CLIENT_NODE, CONNECTS, ECHO_PORT, HOLD, HTTP_PORT, MeshLab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

RATE = 200.0
"""New connections a second, as catalogue 28 asks at full scale."""
DRAIN_DEADLINE = 5.0
"""ztunnel's default ``--drain-deadline`` (the lab runs it with the default)."""

HELD = 3


def _pid_file(mesh: MeshLab) -> Path:
    return mesh.lab.paths.root / "mesh" / "pids" / f"ztunnel-{CLIENT_NODE}.pid"


def _pid(mesh: MeshLab) -> int:
    return int(_pid_file(mesh).read_text().split()[0])


def _ready(mesh: MeshLab, port: int) -> bool:
    try:
        status, _ = http_get(
            "127.0.0.1", port, "/healthz/ready", netns=mesh.node_netns(CLIENT_NODE), timeout=1
        )
    except OSError:
        return False
    return status == 200


def _opened_by(mesh: MeshLab, metrics_port: int) -> float:
    """Outbound connections a ztunnel on the client's node counted (from its /metrics)."""
    _, body = http_get("127.0.0.1", metrics_port, "/metrics", netns=mesh.node_netns(CLIENT_NODE), timeout=2)
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "istio_tcp_connections_opened_total" and sample.labels["reporter"] == "source":
                total += sample.value
    return total


@pytest.fixture
def second_ztunnel(mesh: MeshLab, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another ztunnel on the client's node with the lab ztunnel's arguments and its own ports."""
    argv = Path(f"/proc/{_pid(mesh)}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    ports = ["--admin", "127.0.0.1:15100", "--metrics", "0.0.0.0:15120", "--readiness", "0.0.0.0:15121"]
    with (tmp_path / "ztunnel-b.log").open("wb") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", mesh.node_netns(CLIENT_NODE), *map(os.fsdecode, argv), *ports],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        stop_process(proc, grace=15)


def _stopped_events(path: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The ``ztunnel.stopped`` events a ztunnel log holds after ``offset``."""
    with path.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in events if e.get("event") == "ztunnel.stopped"]


def _hold(mesh: MeshLab, echo: str) -> subprocess.Popen[str]:
    hold = subprocess.Popen(
        mesh.lab.exec_argv("demo/client", ["python", "-c", HOLD, echo, str(ECHO_PORT), "60"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mesh.lab.exec_env(),
    )  # fmt: skip
    assert hold.stdout is not None
    if hold.stdout.readline().strip() != "connected":
        raise AssertionError(f"a held connection to {echo}:{ECHO_PORT} failed: {hold.communicate()[1]}")
    return hold


def test_a_node_changes_ztunnel_while_its_pod_keeps_connecting(
    mesh: MeshLab, second_ztunnel: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    server_ip, echo = mesh.pod_ip("demo/server"), mesh.pod_ip("demo/tcpecho")
    lab_log = mesh.lab.paths.root / "mesh" / "logs" / f"ztunnel-{CLIENT_NODE}.log"
    lab_offset = lab_log.stat().st_size
    mesh.wait_for(lambda: _ready(mesh, 15121), what="the second ztunnel to be ready", timeout=20)
    holds = [_hold(mesh, echo) for _ in range(HELD)]  # on either ztunnel (the kernel's reuseport hash)
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(
            mesh.exec,
            "demo/client",
            "python",
            "-c",
            CONNECTS,
            server_ip,
            str(HTTP_PORT),
            str(RATE),
            "16",
            timeout=60,
        )
        time.sleep(2.0)
        first = _pid(mesh)
        first_stopped = time.time()
        os.kill(first, signal.SIGTERM)  # the DaemonSet's old pod; the supervisor starts it again
        mesh.wait_for(
            lambda: _pid_file(mesh).exists() and _pid(mesh) != first and _ready(mesh, 15021),
            what="the lab to start the first ztunnel again, ready",
            timeout=30,
        )
        mesh.wait_for(lambda: _opened_by(mesh, 15120) > 0, what="the second ztunnel to carry connections")
        time.sleep(max(0.0, first_stopped + DRAIN_DEADLINE + 1.0 - time.time()))
        second_stopped = time.time()
        second_ztunnel.send_signal(signal.SIGTERM)
        assert second_ztunnel.wait(timeout=15) == 0
        done = load.result(timeout=60)
    held = [json.loads(h.communicate(timeout=60)[0]) for h in holds]

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    print(f"hand-over: {result['ok']} new connections at {result['rate']:.0f}/s, failed: {result['failed']}")
    assert result["failed"] == [], result
    assert result["rate"] >= 0.9 * RATE, result
    for hold in held:  # usable until its ztunnel's deadline, closed then
        assert hold["how"] != "limit" and hold["trips"] > 20, held
        assert any(
            stopped + DRAIN_DEADLINE - 0.5 <= hold["ended"] <= stopped + DRAIN_DEADLINE + 2.0
            for stopped in (first_stopped, second_stopped)
        ), (held, first_stopped, second_stopped)
    cut = _stopped_events(lab_log, lab_offset) + _stopped_events(tmp_path / "ztunnel-b.log")
    assert len(cut) == 2, cut
    assert sum(e["connections_cut"] for e in cut) == HELD, cut
