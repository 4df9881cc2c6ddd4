"""ztunnel with 1 and with 2 worker processes (issue 16 part 3): does a node's ztunnel use more cores?

    .venv/bin/python -m perf.bench_ztunnel_workers [--workers 1 2] [--seconds 5] [--repeats 2]
                                                   [--clients 16] [--json PATH] [--quick]

The benchmark lab of :mod:`perf.bench_ztunnel` (enrolled namespace: the client pod on node1, redis
in the server pod on node2, HBONE between the two nodes' ztunnels), brought up fresh for each
worker count with ``lab up --ztunnel-workers N`` (both nodes' ztunnels get N), alternating the
counts over the repeats so that drift in the machine's other load hits both. With
``redis-benchmark`` GETs of a 100-byte value at ``--clients`` connections for about ``--seconds``:

- new connections per second (``-k 0``: a new TCP connection through the mesh per request), the
  CPU per connection of each node's ztunnel (the parent and its workers together), the cores the
  server's ztunnel used, and how many cores the whole machine was busy meanwhile (everyone's work:
  it is shared);
- keep-alive requests per second and the ztunnels' CPU per request;
and per lab, memory after the load: VmRSS and RssAnon (private) of the server ztunnel's processes.

The median over the repeats of each count is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshctl.lab.mesh import MESH_NAMESPACE
from meshctl.lab.testkit import unique_lab_id
from perf import _ztunnel_measure as m
from perf._ztunnel_lab import ENROLLED, REDIS_PORT, BenchLab, children, proc_sample
from perf._ztunnel_measure import machine_busy_s

__all__ = ["WorkersRun", "main", "run_once"]

_RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class WorkersRun:
    """One lab with ``workers`` processes per ztunnel."""

    workers: int
    new_conns_per_s: float
    conn_cpu_ms: tuple[float, float]
    """CPU per new connection of the client's and the server's ztunnel (parent and workers), ms."""
    server_cores: float
    """The server's ztunnel's CPU per wall second in the new-connection run (1.0 = a core)."""
    conn_machine_busy: float
    """Busy cores of the whole machine during the new-connection run (everyone's work)."""
    conn_loadgen_cpu: float
    """redis-benchmark's CPU per wall second during the new-connection run."""
    req_per_s: float
    req_cpu_us: tuple[float, float]
    """CPU per keep-alive request of each ztunnel, µs."""
    req_server_cores: float
    req_machine_busy: float
    rss_mb: tuple[float, ...]
    """VmRSS of the server's ztunnel processes after the load: the parent first, then its workers."""
    anon_mb: tuple[float, ...]
    """RssAnon (private memory) of the same processes."""
    loadavg: str
    """/proc/loadavg when the run ended (the machine is shared)."""


def _trees(bench: BenchLab) -> list[list[int]]:
    """Per node: its ztunnel's PID, then its workers' PIDs."""
    return [[pid, *sorted(children(pid))] for pid in bench.ztunnel_pids()]


def _measured(
    bench: BenchLab, trees: list[list[int]], *, keepalive: bool, seconds: float, clients: int
) -> tuple[m.Rate, float]:
    """A redis-benchmark run (with each ztunnel's CPU during it) and the machine's busy cores."""
    ep = bench.endpoints(ENROLLED)
    busy, started = machine_busy_s(), time.monotonic()
    rate = m.request_rate(
        bench, ep.client_netns, (ep.server_ip, REDIS_PORT), seconds=seconds, clients=clients,
        keepalive=keepalive, pids=[], groups=(trees[0], trees[1]),
    )  # fmt: skip
    return rate, (machine_busy_s() - busy) / (time.monotonic() - started)


def run_once(bench: BenchLab, *, workers: int, seconds: float, clients: int) -> WorkersRun:
    """Both measures in a lab that is up with ``workers`` per ztunnel."""
    ep = bench.endpoints(ENROLLED)
    m.set_value(bench, ep.client_netns, (ep.server_ip, REDIS_PORT))
    trees = _trees(bench)
    if any(len(tree) != (1 if workers == 1 else workers + 1) for tree in trees):
        raise RuntimeError(f"expected {workers} worker processes per ztunnel, found {trees}")
    conns, conn_busy = _measured(bench, trees, keepalive=False, seconds=seconds, clients=clients)
    reqs, req_busy = _measured(bench, trees, keepalive=True, seconds=seconds, clients=clients)
    server = [proc_sample(pid) for pid in trees[1]]
    return WorkersRun(
        workers=workers,
        new_conns_per_s=conns.per_s,
        conn_cpu_ms=(
            conns.group_cpu_s[0] / conns.requests * 1e3,
            conns.group_cpu_s[1] / conns.requests * 1e3,
        ),
        server_cores=conns.group_cpu_s[1] / conns.wall_s,
        conn_machine_busy=conn_busy,
        conn_loadgen_cpu=conns.loadgen_cpu_share,
        req_per_s=reqs.per_s,
        req_cpu_us=(reqs.group_cpu_s[0] / reqs.requests * 1e6, reqs.group_cpu_s[1] / reqs.requests * 1e6),
        req_server_cores=reqs.group_cpu_s[1] / reqs.wall_s,
        req_machine_busy=req_busy,
        rss_mb=tuple(s.rss_mb for s in server),
        anon_mb=tuple(s.anon_mb for s in server),
        loadavg=Path("/proc/loadavg").read_text().strip(),
    )


def run_benchmark(*, counts: list[int], repeats: int, seconds: float, clients: int) -> list[WorkersRun]:
    """``repeats`` rounds over ``counts``, each run in a fresh lab that is always torn down; on a
    failure the lab's logs (the mesh's pods' among them) are kept under perf/results/."""
    runs = []
    for repeat in range(repeats):
        for workers in counts:
            with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
                bench = BenchLab(Path(tmp) / "state", lab_id=unique_lab_id("w"), work=Path(tmp))
                try:
                    bench.up(ztunnel_workers=workers)
                    run = run_once(bench, workers=workers, seconds=seconds, clients=clients)
                except Exception:
                    kept = _RESULTS / f"ztunnel-workers-logs-{dt.datetime.now():%Y%m%d-%H%M%S}"
                    shutil.copytree(bench.lab.paths.logs, kept, dirs_exist_ok=True)
                    print(
                        f"  failed with {workers} worker(s); the lab's logs are in {kept} (the mesh's pods: "
                        f"{MESH_NAMESPACE}_*.log)",
                        file=sys.stderr,
                    )
                    raise
                finally:
                    bench.down()
            print(
                f"  repeat {repeat + 1}, {workers} worker(s): {run.new_conns_per_s:.0f} new conns/s "
                f"(ms/conn {run.conn_cpu_ms[0]:.2f}, {run.conn_cpu_ms[1]:.2f}; machine "
                f"{run.conn_machine_busy:.2f} cores), {run.req_per_s:.0f} req/s; load {run.loadavg}",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
    return runs


_COLUMNS: tuple[tuple[str, Callable[[WorkersRun], tuple[float, ...]], str], ...] = (
    ("new conns/s", lambda r: (r.new_conns_per_s,), ".0f"),
    ("ztunnel CPU ms/conn (client, server)", lambda r: r.conn_cpu_ms, ".2f"),
    ("server ztunnel cores", lambda r: (r.server_cores,), ".2f"),
    ("machine busy cores", lambda r: (r.conn_machine_busy,), ".2f"),
    ("load tool CPU", lambda r: (r.conn_loadgen_cpu,), ".2f"),
    ("req/s (keep-alive)", lambda r: (r.req_per_s,), ".0f"),
    ("ztunnel CPU µs/req (client, server)", lambda r: r.req_cpu_us, ".1f"),
    ("server ztunnel cores", lambda r: (r.req_server_cores,), ".2f"),
    ("machine busy cores", lambda r: (r.req_machine_busy,), ".2f"),
)


def _medians(runs: list[WorkersRun]) -> list[tuple[float, ...]]:
    return [
        tuple(statistics.median(parts) for parts in zip(*(get(r) for r in runs), strict=True))
        for _, get, _ in _COLUMNS
    ]


def report(runs: list[WorkersRun], *, header: str) -> str:
    """Markdown: the median per worker count, the scaling over 1 worker, and memory per process."""
    names = ["workers per ztunnel", *(name for name, _, _ in _COLUMNS)]
    lines = [header, "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    by_count: dict[int, list[WorkersRun]] = {}
    for run in runs:
        by_count.setdefault(run.workers, []).append(run)
    medians = {count: _medians(group) for count, group in sorted(by_count.items())}
    for count, values in medians.items():
        cells = [
            ", ".join(format(v, fmt) for v in vals)
            for vals, (_, _, fmt) in zip(values, _COLUMNS, strict=True)
        ]
        lines.append("| " + " | ".join([str(count), *cells]) + " |")
    if 1 in medians and len(medians) > 1:
        most = max(medians)
        conns = medians[most][0][0] / medians[1][0][0]
        reqs = medians[most][5][0] / medians[1][5][0]
        lines += ["", f"{most} workers vs 1: new conns/s {conns:.2f}x, req/s {reqs:.2f}x"]
    lines += ["", "| workers | server ztunnel VmRSS MB (parent, workers...) | RssAnon MB |", "|---|---|---|"]
    for run in sorted(runs, key=lambda r: r.workers):
        rss = ", ".join(f"{v:.1f}" for v in run.rss_mb)
        anon = ", ".join(f"{v:.1f}" for v in run.anon_mb)
        lines.append(f"| {run.workers} | {rss} | {anon} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints the markdown report, writes the raw results as JSON."""
    parser = argparse.ArgumentParser(
        prog="bench_ztunnel_workers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--seconds", type=float, default=5.0, help="about this long per measure")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16, help="redis-benchmark connections")
    parser.add_argument("--json", type=Path, help="where to write the raw results (default: perf/results/)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one repeat of 1 s per measure")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats = 1.0, 1
    runs = run_benchmark(
        counts=args.workers, repeats=args.repeats, seconds=args.seconds, clients=args.clients
    )
    header = (
        f"{dt.datetime.now().astimezone().isoformat(timespec='minutes')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; about {args.seconds:g} s per measure "
        f"at {args.clients} connections, {args.repeats} repeat(s), a fresh lab per run"
    )
    out: Path = args.json or _RESULTS / f"ztunnel-workers-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"header": header, "runs": [dataclasses.asdict(r) for r in runs]}, indent=2) + "\n"
    )
    print(report(runs, header=header))
    print(f"raw results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
