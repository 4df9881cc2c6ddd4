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
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from istiod_lite.push.debounce import DebounceSettings
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
from mesh.rt.xds import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, XdsClient, XdsNode

__all__ = ["Scale", "main"]


@dataclass(frozen=True, slots=True)
class Scale:
    """How big a run is."""

    pods: int = 10_000
    services: int = 1_000
    policies: int = 1_000
    subscribers: int = 100
    namespaces: int = 100
    nodes: int = 10


QUICK = Scale(pods=1_000, services=100, policies=100, subscribers=10, namespaces=10, nodes=4)
_TYPES = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)
_DOMAIN = "istio-system.svc.cluster.local"
_SERVER_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 << 20)]


def _pod(i: int, scale: Scale, *, generation: int = 0) -> dict[str, Any]:
    ns, app = f"ns-{i % scale.namespaces}", f"svc-{i % scale.services}"
    ip = f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pod-{i}",
            "namespace": ns,
            "uid": f"uid-pod-{i}",
            "labels": {"app": app, "version": f"v{generation}"},
            "annotations": {"ambient.istio.io/redirection": "enabled"},
        },
        "spec": {
            "nodeName": f"node-{i % scale.nodes}",
            "serviceAccountName": app,
            "containers": [{"name": "c"}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _service(k: int, scale: Scale) -> list[dict[str, Any]]:
    ns, name = f"ns-{k % scale.namespaces}", f"svc-{k}"
    members = [
        i for i in range(k, scale.pods, scale.services) if i % scale.namespaces == k % scale.namespaces
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-svc-{k}"},
        "spec": {
            "clusterIP": f"10.96.{k // 256}.{k % 256}",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }
    endpoints = [
        {
            "addresses": [_pod(i, scale)["status"]["podIP"]],
            "conditions": {"ready": True},
            "nodeName": f"node-{i % scale.nodes}",
            "targetRef": {"kind": "Pod", "namespace": ns, "name": f"pod-{i}"},
        }
        for i in members
    ]
    meta = {"name": f"{name}-x", "namespace": ns, "labels": {"kubernetes.io/service-name": name}}
    slice_: dict[str, Any] = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta}
    slice_.update(addressType="IPv4", endpoints=endpoints, ports=[{"name": "http", "port": 8080}])
    return [service, slice_]


def _policy(j: int, scale: Scale) -> dict[str, Any]:
    ns = f"ns-{j % scale.namespaces}"
    spec: dict[str, Any] = {
        "action": "ALLOW" if j % 5 else "DENY",
        "rules": [
            {
                "from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/svc-{j % scale.services}"]}}],
                "to": [{"operation": {"ports": ["8080", "9090"]}}],
            }
        ],
    }
    if j % 2:
        spec["selector"] = {"matchLabels": {"app": f"svc-{j % scale.services}"}}
    meta = {"name": f"policy-{j}", "namespace": ns, "uid": f"uid-ap-{j}"}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": spec,
    }


