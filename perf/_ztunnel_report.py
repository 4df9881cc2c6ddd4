"""The ztunnel benchmark's results: raw runs, medians per path, and the markdown report (pure)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["PATHS", "RSS_TARGET_MB", "Memory", "PathRun", "Summary", "report", "summarize", "targets"]

PATHS = ("direct", "ztunnel", "envoy", "envoy-equal")
"""``envoy`` is the bare Envoy pair, ``envoy-equal`` the one doing ztunnel's per-connection work."""
RSS_TARGET_MB = 40.0
RSS_TARGET_PODS = 50


@dataclass(frozen=True, slots=True)
class PathRun:
    """One path, one repeat. CPU columns are of both proxies together (None on the direct path)."""

    path: str
    repeat: int
    p50_us: float
    p99_us: float
    rps: float
    conn_per_s: float
    mb_per_s: float
    cpu_us_per_rt: float | None
    cpu_us_per_req: float | None
    cpu_us_per_conn: float | None
    cpu_s_per_gb: float | None
    loadgen_cpu_share: float
    proxy_rss_mb: float | None
    """VmRSS of both proxies together after the run (Envoy: the larger of its two pairs)."""
    proxy_hwm_mb: float | None
    proxy_anon_mb: float | None
    """RssAnon (private memory) of both proxies together, MB."""


@dataclass(frozen=True, slots=True)
class Memory:
    """Both ztunnels at one pod count: VmRSS and VmHWM per node (MB), idle CPU (1.0 = a core)."""

    pods_per_node: int
    when: str
    """``before load``, ``after load`` or ``after scale-up``."""
    rss_mb: tuple[float, ...]
    hwm_mb: tuple[float, ...]
    anon_mb: tuple[float, ...]
    idle_cpu: float
    seconds_to_scale: float | None = None
    p50_us: float | None = None
    """A ztunnel-path ping-pong p50 at this pod count (None when not measured)."""
    idle_connections: int = 0
    """Idle connections held open through the mesh while sampled (not a pod-count sample then)."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians over the repeats of one path."""

    path: str
    p50_us: float
    p99_us: float
    rps: float
    conn_per_s: float
    mb_per_s: float
    cpu_us_per_rt: float | None
    cpu_us_per_req: float | None
    cpu_us_per_conn: float | None
    cpu_s_per_gb: float | None
    loadgen_cpu_share: float
    proxy_rss_mb: float | None
    proxy_anon_mb: float | None
    p50_range: tuple[float, float]
    """The lowest and highest p50 of the repeats (this VM's latency is bimodal, see the README)."""


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[PathRun]) -> list[Summary]:
    """The median of every column per path, in :data:`PATHS` order."""
    out = []
    for name in PATHS:
        mine = [r for r in runs if r.path == name]
        if not mine:
            continue
        out.append(
            Summary(
                path=name,
                p50_us=statistics.median(r.p50_us for r in mine),
                p99_us=statistics.median(r.p99_us for r in mine),
                rps=statistics.median(r.rps for r in mine),
                conn_per_s=statistics.median(r.conn_per_s for r in mine),
                mb_per_s=statistics.median(r.mb_per_s for r in mine),
                cpu_us_per_rt=_median([r.cpu_us_per_rt for r in mine]),
                cpu_us_per_req=_median([r.cpu_us_per_req for r in mine]),
                cpu_us_per_conn=_median([r.cpu_us_per_conn for r in mine]),
                cpu_s_per_gb=_median([r.cpu_s_per_gb for r in mine]),
                loadgen_cpu_share=statistics.median(r.loadgen_cpu_share for r in mine),
                proxy_rss_mb=_median([r.proxy_rss_mb for r in mine]),
                proxy_anon_mb=_median([r.proxy_anon_mb for r in mine]),
                p50_range=(min(r.p50_us for r in mine), max(r.p50_us for r in mine)),
            )
        )
    return out


