"""Lab bring-up time: 2 nodes with 8 pods, from ``Lab.up()`` until every pod is Running, ready and
reachable (median of 3).

    .venv/bin/python -m perf.bench_lab_up [--runs 3] [--pods 8] [--smoke]

The pods: 2 clients (``sleep``) and 6 HTTP echo servers in 3 Deployments of 2 replicas, each behind
a Service. Phases, from the start of ``up``:

* ``ready``: ``up`` returned: the daemon built the network (bridge + node namespaces), created every
  pod (namespace, veth, routes, names, CNI chain), started its process, saw its port listening, and
  programmed the Services (kube-proxy rules, hosts files).
* ``reachable``: one client then reached every server pod by IP and every Service by name with curl
  (all HTTP 200).

Each run uses a fresh state directory and lab id, and ``down`` (also timed) removes it all.
Target (issue 3): under 3 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.lab import builders as b
from meshctl.lab.api import Lab
from meshctl.lab.errors import LabError
from meshctl.lab.testkit import SystemSnapshot, unique_lab_id

__all__ = ["RunResult", "cluster_objects", "main", "run_once"]


@dataclass(frozen=True, slots=True)
class RunResult:
    """Seconds from the start of ``up`` to each phase, and the time ``down`` took."""

    ready: float
    reachable: float
    down: float


def cluster_objects(pods: int) -> list[dict[str, Any]]:
    """2 clients and ``pods - 2`` echo servers (Deployments of 2 replicas with a Service each)."""
    servers = max(pods - 2, 0)
    objects = [
        b.namespace("bench"),
        b.deployment("client-a", "bench", command=b.SLEEPER, node="node1"),
        b.deployment("client-b", "bench", command=b.SLEEPER, node="node2"),
    ]
    for i in range(0, servers, 2):
        name = f"echo-{i // 2}"
        objects.append(b.httpecho_deployment(name, "bench", replicas=min(2, servers - i)))
        objects.append(b.service(name, "bench", selector={"app": name}))
    return objects


def _urls(lab: Lab) -> list[str]:
    urls = [
        f"http://{p['status']['podIP']}:8080/" for p in lab.pods("bench") if "echo" in p["metadata"]["name"]
    ]
    return urls + [f"http://{s['metadata']['name']}/" for s in lab.objects("Service", "bench")]


def run_once(pods: int, *, root: Path) -> RunResult:
    """One bring-up, reachability check and teardown; raises LabError when something is not reached."""
    lab_id = unique_lab_id("b")
    before = SystemSnapshot.take(lab_id)
    lab = Lab(root / lab_id, lab_id=lab_id)
    start = time.monotonic()
    try:
        lab.up(cluster_objects(pods), timeout=60)
        ready = time.monotonic() - start
        urls = _urls(lab)
        client = "bench/client-a"
        outputs = [arg for url in urls for arg in ("-o", "/dev/null", url)]
        result = lab.exec_in_pod(client, ["curl", "-s", "-m", "5", "-w", "%{http_code}\\n", *outputs])
        reachable = time.monotonic() - start
        codes = result.stdout.split()
        if codes != ["200"] * len(urls):
            raise LabError(f"not every server was reached: {dict(zip(urls, codes, strict=False))}")
    finally:
        stop = time.monotonic()
        lab.down()
        down = time.monotonic() - stop
    left = SystemSnapshot.take(lab_id).leftovers(before, lab_id=lab_id)
    if left:
        raise LabError(f"down left things behind: {left}")
    return RunResult(ready=ready, reachable=reachable, down=down)


def _line(ready: float, reachable: float, down: float) -> str:
    return f"ready {ready:.2f} s, reachable {reachable:.2f} s, down {down:.2f} s"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark and prints one line per run and the medians (also as JSON)."""
    parser = argparse.ArgumentParser(
        prog="bench_lab_up", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--runs", type=int, default=3, help="number of runs (median reported)")
    parser.add_argument("--pods", type=int, default=8, help="pods in the cluster (2 clients + echo servers)")
    parser.add_argument("--smoke", action="store_true", help="one run with 4 pods (for the test suite)")
    args = parser.parse_args(argv)
    runs, pods = (1, 4) if args.smoke else (args.runs, args.pods)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        for i in range(runs):
            result = run_once(pods, root=Path(tmp))
            results.append(result)
            print(f"run {i + 1}: {_line(result.ready, result.reachable, result.down)}", flush=True)
    summary: dict[str, Any] = {
        "nodes": 2,
        "pods": pods,
        "runs": runs,
        "ready_s": round(statistics.median(r.ready for r in results), 3),
        "reachable_s": round(statistics.median(r.reachable for r in results), 3),
        "down_s": round(statistics.median(r.down for r in results), 3),
    }
    print(f"median of {runs}: {_line(summary['ready_s'], summary['reachable_s'], summary['down_s'])}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
