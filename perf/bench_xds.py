"""xDS push benchmark: 10,000 workloads, 1,000 services, 1,000 policies to 100 subscribers.

``.venv/bin/python -m perf.bench_xds [--quick] [--runs N]``

Each run is a fresh istiod_lite server process (informer caches fed with generated Kubernetes
objects, the real translation, the real push plane and gRPC server on loopback); it spawns one
more process running the subscribers (real ``mesh.rt.xds.XdsClient``s, one event loop, a
converter that keeps each ``Any`` as received so the agents' cost is the protocol, not a model).
Measured in the server process:
  * full push: from the build of the first snapshot (translation included) until every subscriber
    has ACKed both types;
  * one pod change: from the informer update of one pod until every subscriber ACKed the new
    version (debounce included, and separately the part after the debounce);
  * server RSS (current and peak) after both.
The report is the median of the runs, as JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc

from istiod_lite.push.hub import Hub
from istiod_lite.push.plane import PushPlane
from istiod_lite.push.translated import translated_build
from istiod_lite.sources.objects import parse_object
from istiod_lite.translate import build_resources
from istiod_lite.view import Informers
from mesh.rt.clock import SystemClock
from mesh.rt.logs import configure_logging
from mesh.rt.loop import run
from mesh.rt.metrics import build_registry
from mesh.rt.xds import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from perf._xds_agents import run_agents
from perf._xds_cluster import QUICK, Scale, cluster_objects, pod

__all__ = ["Scale", "main", "serve_once"]


_TYPES = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)
_REPO = Path(__file__).resolve().parents[1]
_SERVER_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20)]


def _rss_mb() -> tuple[float, float]:
    with open("/proc/self/status", encoding="ascii") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _acked(hub: Hub, version: str, count: int) -> bool:
    connections = hub.connections()
    if len(connections) < count:
        return False
    for conn in connections:
        statuses = conn.state.status()
        if len(statuses) < len(_TYPES) or any(
            s.acked is None or s.acked.version != version for s in statuses
        ):
            return False
    return True


async def _until(predicate: Any, *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {what} did not happen within {within}s")
        await asyncio.sleep(0.002)


def _spawn_agents(port: int, scale: Scale, *, processes: int, lean: bool) -> list[subprocess.Popen[bytes]]:
    share = -(-scale.subscribers // processes)
    out = []
    for first in range(0, scale.subscribers, share):
        count = min(share, scale.subscribers - first)
        argv = [
            sys.executable,
            "-m",
            "perf.bench_xds",
            "--agents",
            f"127.0.0.1:{port}",
            str(first),
            str(count),
        ]
        argv += ["--lean"] if lean else []
        out.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=_REPO))
    return out


def _fill(scale: Scale) -> tuple[Informers, Any]:
    informers = Informers()
    sink = informers.sink("bench")
    for raw in cluster_objects(scale):
        sink.upsert(parse_object(raw))
    sink.mark_synced()
    return informers, sink


def _cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _full_push(plane: PushPlane, scale: Scale, agent_pids: list[int]) -> dict[str, float]:
    hub = plane.hub

    def subscribed() -> bool:
        conns = hub.connections()
        return len(conns) == scale.subscribers and all(len(c.state.status()) == len(_TYPES) for c in conns)

    await _until(subscribed, within=60, what="all subscribers connecting")
    started = time.perf_counter()
    snapshot = plane.pusher.rebuild()
    built = time.perf_counter()
    assert snapshot is not None, "the first build failed; see the log"
    server_cpu, agents_cpu = _cpu_s(), sum(_cpu_s(pid) for pid in agent_pids)
    await _until(lambda: _acked(hub, snapshot.version, scale.subscribers), within=120, what="all ACKs")
    done = time.perf_counter()
    return {
        "full_push_s": done - started,
        "first_build_s": built - started,
        "push_to_all_s": done - built,
        "push_server_cpu_s": _cpu_s() - server_cpu,
        "push_agents_cpu_s": sum(_cpu_s(pid) for pid in agent_pids) - agents_cpu,
    }


def _address_acked(hub: Hub, version: str) -> bool:
    for conn in hub.connections():
        status = next(s for s in conn.state.status() if s.type_url == ADDRESS_TYPE_URL)
        if status.acked is None or status.acked.version != version:
            return False
    return True


async def _pod_change(plane: PushPlane, sink: Any, scale: Scale, generation: int) -> dict[str, float]:
    """One pod's labels change; times until every subscriber ACKed the new Address version."""
    changed = parse_object(pod(7 * generation, scale, generation=generation))
    before = plane.hub.current.counter
    started, wall = time.perf_counter(), time.time()
    sink.upsert(changed)
    await _until(lambda: plane.hub.current.counter > before, within=30, what="the rebuild")
    published, snapshot = time.perf_counter(), plane.hub.current
    await _until(lambda: _address_acked(plane.hub, snapshot.version), within=30, what="the change ACKs")
    done, done_wall = time.perf_counter(), time.time()
    return {
        "change_to_all_s": done - started,
        "debounce_and_translate_s": snapshot.created_at - wall,
        "snapshot_to_all_s": done_wall - snapshot.created_at,
        "publish_to_all_s": done - published,
    }


