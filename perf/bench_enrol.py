"""Enrolment at node scale (issue 20): CNI ADD latency for 110 pods on one node, its steps, and
what enrolment costs the node agent and ztunnel.

    .venv/bin/python -m perf.bench_enrol [--pods 110] [--burst 10] [--runs 3] [--smoke] [--json PATH]

In the lab (2 nodes, mesh on), namespace ``enrol`` (ambient) gets ``--pods`` sleeper pods on node1
in Deployments of ``--burst`` replicas, one service account each (so certificates are fetched per
identity). Two modes, each from zero enrolled pods on node1:

* ``bursts``: one Deployment at a time (``--burst`` pods start together), waiting until they are
  ready before the next;
* ``all``: every Deployment applied at once.

Per enrolled pod the node agent logs ``cni_ms`` (from the plugin's request to the verdict, which
follows ztunnel's ack) and the milliseconds of each step (``iptables``, ``routes``, ``sysctls``,
``annotate_pending``, ``probe_snat``, ``zds_add``, ``annotate_enabled``); ztunnel logs its
listener set-up per pod (``proxy.started took_ms``) and each certificate fetch (``certs.issued
took_ms``). The plugin process's own start (a Python interpreter per CNI call) is measured apart
with ``CNI_COMMAND=VERSION`` and adds to ``cni_ms``.

Also, in the same run: the CPU of the node agent and of ztunnel per enrolled pod, ztunnel's RSS
(VmRSS, and RssAnon: its private part) with no pod and with every pod, and the routes-and-rules
step both ways on fresh namespaces: over netlink and /proc/sys (the node agent's code) and by
forking ``ip`` and ``sysctl`` through ``nsenter`` (what it did before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl.lab import builders as b
from meshctl.lab.api import Lab
from meshctl.lab.meshview import MeshPod, node_agent, ztunnel
from meshctl.lab.testkit import unique_lab_id
from perf._ztunnel_lab import proc_sample, running_pid
from ztunnel.cni.apply import ensure_routing, write_sysctls
from ztunnel.cni.rules import plan_capture

__all__ = ["ModeResult", "compare_routing", "main", "percentile"]

NAMESPACE = "enrol"
NODE = "node1"
_AMBIENT = {"istio.io/dataplane-mode": "ambient"}
_PLUGIN = str(Path(sys.executable).with_name("ztunnel-cni"))
_COMPONENTS: dict[str, Callable[[Lab, str], MeshPod]] = {"ztunnel": ztunnel, "node-agent": node_agent}
STEPS = ("iptables", "routes", "sysctls", "annotate_pending", "probe_snat", "zds_add", "annotate_enabled")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


@dataclass
class ModeResult:
    """One mode's enrolments, as the node agent and ztunnel logged them."""

    mode: str
    pods: int
    seconds: float
    cni_ms: list[float] = field(default_factory=list)
    steps_ms: dict[str, list[float]] = field(default_factory=dict)
    listeners_ms: list[float] = field(default_factory=list)
    cert_fetch_ms: list[float] = field(default_factory=list)
    agent_cpu_ms_per_pod: float = 0.0
    ztunnel_cpu_ms_per_pod: float = 0.0

    def summary(self) -> dict[str, Any]:
        """p50/p99/max of ``cni_ms``, each step's median and share of the summed means, and costs."""
        total = sum(statistics.fmean(v) for v in self.steps_ms.values()) or 1.0
        return {
            "mode": self.mode,
            "pods": self.pods,
            "enrolled_logged": len(self.cni_ms),
            "seconds": round(self.seconds, 2),
            "cni_ms": _spread(self.cni_ms),
            "steps_p50_ms": {k: round(statistics.median(v), 3) for k, v in self.steps_ms.items()},
            "steps_share_pct": {
                k: round(100 * statistics.fmean(v) / total, 1) for k, v in self.steps_ms.items()
            },
            "ztunnel_listeners_ms": _spread(self.listeners_ms),
            "cert_fetch_ms": _spread(self.cert_fetch_ms),
            "certs_fetched": len(self.cert_fetch_ms),
            "agent_cpu_ms_per_pod": round(self.agent_cpu_ms_per_pod, 2),
            "ztunnel_cpu_ms_per_pod": round(self.ztunnel_cpu_ms_per_pod, 2),
        }


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(statistics.median(values), 2),
        "p99": round(percentile(values, 0.99), 2),
        "max": round(max(values), 2),
    }


def _deployments(pods: int, burst: int) -> list[dict[str, Any]]:
    """Deployments of ``burst`` pods (the last one the rest), each with its own service account."""
    return [
        b.deployment(
            f"burst-{i}",
            NAMESPACE,
            command=b.SLEEPER,
            node=NODE,
            replicas=min(burst, pods - start),
            service_account=f"sa-{i}",
        )
        for i, start in enumerate(range(0, pods, burst))
    ]


def _service_account(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}}


