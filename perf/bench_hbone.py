"""HBONE end to end: the same traffic directly, through two of our relays, and through two Envoys.

    .venv/bin/python -m perf.bench_hbone [--quick] [--repeats 3] [--rounds 20000] [--bulk-mb 1000]

Paths (each proxy is its own process; all share this machine's cores):

- **direct**: load generator -> server;
- **ours**: load generator -> relay A (plain TCP in, ``perf.hbone_relay client``) -> HBONE (mTLS,
  HTTP/2 CONNECT) -> relay B (``perf.hbone_relay server``) -> server; uvloop, ``mesh.rt.hbone``;
- **envoy**: the same with two Envoys (``tcp_proxy`` tunneling, HCM terminating CONNECT),
  ``--concurrency 1`` each, same windows (4 MiB stream, 16 MiB connection), TLS 1.3, ALPN h2;
- **py-tls** (reference): a plain mTLS relay pair built from the same pieces without HTTP/2
  (``perf.tls_relay``): the floor of any Python uvloop relay on this machine.

Measured per path and repeat, with freshly started proxies: p50/p99 round trip of 100-byte
ping-pongs; single-stream bulk MB/s (byte-checked by the server; the timer stops on its answer);
proxy CPU seconds per GB (utime+stime of both proxies during the bulk run, from /proc); peak RSS
(VmHWM) of each proxy after both runs. Within a repeat all paths run side by side and take turns
(ping-pong in chunks of 1000 round trips, then one bulk run each), so they share the machine's
conditions; the report is the median of the repeats, with ratios against Envoy, py-tls and direct.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from mesh.testing.envoy_hbone import hbone_client_config, hbone_server_config, proc_stats, start_envoy
from mesh.testing.pki import TestPki, chain_pem
from mesh.testing.processes import stop_process
from perf.hbone_endpoints import bulk, ping_pong

__all__ = ["PathRun", "Summary", "main", "run_benchmark"]

PATHS = ("direct", "ours", "envoy", "py-tls")
CLIENT_ID = ("bench", "client")
SERVER_ID = ("bench", "server")
_REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class PathRun:
    """One path, one repeat."""

    path: str
    p50_us: float
    p99_us: float
    mb_per_s: float
    proxy_cpu_s_per_gb: float | None
    proxy_cpu_us_per_rt: float | None
    rss_mb: tuple[float, ...]
    """Peak RSS of relay/Envoy A then B."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians over the repeats of one path."""

    path: str
    p50_us: float
    p99_us: float
    mb_per_s: float
    proxy_cpu_s_per_gb: float | None
    proxy_cpu_us_per_rt: float | None
    rss_a_mb: float | None
    rss_b_mb: float | None

    @property
    def rss_total_mb(self) -> float | None:
        """A + B."""
        return None if self.rss_a_mb is None or self.rss_b_mb is None else self.rss_a_mb + self.rss_b_mb


def _write_credentials(directory: Path) -> dict[str, str]:
    pki = TestPki.create()
    ids = {}
    for name, (ns, sa) in (("client", CLIENT_ID), ("server", SERVER_ID)):
        uri = pki.workload_uri(ns, sa)
        leaf = pki.issue_leaf(uri)
        (directory / f"{name}-key.pem").write_bytes(leaf.key_pem)
        (directory / f"{name}-key.pem").chmod(0o600)
        (directory / f"{name}-chain.pem").write_bytes(chain_pem([leaf.cert]))
        ids[name] = uri
    (directory / "roots.pem").write_bytes(pki.root_pem)
    return ids


def _spawn(args: list[str], ready: Path, *, timeout: float = 20.0) -> tuple[subprocess.Popen[bytes], int]:
    devnull = subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", *args, "--ready-file", str(ready)],
        cwd=_REPO,
        stdin=devnull,
        stdout=devnull,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"{' '.join(args)} did not start (exit code {proc.returncode})")
        time.sleep(0.02)
    return proc, int(ready.read_text())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)


@contextmanager
def _our_relays(work: Path, ids: dict[str, str], server_port: int) -> Iterator[tuple[int, list[int]]]:
    tag = str(time.monotonic_ns())
    certs = ["--certs", str(work)]
    relay_b, b_port = _spawn(
        ["perf.hbone_relay", "server", *certs, "--name", "server", "--identity", ids["server"]],
        work / f"relay-b-{tag}.port",
    )
    try:
        relay_a, a_port = _spawn(
            ["perf.hbone_relay", "client", *certs, "--name", "client", "--identity", ids["client"],
             "--server", f"127.0.0.1:{b_port}", "--expect", ids["server"],
             "--target", f"127.0.0.1:{server_port}"],
            work / f"relay-a-{tag}.port",
        )  # fmt: skip
        try:
            yield a_port, [relay_a.pid, relay_b.pid]
        finally:
            _stop(relay_a)
    finally:
        _stop(relay_b)


