"""The waypoint's L7 work against Envoy's, with the very same Envoy v3 routes and clusters.

    .venv/bin/python -m perf.bench_waypoint [--seconds 5] [--repeats 3] [--connections 16]

Paths (each proxy one process, ``--concurrency 1`` for Envoy; all on this machine's loopback):

- **direct**: load generator -> backend (an Envoy answering 200 with a 100-byte body from a
  ``direct_response``, so the backend never limits either proxy);
- **ours**: load generator -> ``waypoint --local-config FILE --http-listen`` -> backend;
- **envoy**: load generator -> Envoy with the same RouteConfiguration and Clusters (one HCM, codec
  AUTO) -> backend.

The routes are a waypoint's usual work: a header match, a 90/10 weighted split over two clusters,
a retry policy and a timeout; the clusters use the backend over HTTP/1.1. Rows: HTTP/1.1
keep-alive at fixed concurrency (``wrk``, latency percentiles); HTTP/2 prior knowledge (``h2load``,
``--connections`` clients with 10 streams each); HTTP/1.1 at a fixed rate (``h2load --h1 --rps``);
HTTP/1.1 keep-alive again with an ALLOW AuthorizationPolicy of 100 rules on the virtual host, as
Istio renders one (100 RBAC policies; the request matches only the last, so every rule is tried),
judged by Envoy's RBAC filter and by ours (a second pair of proxies loads that configuration); and
with every request traced (a span each, exported with OTLP/HTTP to a collector that answers 200:
Envoy's OpenTelemetry tracer with its HTTP exporter, ours with ``--tracing-otlp``; a third pair).

**HBONE in** (rows ``hbone-*``: HTTP/1.1 keep-alive, h2c and HTTP/1.1 at a fixed rate, the same
loads): requests reach the waypoint as ztunnel sends them, one HTTP/2 CONNECT stream per client
connection (authority ``svc...:80``) over mutual TLS (TLS 1.3, ALPN h2, SPIFFE certificates from
a test CA: the client ``spiffe://cluster.local/ns/bench/sa/client``, the waypoint
``.../ns/bench/sa/waypoint``). The HBONE client is the same for every path, so the difference is
the waypoint: an Envoy (``mesh.testing.envoy_hbone.hbone_client_config``, the source ztunnel's
part) that carries each TCP connection of the load generator as a CONNECT stream, one per path.
Behind it:

- **direct**: an Envoy that only terminates HBONE and relays each stream's bytes to the backend
  (what the destination's ztunnel does when no waypoint is in the path);
- **ours**: ``waypoint --local-config FILE --hbone-listen ADDR --cert-chain --key --root-cert``;
- **envoy**: Envoy configured as Istio's waypoint: an mTLS listener (client certificate of the
  trust domain) whose HCM accepts CONNECT and hands each stream to an internal listener
  (``envoy.bootstrap.internal_listener``) running the same RouteConfiguration and Clusters as the
  plain rows.

So "added" in these rows is what the waypoint costs over an L4 HBONE terminator. Upstreams stay
plain HTTP to the backend for both waypoints (HBONE out is ztunnel's and ``perf.bench_ztunnel``'s).

Per row and path: requests/s, p50/p99 (wrk) or mean latency (h2load), added latency over direct,
the proxy's CPU per request (utime+stime from /proc) and its peak RSS (VmHWM). Paths take turns in
each repeat; the report is the median of the repeats. Only the plain rows omit HBONE, so that
their comparison is the L7 work alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mesh.rt.tls import TlsMaterial
from mesh.testing.envoy_hbone import (
    EnvoyProcess,
    hbone_client_config,
    hbone_connect_listener,
    hbone_server_config,
    proc_stats,
    start_envoy,
)
from mesh.testing.hbone import material_for
from mesh.testing.pki import TestPki, write_pem_files
from mesh.testing.ports import free_port
from mesh.testing.processes import stop_process

__all__ = ["Result", "main", "run_benchmark"]

_REPO = Path(__file__).resolve().parent.parent
HOST = "svc.bench.svc.cluster.local"
ROWS = (
    "h1-keepalive", "h2c", "h1-fixed-rate", "h1-authz-100", "h1-tracing-100",
    "hbone-h1-keepalive", "hbone-h2c", "hbone-h1-fixed-rate",
)  # fmt: skip
_LOADS = {
    "h1-keepalive": "wrk", "h2c": "h2c", "h1-fixed-rate": "rate", "h1-authz-100": "wrk",
    "h1-tracing-100": "wrk", "hbone-h1-keepalive": "wrk", "hbone-h2c": "h2c", "hbone-h1-fixed-rate": "rate",
}  # fmt: skip
"""Each row's load: wrk (HTTP/1.1 keep-alive), h2load with h2c, or h2load with HTTP/1.1 at a rate."""
AUTHZ_RULES = 100
WAYPOINT_ACCOUNT = ("bench", "waypoint")
CLIENT_ACCOUNT = ("bench", "client")
TUNNEL_AUTHORITY = f"{HOST}:80"
_INTERNAL = "main_internal"
_INTERNAL_LISTENER = "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"


