"""Soak of the mesh (reliability catalogue 35): hours of mixed traffic with the usual disturbances.

``python -m perf.soak_ztunnel --minutes 60`` brings up the benchmark lab (2 nodes, the mesh on) with
workload certificates of ``--cert-ttl`` seconds (300: a rotation every 150 s), and runs
:mod:`perf._soak_load` in the enrolled client pod against redis in the enrolled server pod on the
other node: ``--rps`` new connections per second, 80 % short and 20 % held up to 60 s, every answer
byte-checked. Meanwhile:

- istiod_lite is killed (SIGKILL) every ``--restart-every`` minutes; the lab restarts it;
- once, for ``--loss-seconds``, ``--loss`` of the packets reaching either pod are dropped at random
  (``iptables -m statistic``; this kernel has no ``tc netem``);
- both ztunnels' RSS, open descriptors, threads and event-loop tasks (``ztunnel_event_loop_tasks``)
  are sampled every 10 s.

Pass criteria (printed, and in the JSON written to ``perf/results/soak-*.json``):

- success >= 99.99 % of the connections;
- ztunnel RSS drift < 10 % between the sample at a sixth of the run (minute 10 of an hour) and
  the last one of the steady load (before held connections wind down);
- open descriptors and event-loop tasks, once the load is over and the pools released their idle
  connections (5 min), each within max(2 %, 2) of before;
- no non-JSON line (traceback) and no ``connection.failed`` in the ztunnels' logs;
- each ztunnel's ``istio_tcp_connections_opened_total`` equals its ``_closed_total`` after the load.

Every step prints progress to stderr; the lab is always torn down.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshctl.lab.meshview import istiods
from meshctl.lab.testkit import unique_lab_id
from perf._ztunnel_lab import ENROLLED, NODES, REDIS_PORT, BenchLab, metric_samples, proc_sample

__all__ = ["Plan", "main", "run_soak"]

_REPO = Path(__file__).resolve().parent.parent
_RESULTS = _REPO / "perf" / "results"
_SAMPLE_EVERY = 10.0
_POOL_IDLE = 300.0
"""Seconds a pooled HBONE connection stays open without streams (then it is released)."""
_LONG_MAX = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What the soak does."""

    minutes: float = 60.0
    rps: float = 200.0
    cert_ttl: int = 300
    restart_every: float = 10.0
    loss: float = 0.02
    loss_seconds: float = 60.0
    settle: float = _POOL_IDLE + 30
    """Seconds after the load before the last samples: past the pools' idle timeout, descriptors
    must be back where they started (a shorter settle skips that check)."""

    @property
    def seconds(self) -> float:
        """The load's duration."""
        return self.minutes * 60

    @property
    def loss_at(self) -> float:
        """Seconds into the load when the loss episode starts (between two controller restarts)."""
        return self.seconds * 0.45


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _sample(bench: BenchLab, at: float) -> dict[str, Any]:
    sample: dict[str, Any] = {"t": round(at, 1)}
    for node, pid in zip(NODES, bench.ztunnel_pids(), strict=True):
        proc = proc_sample(pid)
        sample[node] = {
            "rss_mb": round(proc.rss_mb, 1),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task")),
            "tasks": _metric_sum(bench.metrics_text(node), "ztunnel_event_loop_tasks"),
        }
    return sample


def _metric_sum(text: str, name: str) -> float:
    """The sum of the samples of ``name`` over all its label sets."""
    return sum(value for _, value in metric_samples(text, name))


def _kill_istiod(bench: BenchLab) -> int | None:
    """SIGKILLs istiod_lite's (oldest ready) pod's process; None when no replica is ready."""
    ready = istiods(bench.lab)
    pid = ready[0].pid() if ready else None
    if pid is not None:
        os.kill(pid, signal.SIGKILL)  # our own lab's istiod_lite, by its PID; the lab restarts the container
    return pid


@contextlib.contextmanager
def _loss(netns: list[str], share: float) -> Iterator[None]:
    rule = [
        "INPUT",
        "-i",
        "eth0",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        str(share),
        "-j",
        "DROP",
    ]
    for ns in netns:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-I", *rule], check=True, timeout=10)
    try:
        yield
    finally:
        for ns in netns:
            subprocess.run(["ip", "netns", "exec", ns, "iptables", "-D", *rule], check=False, timeout=10)


def _opened_closed(bench: BenchLab, node: str) -> tuple[float, float]:
    text = bench.metrics_text(node)
    return (
        _metric_sum(text, "istio_tcp_connections_opened_total"),
        _metric_sum(text, "istio_tcp_connections_closed_total"),
    )


def _unbalanced(text: str) -> list[dict[str, Any]]:
    """The label sets (without ``response_flags``, which only closing sets) whose opened and closed
    counts differ: where a connection was counted opened but never closed, or the reverse."""
    sums: dict[str, dict[str, float]] = {}
    for kind in ("opened", "closed"):
        for labels, value in metric_samples(text, f"istio_tcp_connections_{kind}_total"):
            labels.pop("response_flags", None)
            key = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            sums.setdefault(key, {"opened": 0.0, "closed": 0.0})[kind] += value
    return [{"labels": k, **v} for k, v in sums.items() if v["opened"] != v["closed"]]


