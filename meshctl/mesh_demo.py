"""``make demo``: the sample cluster on the lab with the mesh on, shown step by step.

It brings up the lab (2 nodes, istiod_lite, a node agent and a ztunnel per node), shows which pods
are enrolled and the certificates ztunnel holds for them, sends requests from ``demo/client`` to the
``server`` Service and shows which pod answered, the access-log lines of both ztunnels with the
SPIFFE identities on each side, and the ``istio_tcp_*`` metrics the requests produced; a request
from the unenrolled ``legacy`` namespace shows plaintext arriving. The lab stays up afterwards.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from mesh.identity import load_pem_certificates, verify_workload_chain
from mesh.ports import METRICS_PORT
from meshctl.converge import wait_for_mesh
from meshctl.dashboard.cli import DEFAULT_PORT as DASHBOARD_PORT
from meshctl.lab.api import Lab, load_objects
from meshctl.lab.errors import LabError
from meshctl.lab.meshview import root_cert_pem, ztunnel
from meshctl.nethttp import http_get
from meshctl.ztunnel_config import HOST_ADMIN, fetch_admin, render_table

__all__ = ["SAMPLE_CLUSTER", "run_mesh_demo"]

SAMPLE_CLUSTER = Path(__file__).resolve().parents[1] / "samples" / "cluster.yaml"
_REQUESTS = 8
_MESHCTL = ".venv/bin/meshctl"


def run_mesh_demo(
    *,
    state_dir: str | Path | None = None,
    lab_id: str | None = None,
    fresh: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Runs the demo; returns 0. The lab stays up (``meshctl lab down`` removes it). A lab already
    running is kept with everything applied to it and converged to the sample (apply is idempotent);
    ``fresh`` takes it down first."""

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    lab = Lab(state_dir, lab_id=lab_id, progress=lambda m: say(f"  {m}"))
    objects = load_objects(SAMPLE_CLUSTER)
    if lab.is_running() and fresh:
        say(f"A lab is running (state {lab.paths.root}); --fresh: taking it down first.")
        lab.down()
    started = time.monotonic()
    if lab.is_running():
        if not lab.settings.mesh:
            raise LabError(
                f"the lab running at {lab.paths.root} was started without the mesh",
                hint="run 'make demo FRESH=1' (or 'meshctl lab down' first) to start over with the mesh",
            )
        say("== meshctl lab apply -f samples/cluster.yaml   (a lab is running: kept, with what you applied)")
        changed = [message for message in lab.apply(objects) if not message.endswith("unchanged")]
        lab.wait_ready(timeout=120)
        say(f"  converged in {time.monotonic() - started:.1f} s: {len(changed)} sample objects changed back")
        say("  (start over with: make demo FRESH=1)\n")
    else:
        say(
            "== meshctl lab up --observability -f samples/cluster.yaml"
            "   (the mesh is on: istiod_lite, node agents, ztunnels; and Prometheus)"
        )
        lab.up(objects, timeout=120, mesh=True, observability=True)
        say(f"  the lab is up in {time.monotonic() - started:.1f} s\n")
    say(lab.status_text())
    node = lab.settings.nodes[0]
    wait_for_mesh(lab)
    dump = fetch_admin(HOST_ADMIN, "/config_dump", netns=ztunnel(lab, node.name).netns)
    say(f"== meshctl ztunnel-config workloads --node {node.name}   (HBONE = enrolled, TCP = not)")
    say(render_table("workloads", dump["workloads"]))
    say(f"== meshctl ztunnel-config certificates --node {node.name}   (from istiod_lite, by impersonation)")
    say(render_table("certificates", dump["certificates"]))
    say(_verified(lab, dump["certificates"][0]))
    log_marks = {n.netns: _log_size(lab, n.name) for n in lab.settings.nodes}
    say("== meshctl lab exec demo/client -- curl -s http://server/")
    answers = [_ask(lab, "demo/client", "http://server/") for _ in range(_REQUESTS)]
    first = answers[0]
    say(json.dumps({k: first.get(k) for k in ("pod", "version", "node", "client")}, indent=2))
    spread = Counter(f"{a['pod']} ({a['version']}, {a['node']})" for a in answers)
    say(f"{_REQUESTS} requests, each a new connection through both ztunnels, spread over the endpoints:")
    for pod, count in sorted(spread.items()):
        say(f"  {count:3d}  {pod}")
    say("\n== the ztunnels' access logs for these connections (one JSON line per connection, at close)")
    lines = _access_lines(lab, log_marks)
    for direction in ("outbound", "inbound"):
        for line in [entry for entry in lines if entry.get("direction") == direction][:2]:
            say("  " + json.dumps({k: line.get(k) for k in _LOG_KEYS if k in line}))
    say("\n== istio_tcp_connections_opened_total on the ztunnels' :15020/metrics")
    for n in lab.settings.nodes:
        for sample in _opened(ztunnel(lab, n.name).netns):
            say(f"  {n.name}: {sample}")
    say("\n== meshctl lab exec legacy/client -- curl -s http://server.demo/   (not enrolled: plaintext)")
    marks = {n.netns: _log_size(lab, n.name) for n in lab.settings.nodes}
    legacy = _ask(lab, "legacy/client", "http://server.demo/")
    say(f"  answered by {legacy['pod']}; the destination ztunnel's line has no source identity:")
    for line in _access_lines(lab, marks):
        say("  " + json.dumps({k: line.get(k) for k in _LOG_KEYS if k in line}))
    _waypoint_demo(lab, say)
    _hints(say, first, lab_observed=lab.settings.observability)
    return 0