def routes_and_clusters(backend: int) -> list[dict[str, Any]]:
    """The Envoy v3 resources both proxies load."""

    def cluster(name: str) -> dict[str, Any]:
        endpoint = {
            "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": backend}}}
        }
        return {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
        }

    retry = {"retry_on": "connect-failure,refused-stream,unavailable", "num_retries": 2}
    routes = {
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": "waypoint",
        "virtual_hosts": [
            {
                "name": "svc",
                "domains": [HOST, f"{HOST}:80", "*"],
                "routes": [
                    {
                        "name": "canary-header",
                        "match": {
                            "prefix": "/",
                            "headers": [{"name": "x-canary", "string_match": {"exact": "true"}}],
                        },
                        "route": {"cluster": "v2", "timeout": "10s"},
                    },
                    {
                        "name": "split",
                        "match": {"prefix": "/"},
                        "route": {
                            "weighted_clusters": {
                                "clusters": [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}]
                            },
                            "timeout": "10s",
                            "retry_policy": retry,
                        },
                    },
                ],
            }
        ],
    }
    return [routes, cluster("v1"), cluster("v2")]


_RBAC_ALLOW = "envoy.filters.http.rbac.allow"
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


def with_authorization(resources: list[dict[str, Any]], rules: int = AUTHZ_RULES) -> list[dict[str, Any]]:
    """The resources with an ALLOW policy of ``rules`` rules on the virtual host, rendered as Istio
    renders an AuthorizationPolicy (one RBAC policy per rule): each of the first ``rules - 1`` wants
    a path, a method and a tenant header the load does not send; the last allows GET on ``/*``."""

    def header(name: str, exact: str) -> dict[str, Any]:
        return {"header": {"name": name, "string_match": {"exact": exact}}}

    def policy(permission: list[dict[str, Any]]) -> dict[str, Any]:
        return {"permissions": [{"and_rules": {"rules": permission}}], "principals": [{"any": True}]}

    policies = {
        f"ns[bench]-policy[api]-rule[{i}]": policy([
            {"url_path": {"path": {"exact": f"/api/v{i}/items"}}},
            header(":method", "GET"),
            header("x-tenant", f"tenant-{i}"),
        ])
        for i in range(rules - 1)
    } | {f"ns[bench]-policy[api]-rule[{rules - 1}]": policy([
        {"url_path": {"path": {"prefix": "/"}}}, header(":method", "GET")
    ])}  # fmt: skip
    routes = json.loads(json.dumps(resources[0]))
    routes["virtual_hosts"][0]["typed_per_filter_config"] = {
        _RBAC_ALLOW: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
            "rbac": {"rules": {"action": "ALLOW", "policies": policies}},
        }
    }
    return [routes, *resources[1:]]


_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _listener(name: str, http_filters: list[dict[str, Any]], route_config: dict[str, Any]) -> dict[str, Any]:
    hcm = {
        "@type": _HCM,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": http_filters,
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


_ROUTER = [
    {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
]
_ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}


def backend_config() -> dict[str, Any]:
    """An Envoy that answers every request 200 with 100 bytes (a backend that is never the limit)."""
    route = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "b" * 100}},
                    }
                ],
            }
        ]
    }
    return {"admin": _ADMIN, "static_resources": {"listeners": [_listener("backend", _ROUTER, route)]}}


