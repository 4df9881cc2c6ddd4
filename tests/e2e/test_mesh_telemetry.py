"""Telemetry on the lab: the istio_tcp_* counters of both ztunnels match, to the byte, what a client
sent through a TCP echo on the other node; the /metrics pages pass ``promtool check metrics``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshctl.lab.meshview import ztunnel
from tests.e2e.conftest import CLIENT_NODE, ECHO_PORT, ECHO_PREFIX, HTTP_PORT, SERVER_NODE, MeshLab, spiffe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

COUNTERS = (
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_sent_bytes_total",
)
NBYTES = 100_000  # in lines of 100 bytes; the echo prefixes each line, so the answer is longer
ANSWER = NBYTES + (NBYTES // 100) * (len(ECHO_PREFIX) + 1)


def _labels(reporter: str) -> dict[str, str]:
    return {
        "reporter": reporter,
        "source_workload": "client",
        "source_workload_namespace": "demo",
        "source_principal": spiffe("demo", "client"),
        "destination_workload": "tcpecho",
        "destination_workload_namespace": "demo",
        "destination_principal": spiffe("demo", "server"),
        "destination_service": "tcpecho.demo.svc.cluster.local",  # the server side learns it from `forwarded`
        "connection_security_policy": "mutual_tls",
    }


def _counters(mesh: MeshLab) -> dict[tuple[str, str], float]:
    sides = ((CLIENT_NODE, "source"), (SERVER_NODE, "destination"))
    return {
        (node, name): mesh.metric(node, name, **_labels(reporter))
        for node, reporter in sides
        for name in COUNTERS
    }


def test_tcp_counters_equal_what_the_client_sent(mesh: MeshLab) -> None:
    before = _counters(mesh)
    echoed = mesh.send("demo/client", "tcpecho", ECHO_PORT, NBYTES)
    assert (echoed.sent, echoed.received, echoed.error) == (NBYTES, ANSWER, ""), echoed

    def closed_on_both_sides() -> dict[tuple[str, str], float] | None:
        now = _counters(mesh)
        closed = [now[(n, COUNTERS[1])] - before[(n, COUNTERS[1])] for n in (CLIENT_NODE, SERVER_NODE)]
        return now if closed == [1, 1] else None

    after = mesh.wait_for(closed_on_both_sides, what="the connection to be counted closed on both nodes")
    deltas = {key: after[key] - before[key] for key in after}
    # Istio's convention on both reporters: "received" is what the destination received (the request)
    expected: dict[tuple[str, str], float] = {}
    for node in (CLIENT_NODE, SERVER_NODE):
        expected |= {
            (node, "istio_tcp_connections_opened_total"): 1,
            (node, "istio_tcp_connections_closed_total"): 1,
            (node, "istio_tcp_received_bytes_total"): NBYTES,
            (node, "istio_tcp_sent_bytes_total"): ANSWER,
        }
    assert deltas == expected


@pytest.mark.parametrize("node", [CLIENT_NODE, SERVER_NODE])
def test_metrics_pass_promtool(mesh: MeshLab, node: str) -> None:
    done = mesh.curl("demo/client", f"http://{mesh.pod_ip('demo/server')}:{HTTP_PORT}/promtool")
    assert done.returncode == 0, done.stderr
    reporter = "source" if node == CLIENT_NODE else "destination"
    mesh.wait_for(
        lambda: mesh.metric(node, "istio_tcp_connections_closed_total", reporter=reporter) > 0,
        what=f"a closed connection in the {node} metrics",
    )
    text = mesh.metrics_text(node)
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, f"promtool on {node}'s /metrics:\n{check.stdout}{check.stderr}"


def test_meshctl_reads_and_changes_a_running_ztunnels_log_level(mesh: MeshLab) -> None:
    """``meshctl zc log`` as ``istioctl zc log``: the level changes at runtime, and changes back."""
    meshctl = str(Path(sys.executable).with_name("meshctl"))
    state = str(mesh.lab.paths.root)

    def zc_log(*extra: str) -> str:
        argv = [meshctl, "ztunnel-config", "log", "--node", CLIENT_NODE, "--state", state, *extra]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert zc_log() == f"{CLIENT_NODE}: log level info"
    try:
        assert zc_log("--level", "debug") == f"{CLIENT_NODE}: log level debug"
        assert zc_log() == f"{CLIENT_NODE}: log level debug"
    finally:
        assert zc_log("--level", "info") == f"{CLIENT_NODE}: log level info"
    log = ztunnel(mesh.lab, CLIENT_NODE).log.read_text()
    changes = [json.loads(line)["new_level"] for line in log.splitlines() if '"admin.log_level"' in line]
    assert changes[-2:] == ["debug", "info"], changes  # each change is logged


def test_meshctl_zc_without_node_names_the_labs_nodes(mesh: MeshLab) -> None:
    """Without ``--node`` in a lab of several nodes, zc lists the nodes and says how to choose;
    it never falls back to a host address where no ztunnel listens."""
    meshctl = str(Path(sys.executable).with_name("meshctl"))
    argv = [meshctl, "ztunnel-config", "workloads", "--state", str(mesh.lab.paths.root)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    nodes = mesh.lab.settings.node_names()
    assert done.returncode != 0
    assert f"the lab has {len(nodes)} nodes ({', '.join(nodes)})" in done.stderr
    assert f"--node {nodes[0]}" in done.stderr
    assert "cannot reach" not in done.stderr


HOLD_OPEN = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"x" * 1000)
print(s.getsockname()[1], flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_meshctl_zc_connections_lists_a_live_connection_on_both_nodes(mesh: MeshLab) -> None:
    """A connection still open shows on the client's node as outbound and on the server's node as
    inbound, with both identities, bytes and age; the inbound source is the client's own address
    (from the tunnel's Forwarded header), not the pooled HBONE connection's."""
    meshctl = str(Path(sys.executable).with_name("meshctl"))
    client_ip, echo_ip = mesh.pod_ip("demo/client"), mesh.pod_ip("demo/tcpecho")
    holder = subprocess.Popen(
        mesh.lab.exec_argv("demo/client", ["python", "-c", HOLD_OPEN, echo_ip, str(ECHO_PORT), "30"]),
        stdout=subprocess.PIPE,
        text=True,
        env=mesh.lab.exec_env(),
    )
    try:
        assert holder.stdout is not None
        client_port = int(holder.stdout.readline())

        def listed(node: str, direction: str) -> dict[str, Any] | None:
            argv = [
                meshctl,
                "zc",
                "connections",
                "--node",
                node,
                "--state",
                str(mesh.lab.paths.root),
                "-o",
                "json",
            ]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            assert done.returncode == 0, done.stderr
            rows = [
                r
                for r in json.loads(done.stdout)
                if r["direction"] == direction
                and r["src.addr"] == f"{client_ip}:{client_port}"
                and r["dst.addr"] == f"{echo_ip}:{ECHO_PORT}"
                and r["bytes_sent"] >= 1000
            ]
            return rows[0] if rows else None

        # held open for 30 s: long enough for a listing on a busy machine (each is a meshctl process)
        outbound = mesh.wait_for(lambda: listed(CLIENT_NODE, "outbound"), what="the outbound row", timeout=25)
        inbound = mesh.wait_for(lambda: listed(SERVER_NODE, "inbound"), what="the inbound row", timeout=25)
        for row in (outbound, inbound):
            assert row["src.identity"] == spiffe("demo", "client"), row
            assert row["dst.identity"] == spiffe("demo", "server"), row
            assert row["age_seconds"] >= 0, row
        table = subprocess.run(
            [meshctl, "zc", "connections", "--node", CLIENT_NODE, "--state", str(mesh.lab.paths.root)],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert table.splitlines()[0].split()[:3] == ["DIRECTION", "SOURCE", "DESTINATION"]
        assert any(
            line.startswith("outbound") and f"{echo_ip}:{ECHO_PORT}" in line for line in table.splitlines()
        )
    finally:
        holder.kill()
        holder.wait()
