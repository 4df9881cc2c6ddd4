"""The e2e suite's lab: one lab with the whole mesh, shared by every e2e module, and the helpers to drive it.

The lab has two nodes. ``demo`` is enrolled (``istio.io/dataplane-mode=ambient``): its client runs on
node1, its servers (HTTP echo, TCP echo, a byte-counting sink) on node2, so every request crosses the
lab bridge between two ztunnels. ``legacy`` is not enrolled and has a client on node1.

The lab comes up once for the package (about 4 s) and goes down after its last test; the teardown
asserts that nothing of it is left in the system. Tests that change the mesh (policies, labels) undo
their change and wait until the ztunnels have seen the undo.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.errors import MeshError
from meshctl.converge import lagging
from meshctl.lab import builders as b
from meshctl.lab.api import Lab
from meshctl.lab.meshview import ISTIOD, NODE_AGENT, ZTUNNEL, mesh_pods, ztunnel
from meshctl.lab.testkit import SystemSnapshot, unique_lab_id
from meshctl.nethttp import http_get
from meshctl.ztunnel_config import fetch_admin

__all__ = [
    "CLIENT_NODE",
    "ECHO_PORT",
    "ECHO_PREFIX",
    "HTTP_PORT",
    "REDIRECTION",
    "SERVER_NODE",
    "SINK_PORT",
    "MeshLab",
    "Sent",
    "CONNECTS",
    "HOLD",
    "cluster_objects",
    "mesh_lab",
    "spiffe",
]

T = TypeVar("T")

CLIENT_NODE, SERVER_NODE = "node1", "node2"
TOOLS = ("curl", "redis-server", "redis-cli", "tshark", "promtool", "prometheus", "chromium", "iptables-save")
REDIRECTION = "ambient.istio.io/redirection"
SINK_PORT, ECHO_PORT, HTTP_PORT = 9100, 9000, 8080
ECHO_PREFIX = "hello"

# A TCP sink: counts what each connection delivers and prints it (the pod log is the record).
SINK = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(16)
print("sink: listening", flush=True)
while True:
    conn, peer = srv.accept()
    total = 0
    try:
        while data := conn.recv(65536):
            total += len(data)
    except OSError:
        pass
    conn.close()
    print(f"sink: received {total} bytes from {peer[0]}", flush=True)
"""

# Sends N bytes in lines of 100 bytes, half-closes, reads until EOF; prints what happened as JSON.
SEND = """
import json, socket, sys
host, port, n, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
line = (marker + b"." * 99)[:99] + b"\\n"
payload = (line * (n // 100 + 1))[:n]
result = {"sent": 0, "received": 0, "error": ""}
try:
    s = socket.create_connection((host, port), 5)
    s.settimeout(5)
    s.sendall(payload)
    result["sent"] = n
    s.shutdown(socket.SHUT_WR)
    while chunk := s.recv(65536):
        result["received"] += len(chunk)
except OSError as exc:
    result["error"] = repr(exc)
print(json.dumps(result))
"""


# Holds one connection, exchanging a line every 50 ms with a line echo service, until the connection
# ends, the file argv[4] (optional) exists, or argv[3] seconds passed. Prints "connected" once
# connected, then {"trips": n, "ended": unix time, "how": "limit" | "stopped" | the error's name}.
HOLD = r"""
import json, os, socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop = sys.argv[4] if len(sys.argv) > 4 else None
sock = socket.create_connection((host, port), 5)
sock.settimeout(2)
trips, how = 0, "limit"
print("connected", flush=True)
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    if stop and os.path.exists(stop):
        how = "stopped"
        break
    try:
        sock.sendall(b"ping\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(100)
            if not chunk:
                raise ConnectionError("closed by the peer")
            data += chunk
        trips += 1
    except OSError as exc:
        how = type(exc).__name__
        break
    time.sleep(0.05)
print(json.dumps({"trips": trips, "ended": time.time(), "how": how}), flush=True)
"""


# New connections at a fixed rate (argv[3] a second, spread over worker threads) for argv[4] seconds,
# or until the file argv[5] (optional) exists, each one HTTP request; bounded in count and time.
# Prints {"ok": n, "failed": [...], "rate": r}.
CONNECTS = r"""
import json, os, socket, sys, threading, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
stop = sys.argv[5] if len(sys.argv) > 5 else None
workers, ok, failed, lock = 16, [0], [], threading.Lock()
start = time.monotonic()

def attempt():
    try:
        with socket.create_connection((host, port), 2) as sock:
            sock.settimeout(2)
            sock.sendall(b"GET /handover HTTP/1.0\r\n\r\n")
            body = b""
            while chunk := sock.recv(65536):
                body += chunk
        return "ok" if body.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")) else "answer " + repr(body[:40])
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except OSError as exc:
        return repr(exc)

def worker(index):
    n = index
    while n / rate < seconds and not (stop and os.path.exists(stop)):
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
        outcome = attempt()
        with lock:
            if outcome == "ok":
                ok[0] += 1
            else:
                failed.append(f"{time.time():.2f} {outcome}")
        n += workers

threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"ok": ok[0], "failed": failed, "rate": ok[0] / (time.monotonic() - start)}))
"""


