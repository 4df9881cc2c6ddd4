"""The ztunnel benchmark's lab: two nodes, an enrolled and a plain namespace, and pods to scale.

- namespace ``zt`` (``istio.io/dataplane-mode=ambient``): ``client`` (``sleep``) on node1,
  ``server`` on node2, and one idle ``fill-<node>`` Deployment per node, so that each node starts
  with 2 enrolled pods and can be scaled to N with :meth:`BenchLab.scale`;
- namespace ``plain`` (not enrolled): the same ``client`` and ``server`` pair (the direct path,
  and the pods the two Envoys run in).

A ``server`` pod has two containers: the echo/bulk server of :mod:`perf._ztunnel_apps` (port
chosen by the kernel, written to a file of the benchmark's work directory) and ``redis-server``
on 6379.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.lab import builders as b
from meshctl.lab.api import Lab
from meshctl.lab.meshview import MeshPod, ztunnel
from meshctl.lab.settings import DEFAULT_CERT_TTL
from meshctl.nethttp import http_get

__all__ = [
    "ENROLLED",
    "NODES",
    "PLAIN",
    "REDIS_PORT",
    "BenchLab",
    "children",
    "Endpoints",
    "ProcSample",
    "count_log_events",
    "count_mtls_opened",
    "metric_samples",
    "proc_sample",
    "running_pid",
]

ENROLLED, PLAIN = "zt", "plain"
NODES = ("node1", "node2")
REDIS_PORT = 6379
METRICS_PORT = 15020
_REPO = Path(__file__).resolve().parent.parent
_AMBIENT = {"istio.io/dataplane-mode": "ambient"}


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One process from /proc: CPU seconds so far (utime+stime); VmRSS, VmHWM and RssAnon in MB.

    RssAnon is the private part of VmRSS; the rest is file-backed (mostly shared libraries, whose
    pages the two ztunnels share).
    """

    cpu_s: float
    rss_mb: float
    hwm_mb: float
    anon_mb: float


def children(pid: int) -> list[int]:
    """The PIDs of ``pid``'s child processes (a ztunnel's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def running_pid(pod: MeshPod) -> int:
    """The PID of the mesh pod's container process; raises when it is not running."""
    pid = pod.pid()
    if pid is None:
        raise RuntimeError(f"{pod.ref} on {pod.node} is not running (restarting?); see {pod.log}")
    return pid