_LOG_KEYS = (
    "timestamp",
    "direction",
    "src.identity",
    "dst.identity",
    "src.addr",
    "dst.addr",
    "dst.service",
    "bytes_sent",
)
"""What the demo prints of each access-log line: the time and the client's own address (its port differs
per connection, on both sides) tell apart lines that are otherwise alike."""


def _hints(say: Any, first: dict[str, Any], *, lab_observed: bool) -> None:
    say("\nThe lab keeps running. Explore it:")
    say(f"  {_MESHCTL} lab status")
    say(f"  {_MESHCTL} lab exec demo/client -- curl -s http://server/")
    say(f"  {_MESHCTL} ztunnel-config workloads|services|policies|certificates|connections --node node1")
    say(f"  {_MESHCTL} proxy-status")
    if lab_observed:
        say(f"  {_MESHCTL} dashboard   then open http://127.0.0.1:{DASHBOARD_PORT}/ (the service graph)")
    else:
        say("  (the service graph needs Prometheus: make demo FRESH=1 starts the lab with it)")
    say(f"  {_MESHCTL} lab logs demo/{first['pod']}")
    say(f"  {_MESHCTL} lab apply -f FILE   (e.g. a PeerAuthentication STRICT or an AuthorizationPolicy)")
    say(f"Tear it down with:  {_MESHCTL} lab down")


def _verified(lab: Lab, certificate: dict[str, Any]) -> str:
    """Checks a certificate ztunnel holds against istiod_lite's root, as its peers do."""
    roots = load_pem_certificates(root_cert_pem(lab))
    chain = load_pem_certificates(certificate["cert_chain"])
    identity = verify_workload_chain(
        chain, roots=roots, now=dt.datetime.now(dt.UTC), trust_domain="cluster.local"
    )
    leaf = chain[0]
    hours = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() / 3600
    return (
        f"  {identity.uri}: chain verified against istiod_lite's root ({roots[0].subject.rfc4514_string()}); "
        f"issuer {leaf.issuer.rfc4514_string()}, valid {hours:.1f} h\n"
    )


SAMPLE_WAYPOINT = SAMPLE_CLUSTER.with_name("waypoint.yaml")
_CANARY_REQUESTS = 100


