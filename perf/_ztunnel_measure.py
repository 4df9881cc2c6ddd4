"""One measurement of the ztunnel benchmark: a load tool in the client pod against one target.

Every function runs one tool with ``ip netns exec`` inside the client pod and reads the CPU time
of the proxies (``pids``) around it, so each number comes with the proxy CPU it cost:

- :func:`latency`: ping-pong of 100-byte messages (``perf._ztunnel_apps pingpong``);
- :func:`throughput`: one byte-checked stream (``perf._ztunnel_apps bulk``);
- :func:`request_rate`: ``redis-benchmark`` GETs of a 100-byte value from ``redis-server`` at a
  fixed concurrency, with keep-alive (requests per second) or without (a new TCP connection per
  request: connections per second); the count is sized from a short probe to last ``seconds``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from perf._ztunnel_lab import BenchLab, proc_sample

__all__ = [
    "Latency",
    "Rate",
    "Throughput",
    "hold_connections",
    "idle_cpu",
    "latency",
    "machine_busy_s",
    "request_rate",
    "set_value",
    "throughput",
]

VALUE_KEY = "bench"
VALUE = "v" * 100


@dataclass(frozen=True, slots=True)
class Latency:
    """Round-trip percentiles and the proxies' CPU per round trip."""

    p50_us: float
    p99_us: float
    proxy_cpu_us_per_rt: float | None
    client_cpu_us_per_rt: float


@dataclass(frozen=True, slots=True)
class Throughput:
    """One stream's MB/s (10^6 B/s) and the proxies' CPU per GB."""

    mb_per_s: float
    proxy_cpu_s_per_gb: float | None


@dataclass(frozen=True, slots=True)
class Rate:
    """Requests (or connections) per second, the proxies' CPU per request, the load tool's CPU share."""

    per_s: float
    requests: int
    proxy_cpu_us_per_req: float | None
    loadgen_cpu_share: float
    """CPU seconds of redis-benchmark per wall second (1.0 = one core saturated)."""
    group_cpu_s: tuple[float, ...] = ()
    """CPU seconds of each of ``request_rate``'s ``groups`` of processes during the measured run."""
    wall_s: float = 0.0
    """The measured run's wall seconds."""


def _cpu(pids: list[int]) -> float:
    return sum(proc_sample(pid).cpu_s for pid in pids)


def latency(bench: BenchLab, netns: str, target: tuple[str, int], *, rounds: int, pids: list[int]) -> Latency:
    """``rounds`` ping-pongs (after 200 warm-up round trips)."""
    before = _cpu(pids)
    argv = [sys.executable, "-m", "perf._ztunnel_apps", "pingpong", target[0], str(target[1])]
    out, _ = bench.run_in(netns, [*argv, "--rounds", str(rounds)], timeout=60 + rounds / 500)
    used = _cpu(pids) - before
    result = json.loads(out)
    return Latency(
        p50_us=result["p50_us"],
        p99_us=result["p99_us"],
        proxy_cpu_us_per_rt=used / (rounds + 200) * 1e6 if pids else None,
        client_cpu_us_per_rt=result["client_cpu_s"] / (rounds + 200) * 1e6,
    )


def throughput(
    bench: BenchLab, netns: str, target: tuple[str, int], *, nbytes: int, pids: list[int]
) -> Throughput:
    """One stream of ``nbytes``; the timer stops when the server confirmed every byte."""
    before = _cpu(pids)
    argv = [sys.executable, "-m", "perf._ztunnel_apps", "bulk", target[0], str(target[1])]
    out, _ = bench.run_in(netns, [*argv, "--bytes", str(nbytes)], timeout=120)
    used = _cpu(pids) - before
    seconds = json.loads(out)["seconds"]
    return Throughput(
        mb_per_s=nbytes / 1e6 / seconds, proxy_cpu_s_per_gb=used / (nbytes / 1e9) if pids else None
    )