def envoy_waypoint_config(resources: list[dict[str, Any]], *, collector: int = 0) -> dict[str, Any]:
    """Envoy loading the same RouteConfiguration (inline) and Clusters (static); an RBAC filter with
    no rules of its own sits before the router when a virtual host configures it, as in Istio's
    waypoint; with a ``collector`` port, every request is traced to it (OTLP/HTTP)."""
    routes = {k: v for k, v in resources[0].items() if k != "@type"}
    clusters = [{k: v for k, v in c.items() if k != "@type"} for c in resources[1:]]
    rbac = any(_RBAC_ALLOW in vh.get("typed_per_filter_config", {}) for vh in routes["virtual_hosts"])
    filters = [{"name": _RBAC_ALLOW, "typed_config": {"@type": _RBAC}}] if rbac else []
    listener = _listener("waypoint", filters + _ROUTER, routes)
    if collector:
        clusters.append(_collector_cluster(collector))
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["tracing"] = {
            "random_sampling": {"value": 100},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "http_service": {
                        "http_uri": {
                            "uri": f"http://127.0.0.1:{collector}/v1/traces",
                            "cluster": "collector",
                            "timeout": "1s",
                        }
                    },
                    "service_name": "waypoint",
                },
            },
        }
    return {"admin": _ADMIN, "static_resources": {"listeners": [listener], "clusters": clusters}}


def envoy_hbone_waypoint_config(resources: list[dict[str, Any]], material: TlsMaterial) -> dict[str, Any]:
    """Envoy as Istio's waypoint: HBONE in on an mTLS listener (TLS 1.3, ALPN h2, a client
    certificate of ``material``'s trust domain) whose HCM accepts CONNECT and sends each stream to
    the internal listener ``main_internal``, which runs :func:`envoy_waypoint_config`'s HCM (the
    same routes and clusters) on the stream's bytes."""
    config = envoy_waypoint_config(resources)
    (plain,) = config["static_resources"]["listeners"]
    inner = {"name": _INTERNAL, "internal_listener": {}, "filter_chains": plain["filter_chains"]}
    outer = hbone_connect_listener(
        material=material, cluster=_INTERNAL, client_trust_domain=material.identity.trust_domain
    )
    internal = {"envoy_internal_address": {"server_listener_name": _INTERNAL}}
    to_inner = {
        "name": _INTERNAL,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": _INTERNAL,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": internal}}]}],
        },
    }
    config["bootstrap_extensions"] = [
        {
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": _INTERNAL_LISTENER},
        }
    ]
    config["static_resources"] = {
        "listeners": [outer, inner],
        "clusters": [*config["static_resources"]["clusters"], to_inner],
    }
    return config