def proc_sample(pid: int) -> ProcSample:
    """Reads /proc/PID/stat and /proc/PID/status."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    mem = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            mem[key] = int(value.split()[0]) / 1024
    return ProcSample(
        cpu_s=cpu, rss_mb=mem.get("VmRSS", 0.0), hwm_mb=mem.get("VmHWM", 0.0), anon_mb=mem.get("RssAnon", 0.0)
    )


@dataclass(frozen=True, slots=True)
class Endpoints:
    """A client pod and where its server listens."""

    client_netns: str
    server_netns: str
    server_ip: str
    echo_port: int


def _server(namespace: str, ready_file: Path) -> dict[str, Any]:
    echo = [sys.executable, "-m", "perf._ztunnel_apps", "serve", "--ready-file", str(ready_file)]
    obj = b.deployment("server", namespace, command=echo, node=NODES[1])
    containers = obj["spec"]["template"]["spec"]["containers"]
    containers[0]["name"] = "echo"
    containers[0]["env"] = [{"name": "PYTHONPATH", "value": str(_REPO)}]
    redis = ["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--protected-mode", "no",
             "--save", "", "--appendonly", "no"]  # fmt: skip
    containers.append({"name": "redis", "command": redis, "ports": [{"containerPort": REDIS_PORT}]})
    return obj


def _fill(node: str, replicas: int) -> dict[str, Any]:
    return b.deployment(f"fill-{node}", ENROLLED, command=b.SLEEPER, node=node, replicas=replicas)


def count_log_events(text: str) -> dict[str, int]:
    """Counts of ``proxy.started``/``proxy.stopped``, of each warning/error event and of non-JSON lines
    (the lab supervisor's own ``[lab ...]`` lines, such as the start line, are not ztunnel's)."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("[lab "):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            counts["(non-JSON lines, e.g. tracebacks)"] += 1
            continue
        event = str(entry.get("event", "?")) if isinstance(entry, dict) else "?"
        level = entry.get("level", "") if isinstance(entry, dict) else ""
        if event in ("proxy.started", "proxy.stopped") or level in ("warning", "error", "critical"):
            counts[event if event.startswith("proxy.") else f"{level}: {event}"] += 1
    return dict(counts)


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of ``name`` in a text exposition: (labels, value) for each label set."""
    out = []
    for line in text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")):
            head, value = line.rsplit(" ", 1)
            out.append((dict(_LABEL.findall(head[len(name) :])), float(value)))
    return out


def count_mtls_opened(metrics: str) -> int:
    """The sum of ``istio_tcp_connections_opened_total`` with reporter=destination and mutual_tls."""
    return int(
        sum(
            value
            for labels, value in metric_samples(metrics, "istio_tcp_connections_opened_total")
            if labels.get("reporter") == "destination"
            and labels.get("connection_security_policy") == "mutual_tls"
        )
    )


class BenchLab:
    """The lab the benchmark measures in (bring up with :meth:`up`, always :meth:`down`)."""

    def __init__(self, state_dir: Path, *, lab_id: str, work: Path) -> None:
        self.lab = Lab(state_dir, lab_id=lab_id)
        self.work = work

    def objects(self) -> list[dict[str, Any]]:
        """Every object of the benchmark cluster (2 enrolled pods per node)."""
        objects = [b.namespace(ENROLLED, labels=_AMBIENT), b.namespace(PLAIN)]
        for ns in (ENROLLED, PLAIN):
            objects += [
                b.deployment("client", ns, command=b.SLEEPER, node=NODES[0]),
                _server(ns, self.work / f"{ns}-echo.port"),
            ]
        return objects + [_fill(node, 1) for node in NODES]

    def up(
        self, *, timeout: float = 90.0, cert_ttl: int = DEFAULT_CERT_TTL, ztunnel_workers: int = 1
    ) -> None:
        """Brings the lab and the mesh up and waits for every pod and both echo servers."""
        self.lab.up(
            self.objects(), mesh=True, timeout=timeout, cert_ttl=cert_ttl, ztunnel_workers=ztunnel_workers
        )
        for ns in (ENROLLED, PLAIN):
            self._echo_port(ns, timeout=20.0)

    def down(self) -> None:
        """Tears everything down (idempotent)."""
        self.lab.down()

    def _echo_port(self, namespace: str, *, timeout: float) -> int:
        path = self.work / f"{namespace}-echo.port"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the echo server in {namespace}/server did not start; see its pod log")
            time.sleep(0.05)
        return int(path.read_text())

    def endpoints(self, namespace: str) -> Endpoints:
        """The client and server pods of ``namespace``."""
        return Endpoints(
            client_netns=self.lab.pod_netns(f"{namespace}/client"),
            server_netns=self.lab.pod_netns(f"{namespace}/server"),
            server_ip=self.lab.pod_ip(namespace, "server"),
            echo_port=self._echo_port(namespace, timeout=5.0),
        )

    def ztunnel_pids(self) -> list[int]:
        """The PIDs of the ztunnels of both nodes: each node's ztunnel pod's container process (raises
        when one is not running)."""
        return [running_pid(ztunnel(self.lab, node)) for node in NODES]

    def enrolled_per_node(self) -> dict[str, int]:
        """Ready pods of the enrolled namespace per node."""
        counts = dict.fromkeys(NODES, 0)
        for pod in self.lab.pods(ENROLLED):
            conditions = (pod.get("status") or {}).get("conditions") or []
            node = pod["spec"].get("nodeName", "")
            if node in counts and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
            ):
                counts[node] += 1
        return counts

    def metrics_text(self, node: str) -> str:
        """What ``node``'s ztunnel serves on /metrics now (its pod IP, from inside its pod)."""
        pod = ztunnel(self.lab, node)
        status, body = http_get(pod.ip, METRICS_PORT, "/metrics", netns=pod.netns, timeout=5)
        if status != 200:
            raise RuntimeError(f"the ztunnel of {node} ({pod.ref}) answered {status} on /metrics")
        return body.decode()

    def mtls_connections_in(self, node: str = NODES[1]) -> int:
        """Connections ``node``'s ztunnel accepted over HBONE mTLS (its ``reporter=destination`` metric)."""
        return count_mtls_opened(self.metrics_text(node))

    def ztunnel_log_events(self) -> dict[str, dict[str, int]]:
        """Per node: counts of warning/error events, proxies started/stopped, and non-JSON lines in
        the log of its ztunnel pod."""
        out = {}
        for node in NODES:
            path = ztunnel(self.lab, node).log
            out[node] = count_log_events(path.read_text(errors="replace") if path.exists() else "")
        return out

    def scale(self, per_node: int, *, timeout: float) -> float:
        """Scales the fillers so that each node has ``per_node`` enrolled pods; returns the seconds."""
        start = time.monotonic()
        self.lab.apply([_fill(node, per_node - 1) for node in NODES])
        self.lab.wait_ready(timeout=timeout)
        return time.monotonic() - start

    def run_in(self, netns: str, argv: list[str], *, timeout: float) -> tuple[str, float]:
        """Runs ``argv`` in a pod namespace; returns (stdout, the command's CPU seconds)."""
        env = {**self.lab.exec_env(), "PYTHONPATH": str(_REPO)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(
            ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
            timeout=timeout, env=env, cwd=_REPO, check=False,
        )  # fmt: skip
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed in {netns}: {result.stderr.strip()[-1500:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return result.stdout, cpu
