"""Two istiod-lite processes on one lab state directory (``--auth lab``): both serve, one leads (the
lock file in the state directory) and writes the status conditions; killed with SIGKILL, the
leader's lock goes with it and the other process takes over within about a second, writing the
current statuses itself. ``leader_election_master_status`` says who leads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mesh.rt.labstate import LabState
from mesh.testing.polling import wait_until

pytestmark = pytest.mark.timeout(60)

KEY = ("PeerAuthentication", "shop", "strict")
STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "strict", "namespace": "shop"},
    "spec": {"mtls": {"mode": "STRICT"}},
}
TAKEOVER_WITHIN = 3.0
"""The lab's lock is tried every second; the rest is slack for a loaded machine."""


@dataclass
class Istiod:
    """One istiod-lite process and the JSON events it logged so far."""

    proc: asyncio.subprocess.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def logged(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("event") == name), None)

    async def read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            if line.startswith(b"{"):
                self.events.append(json.loads(line))

    def leader_gauge(self) -> float:
        started = self.logged("istiod.started")
        assert started is not None
        url = f"http://127.0.0.1:{started['monitoring.port']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as page:
            for line in page.read().decode().splitlines():
                if line.startswith('leader_election_master_status{name="istiod-lite-leader"}'):
                    return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no leader_election_master_status series")


async def start(tmp_path: Path, name: str, *flags: str) -> Istiod:
    """An istiod-lite on the lab state ``tmp_path/lab``, with its own ``--state-dir tmp_path/name``."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tok-n1: {node: n1, identity: istio-system/ztunnel}\n")
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "istiod_lite.app", "--listen", "127.0.0.1:0",
          "--readiness-listen", "127.0.0.1:0", "--state-dir", str(tmp_path / name),
          "--lab-state", str(tmp_path / "lab"), "--lab-tokens", str(tokens), *flags],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    istiod = Istiod(proc)
    istiod.reader = asyncio.create_task(istiod.read())
    await wait_until(lambda: istiod.logged("istiod.started"), within=30, what=f"{name} serves")
    return istiod


def status_of(state: LabState) -> Any:
    return (state.read(KEY) or {}).get("status")


async def test_one_lab_istiod_leads_and_the_other_takes_over_when_it_dies(tmp_path: Path) -> None:
    state = LabState(tmp_path / "lab")
    with state.transaction() as txn:
        txn.put(STRICT)
    running: list[Istiod] = []
    try:
        first = await start(tmp_path, "a")
        running.append(first)
        await wait_until(lambda: first.logged("leader.acquired"), what="the first one leads")
        second = await start(tmp_path, "b")
        running.append(second)
        await wait_until(lambda: status_of(state), what="the leader writes the status")
        await asyncio.sleep(1.5)  # the follower's tries at the lock fail meanwhile
        assert second.logged("leader.acquired") is None
        gauges = await asyncio.gather(*(asyncio.to_thread(i.leader_gauge) for i in running))
        assert gauges == [1.0, 0.0]

        first.proc.send_signal(signal.SIGKILL)  # no goodbye: the kernel drops its lock
        killed = time.monotonic()
        await first.proc.wait()
        with state.transaction() as txn:  # the status is lost meanwhile: the next leader rewrites it
            txn.put(STRICT)
        assert not status_of(state)
        await wait_until(lambda: second.logged("leader.acquired"), within=10, what="a takeover")
        took = time.monotonic() - killed
        await wait_until(lambda: status_of(state), what="the new leader writes the status")
        assert took < TAKEOVER_WITHIN, f"the takeover took {took:.1f} s"
        assert await asyncio.to_thread(second.leader_gauge) == 1.0
        (condition,) = status_of(state)["conditions"]
        assert (condition["type"], condition["status"]) == ("Accepted", "True")
    finally:
        for istiod in running:
            with contextlib.suppress(ProcessLookupError):
                istiod.proc.send_signal(signal.SIGTERM)
            await istiod.proc.wait()
            if istiod.reader is not None:
                await istiod.reader