def _collector_cluster(port: int) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    return {
        "name": "collector",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "collector", "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _requests_served(envoy: EnvoyProcess) -> int:
    """How many requests a direct-response Envoy (the backend config) has answered."""
    with urllib.request.urlopen(
        f"http://127.0.0.1:{envoy.admin[1]}/stats?filter=^http.backend.downstream_rq_completed$", timeout=5
    ) as answer:
        text = answer.read().decode()
    found = re.search(r"downstream_rq_completed: (\d+)", text)
    return int(found.group(1)) if found else 0


@dataclass(frozen=True, slots=True)
class Result:
    """One row, one path, one repeat."""

    row: str
    path: str
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    proxy_cpu_us_per_req: float | None
    proxy_rss_mb: float | None


def _wrk(port: int, seconds: float, connections: int) -> tuple[float, float, float, float, int]:
    """(req/s, p50 ms, p99 ms, mean ms, requests) of an HTTP/1.1 keep-alive run."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-H",
            f"Host: {HOST}",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout

    def millis(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if refused:
        # A proxy answering 403 or 503 would look fast; the run counts only when every answer is 2xx.
        raise RuntimeError(f"{refused.group(1)} answers through port {port} were not 2xx:\n{out[-800:]}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    mean = re.search(r"Latency\s+(\S+)", out)
    requests = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (latency and mean and requests and rps):
        raise RuntimeError(f"wrk printed no result:\n{out[-800:]}")
    return (
        float(rps.group(1)),
        millis(latency["50"]),
        millis(latency["99"]),
        millis(mean.group(1)),
        int(requests.group(1)),
    )


def _h2load(port: int, seconds: float, connections: int, *, h1_rps: int = 0) -> tuple[float, float, int]:
    """(req/s, mean ms, requests) of an h2c run (or an HTTP/1.1 fixed-rate run with ``h1_rps``)."""
    argv = [
        "h2load",
        "-D",
        f"{seconds:g}",
        "-c",
        str(connections),
        "-H",
        f":authority: {HOST}",  # with --h1, "Host:" would be sent twice, a 400 by RFC 9112
        f"http://127.0.0.1:{port}/",
    ]
    argv += ["--h1", "--rps", str(max(1, h1_rps // connections))] if h1_rps else ["-m", "10"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if not (done and rps and mean):
        raise RuntimeError(f"h2load printed no result:\n{out[-800:]}")
    ok = re.search(r"status codes: (\d+) 2xx", out)
    if not ok or int(ok.group(1)) != int(done.group(1)):
        raise RuntimeError(f"answers through port {port} were not all 2xx:\n{out[-800:]}")
    value, unit = re.match(r"([\d.]+)(us|ms|s)", mean.group(1)).groups()  # type: ignore[union-attr]
    return float(rps.group(1)), float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], int(done.group(2))


@contextmanager
def _ours(
    workdir: Path, resources: list[dict[str, Any]], name: str, *extra: str
) -> Iterator[tuple[int, int]]:
    """Our waypoint on loopback, logging warnings only (no access log, as the Envoy here): (pid, port)."""
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"resources": resources}, sort_keys=False))
    port = free_port()
    log = workdir / f"{name}.log"
    argv = [
        sys.executable,
        "-m",
        "waypoint.app",
        "--local-config",
        str(config),
        "--http-listen",
        f"127.0.0.1:{port}",
        "--admin",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--readiness",
        "127.0.0.1:0",
        "--log-level",
        "warning",
        *extra,
    ]
    with log.open("w") as sink:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=sink, cwd=_REPO)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"the waypoint exited:\n{log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the waypoint did not listen within 30 s")
            time.sleep(0.05)
        yield proc.pid, port
    finally:
        stop_process(proc)


Paths = dict[str, tuple[int | None, int]]
"""Per path: the measured proxy's PID (None for direct) and the port the load connects to."""


def _hbone_paths(stack: ExitStack, workdir: Path, resources: list[dict[str, Any]], backend: int) -> Paths:
    """The HBONE-in paths (see the module docstring): an HBONE terminator, our waypoint and Envoy's,
    each behind its own Envoy HBONE client, the port the load connects to."""
    pki = TestPki.create()
    leaf = pki.issue_leaf(pki.workload_uri(*WAYPOINT_ACCOUNT))
    waypoint = material_for(pki, *WAYPOINT_ACCOUNT, leaf=leaf)
    files = write_pem_files(workdir, leaf, roots=pki.roots, name="waypoint")
    terminator = start_envoy(
        hbone_server_config(material=waypoint, upstream=("127.0.0.1", backend)),
        workdir,
        name="hbone-terminator",
    )
    stack.callback(terminator.stop)
    envoy = start_envoy(
        envoy_hbone_waypoint_config(resources, waypoint), workdir, name="envoy-waypoint-hbone"
    )
    stack.callback(envoy.stop)
    hbone_port = free_port()
    ours_pid, _ = stack.enter_context(
        _ours(
            workdir, resources, "waypoint-hbone", "--hbone-listen", f"127.0.0.1:{hbone_port}",
            "--cert-chain", str(files.cert_chain), "--key", str(files.key), "--root-cert", str(files.roots),
        )
    )  # fmt: skip
    client = material_for(pki, *CLIENT_ACCOUNT)
    servers = {
        "direct": (None, terminator.listener),
        "ours": (ours_pid, ("127.0.0.1", hbone_port)),
        "envoy": (envoy.pid, envoy.listener),
    }
    paths: Paths = {}
    for path, (pid, server) in servers.items():
        config = hbone_client_config(
            material=client,
            server=server,
            expected=frozenset({waypoint.identity}),
            authority=TUNNEL_AUTHORITY,
        )
        tunnel = start_envoy(config, workdir, name=f"hbone-client-{path}")
        stack.callback(tunnel.stop)
        paths[path] = (pid, tunnel.listener[1])
    return paths


def run_benchmark(
    *,
    seconds: float,
    repeats: int,
    connections: int,
    rate: int,
    rows: Sequence[str] = ROWS,
    progress: Any = print,
) -> list[Result]:
    """Each of ``rows`` for every path, ``repeats`` times, paths taking turns."""
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-waypoint-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        backend = start_envoy(backend_config(), workdir, name="backend")
        stack.callback(backend.stop)
        resources = routes_and_clusters(backend.listener[1])
        envoy = start_envoy(envoy_waypoint_config(resources), workdir, name="envoy-waypoint")
        stack.callback(envoy.stop)
        ours_pid, ours_port = stack.enter_context(_ours(workdir, resources, "waypoint"))
        guarded = with_authorization(resources)
        envoy_authz = start_envoy(envoy_waypoint_config(guarded), workdir, name="envoy-waypoint-authz")
        stack.callback(envoy_authz.stop)
        authz_pid, authz_port = stack.enter_context(_ours(workdir, guarded, "waypoint-authz"))
        plain: Paths = {
            "direct": (None, backend.listener[1]),
            "ours": (ours_pid, ours_port),
            "envoy": (envoy.pid, envoy.listener[1]),
        }
        authz = plain | {"ours": (authz_pid, authz_port), "envoy": (envoy_authz.pid, envoy_authz.listener[1])}
        # One collector per tracer, so each one's exports can be seen to arrive.
        collectors = {
            path: start_envoy(backend_config(), workdir, name=f"collector-{path}") for path in plain
        }
        for collector in collectors.values():
            stack.callback(collector.stop)
        envoy_traced = start_envoy(
            envoy_waypoint_config(resources, collector=collectors["envoy"].listener[1]),
            workdir,
            name="envoy-waypoint-traced",
        )
        stack.callback(envoy_traced.stop)
        traced_pid, traced_port = stack.enter_context(
            _ours(
                workdir,
                resources,
                "waypoint-traced",
                f"--tracing-otlp=http://127.0.0.1:{collectors['ours'].listener[1]}/v1/traces",
                "--tracing-sampling=100",
            )
        )
        traced = plain | {
            "ours": (traced_pid, traced_port),
            "envoy": (envoy_traced.pid, envoy_traced.listener[1]),
        }
        variants = {"h1-authz-100": authz, "h1-tracing-100": traced}
        if any(row.startswith("hbone-") for row in rows):
            hbone = _hbone_paths(stack, workdir, resources, backend.listener[1])
            variants |= {row: hbone for row in rows if row.startswith("hbone-")}
        for repeat in range(repeats):
            for row in rows:
                paths = variants.get(row, plain)
                load = _LOADS[row]
                for path, (pid, port) in paths.items():
                    progress(f"  repeat {repeat + 1}/{repeats}: {row} via {path}")
                    cpu_before = proc_stats(pid)[0] if pid else 0.0
                    if load == "wrk":
                        rps, p50, p99, mean, requests = _wrk(port, seconds, connections)
                    else:
                        rps, mean, requests = _h2load(
                            port,
                            seconds,
                            connections if load == "h2c" else 4,
                            h1_rps=rate if load == "rate" else 0,
                        )
                        p50 = p99 = float("nan")
                    cpu, rss = proc_stats(pid) if pid else (0.0, 0.0)
                    per_request = (cpu - cpu_before) / requests * 1e6 if pid and requests else None
                    results.append(Result(row, path, rps, p50, p99, mean, per_request, rss if pid else None))
        if "h1-tracing-100" in rows:
            _await_exports(collectors["ours"], collectors["envoy"])
    return results


def _await_exports(*collectors: EnvoyProcess) -> None:
    """Both tracers batch (Envoy flushes every 5 s): give them 10 s to show their spans arrived."""
    deadline = time.monotonic() + 10
    while any(_requests_served(c) == 0 for c in collectors):
        if time.monotonic() > deadline:
            raise RuntimeError("a traced proxy exported no spans to its collector in 10 s")
        time.sleep(0.2)


def summarize(results: list[Result]) -> list[dict[str, Any]]:
    """Medians per row and path, with the added latency over direct."""
    table = []
    for row in [r for r in ROWS if any(result.row == r for result in results)]:
        medians = {
            path: {f: _median([r for r in results if r.row == row and r.path == path], f) for f in _FIELDS}
            for path in ("direct", "ours", "envoy")
        }
        direct = medians["direct"]
        for path in ("ours", "envoy"):
            m = medians[path]
            table.append({
                "row": row, "path": path, **m,
                "added_p50_ms": _minus(m["p50_ms"], direct["p50_ms"]),
                "added_p99_ms": _minus(m["p99_ms"], direct["p99_ms"]),
                "added_mean_ms": _minus(m["mean_ms"], direct["mean_ms"]),
            })  # fmt: skip
    return table


_FIELDS = ("rps", "p50_ms", "p99_ms", "mean_ms", "proxy_cpu_us_per_req", "proxy_rss_mb")


def _median(runs: list[Result], name: str) -> float | None:
    values = [v for r in runs if (v := getattr(r, name)) is not None and not math.isnan(v)]
    return statistics.median(values) if values else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or math.isnan(a) or math.isnan(b) else round(a - b, 3)


_COLUMNS = (
    ("req/s", "rps", "9.0f"), ("p50 ms", "p50_ms", "8.2f"), ("p99 ms", "p99_ms", "8.2f"),
    ("mean ms", "mean_ms", "9.2f"), ("+p99 ms", "added_p99_ms", "9.2f"), ("+mean", "added_mean_ms", "7.2f"),
    ("CPU us/req", "proxy_cpu_us_per_req", "11.0f"), ("RSS MB", "proxy_rss_mb", "8.1f"),
)  # fmt: skip


def _render(table: list[dict[str, Any]]) -> str:
    """The summary as a text table (``-`` where a tool gives no such number)."""

    def cell(value: float | None, spec: str) -> str:
        width = int(spec.split(".", maxsplit=1)[0])
        return "-".rjust(width) if value is None or math.isnan(value) else format(value, spec)

    head = "".join(title.rjust(int(spec.split(".", maxsplit=1)[0])) for title, _, spec in _COLUMNS)
    lines = ["row".ljust(20) + "path".ljust(7) + head]
    for line in table:
        cells = "".join(cell(line[key], spec) for _, key, spec in _COLUMNS)
        lines.append(f"{line['row']:<20}{line['path']:<7}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark, prints the table and writes ``perf/results/waypoint-<time>.json``."""
    parser = argparse.ArgumentParser(
        prog="bench_waypoint", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported (default 3)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument(
        "--rate", type=int, default=1000, help="requests/s of the fixed-rate row (default 1000)"
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated rows to run (default all: {','.join(ROWS)})"
    )
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    if unknown := sorted(set(rows) - set(ROWS)):
        parser.error(f"unknown rows {', '.join(unknown)}; the rows are {', '.join(ROWS)}")
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        print(
            f"bench_waypoint: {', '.join(missing)} missing; "
            "'make setup' installs them (Debian wrk, nghttp2-client)",
            file=sys.stderr,
        )
        return 2
    print(
        f"bench_waypoint: {args.repeats} x {len(rows)} rows x 3 paths, {args.seconds:g} s each",
        file=sys.stderr,
    )
    results = run_benchmark(
        seconds=args.seconds,
        repeats=args.repeats,
        connections=args.connections,
        rate=args.rate,
        rows=rows,
        progress=lambda m: print(m, file=sys.stderr),
    )
    table = summarize(results)
    print(_render(table))
    target = (
        args.json or _REPO / "perf" / "results" / f"waypoint-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        json.dumps(
            {
                "machine": platform.node(),
                "args": vars(args) | {"json": str(args.json)},
                "table": table,
                "runs": [asdict(r) for r in results],
            },
            indent=1,
            default=str,
        )
    )
    print(f"results: {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