def spiffe(namespace: str, service_account: str) -> str:
    """The SPIFFE id of a service account in the lab's trust domain."""
    return f"spiffe://cluster.local/ns/{namespace}/sa/{service_account}"


def _service(name: str, namespace: str, port: int, *, target: int, selector: str) -> dict[str, Any]:
    svc = b.service(name, namespace, selector={"app": selector}, port=port, target_port=target)
    svc["spec"]["ports"][0]["name"] = f"tcp-{name}"
    return svc


def cluster_objects() -> list[dict[str, Any]]:
    """The package's cluster (see the module docstring)."""
    server_env = [
        {"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}}
        for var, path in (
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("NODE_NAME", "spec.nodeName"),
        )
    ]
    return [
        b.namespace("demo", labels={"istio.io/dataplane-mode": "ambient"}),
        b.namespace("legacy"),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "client", "namespace": "demo"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "server", "namespace": "demo"}},
        b.deployment("client", "demo", command=b.SLEEPER, node=CLIENT_NODE, service_account="client"),
        b.deployment(
            "server",
            "demo",
            command=[*b.HTTPECHO, "--port", str(HTTP_PORT)],
            ports=[HTTP_PORT],
            node=SERVER_NODE,
            service_account="server",
            env=server_env,
        ),
        b.service("server", "demo", selector={"app": "server"}, port=80, target_port=HTTP_PORT),
        b.deployment(
            "tcpecho",
            "demo",
            ports=[ECHO_PORT],
            node=SERVER_NODE,
            service_account="server",
            command=[
                "python",
                "-m",
                "meshctl.apps.tcpecho",
                "--port",
                str(ECHO_PORT),
                "--prefix",
                ECHO_PREFIX,
            ],
        ),
        _service("tcpecho", "demo", ECHO_PORT, target=ECHO_PORT, selector="tcpecho"),
        b.deployment(
            "sink",
            "demo",
            command=["python", "-c", SINK, str(SINK_PORT)],
            ports=[SINK_PORT],
            node=SERVER_NODE,
            service_account="server",
        ),
        b.deployment("client", "legacy", command=b.SLEEPER, node=CLIENT_NODE),
    ]


@dataclass(frozen=True, slots=True)
class Sent:
    """What the SEND script saw: bytes sent, bytes read back until EOF, and the error if any."""

    sent: int
    received: int
    error: str


