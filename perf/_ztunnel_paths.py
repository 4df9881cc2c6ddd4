"""One repeat of one path of the ztunnel benchmark: every measure against the path's targets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from perf import _ztunnel_measure as m
from perf._ztunnel_envoy import EnvoyPair, PairSpec, envoy_pair, make_materials
from perf._ztunnel_envoy_equal import captured
from perf._ztunnel_lab import ENROLLED, PLAIN, REDIS_PORT, BenchLab, Endpoints, proc_sample
from perf._ztunnel_report import PathRun

__all__ = ["Sizes", "run_path"]


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each measure does."""

    repeats: int
    rounds: int
    bulk_bytes: int
    rate_seconds: float
    conn_seconds: float
    clients: int
    pods_per_node: int
    idle_seconds: float
    idle_connections: int
    """Idle connections held open through the mesh for the memory-per-connection measure."""


@dataclass(frozen=True, slots=True)
class _Measured:
    lat: m.Latency
    thr: m.Throughput
    rps: m.Rate
    conns: m.Rate
    memory: tuple[float, float, float] | None
    """(VmRSS, VmHWM, RssAnon) of both proxies together, MB."""


def _echo(
    bench: BenchLab, s: Sizes, netns: str, target: tuple[str, int], pids: list[int]
) -> tuple[m.Latency, m.Throughput]:
    lat = m.latency(bench, netns, target, rounds=s.rounds, pids=pids)
    return lat, m.throughput(bench, netns, target, nbytes=s.bulk_bytes, pids=pids)


def _rates(
    bench: BenchLab, s: Sizes, netns: str, target: tuple[str, int], pids: list[int]
) -> tuple[m.Rate, m.Rate]:
    rps = m.request_rate(
        bench, netns, target, seconds=s.rate_seconds, clients=s.clients, keepalive=True, pids=pids
    )
    conns = m.request_rate(
        bench, netns, target, seconds=s.conn_seconds, clients=s.clients, keepalive=False, pids=pids, cap=5000
    )
    return rps, conns


def _memory(pids: list[int]) -> tuple[float, float, float]:
    samples = [proc_sample(pid) for pid in pids]
    return sum(x.rss_mb for x in samples), sum(x.hwm_mb for x in samples), sum(x.anon_mb for x in samples)


@contextlib.contextmanager
def _envoys(ep: Endpoints, port: int, work: Path, *, equal: bool) -> Iterator[EnvoyPair]:
    client, server = make_materials((PLAIN, "client"), (PLAIN, "server"))
    spec = PairSpec(
        client_netns=ep.client_netns, server_netns=ep.server_netns, server_ip=ep.server_ip, target_port=port
    )
    workdir = work / ("envoy-equal" if equal else "envoy")
    with envoy_pair(spec, client=client, server=server, workdir=workdir, equal=equal) as pair:
        yield pair


def _via_envoy(bench: BenchLab, s: Sizes, ep: Endpoints, work: Path, *, equal: bool) -> _Measured:
    """A fresh Envoy pair per server: the echo server first, then redis (equal work: with both pods
    captured by ztunnel's rules for the duration)."""
    with captured(ep.client_netns, ep.server_netns) if equal else contextlib.nullcontext():
        with _envoys(ep, ep.echo_port, work, equal=equal) as pair:
            lat, thr = _echo(bench, s, ep.client_netns, pair.listener, list(pair.pids))
            echo_memory = _memory(list(pair.pids))
        with _envoys(ep, REDIS_PORT, work, equal=equal) as pair:
            rps, conns = _rates(bench, s, ep.client_netns, pair.listener, list(pair.pids))
            redis_memory = _memory(list(pair.pids))
    return _Measured(lat, thr, rps, conns, max(echo_memory, redis_memory))


def _direct_or_ztunnel(bench: BenchLab, s: Sizes, ep: Endpoints, pids: list[int]) -> _Measured:
    lat, thr = _echo(bench, s, ep.client_netns, (ep.server_ip, ep.echo_port), pids)
    rps, conns = _rates(bench, s, ep.client_netns, (ep.server_ip, REDIS_PORT), pids)
    return _Measured(lat, thr, rps, conns, _memory(pids) if pids else None)


def run_path(bench: BenchLab, sizes: Sizes, path: str, *, repeat: int, work: Path) -> PathRun:
    """One repeat of ``direct``, ``ztunnel``, ``envoy`` or ``envoy-equal``."""
    ep = bench.endpoints(ENROLLED if path == "ztunnel" else PLAIN)
    if path in ("envoy", "envoy-equal"):
        got = _via_envoy(bench, sizes, ep, work, equal=path == "envoy-equal")
    else:
        got = _direct_or_ztunnel(bench, sizes, ep, bench.ztunnel_pids() if path == "ztunnel" else [])
    return PathRun(
        path=path, repeat=repeat, p50_us=got.lat.p50_us, p99_us=got.lat.p99_us, rps=got.rps.per_s,
        conn_per_s=got.conns.per_s, mb_per_s=got.thr.mb_per_s, cpu_us_per_rt=got.lat.proxy_cpu_us_per_rt,
        cpu_us_per_req=got.rps.proxy_cpu_us_per_req, cpu_us_per_conn=got.conns.proxy_cpu_us_per_req,
        cpu_s_per_gb=got.thr.proxy_cpu_s_per_gb, loadgen_cpu_share=got.rps.loadgen_cpu_share,
        proxy_rss_mb=got.memory[0] if got.memory else None,
        proxy_hwm_mb=got.memory[1] if got.memory else None,
        proxy_anon_mb=got.memory[2] if got.memory else None,
    )  # fmt: skip