def cluster_objects(scale: Scale) -> list[dict[str, Any]]:
    """Namespaces, pods, services with their EndpointSlices, and AuthorizationPolicies."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{n}"}}
        for n in range(scale.namespaces)
    ]
    objects.extend(_pod(i, scale) for i in range(scale.pods))
    for k in range(scale.services):
        objects.extend(_service(k, scale))
    objects.extend(_policy(j, scale) for j in range(scale.policies))
    return objects


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


def _spawn_agents(port: int, scale: Scale) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "perf.bench_xds", "--agents", f"127.0.0.1:{port}", str(scale.subscribers)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def _keep(name: str, packed: Any) -> object:
    del name
    return packed


async def _run_agents(target: str, count: int) -> None:
    """The subscriber process: ``count`` clients on one loop until stdin closes."""
    clients = [
        XdsClient(
            target,
            node=XdsNode(
                id=f"ztunnel~10.1.{i // 256}.{i % 256}~ztunnel-{i}.istio-system~{_DOMAIN}",
                metadata={"NODE_NAME": f"node-{i}"},
            ),
            converters={t: _keep for t in _TYPES},
            on_state=lambda state: None,
            rng=random.Random(i),
        )
        for i in range(count)
    ]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _fill(scale: Scale) -> tuple[Informers, Any]:
    informers = Informers()
    sink = informers.sink("bench")
    for raw in cluster_objects(scale):
        sink.upsert(parse_object(raw))
    sink.mark_synced()
    return informers, sink


async def _full_push(plane: PushPlane, scale: Scale) -> dict[str, float]:
    hub = plane.hub

    def subscribed() -> bool:
        conns = hub.connections()
        return len(conns) == scale.subscribers and all(len(c.state.status()) == len(_TYPES) for c in conns)

    await _until(subscribed, within=60, what="all subscribers connecting")
    started = time.perf_counter()
    snapshot = plane.pusher.rebuild()
    built = time.perf_counter()
    assert snapshot is not None, "the first build failed; see the log"
    await _until(lambda: _acked(hub, snapshot.version, scale.subscribers), within=120, what="all ACKs")
    done = time.perf_counter()
    return {"full_push_s": done - started, "first_build_s": built - started}


def _address_acked(hub: Hub, version: str) -> bool:
    for conn in hub.connections():
        status = next(s for s in conn.state.status() if s.type_url == ADDRESS_TYPE_URL)
        if status.acked is None or status.acked.version != version:
            return False
    return True


async def _pod_change(plane: PushPlane, sink: Any, scale: Scale, generation: int) -> dict[str, float]:
    changed = parse_object(_pod(7 * generation, scale, generation=generation))
    before = plane.hub.current.counter
    started, wall = time.perf_counter(), time.time()
    sink.upsert(changed)
    await _until(lambda: plane.hub.current.counter > before, within=30, what="the rebuild")
    snapshot = plane.hub.current
    await _until(lambda: _address_acked(plane.hub, snapshot.version), within=30, what="the change ACKs")
    done, done_wall = time.perf_counter(), time.time()
    return {"change_to_all_s": done - started, "snapshot_to_all_s": done_wall - snapshot.created_at,
            "debounce_and_build_s": snapshot.created_at - wall}  # fmt: skip


async def _serve(scale: Scale, *, changes: int = 5) -> dict[str, float]:
    """One run: server in this process, subscribers in a child process."""
    informers, sink = _fill(scale)
    started = time.perf_counter()
    translated = build_resources(informers.view())
    result = {"translate_s": time.perf_counter() - started}
    result["addresses"], result["authorizations"] = len(translated.addresses), len(translated.authorizations)
    plane = PushPlane(
        translated_build(informers), clock=SystemClock(), registry=build_registry(component="istiod_lite"),
        settings=DebounceSettings(),
    )  # fmt: skip
    informers.on_change(plane.mark_dirty)
    server = grpc.aio.server(handlers=[plane.rpc_handler()], options=_SERVER_OPTIONS)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    agents = _spawn_agents(port, scale)
    try:
        result.update(await _full_push(plane, scale))
        runner = asyncio.create_task(plane.run(build_first=False))
        samples = [await _pod_change(plane, sink, scale, g) for g in range(1, changes + 1)]
        runner.cancel()
        for key in samples[0]:
            result[key] = statistics.median(s[key] for s in samples)
        result["rss_mb"], result["peak_rss_mb"] = _rss_mb()
    finally:
        assert agents.stdin is not None
        agents.stdin.close()
        agents.wait(timeout=30)
        await server.stop(0)
    return result


def _one_run(quick: bool) -> dict[str, float]:
    argv = [sys.executable, "-m", "perf.bench_xds", "--serve", *(["--quick"] if quick else [])]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600).stdout
    parsed: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return parsed


def _report(runs: list[dict[str, float]], scale: Scale) -> dict[str, Any]:
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return {
        "scale": asdict(scale),
        "runs": len(runs),
        "median": {k: round(v, 4) for k, v in median.items()},
        "targets": {
            "full_push_s < 2": median["full_push_s"] < 2,
            "change_to_all_s < 0.2": median["change_to_all_s"] < 0.2,
            "rss_mb < 300": median["rss_mb"] < 300,
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark (or one of its processes) and prints JSON."""
    parser = argparse.ArgumentParser(prog="python -m perf.bench_xds")
    parser.add_argument("--quick", action="store_true", help="1,000 workloads, 10 subscribers, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--agents", nargs=2, metavar=("TARGET", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging(level="error")
    scale = QUICK if args.quick else Scale()
    if args.agents:
        run(_run_agents(args.agents[0], int(args.agents[1])))
    elif args.serve:
        print(json.dumps(run(_serve(scale))))
    else:
        runs = [_one_run(args.quick) for _ in range(1 if args.quick else args.runs)]
        print(json.dumps(_report(runs, scale), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