class _Log:
    """New JSON lines of a component's log since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = path.stat().st_size if path.exists() else 0

    def new_entries(self) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        for line in data.decode(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry


class EnrolLab:
    """The lab the benchmark enrols pods in."""

    def __init__(self, root: Path) -> None:
        self.lab = Lab(root, lab_id=unique_lab_id("e"))

    def up(self, deployments: list[dict[str, Any]]) -> None:
        """The lab with the mesh and the ambient namespace with the ServiceAccounts of
        ``deployments`` (their pods are not started here)."""
        accounts = sorted({d["spec"]["template"]["spec"]["serviceAccountName"] for d in deployments})
        self.lab.up(
            [b.namespace(NAMESPACE, labels=_AMBIENT), *(_service_account(sa) for sa in accounts)],
            mesh=True,
            timeout=120,
        )

    def pod(self, component: str) -> MeshPod:
        """node1's ``ztunnel`` or ``node-agent`` pod."""
        return _COMPONENTS[component](self.lab, NODE)

    def pid(self, component: str) -> int:
        """The PID of ``ztunnel`` or ``node-agent`` of node1 (its pod's container process)."""
        return running_pid(self.pod(component))

    def log(self, component: str) -> _Log:
        """The log of node1's ``ztunnel`` or ``node-agent`` pod, from its end now."""
        return _Log(self.pod(component).log)

    def empty(self, deployments: list[dict[str, Any]], *, timeout: float) -> None:
        """Deletes the Deployments and waits until no pod of the namespace is left."""
        self.lab.delete(deployments)
        deadline = time.monotonic() + timeout
        while self.lab.pods(NAMESPACE):
            if time.monotonic() > deadline:
                raise RuntimeError(f"pods of {NAMESPACE} were not removed within {timeout:g} s")
            time.sleep(0.2)

    def run_mode(self, mode: str, deployments: list[dict[str, Any]], *, timeout: float) -> ModeResult:
        """Enrols the Deployments' pods (one Deployment at a time, or all at once); reads the logs."""
        agent_log, ztunnel_log = self.log("node-agent"), self.log("ztunnel")
        agent_pid, ztunnel_pid = self.pid("node-agent"), self.pid("ztunnel")
        cpu_before = proc_sample(agent_pid).cpu_s, proc_sample(ztunnel_pid).cpu_s
        pods = sum(d["spec"]["replicas"] for d in deployments)
        start = time.monotonic()
        groups = [[d] for d in deployments] if mode == "bursts" else [deployments]
        for done, group in enumerate(groups, 1):
            self.lab.apply(group)
            self.lab.wait_ready(timeout=timeout)
            if mode == "bursts":
                print(f"  {mode}: {done}/{len(groups)} groups ready", flush=True)
        result = ModeResult(mode, pods, time.monotonic() - start)
        time.sleep(1.0)  # the last certificate fetches are asynchronous to the acks
        agent_cpu = proc_sample(agent_pid).cpu_s - cpu_before[0]
        ztunnel_cpu = proc_sample(ztunnel_pid).cpu_s - cpu_before[1]
        result.agent_cpu_ms_per_pod = 1e3 * agent_cpu / pods
        result.ztunnel_cpu_ms_per_pod = 1e3 * ztunnel_cpu / pods
        for entry in agent_log.new_entries():
            if entry.get("event") == "cni.add_enrolled":
                result.cni_ms.append(float(entry["cni_ms"]))
                for step, ms in entry["steps_ms"].items():
                    if step != "total":
                        result.steps_ms.setdefault(step, []).append(float(ms))
        for entry in ztunnel_log.new_entries():
            if entry.get("event") == "proxy.started" and "took_ms" in entry:
                result.listeners_ms.append(float(entry["took_ms"]))
            elif entry.get("event") == "certs.issued" and "took_ms" in entry:
                result.cert_fetch_ms.append(float(entry["took_ms"]))
        return result


def plugin_start_ms(runs: int = 10) -> float:
    """Median wall time of the CNI plugin answering VERSION (interpreter start and its imports)."""
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([_PLUGIN], input=b'{"cniVersion": "1.0.0"}', env=env, capture_output=True, check=True)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@contextmanager
def _fresh_namespaces(prefix: str, count: int) -> Iterator[list[str]]:
    names = [f"{prefix}-{i}" for i in range(count)]
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield [f"/var/run/netns/{n}" for n in names]
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


def _by_fork(netns: str) -> None:
    """The step as the node agent did it before: ``ip`` and ``sysctl`` through ``nsenter``."""
    rule = plan_capture().ip_rule

    def run(*argv: str) -> str:
        done = subprocess.run(
            ["nsenter", f"--net={netns}", *argv], capture_output=True, text=True, check=True
        )
        return done.stdout

    if "lookup 100" not in run("ip", "rule", "show", "pref", str(rule.priority)):
        run("ip", "rule", "add", "fwmark", rule.fwmark, "pref", str(rule.priority), "lookup", str(rule.table))
    run("ip", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(rule.table))
    for sysctl in plan_capture().sysctls:
        if run("sysctl", "-n", sysctl.key).strip() != sysctl.value:
            run("sysctl", "-q", "-w", f"{sysctl.key}={sysctl.value}")