def _waypoint_demo(lab: Lab, say: Any) -> None:
    """L7 through a waypoint: the VirtualService's 90/10 canary split and its header route."""
    say("\n== meshctl lab apply -f samples/waypoint.yaml   (a waypoint for demo; server uses it, L7 routes)")
    lab.apply(load_objects(SAMPLE_WAYPOINT, node_names=lab.settings.node_names()))
    (server,) = [s for s in lab.objects("Service", "demo") if s["metadata"]["name"] == "server"]
    server["metadata"].setdefault("labels", {})["istio.io/use-waypoint"] = "waypoint"
    lab.apply([server])
    lab.wait_ready(timeout=60)
    deadline = time.monotonic() + 60
    while not _uses_waypoint(lab, "server"):
        if time.monotonic() > deadline:
            raise LabError(
                "the ztunnels did not start sending server's traffic to the waypoint within 60 s",
                hint="see the waypoint pod's log: meshctl lab logs demo/waypoint",
            )
        time.sleep(0.5)
    split = Counter(_versions(lab, _CANARY_REQUESTS))
    say(
        f"  {_CANARY_REQUESTS} requests, a new connection each, through the waypoint (VirtualService: 90/10):"
    )
    for version, count in sorted(split.items()):
        say(f"  {count:3d}  {version}")
    header = Counter(_versions(lab, 10, "x-canary-test: true"))
    say(f"  with x-canary-test: true (the header route): {dict(header)}")
    say(f"  remove it: {_MESHCTL} lab delete -f samples/waypoint.yaml")


def _uses_waypoint(lab: Lab, service: str) -> bool:
    """True when every node's ztunnel sends ``service`` to its waypoint."""
    for node in lab.settings.nodes:
        services = fetch_admin(HOST_ADMIN, "/config_dump", netns=ztunnel(lab, node.name).netns)["services"]
        if not any(s["name"] == service and s.get("waypoint") for s in services):
            return False
    return True


def _versions(lab: Lab, count: int, *headers: str) -> list[str]:
    """The version that answered each of ``count`` requests from demo/client, one connection each."""
    extra = [arg for header in (*headers, "Connection: close") for arg in ("-H", header)]
    result = lab.exec_in_pod("demo/client", ["curl", "-sS", "-m", "5", *extra, *["http://server/"] * count])
    if result.returncode != 0:
        raise LabError(f"curl through the waypoint failed: {result.stderr.strip()[-300:]}",
                       hint="see the waypoint pod's log: meshctl lab logs demo/waypoint")  # fmt: skip
    return [json.loads(f"{{{line.strip().rstrip(',')}}}")["version"] for line in result.stdout.splitlines()
            if line.strip().startswith('"version"')]  # fmt: skip


def _ask(lab: Lab, pod: str, url: str) -> dict[str, Any]:
    result = lab.exec_in_pod(pod, ["curl", "-sS", "-m", "5", url])
    if result.returncode != 0:
        raise LabError(
            f"curl {url} from {pod} failed: {result.stderr.strip()}",
            hint="see 'meshctl lab status' and the ztunnels' logs (meshctl lab logs istio-system/<pod>)",
        )
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _log_size(lab: Lab, node: str) -> int:
    path = ztunnel(lab, node).log
    return path.stat().st_size if path.exists() else 0


def _access_lines(lab: Lab, marks: dict[str, int]) -> list[dict[str, Any]]:
    time.sleep(0.3)  # access-log lines are written when the connections close
    lines = []
    for node in lab.settings.nodes:
        path = ztunnel(lab, node.name).log
        with open(path, encoding="utf-8", errors="replace") as log:
            log.seek(marks.get(node.netns, 0))
            for raw in log:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if entry.get("event") == "connection complete":
                    lines.append(entry)
    return sorted(lines, key=lambda e: (e.get("src.addr", ""), e.get("direction", "")))


def _opened(netns: str) -> list[str]:
    _, body = http_get("127.0.0.1", METRICS_PORT, "/metrics", netns=netns)
    samples = []
    for line in body.decode().splitlines():
        if line.startswith("istio_tcp_connections_opened_total{"):
            labels = dict(
                part.split("=", 1) for part in line[line.index("{") + 1 : line.rindex("}")].split('",')
            )
            keep = ("reporter", "source_workload", "destination_workload", "connection_security_policy")
            summary = ", ".join(f"{k}={labels.get(k, '').strip(chr(34))}" for k in keep)
            samples.append(f"{summary}: {line.rsplit(' ', 1)[1]}")
    return samples
