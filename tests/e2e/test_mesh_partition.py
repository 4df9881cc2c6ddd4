"""A partition between the nodes, then the heal (catalogue 32): the pooled HBONE connection that went
dead is found by its keepalive PINGs (every 10 s, 20 s to answer, as ztunnel's), evicted, and the
first request after the heal gets through on a fresh connection."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import pytest

from meshctl.lab.meshview import ztunnel
from tests.e2e.conftest import CLIENT_NODE, HTTP_PORT, SERVER_NODE, MeshLab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DETECTION = 35.0
"""Seconds within which a dead connection must be found: one PING interval plus its timeout."""


@contextlib.contextmanager
def partition(mesh: MeshLab) -> Iterator[None]:
    """The client's node drops all traffic to and from the server node's pods until the block ends."""
    cidr = mesh.lab.settings.node(SERVER_NODE).pod_cidr
    rules = [["FORWARD", "-d", cidr, "-j", "DROP"], ["FORWARD", "-s", cidr, "-j", "DROP"]]
    iptables = ["ip", "netns", "exec", mesh.node_netns(CLIENT_NODE), "iptables"]
    inserted = []
    try:
        for rule in rules:
            subprocess.run([*iptables, "-I", *rule], check=True, capture_output=True, timeout=20)
            inserted.append(rule)
        yield
    finally:
        for rule in inserted:
            subprocess.run([*iptables, "-D", *rule], check=True, capture_output=True, timeout=20)


def _keepalive_timeouts(mesh: MeshLab) -> int:
    return ztunnel(mesh.lab, CLIENT_NODE).log.read_text().count('"hbone.keepalive_timeout"')


def test_a_dead_pooled_connection_is_found_and_replaced_after_the_heal(mesh: MeshLab) -> None:
    url = f"http://{mesh.pod_ip('demo/server')}:{HTTP_PORT}/partition"
    assert mesh.curl("demo/client", url).returncode == 0  # the pooled connection exists
    before = _keepalive_timeouts(mesh)
    with partition(mesh):
        started = time.monotonic()
        mesh.wait_for(
            lambda: _keepalive_timeouts(mesh) > before,
            what="the keepalive to find the dead connection",
            timeout=DETECTION,
        )
        found_after = time.monotonic() - started
    assert 15 <= found_after <= DETECTION, found_after  # not before a 20 s PING timeout could run out
    done = mesh.curl("demo/client", url)
    assert done.returncode == 0, f"after the heal: {done.stderr}\n{mesh.diagnostics(['demo/client'])}"
