"""Every long-running binary stops cleanly on SIGTERM: it logs that it stopped and exits 0 within
2 s, also while a client still holds a connection open (the CA demo's istiod_lite used to wait
out its 5 s gRPC grace for the demo's own lingering TLS connection and be killed with -9)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.identity import WorkloadIdentity
from mesh.rt.ca_client import CaClient
from mesh.testing.pki import TestPki
from tests.component.node_agent_fakes import make_lab
from tests.component.test_ca_cli import _lab_state

pytestmark = pytest.mark.timeout(90)

STOP_WITHIN = 2.0


@dataclass(frozen=True)
class Binary:
    """How to start one binary in ``tmp_path``, the event that says it is up, the event that says
    it stopped, and what to do to it while it runs (e.g. leave a client connected)."""

    name: str
    command: Callable[[Path], list[str]]
    started: str
    stopped: str
    while_running: Callable[[Path, dict[str, object]], Awaitable[object]] | None = None


def _istiod(tmp_path: Path) -> list[str]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tok-n1: {node: n1, identity: istio-system/ztunnel}\n")
    _lab_state(tmp_path / "lab")
    return [
        sys.executable, "-m", "istiod_lite.app",
        "--listen", "127.0.0.1:0", "--readiness-listen", "127.0.0.1:0",
        "--state-dir", str(tmp_path / "state"), "--lab-state", str(tmp_path / "lab"),
        "--lab-tokens", str(tokens),
    ]  # fmt: skip


async def _client_left_connected(tmp_path: Path, started: dict[str, object]) -> CaClient:
    """Fetches a certificate and keeps the channel open, as every ztunnel does."""
    roots = (tmp_path / "state" / "ca" / "root-cert.pem").read_bytes()
    client = CaClient(f"127.0.0.1:{started['ca.port']}", roots_pem=roots, token=lambda: "tok-n1", timeout=10)
    await client.fetch(
        WorkloadIdentity("cluster.local", "default", "sleep"), impersonate=True, ttl_seconds=3600
    )
    return client


async def _client_that_closed(tmp_path: Path, started: dict[str, object]) -> CaClient:
    """As the CA demo does just before its SIGTERM: a fetch, then the channel closed; the client's
    TLS shutdown is still in progress when the signal arrives."""
    client = await _client_left_connected(tmp_path, started)
    await client.close()
    return client


def _ztunnel(tmp_path: Path) -> list[str]:
    (tmp_path / "root.pem").write_bytes(TestPki.create().root_pem)
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "local.yaml").write_text("workloads: []\n")
    return [
        sys.executable, "-m", "ztunnel", "--node", "n1", "--root-cert", str(tmp_path / "root.pem"),
        "--token-file", str(tmp_path / "token"), "--local-config", str(tmp_path / "local.yaml"),
        "--ca-address", "127.0.0.1:9", "--zds-socket", str(tmp_path / "zds.sock"),
        "--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--readiness", "127.0.0.1:0",
    ]  # fmt: skip


def _node_agent(tmp_path: Path) -> list[str]:
    state = make_lab(tmp_path / "state", ambient=False)
    agent = str(Path(sys.executable).with_name("ztunnel-node-agent"))
    return [
        agent, "--node", "n1", "--state-dir", str(state.root),
        "--run-dir", str(tmp_path / "run"), "--no-probe-snat",
    ]  # fmt: skip


BINARIES = [
    Binary("istiod-lite", _istiod, "istiod.started", "istiod.stopped"),
    Binary(
        "istiod-lite with a client connected",
        _istiod,
        "istiod.started",
        "istiod.stopped",
        _client_left_connected,
    ),
    Binary(
        "istiod-lite just after a client closed",
        _istiod,
        "istiod.started",
        "istiod.stopped",
        _client_that_closed,
    ),
    Binary("ztunnel", _ztunnel, "ztunnel.started", "ztunnel.stopped"),
    Binary("ztunnel node agent", _node_agent, "agent.ready", "agent.stopped"),
]


@pytest.mark.parametrize("binary", BINARIES, ids=[b.name for b in BINARIES])
async def test_sigterm_stops_cleanly_within_two_seconds(binary: Binary, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *binary.command(tmp_path), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    events: list[dict[str, object]] = []
    held: object = None
    try:
        started = await asyncio.wait_for(_event(proc.stderr, binary.started, events), 30)
        if binary.while_running is not None:
            held = await binary.while_running(tmp_path, started)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 10)
        status = await proc.wait()
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(held, CaClient):
            await held.close()
    events += [json.loads(line) for line in rest.decode().splitlines() if line.startswith("{")]
    assert status == 0, f"{binary.name} exited with {status}"
    assert took < STOP_WITHIN, f"{binary.name} took {took:.1f} s to stop"
    assert binary.stopped in [e.get("event") for e in events]


async def _event(stream: asyncio.StreamReader, name: str, seen: list[dict[str, object]]) -> dict[str, object]:
    while line := await stream.readline():
        if line.startswith(b"{"):
            event = json.loads(line)
            seen.append(event)
            if event.get("event") == name:
                return dict(event)
    raise AssertionError(f"the process ended before logging {name}: {seen[-5:]}")