def _f(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def targets(by: dict[str, Summary], memory: Sequence[Memory]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for the issue's targets: latency and throughput vs Envoy (the equal-work
    pair when it was measured, as issue 16 states them), RSS at 50 pods."""
    zt, envoy = by["ztunnel"], by.get("envoy-equal", by["envoy"])
    which = "Envoy (equal work)" if envoy.path == "envoy-equal" else "Envoy"
    checks = [
        (f"p50 latency <= 1.0x {which}", zt.p50_us <= envoy.p50_us, _ratio(zt.p50_us, envoy.p50_us)),
        (f"p99 latency <= 1.0x {which}", zt.p99_us <= envoy.p99_us, _ratio(zt.p99_us, envoy.p99_us)),
        (f"requests/s >= 1.0x {which}", zt.rps >= envoy.rps, _ratio(zt.rps, envoy.rps)),
        (
            f"single-stream MB/s >= 1.0x {which}",
            zt.mb_per_s >= envoy.mb_per_s,
            _ratio(zt.mb_per_s, envoy.mb_per_s),
        ),
    ]
    for mem in memory:
        if mem.pods_per_node >= RSS_TARGET_PODS and not mem.idle_connections:
            worst = max(mem.rss_mb)
            checks.append(
                (f"ztunnel RSS < {RSS_TARGET_MB:.0f} MB with {mem.pods_per_node} pods/node",
                 worst < RSS_TARGET_MB, f"{worst:.1f} MB")
            )  # fmt: skip
    return checks


_PATH_COLUMNS: tuple[tuple[str, Callable[[Summary], str]], ...] = (
    ("path", lambda s: s.path),
    ("p50 µs", lambda s: f"{s.p50_us:.1f}"),
    ("p50 range", lambda s: f"{s.p50_range[0]:.0f}-{s.p50_range[1]:.0f}"),
    ("p99 µs", lambda s: f"{s.p99_us:.1f}"),
    ("req/s (16 conns)", lambda s: f"{s.rps:.0f}"),
    ("new conns/s", lambda s: f"{s.conn_per_s:.0f}"),
    ("stream MB/s", lambda s: f"{s.mb_per_s:.0f}"),
    ("proxy CPU µs/round trip", lambda s: _f(s.cpu_us_per_rt, ".0f")),
    ("µs/request", lambda s: _f(s.cpu_us_per_req, ".0f")),
    ("µs/new conn", lambda s: _f(s.cpu_us_per_conn, ".0f")),
    ("s/GB", lambda s: _f(s.cpu_s_per_gb, ".2f")),
    ("proxies' RSS MB", lambda s: _f(s.proxy_rss_mb)),
    ("of it private", lambda s: _f(s.proxy_anon_mb)),
    ("load tool CPU", lambda s: f"{s.loadgen_cpu_share:.2f}"),
)
_RATIO_COLUMNS = (
    ("p50", "p50_us"), ("p99", "p99_us"), ("req/s", "rps"), ("new conns/s", "conn_per_s"),
    ("stream MB/s", "mb_per_s"), ("CPU/round trip", "cpu_us_per_rt"), ("CPU/request", "cpu_us_per_req"),
    ("CPU/new conn", "cpu_us_per_conn"), ("CPU/GB", "cpu_s_per_gb"), ("RSS", "proxy_rss_mb"),
)  # fmt: skip
_MEMORY_COLUMNS: tuple[tuple[str, Callable[[Memory], str]], ...] = (
    ("enrolled pods/node", lambda m: str(m.pods_per_node)),
    ("when", lambda m: m.when),
    ("ztunnel VmRSS MB (node1, node2)", lambda m: ", ".join(f"{v:.1f}" for v in m.rss_mb)),
    ("VmHWM MB", lambda m: ", ".join(f"{v:.1f}" for v in m.hwm_mb)),
    ("RssAnon MB", lambda m: ", ".join(f"{v:.1f}" for v in m.anon_mb)),
    ("idle CPU (both, % of a core)", lambda m: f"{m.idle_cpu * 100:.1f}"),
    ("scale-up s", lambda m: _f(m.seconds_to_scale)),
    ("ztunnel p50 µs", lambda m: _f(m.p50_us)),
)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ratio_table(by: dict[str, Summary]) -> list[str]:
    zt = by["ztunnel"]
    rows = [
        [other, *(_ratio(getattr(zt, attr), getattr(by[other], attr)) for _, attr in _RATIO_COLUMNS)]
        for other in ("envoy-equal", "envoy", "direct")
        if other in by
    ]
    return _table(["ztunnel vs", *(name for name, _ in _RATIO_COLUMNS)], rows)


def report(
    runs: Sequence[PathRun], memory: Sequence[Memory], *, header: str, notes: Sequence[str] = ()
) -> str:
    """The markdown report: medians, ratios, memory by pod count, the targets, then ``notes``."""
    summaries = summarize(runs)
    by = {s.path: s for s in summaries}
    lines = [
        header,
        "",
        *_table([n for n, _ in _PATH_COLUMNS], [[f(s) for _, f in _PATH_COLUMNS] for s in summaries]),
    ]
    if "ztunnel" in by:
        lines += ["", *_ratio_table(by)]
    lines += [
        "",
        *_table([n for n, _ in _MEMORY_COLUMNS], [[f(m) for _, f in _MEMORY_COLUMNS] for m in memory]),
    ]
    if "ztunnel" in by and "envoy" in by:
        lines += ["", "Targets:"]
        lines += [
            f"- {name}: **{'met' if ok else 'MISSED'}** ({got})" for name, ok, got in targets(by, memory)
        ]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines)