def _settled_counters(bench: BenchLab, *, within: float = 30.0) -> dict[str, tuple[float, float]]:
    """Each ztunnel's (opened, closed) once they agree, or as they are after ``within`` seconds: a
    connection the load just closed can take a moment to be counted closed; one never closed stays."""
    deadline = time.monotonic() + within
    while True:
        counters = {node: _opened_closed(bench, node) for node in NODES}
        if all(o == c for o, c in counters.values()) or time.monotonic() > deadline:
            return counters
        time.sleep(1.0)


def _drive(
    bench: BenchLab, plan: Plan, load: subprocess.Popen[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Samples, restarts and the loss episode until the load ends; returns (samples, events)."""
    ep = bench.endpoints(ENROLLED)
    samples: list[dict[str, Any]] = []
    events: list[str] = []

    def event(text: str) -> None:
        events.append(text)
        _log(f"  {text}")

    start = time.monotonic()
    next_sample, next_restart = 0.0, plan.restart_every * 60
    loss_ends: float | None = None  # set while the episode runs, then inf
    with contextlib.ExitStack() as episode:
        while load.poll() is None:
            now = time.monotonic() - start
            if now >= next_sample:
                samples.append(_sample(bench, now))
                next_sample += _SAMPLE_EVERY
            if plan.restart_every and now >= next_restart and now < plan.seconds - 30:
                event(f"{now:.0f} s: istiod killed (pid {_kill_istiod(bench)})")
                next_restart += plan.restart_every * 60
            if loss_ends is None and plan.loss and now >= plan.loss_at:
                event(f"{now:.0f} s: {plan.loss:.0%} packet loss into both pods for {plan.loss_seconds:g} s")
                episode.enter_context(_loss([ep.client_netns, ep.server_netns], plan.loss))
                loss_ends = now + plan.loss_seconds
            elif loss_ends is not None and now >= loss_ends:
                episode.close()  # the rules come out; closing again at the end does nothing
                loss_ends = math.inf
            time.sleep(0.5)
    return samples, events


def _progress(stream: Any, lines: list[dict[str, Any]]) -> None:
    for line in stream:
        entry = json.loads(line)
        lines.append(entry)
        _log(
            f"  {entry['t']:7.0f} s: {entry['ok']} ok, {entry['failed']} failed {entry['errors'] or ''}, "
            f"{entry['active_long']} held, short p99 {entry['short_p99_ms']} ms "
            f"({entry['window_p99_ms']} ms in the last interval)"
        )


def run_soak(plan: Plan) -> dict[str, Any]:
    """Runs the soak on a fresh lab (always torn down); returns the results and the verdicts."""
    with tempfile.TemporaryDirectory(prefix="soak-ztunnel-") as tmp:
        work = Path(tmp)
        bench = BenchLab(work / "state", lab_id=unique_lab_id("s"), work=work)
        try:
            _log(
                f"soak: {plan.minutes:g} min at {plan.rps:g} connections/s, certificates of {plan.cert_ttl} s"
            )
            bench.up(cert_ttl=plan.cert_ttl)
            ep = bench.endpoints(ENROLLED)
            baseline = _sample(bench, 0.0)
            argv = ["ip", "netns", "exec", ep.client_netns, sys.executable, "-m", "perf._soak_load",
                    ep.server_ip, str(REDIS_PORT),
                    "--seconds", str(plan.seconds), "--rps", str(plan.rps)]  # fmt: skip
            env = {**bench.lab.exec_env(), "PYTHONPATH": str(_REPO)}
            progress: list[dict[str, Any]] = []
            with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=_REPO) as load:
                reader = threading.Thread(target=_progress, args=(load.stdout, progress), daemon=True)
                reader.start()
                samples, events = _drive(bench, plan, load)
                reader.join(10)
            if load.returncode != 0 or not progress or not progress[-1].get("done"):
                raise RuntimeError(
                    f"the load generator failed (exit {load.returncode}); see its output above"
                )
            _log(f"  load done; {plan.settle:.0f} s for the pooled connections to be released")
            time.sleep(plan.settle)
            after = _sample(bench, plan.seconds + plan.settle)
            counters = _settled_counters(bench)
            unbalanced = {node: _unbalanced(bench.metrics_text(node)) for node in NODES}
            return _verdicts(
                plan,
                lab_id=bench.lab.lab_id,
                baseline=baseline,
                samples=samples,
                after=after,
                summary=progress[-1],
                counters=counters,
                unbalanced=unbalanced,
                logs=bench.ztunnel_log_events(),
                events=events,
            )
        finally:
            bench.down()


def _verdicts(
    plan: Plan,
    *,
    lab_id: str,
    baseline: dict[str, Any],
    samples: list[dict[str, Any]],
    after: dict[str, Any],
    summary: dict[str, Any],
    counters: dict[str, tuple[float, float]],
    unbalanced: dict[str, list[dict[str, Any]]],
    logs: dict[str, dict[str, int]],
    events: list[str],
) -> dict[str, Any]:
    total = summary["ok"] + summary["failed"]
    # The steady part of the load: from a sixth of the run (minute 10 of an hour) until held
    # connections start to wind down, one longest hold before the end.
    steady = [s for s in samples if plan.seconds / 6 <= s["t"] <= plan.seconds - _LONG_MAX] or samples
    early, last = steady[0], steady[-1]
    checks: dict[str, bool | None] = {
        "success": (summary["ok"] / total if total else 0.0) >= 0.9999,
        "rss_drift": all(abs(last[n]["rss_mb"] / early[n]["rss_mb"] - 1) < 0.10 for n in NODES),
        "fds_back": None if plan.settle < _POOL_IDLE else _back(baseline, after, "fds"),
        "tasks_back": None if plan.settle < _POOL_IDLE else _back(baseline, after, "tasks"),
        "clean_logs": all(
            not log.get("(non-JSON lines, e.g. tracebacks)") and not log.get("warning: connection.failed")
            for log in logs.values()
        ),
        "counters_reconcile": all(opened == closed for opened, closed in counters.values()),
    }
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "lab_id": lab_id,
        "plan": dataclasses.asdict(plan),
        "summary": summary,
        "connections": total,
        "baseline": baseline,
        "early": early,
        "last_under_load": last,
        "after": after,
        "counters": {n: {"opened": o, "closed": c} for n, (o, c) in counters.items()},
        "unbalanced": unbalanced,
        "log_events": logs,
        "events": events,
        "samples": samples,
        "checks": checks,
        "passed": all(ok is not False for ok in checks.values()),
    }


def _back(before: dict[str, Any], after: dict[str, Any], key: str) -> bool:
    """Each ztunnel's ``key`` count is back within max(2 %, 2) of where it was before the load."""
    return all(abs(after[n][key] - before[n][key]) <= max(2, 0.02 * before[n][key]) for n in NODES)


def report(result: dict[str, Any]) -> str:
    """The markdown summary of a soak."""
    s, plan = result["summary"], result["plan"]
    lines = [
        f"soak {result['date']}: {plan['minutes']:g} min, {plan['rps']:g} connections/s, certificates of "
        f"{plan['cert_ttl']} s, istiod killed every {plan['restart_every']:g} min, {plan['loss']:.0%} loss "
        f"for {plan['loss_seconds']:g} s",
        "",
        f"- connections: {result['connections']}, failed {s['failed']} {s['errors'] or ''}; short p50 "
        f"{s['short_p50_ms']} ms, p99 {s['short_p99_ms']} ms",
    ]
    for node in NODES:
        b, e, last, a = (result[k][node] for k in ("baseline", "early", "last_under_load", "after"))
        lines.append(
            f"- {node} ztunnel: RSS {b['rss_mb']} MB before, {e['rss_mb']} at {result['early']['t']:.0f} s, "
            f"{last['rss_mb']} at the end of the load, {a['rss_mb']} after; fds {b['fds']} before, "
            f"{last['fds']} under load, {a['fds']} after; tasks {b['tasks']:.0f} before, "
            f"{last['tasks']:.0f} under load, {a['tasks']:.0f} after; "
            f"threads {b['threads']} -> {a['threads']}"
        )
    counters = ", ".join(
        f"{n} {c['opened']:.0f} opened / {c['closed']:.0f} closed" for n, c in result["counters"].items()
    )
    lines.append(f"- counters: {counters}")
    lines += [
        f"  - {node} unbalanced: {u['opened']:.0f} opened / {u['closed']:.0f} closed for {u['labels']}"
        for node, sets in result["unbalanced"].items()
        for u in sets
    ]
    lines += [f"- events: {'; '.join(result['events']) or 'none'}", ""]
    verdicts = {
        True: "met",
        False: "**MISSED**",
        None: "not checked (settle shorter than the pools' idle time)",
    }
    lines += [f"- {name}: {verdicts[ok]}" for name, ok in result["checks"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the soak, prints the report, writes the JSON; exit 1 when a criterion is missed."""
    parser = argparse.ArgumentParser(
        prog="soak_ztunnel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Plan()
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--rps", type=float, default=defaults.rps, help="new connections per second")
    parser.add_argument("--cert-ttl", type=int, default=defaults.cert_ttl, help="workload certificate TTL, s")
    parser.add_argument(
        "--restart-every", type=float, default=defaults.restart_every, help="minutes; 0: never"
    )
    parser.add_argument(
        "--loss", type=float, default=defaults.loss, help="share of packets dropped; 0: no episode"
    )
    parser.add_argument("--loss-seconds", type=float, default=defaults.loss_seconds)
    parser.add_argument("--settle", type=float, default=defaults.settle, help="seconds after the load")
    parser.add_argument("--json", type=Path, help="where to write the results (default: perf/results/)")
    args = parser.parse_args(argv)
    plan = Plan(
        args.minutes, args.rps, args.cert_ttl, args.restart_every, args.loss, args.loss_seconds, args.settle
    )
    result = run_soak(plan)
    out: Path = args.json or _RESULTS / f"soak-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    _log(f"raw results: {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
