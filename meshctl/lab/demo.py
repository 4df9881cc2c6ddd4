"""The lab demo: bring up the sample cluster, show it, send a request from ``demo/client`` to the
``server`` Service and show which pod answered; leave the lab running with hints.

``run_lab_demo()`` is called by ``make demo`` (through the integrator's demo entry point).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from meshctl.lab.api import Lab, load_objects
from meshctl.lab.errors import LabError

__all__ = ["SAMPLE_CLUSTER", "run_lab_demo"]

SAMPLE_CLUSTER = Path(__file__).resolve().parents[2] / "samples" / "cluster.yaml"
_REQUESTS = 12


def _ask(lab: Lab, url: str) -> dict[str, Any]:
    result = lab.exec_in_pod("demo/client", ["curl", "-sS", "-m", "5", url])
    if result.returncode != 0:
        raise LabError(
            f"curl {url} from demo/client failed: {result.stderr.strip()}", hint="see 'meshctl lab status'"
        )
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def run_lab_demo(*, state_dir: str | Path | None = None, out: TextIO = sys.stdout) -> int:
    """Runs the demo; returns 0. The lab stays up (``meshctl lab down`` removes it)."""

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    lab = Lab(state_dir, progress=lambda m: say(f"  {m}"))
    if lab.is_running():
        say(f"A lab is already running (state {lab.paths.root}); taking it down first.")
        lab.down()
    say(f"== meshctl lab up -f {SAMPLE_CLUSTER.relative_to(SAMPLE_CLUSTER.parents[1])}")
    started = time.monotonic()
    lab.up(load_objects(SAMPLE_CLUSTER), timeout=90)
    say(f"  the lab is up in {time.monotonic() - started:.1f} s\n")
    say("== meshctl lab status")
    say(lab.status_text())
    say("== meshctl lab exec demo/client -- curl -s http://server/")
    doc = _ask(lab, "http://server/")
    say(
        json.dumps(
            {k: doc[k] for k in ("pod", "namespace", "version", "node", "path", "client", "server")}, indent=2
        )
    )
    say(f"\nAnswered by pod {doc['pod']} (version {doc['version']}) on {doc['node']}.")
    spread = Counter(
        f"{d['pod']} ({d['version']}, {d['node']})"
        for d in (_ask(lab, "http://server/") for _ in range(_REQUESTS))
    )
    say(f"{_REQUESTS} more requests, one connection each, spread by kube-proxy DNAT over the endpoints:")
    for pod, count in sorted(spread.items()):
        say(f"  {count:3d}  {pod}")
    say("\nThe lab keeps running. Explore it:")
    say("  meshctl lab status")
    say("  meshctl lab exec demo/client -- curl -s http://server/")
    say("  meshctl lab exec legacy/client -- curl -s http://server.demo/")
    say(f"  meshctl lab logs demo/{doc['pod']}")
    say("  meshctl lab apply -f FILE  /  meshctl lab delete -f FILE")
    say("Tear it down with:  meshctl lab down")
    return 0