async def serve_once(scale: Scale, *, agent_processes: int, lean: bool, changes: int = 5) -> dict[str, float]:
    """One run: the server in this process, the subscribers in ``agent_processes`` children."""
    informers, sink = _fill(scale)
    started = time.perf_counter()
    translated = build_resources(informers.view())
    result = {"translate_s": time.perf_counter() - started}
    result["addresses"], result["authorizations"] = len(translated.addresses), len(translated.authorizations)
    registry = build_registry(component="istiod_lite")
    plane = PushPlane(translated_build(informers), clock=SystemClock(), registry=registry)
    informers.on_change(plane.mark_dirty)
    server = grpc.aio.server(handlers=[plane.rpc_handler()], options=_SERVER_OPTIONS)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    agents = _spawn_agents(port, scale, processes=agent_processes, lean=lean)
    try:
        result.update(await _full_push(plane, scale, [a.pid for a in agents]))
        runner = asyncio.create_task(plane.run(build_first=False))
        samples = [await _pod_change(plane, sink, scale, g) for g in range(1, changes + 1)]
        runner.cancel()
        for key in samples[0]:
            result[key] = statistics.median(s[key] for s in samples)
        result["rss_mb"], result["peak_rss_mb"] = _rss_mb()
    finally:
        for agent in agents:
            assert agent.stdin is not None
            agent.stdin.close()
            agent.wait(timeout=30)
        await server.stop(0)
    return result


def _one_run(args: argparse.Namespace, *, lean: bool) -> dict[str, float]:
    argv = [sys.executable, "-m", "perf.bench_xds", "--serve", f"--agent-processes={args.agent_processes}"]
    argv += (["--quick"] if args.quick else []) + (["--lean"] if lean else [])
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600, cwd=_REPO).stdout
    parsed: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return parsed


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 4) for key in runs[0]}


def _report(full: list[dict[str, float]], lean: list[dict[str, float]], scale: Scale) -> dict[str, Any]:
    median = _median(full)
    return {
        "scale": asdict(scale),
        "runs": len(full),
        "xds_client_agents": median,
        "lean_agents": _median(lean),
        "targets": {
            "full_push_s < 2": median["full_push_s"] < 2,
            "change_to_all_s < 0.2": median["change_to_all_s"] < 0.2,
            "rss_mb < 300": median["rss_mb"] < 300,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark (or one of its processes) and prints JSON."""
    parser = argparse.ArgumentParser(prog="python -m perf.bench_xds")
    parser.add_argument("--quick", action="store_true", help="1,000 workloads, 10 subscribers, one run each")
    parser.add_argument("--runs", type=int, default=3, help="runs per agent kind; the median is reported")
    parser.add_argument("--agent-processes", type=int, default=2, help="processes running the subscribers")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lean", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--agents", nargs=3, metavar=("TARGET", "FIRST", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging(level="error")
    scale = QUICK if args.quick else Scale()
    if args.agents:
        run(run_agents(args.agents[0], int(args.agents[1]), int(args.agents[2]), lean=args.lean))
    elif args.serve:
        print(json.dumps(run(serve_once(scale, agent_processes=args.agent_processes, lean=args.lean))))
    else:
        count = 1 if args.quick else args.runs
        full = [_one_run(args, lean=False) for _ in range(count)]
        lean = [_one_run(args, lean=True) for _ in range(count)]
        print(json.dumps(_report(full, lean, scale), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