@contextmanager
def _tls_relays(work: Path, ids: dict[str, str], server_port: int) -> Iterator[tuple[int, list[int]]]:
    tag = str(time.monotonic_ns())
    certs = ["--certs", str(work)]
    relay_b, b_port = _spawn(
        ["perf.tls_relay", "server", *certs, "--name", "server", "--identity", ids["server"],
         "--target", f"127.0.0.1:{server_port}"],
        work / f"tls-b-{tag}.port",
    )  # fmt: skip
    try:
        relay_a, a_port = _spawn(
            ["perf.tls_relay", "client", *certs, "--name", "client", "--identity", ids["client"],
             "--server", f"127.0.0.1:{b_port}", "--expect", ids["server"]],
            work / f"tls-a-{tag}.port",
        )  # fmt: skip
        try:
            yield a_port, [relay_a.pid, relay_b.pid]
        finally:
            _stop(relay_a)
    finally:
        _stop(relay_b)


@contextmanager
def _envoys(work: Path, server_port: int) -> Iterator[tuple[int, list[int]]]:
    from perf.hbone_relay import load_material  # noqa: PLC0415 - relay module imports uvloop

    client = load_material(work, "client", TestPki.create().workload_uri(*CLIENT_ID))
    server = load_material(work, "server", TestPki.create().workload_uri(*SERVER_ID))
    b_config = hbone_server_config(
        material=server, upstream=("127.0.0.1", server_port), clients=frozenset({client.identity})
    )
    envoy_b = start_envoy(b_config, work / "envoy", name="envoy-b")
    try:
        a_config = hbone_client_config(
            material=client,
            server=envoy_b.listener,
            expected=frozenset({server.identity}),
            authority=f"127.0.0.1:{server_port}",
        )
        envoy_a = start_envoy(a_config, work / "envoy", name="envoy-a")
        try:
            yield envoy_a.listener[1], [envoy_a.pid, envoy_b.pid]
        finally:
            envoy_a.stop()
    finally:
        envoy_b.stop()


@contextmanager
def _path(name: str, work: Path, ids: dict[str, str], server_port: int) -> Iterator[tuple[int, list[int]]]:
    if name == "direct":
        yield server_port, []
    elif name == "ours":
        with _our_relays(work, ids, server_port) as started:
            yield started
    elif name == "py-tls":
        with _tls_relays(work, ids, server_port) as started:
            yield started
    else:
        with _envoys(work, server_port) as started:
            yield started


def _cpu(pids: list[int]) -> float:
    return sum(proc_stats(pid)[0] for pid in pids)


CHUNK_ROUNDS = 1000
"""Ping-pong runs in chunks of this many round trips, rotating over the paths, so every path sees the
same moments of a shared machine (the noise on this VM moves p50 by 2x within a minute)."""


