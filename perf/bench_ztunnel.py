"""ztunnel in the lab: direct vs two ztunnels vs two Envoys doing HBONE, client and server on different nodes.

    .venv/bin/python -m perf.bench_ztunnel [--quick] [--repeats 5] [--pods 50] [--json PATH]

One lab with two nodes (see :mod:`perf._ztunnel_lab`). Paths, interleaved in each repeat (the order
rotates); the report is the median of the repeats:

- **direct**: client pod -> server pod, namespace not enrolled;
- **ztunnel**: the same in the enrolled namespace: captured in the client pod, HBONE (mTLS,
  HTTP/2 CONNECT) from node1's ztunnel to node2's ztunnel, delivered in the server pod;
- **envoy**: the non-enrolled pods again, with Envoy A in the client pod and Envoy B in the server
  pod doing HBONE (:mod:`perf._ztunnel_envoy`); the client connects to Envoy A explicitly (Envoy has
  no capture), and a fresh pair is started for each server (echo, then redis).

Per path: ping-pong p50/p99 of 100-byte messages, requests/s of ``redis-benchmark`` GETs at 16
connections with keep-alive (and new connections/s without), one byte-checked stream's MB/s; the
CPU (utime+stime from /proc) both proxies spent per round trip, request, connection and GB, and
their RSS. Then ztunnel memory and idle CPU with 2 enrolled pods per node, after the load, and
after scaling to ``--pods`` per node (with the time the scale-up took). Raw results go to
``perf/results/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.lab.testkit import unique_lab_id
from perf import _ztunnel_measure as m
from perf._ztunnel_lab import ENROLLED, PLAIN, REDIS_PORT, BenchLab, proc_sample
from perf._ztunnel_paths import Sizes, run_path
from perf._ztunnel_report import PATHS, Memory, PathRun, report

__all__ = ["FULL", "QUICK", "Result", "main", "run_benchmark"]

_RESULTS = Path(__file__).resolve().parent / "results"
FULL = Sizes(repeats=5, rounds=10_000, bulk_bytes=256_000_000, rate_seconds=5.0, conn_seconds=2.0,
             clients=16, pods_per_node=50, idle_seconds=10.0, idle_connections=1000)  # fmt: skip
QUICK = Sizes(repeats=1, rounds=1000, bulk_bytes=16_000_000, rate_seconds=0.5, conn_seconds=0.3,
              clients=16, pods_per_node=4, idle_seconds=1.0, idle_connections=50)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Result:
    """Everything one benchmark run measured."""

    lab_id: str
    runs: list[PathRun]
    memory: list[Memory]
    first_request_s: dict[str, float]
    """Per namespace: seconds from "lab ready" until the first request got through."""
    log_events: dict[str, dict[str, int]]
    """Per node: ztunnel log events (warnings, errors, proxies started/stopped)."""
    mtls_connections: int
    """Connections node2's ztunnel accepted over HBONE mTLS: proof the ztunnel path was meshed."""


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _prepare(bench: BenchLab) -> dict[str, float]:
    took = {}
    for ns in (ENROLLED, PLAIN):
        ep = bench.endpoints(ns)
        bench.run_in(ep.client_netns, ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"], timeout=10)
        took[ns] = m.set_value(bench, ep.client_netns, (ep.server_ip, REDIS_PORT))
    return took


def _ztunnel_memory(
    bench: BenchLab, sizes: Sizes, when: str, *, seconds_to_scale: float | None = None, latency: bool = False
) -> Memory:
    pids = bench.ztunnel_pids()
    idle = m.idle_cpu(pids, seconds=sizes.idle_seconds)
    samples = [proc_sample(pid) for pid in pids]
    p50 = None
    if latency:
        ep = bench.endpoints(ENROLLED)
        p50 = m.latency(
            bench, ep.client_netns, (ep.server_ip, ep.echo_port), rounds=sizes.rounds, pids=pids
        ).p50_us
    return Memory(
        pods_per_node=min(bench.enrolled_per_node().values()), when=when,
        rss_mb=tuple(s.rss_mb for s in samples), hwm_mb=tuple(s.hwm_mb for s in samples),
        anon_mb=tuple(s.anon_mb for s in samples),
        idle_cpu=idle, seconds_to_scale=seconds_to_scale, p50_us=p50,
    )  # fmt: skip


def _repeats(bench: BenchLab, sizes: Sizes, work: Path) -> list[PathRun]:
    runs = []
    for repeat in range(sizes.repeats):
        shift = repeat % len(PATHS)
        for path in PATHS[shift:] + PATHS[:shift]:
            run = run_path(bench, sizes, path, repeat=repeat, work=work)
            runs.append(run)
            _log(f"  repeat {repeat + 1} {path:7} p50 {run.p50_us:7.1f} us p99 {run.p99_us:7.1f} us "
                 f"{run.rps:8.0f} req/s {run.conn_per_s:7.0f} conn/s {run.mb_per_s:7.1f} MB/s")  # fmt: skip
    return runs


def _measure(bench: BenchLab, sizes: Sizes, work: Path) -> Result:
    first = _prepare(bench)
    memory = [_ztunnel_memory(bench, sizes, "before load")]
    runs = _repeats(bench, sizes, work)
    memory.append(_ztunnel_memory(bench, sizes, "after load"))
    _log(f"  scaling to {sizes.pods_per_node} enrolled pods per node")
    took = bench.scale(sizes.pods_per_node, timeout=60 + 6 * sizes.pods_per_node)
    memory.append(_ztunnel_memory(bench, sizes, "after scale-up", seconds_to_scale=took, latency=True))
    ep = bench.endpoints(ENROLLED)
    count = sizes.idle_connections
    with m.hold_connections(bench, ep.client_netns, (ep.server_ip, REDIS_PORT), count=count):
        held = _ztunnel_memory(bench, sizes, f"with {count} idle connections")
    memory.append(dataclasses.replace(held, idle_connections=count))
    return Result(
        lab_id=bench.lab.lab_id,
        runs=runs,
        memory=memory,
        first_request_s=first,
        log_events=bench.ztunnel_log_events(),
        mtls_connections=bench.mtls_connections_in(),
    )


def run_benchmark(sizes: Sizes) -> Result:
    """Brings a lab up, measures everything, and always tears it down."""
    with tempfile.TemporaryDirectory(prefix="bench-ztunnel-") as tmp:
        work = Path(tmp)
        bench = BenchLab(work / "state", lab_id=unique_lab_id("z"), work=work)
        try:
            start = time.monotonic()
            bench.up()
            _log(f"  lab up with the mesh in {time.monotonic() - start:.1f} s")
            return _measure(bench, sizes, work)
        finally:
            bench.down()


def _header(sizes: Sizes) -> str:
    return (
        f"{dt.datetime.now().astimezone().isoformat(timespec='minutes')}, {platform.node()}, "
        f"Python {platform.python_version()}; {sizes.rounds} round trips, "
        f"{sizes.bulk_bytes / 1e6:.0f} MB stream, {sizes.clients} connections for {sizes.rate_seconds:g} s, "
        f"median of {sizes.repeats}"
    )


def _json(sizes: Sizes, result: Result) -> dict[str, Any]:
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "node": platform.node(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "sizes": dataclasses.asdict(sizes),
        **dataclasses.asdict(result),
    }


def _notes(result: Result) -> list[str]:
    first = ", ".join(f"{ns} {s:.2f} s" for ns, s in result.first_request_s.items())
    notes = [
        f"ztunnel path checked: node2's ztunnel accepted {result.mtls_connections} connections over HBONE "
        "mTLS (istio_tcp_connections_opened_total, reporter=destination, mutual_tls)",
        f"first request through after the lab was ready: {first}",
        *_per_connection(result.memory),
    ]
    for node, events in result.log_events.items():
        noisy = {k: v for k, v in events.items() if not k.startswith("proxy.")}
        if noisy:
            notes.append(
                f"ztunnel log on {node}: " + ", ".join(f"{k} x{v}" for k, v in sorted(noisy.items()))
            )
    return notes


def _per_connection(memory: list[Memory]) -> list[str]:
    """What each idle connection costs each ztunnel (catalogue 33 asks for at most 50 KiB)."""
    held = [mem for mem in memory if mem.idle_connections]
    if not held or len(memory) < 2:
        return []
    before, during = memory[-2], held[-1]
    each = [
        (b - a) * 1024 / during.idle_connections for a, b in zip(before.rss_mb, during.rss_mb, strict=True)
    ]
    return [
        f"{during.idle_connections} idle connections through the mesh: "
        + ", ".join(f"{kib:.1f}" for kib in each)
        + " KiB of RSS each on the client's and the server's ztunnel (catalogue 33: at most 50 KiB)"
    ]


def _sizes(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return QUICK
    return dataclasses.replace(
        FULL,
        repeats=args.repeats,
        rounds=args.rounds,
        bulk_bytes=args.bulk_mb * 1_000_000,
        pods_per_node=args.pods,
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints the markdown report, writes the raw results as JSON."""
    parser = argparse.ArgumentParser(
        prog="bench_ztunnel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, small counts, 4 pods/node")
    parser.add_argument("--repeats", type=int, default=FULL.repeats)
    parser.add_argument("--rounds", type=int, default=FULL.rounds)
    parser.add_argument("--bulk-mb", type=int, default=FULL.bulk_bytes // 1_000_000)
    parser.add_argument(
        "--pods", type=int, default=FULL.pods_per_node, help="enrolled pods per node at the end"
    )
    parser.add_argument("--json", type=Path, help="where to write the raw results (default: perf/results/)")
    args = parser.parse_args(argv)
    sizes = _sizes(args)
    result = run_benchmark(sizes)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = args.json or _RESULTS / f"ztunnel-{'quick-' if args.quick else ''}{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json(sizes, result), indent=2) + "\n")
    print(report(result.runs, result.memory, header=_header(sizes), notes=_notes(result)))
    _log(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