def _by_netlink(netns: str) -> None:
    plan = plan_capture()
    ensure_routing(netns, plan.ip_rule)
    write_sysctls(netns, {s.key: s.value for s in plan.sysctls})


def compare_routing(count: int) -> dict[str, dict[str, float]]:
    """The routes-and-rules step (rule, route, sysctls) on ``count`` fresh namespaces each way,
    interleaved so that both see the same machine; milliseconds per pod."""
    ways: dict[str, Callable[[str], None]] = {"netlink": _by_netlink, "fork": _by_fork}
    times: dict[str, list[float]] = {name: [] for name in ways}
    with _fresh_namespaces(f"benrol{os.getpid()}", 2 * count) as paths:
        for i in range(count):
            for j, (name, way) in enumerate(ways.items()):
                start = time.perf_counter()
                way(paths[2 * i + j])
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: _spread(values) for name, values in times.items()}


def _medians(modes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per mode, the median over the runs of CNI ADD's p50, p99 and max and of the agent's CPU."""
    out = {}
    for mode in ("bursts", "all"):
        runs = [m for m in modes if m["mode"] == mode]
        out[mode] = {
            **{q: round(statistics.median(m["cni_ms"][q] for m in runs), 1) for q in ("p50", "p99", "max")},
            "agent_cpu_ms_per_pod": round(statistics.median(m["agent_cpu_ms_per_pod"] for m in runs), 1),
        }
    return out


def _describe(summary: dict[str, Any]) -> str:
    cni, steps = summary["cni_ms"], summary["steps_p50_ms"]
    return (
        f"{summary['mode']}: {summary['enrolled_logged']}/{summary['pods']} enrolled "
        f"in {summary['seconds']} s; "
        f"CNI ADD at the agent p50 {cni.get('p50')} ms, p99 {cni.get('p99')} ms, max {cni.get('max')} ms; "
        f"step p50s {steps}; agent CPU {summary['agent_cpu_ms_per_pod']} ms/pod, "
        f"ztunnel CPU {summary['ztunnel_cpu_ms_per_pod']} ms/pod"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs both modes and the routing comparison; prints one line per part and a JSON summary."""
    parser = argparse.ArgumentParser(
        prog="bench_enrol", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--pods", type=int, default=110, help="pods enrolled on node1 (default 110)")
    parser.add_argument("--burst", type=int, default=10, help="pods starting together in the bursts mode")
    parser.add_argument("--runs", type=int, default=3, help="runs of both modes (medians reported)")
    parser.add_argument("--smoke", action="store_true", help="20 pods, one run (for the test suite)")
    parser.add_argument("--json", type=Path, help="also write the summary to this file")
    args = parser.parse_args(argv)
    pods, runs = (20, 1) if args.smoke else (args.pods, args.runs)
    deployments = _deployments(pods, args.burst)
    timeout = 60.0 + pods  # a second per pod on top: the all-at-once start of 110 pods takes a while
    summary: dict[str, Any] = {"pods": pods, "burst": args.burst, "runs": runs, "modes": []}
    with tempfile.TemporaryDirectory(prefix="bench-enrol-") as tmp:
        lab = EnrolLab(Path(tmp) / "lab")
        print("bench_enrol: bringing the lab up", flush=True)
        try:
            lab.up(deployments)
            idle = proc_sample(lab.pid("ztunnel"))
            summary["ztunnel_rss_mb_idle"] = round(idle.rss_mb, 1)
            summary["ztunnel_anon_mb_idle"] = round(idle.anon_mb, 1)
            for run in range(1, runs + 1):
                for mode in ("bursts", "all"):
                    print(f"bench_enrol: run {run}/{runs}, {mode} of {pods} pods", flush=True)
                    mode_summary = lab.run_mode(mode, deployments, timeout=timeout).summary()
                    if mode == "all":
                        crowded = proc_sample(lab.pid("ztunnel"))
                        summary["ztunnel_rss_mb_at_pods"] = round(crowded.rss_mb, 1)
                        summary["ztunnel_anon_mb_at_pods"] = round(crowded.anon_mb, 1)
                        per_pod = 1024 * (crowded.rss_mb - idle.rss_mb) / pods
                        summary["ztunnel_rss_kb_per_pod"] = round(per_pod, 1)
                    summary["modes"].append(mode_summary)
                    print(f"  {_describe(mode_summary)}", flush=True)
                    lab.empty(deployments, timeout=timeout)
            summary["medians"] = _medians(summary["modes"])
            print(f"bench_enrol: medians of {runs} runs: {summary['medians']}", flush=True)
        finally:
            lab.lab.down()
    summary["plugin_start_ms"] = round(plugin_start_ms(), 2)
    print(f"bench_enrol: the plugin process starts in {summary['plugin_start_ms']} ms (adds to CNI ADD)")
    print(f"bench_enrol: routes, rules and sysctls on {pods} fresh namespaces each way", flush=True)
    summary["routing_ms_per_pod"] = compare_routing(pods)
    print(f"  {summary['routing_ms_per_pod']}")
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