class MeshLab:
    """A running lab with the mesh, and what the tests ask of it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    # ------------------------------------------------------------------------------- pods and nodes
    def node_netns(self, node: str) -> str:
        """The node's network namespace."""
        return self.lab.settings.node(node).netns

    def pod_ip(self, ref: str) -> str:
        """A pod's IP from ``ns/name-prefix``."""
        namespace, _, name = ref.partition("/")
        return self.lab.pod_ip(namespace, name)

    def pod(self, ref: str) -> dict[str, Any]:
        """The stored Pod object."""
        return self.lab.find_pod(ref)

    def exec(self, pod: str, *argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Runs a command in the pod's network namespace (never raises on a non-zero exit)."""
        return self.lab.exec_in_pod(pod, list(argv), timeout=timeout)

    def curl(self, pod: str, url: str, *, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        """Real curl from inside a pod; stdout is the body."""
        return self.exec(pod, "curl", "-sS", "-m", str(timeout), url, timeout=timeout + 10)

    def send(self, pod: str, host: str, port: int, nbytes: int, *, marker: str = "e2e") -> Sent:
        """Sends ``nbytes`` (lines of 100 bytes starting with ``marker``) from the pod, reads until EOF."""
        done = self.exec(pod, "python", "-c", SEND, host, str(port), str(nbytes), marker)
        if done.returncode != 0:
            raise AssertionError(f"the sender in {pod} failed: {done.stderr}")
        data = json.loads(done.stdout)
        return Sent(sent=data["sent"], received=data["received"], error=data["error"])

    def iptables(self, pod: str) -> str:
        """``iptables-save`` inside the pod's network namespace."""
        return self.exec(pod, "iptables-save").stdout

    # ------------------------------------------------------------------------------------ ztunnel
    def zc(self, node: str, view: str) -> list[dict[str, Any]]:
        """``meshctl zc <view>`` rows from the admin endpoint of the node's ztunnel pod."""
        rows: list[dict[str, Any]] = fetch_admin(
            "127.0.0.1:15000", "/config_dump", netns=ztunnel(self.lab, node).netns
        )[view]
        return rows

    def workload(self, node: str, pod_name: str) -> dict[str, Any] | None:
        """The node ztunnel's view of one workload, by pod name."""
        return next((w for w in self.zc(node, "workloads") if w["name"] == pod_name), None)

    def metrics_text(self, node: str) -> str:
        """The node ztunnel's /metrics page (its pod's :15020)."""
        pod = ztunnel(self.lab, node)
        status, body = http_get(pod.ip, 15020, "/metrics", netns=pod.netns)
        assert status == 200, f"ztunnel on {node} answered /metrics with {status}"
        return body.decode()

    def metric(self, node: str, name: str, **labels: str) -> float:
        """The sum of the node's samples named ``name`` whose labels include ``labels``."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text(node)):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def access_log(self, node: str) -> list[dict[str, Any]]:
        """The access-log entries (``connection complete``) of the node's ztunnel pods (two while one
        rolls), oldest pod first, each pod's in order."""
        entries = []
        for pod in mesh_pods(self.lab, ZTUNNEL):
            if pod.node != node:
                continue
            for line in self._read(pod.log).splitlines():
                if line.startswith("{") and '"connection complete"' in line:
                    entries.append(json.loads(line))
        return entries

    # ----------------------------------------------------------------------------------- waiting
    def wait_for(self, condition: Callable[[], T | None], *, what: str, timeout: float = 10.0) -> T:
        """Polls ``condition`` until it returns something true; fails with the mesh's logs otherwise.

        A ztunnel endpoint that does not answer (MeshError, OSError) counts as "not yet".
        """
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                value = condition()
            except (MeshError, OSError) as exc:
                value, last_error = None, f" (last error: {exc})"
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}{last_error}\n{self.diagnostics()}"
                )
            time.sleep(0.1)

    def wait_policy(self, node: str, name: str, *, present: bool, timeout: float = 10.0) -> None:
        """Waits until the node's ztunnel has (or no longer has) the policy ``name``."""

        def seen() -> bool:
            return any(p["name"] == name for p in self.zc(node, "policies")) == present

        self.wait_for(
            seen, what=f"policy {name} {'in' if present else 'gone from'} ztunnel on {node}", timeout=timeout
        )

    def wait_converged(self, *, timeout: float = 15.0) -> None:
        """Waits until every ztunnel knows every running pod, healthy and with the right protocol
        (config may reach them after pod readiness)."""
        self.wait_for(
            lambda: not lagging(self.lab), what="both ztunnels to know every pod as it is", timeout=timeout
        )

    def diagnostics(self, pods: Sequence[str] = ()) -> str:
        """The last lines of the mesh pods' logs (and of ``pods``' logs), for failure messages."""
        parts = []
        for app in (ISTIOD, NODE_AGENT, ZTUNNEL):
            for mesh_pod in mesh_pods(self.lab, app):
                parts.append(
                    f"--- {mesh_pod.ref} on {mesh_pod.node} (tail)\n{_tail(self._read(mesh_pod.log))}"
                )
        for pod in pods:
            parts.append(f"--- pod {pod} log (tail)\n{_tail(self.lab.logs(pod))}")
        return "\n".join(parts)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _tail(text: str, lines: int = 20) -> str:
    kept = [line[:500] for line in text.splitlines() if '"push.snapshot"' not in line]
    return "\n".join(kept[-lines:]) or "(empty)"


@contextlib.contextmanager
def mesh_lab(state: Path, prefix: str, **up_args: Any) -> Iterator[MeshLab]:
    """A lab with the mesh and :func:`cluster_objects`; down at the end, with nothing left behind."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"the e2e suite needs {', '.join(missing)}; run 'make test' to install them", pytrace=False
        )
    lab_id = unique_lab_id(prefix)
    before = SystemSnapshot.take(lab_id)
    lab = Lab(state, lab_id=lab_id)
    try:
        lab.up(cluster_objects(), mesh=True, timeout=60, **up_args)
        mesh = MeshLab(lab)
        mesh.wait_converged()
        yield mesh
    finally:
        lab.down()
        leftovers = SystemSnapshot.take(lab_id).leftovers(before, lab_id=lab_id)
        assert leftovers == [], f"lab {lab_id} left things behind after down(): {leftovers}"


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    """One lab with the mesh for the whole e2e package."""
    with mesh_lab(tmp_path_factory.mktemp("e2e-lab"), "e", observability=True) as lab:
        yield lab