def _run_repeat(
    paths: tuple[str, ...], work: Path, ids: dict[str, str], server_port: int, *, rounds: int, nbytes: int
) -> list[PathRun]:
    """One repeat: all paths' proxies started fresh and side by side, measures interleaved."""
    with ExitStack() as stack:
        started = {name: stack.enter_context(_path(name, work, ids, server_port)) for name in paths}
        samples: dict[str, list[float]] = {name: [] for name in paths}
        cpu_rt = dict.fromkeys(paths, 0.0)
        chunks = max(1, rounds // CHUNK_ROUNDS)
        for chunk in range(chunks):
            for name in _rotated(paths, chunk):
                port, pids = started[name]
                before = _cpu(pids)
                samples[name] += ping_pong(("127.0.0.1", port), rounds=rounds // chunks, warmup=50)
                cpu_rt[name] += _cpu(pids) - before
        runs = []
        total_rounds = chunks * (rounds // chunks + 50)
        for name in _rotated(paths, len(paths) // 2):
            port, pids = started[name]
            before = _cpu(pids)
            seconds = bulk(("127.0.0.1", port), nbytes=nbytes)
            cpu_bulk = _cpu(pids) - before
            ordered = sorted(samples[name])
            runs.append(
                PathRun(
                    path=name,
                    p50_us=ordered[len(ordered) // 2],
                    p99_us=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                    mb_per_s=nbytes / 1e6 / seconds,
                    proxy_cpu_s_per_gb=cpu_bulk / (nbytes / 1e9) if pids else None,
                    proxy_cpu_us_per_rt=cpu_rt[name] / total_rounds * 1e6 if pids else None,
                    rss_mb=tuple(proc_stats(pid)[1] for pid in pids),
                )
            )
    return sorted(runs, key=lambda r: paths.index(r.path))


def _rotated(paths: tuple[str, ...], by: int) -> tuple[str, ...]:
    by %= len(paths)
    return paths[by:] + paths[:by]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[PathRun]) -> list[Summary]:
    """Median per path over the repeats."""
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
                mb_per_s=statistics.median(r.mb_per_s for r in mine),
                proxy_cpu_s_per_gb=_median([r.proxy_cpu_s_per_gb for r in mine]),
                proxy_cpu_us_per_rt=_median([r.proxy_cpu_us_per_rt for r in mine]),
                rss_a_mb=_median([r.rss_mb[0] if r.rss_mb else None for r in mine]),
                rss_b_mb=_median([r.rss_mb[1] if r.rss_mb else None for r in mine]),
            )
        )
    return out


def run_benchmark(
    *, repeats: int, rounds: int, nbytes: int, paths: tuple[str, ...] = PATHS, log: bool = True
) -> list[PathRun]:
    """Runs every path ``repeats`` times (interleaved) and returns the raw runs."""
    runs: list[PathRun] = []
    with tempfile.TemporaryDirectory(prefix="bench-hbone-") as tmp:
        work = Path(tmp)
        ids = _write_credentials(work)
        server, server_port = _spawn(["perf.hbone_endpoints"], work / "server.port")
        try:
            for repeat in range(repeats):
                for run in _run_repeat(paths, work, ids, server_port, rounds=rounds, nbytes=nbytes):
                    runs.append(run)
                    if log:
                        _log_run(repeat, run)
        finally:
            _stop(server)
    return runs


def _log_run(repeat: int, run: PathRun) -> None:
    rss = ", ".join(f"{m:.1f}" for m in run.rss_mb) or "-"
    print(
        f"  repeat {repeat + 1} {run.path:6} p50 {run.p50_us:7.1f} us  p99 {run.p99_us:7.1f} us"
        f"  {run.mb_per_s:7.1f} MB/s  peak RSS {rss} MB",
        file=sys.stderr,
    )


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def report(summaries: list[Summary], *, rounds: int, nbytes: int, repeats: int) -> str:
    """The markdown report: medians, ratios and the issue's targets."""
    by = {s.path: s for s in summaries}
    lines = [
        f"{dt.date.today().isoformat()}, {platform.node()}, {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {rounds} round trips, {nbytes / 1e6:.0f} MB bulk, "
        f"median of {repeats}",
        "",
        "| path | p50 µs | p99 µs | bulk MB/s | proxy CPU s/GB | proxy CPU µs/round trip"
        " | peak RSS MB (A, B) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        cpu = "-" if s.proxy_cpu_s_per_gb is None else f"{s.proxy_cpu_s_per_gb:.2f}"
        rt = "-" if s.proxy_cpu_us_per_rt is None else f"{s.proxy_cpu_us_per_rt:.0f}"
        rss = "-" if s.rss_a_mb is None else f"{s.rss_a_mb:.1f}, {s.rss_b_mb:.1f}"
        lines.append(
            f"| {s.path} | {s.p50_us:.1f} | {s.p99_us:.1f} | {s.mb_per_s:.0f} | {cpu} | {rt} | {rss} |"
        )
    ours, envoy = by.get("ours"), by.get("envoy")
    if ours and envoy:
        lines += [
            "",
            "| ours vs | p50 | p99 | throughput | CPU/GB | peak RSS (A+B) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [_ratio_row(ours, by[name]) for name in ("envoy", "py-tls", "direct") if name in by]
        lines += ["", "Targets: " + ", ".join(_targets(ours, envoy))]
    return "\n".join(lines)


def _ratio_row(ours: Summary, other: Summary) -> str:
    return (
        f"| {other.path} | {_ratio(ours.p50_us, other.p50_us)} | {_ratio(ours.p99_us, other.p99_us)} | "
        f"{_ratio(ours.mb_per_s, other.mb_per_s)} | "
        f"{_ratio(ours.proxy_cpu_s_per_gb, other.proxy_cpu_s_per_gb)} | "
        f"{_ratio(ours.rss_total_mb, other.rss_total_mb)} |"
    )


def _targets(ours: Summary, envoy: Summary) -> list[str]:
    checks = [
        ("p50 <= 1.0x Envoy", ours.p50_us <= envoy.p50_us),
        ("throughput >= 1.0x Envoy", ours.mb_per_s >= envoy.mb_per_s),
        ("RSS <= 0.5x Envoy", (ours.rss_total_mb or 0) <= 0.5 * (envoy.rss_total_mb or 0)),
    ]
    return [f"{name}: {'met' if ok else 'MISSED'}" for name, ok in checks]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3000 round trips, 20 MB, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--bulk-mb", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the raw runs and medians here")
    parser.add_argument("--no-tls-floor", action="store_true", help="skip the py-tls reference path")
    args = parser.parse_args(argv)
    repeats, rounds, mb = (1, 3000, 20) if args.quick else (args.repeats, args.rounds, args.bulk_mb)
    paths = tuple(p for p in PATHS if not (args.no_tls_floor and p == "py-tls"))
    runs = run_benchmark(repeats=repeats, rounds=rounds, nbytes=mb * 1_000_000, paths=paths)
    summaries = summarize(runs)
    print(report(summaries, rounds=rounds, nbytes=mb * 1_000_000, repeats=repeats))
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs],
                                         "medians": [asdict(s) for s in summaries]}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