def set_value(bench: BenchLab, netns: str, target: tuple[str, int], *, within: float = 30.0) -> float:
    """Stores the 100-byte value the rate runs GET, retrying until the path works; returns the seconds.

    Right after the lab is ready a mesh path may still reset connections: the pods are enrolled,
    but the ztunnels may not have the peer's workload or certificate yet.
    """
    argv = ["redis-cli", "-h", target[0], "-p", str(target[1]), "SET", VALUE_KEY, VALUE]
    start = time.monotonic()
    while True:
        try:
            out, _ = bench.run_in(netns, argv, timeout=15)
        except RuntimeError as exc:
            out = str(exc)
        if out.strip() == "OK":
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise RuntimeError(
                f"redis SET through {target} did not work within {within:.0f} s: {out.strip()!r}"
            )
        time.sleep(0.1)


def _benchmark(
    bench: BenchLab, netns: str, target: tuple[str, int], *, requests: int, clients: int, keepalive: bool
) -> tuple[float, float, float]:
    """(requests per second, redis-benchmark CPU seconds, wall seconds)."""
    argv = ["redis-benchmark", "-h", target[0], "-p", str(target[1]), "-c", str(clients),
            "-n", str(requests), "-k", "1" if keepalive else "0", "--csv", "GET", VALUE_KEY]  # fmt: skip
    start = time.monotonic()
    out, cpu = bench.run_in(netns, argv, timeout=120)
    wall = time.monotonic() - start
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r.get("rps")]
    if not rows:
        raise RuntimeError(f"redis-benchmark through {target} printed no result: {out[-500:]!r}")
    return float(rows[0]["rps"]), cpu, wall


def request_rate(
    bench: BenchLab,
    netns: str,
    target: tuple[str, int],
    *,
    seconds: float,
    clients: int,
    keepalive: bool,
    pids: list[int],
    cap: int = 1_000_000,
    groups: tuple[list[int], ...] = (),
) -> Rate:
    """GETs at ``clients`` concurrency for about ``seconds`` (sized by a 1000-request probe); the CPU
    of ``pids`` together, and of each of ``groups`` apart, during the measured run."""
    probe, _, _ = _benchmark(bench, netns, target, requests=1000, clients=clients, keepalive=keepalive)
    requests = int(min(cap, max(1000, probe * seconds)))
    before, groups_before = _cpu(pids), [_cpu(group) for group in groups]
    rps, cpu, wall = _benchmark(bench, netns, target, requests=requests, clients=clients, keepalive=keepalive)
    used = _cpu(pids) - before
    return Rate(
        per_s=rps,
        requests=requests,
        proxy_cpu_us_per_req=used / requests * 1e6 if pids else None,
        loadgen_cpu_share=cpu / wall,
        group_cpu_s=tuple(_cpu(group) - b for group, b in zip(groups, groups_before, strict=True)),
        wall_s=wall,
    )


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores; /proc/stat minus idle and
    iowait): on a shared machine, how much of it other work took."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pids: list[int], *, seconds: float) -> float:
    """CPU share (1.0 = a core) the processes used together while nothing was sent, over ``seconds``."""
    before, start = _cpu(pids), time.monotonic()
    time.sleep(seconds)
    return (_cpu(pids) - before) / (time.monotonic() - start)


_HOLD = r"""
import socket, sys
held = []
for _ in range(int(sys.argv[3])):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10)
    s.sendall(b"PING\r\n")
    assert s.recv(7) == b"+PONG\r\n"
    held.append(s)
print("open", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def hold_connections(bench: BenchLab, netns: str, target: tuple[str, int], *, count: int) -> Iterator[None]:
    """``count`` redis connections from ``netns`` to ``target``, each used once (PING) and then held
    idle until the block ends."""
    holder = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _HOLD, target[0], str(target[1]), str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=bench.lab.exec_env(),
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "open":
            _, err = holder.communicate(timeout=10)
            raise RuntimeError(f"could not hold {count} connections to {target[0]}:{target[1]}: {err[-800:]}")
        yield
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
