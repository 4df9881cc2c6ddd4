"""The real ``ztunnel`` process with ``--workers N`` in front of two pod namespaces: istiod_lite's CA
and Delta ADS server in-process on one TLS port (as istiod's 15012), a fake node agent that hands
the pods' netns fds over a real ZDS socket, and helpers to read the ztunnel's HTTP ports."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from istiod_lite.app import IstiodSettings, build_server
from istiod_lite.ca.auth import Caller, LabTokenAuthenticator
from istiod_lite.ca.authority import SigningAuthority, create_root
from istiod_lite.ca.pods import InMemoryPodIndex, PodPlacement
from istiod_lite.push.debounce import DebounceSettings
from istiod_lite.push.hub import ConfigPusher, Hub
from istiod_lite.push.metrics import PushMetrics
from istiod_lite.push.server import DeltaAdsServer
from mesh.api.istio.security import authorization_pb2
from mesh.api.istio.workload import workload_pb2
from mesh.identity import WorkloadIdentity
from mesh.rt.clock import SystemClock
from mesh.rt.logs import get_logger
from mesh.rt.metrics import Registry, build_registry
from mesh.rt.xds import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from mesh.testing.ports import free_port
from tests.netns.ztunnel_support import NODE, TD, Pod, enroll
from ztunnel.zds import ZdsChannel

ISTIOD_NAME = "istiod.istio-system.svc"

ECHOES = """
import json, socket, sys
ok = failed = 0
for _ in range(int(sys.argv[3])):
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), 5) as s:
            s.settimeout(5)
            s.sendall(b"ping\\n")
            got = b""
            while len(got) < 5 and (chunk := s.recv(64)):
                got += chunk
            ok += got == b"ping\\n"
            failed += got != b"ping\\n"
    except OSError:
        failed += 1
print(json.dumps({"ok": ok, "failed": failed}))
"""
"""Sequential connections to argv[1]:argv[2], argv[3] of them, each echoing one line."""


class ConfigSource:
    """The config istiod_lite pushes: the pods as HBONE workloads on this node, and any policies."""

    def __init__(self, pods: list[Pod]) -> None:
        self.resources: dict[str, dict[str, Message]] = {
            ADDRESS_TYPE_URL: {pod.uid: _workload(pod) for pod in pods},
            AUTHORIZATION_TYPE_URL: {},
        }
        self.pushers: list[ConfigPusher] = []

    def build(self) -> Mapping[str, Mapping[str, Message]]:
        return {type_url: dict(by_name) for type_url, by_name in self.resources.items()}

    def put_policy(self, policy: authorization_pb2.Authorization) -> None:
        self.resources[AUTHORIZATION_TYPE_URL][f"{policy.namespace}/{policy.name}"] = policy
        for pusher in self.pushers:
            pusher.mark_dirty()


def _workload(pod: Pod) -> workload_pb2.Address:
    workload = workload_pb2.Workload(
        uid=pod.uid,
        name=pod.name,
        namespace=pod.namespace,
        service_account=pod.service_account,
        tunnel_protocol=workload_pb2.HBONE,
        node=NODE,
        canonical_name=pod.name,
        canonical_revision="v1",
        workload_name=pod.name,
    )
    workload.addresses.append(ipaddress.ip_address(pod.ip).packed)
    return workload_pb2.Address(workload=workload)


def deny_port(port: int) -> authorization_pb2.Authorization:
    """A namespace policy of ``demo`` that denies every connection to ``port``."""
    match = authorization_pb2.Match(destination_ports=[port])
    return authorization_pb2.Authorization(
        name=f"deny-{port}",
        namespace="demo",
        scope=authorization_pb2.NAMESPACE,
        action=authorization_pb2.DENY,
        rules=[authorization_pb2.Rule(clauses=[authorization_pb2.Clause(matches=[match])])],
    )


@dataclass
class Node:
    """A running ztunnel process and the control plane it talks to."""

    process: asyncio.subprocess.Process
    source: ConfigSource
    hub: Hub
    ca_registry: Registry
    istiod_port: int
    admin_port: int
    metrics_port: int
    readiness_port: int
    log_path: Path
    authority: SigningAuthority
    """The CA's signing certificate and key (to sign CRLs)."""

    def get(self, port: int, path: str) -> tuple[int, bytes]:
        """GET ``path`` on one of the ztunnel's ports (status, body); blocking, call via to_thread."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async def workers(self) -> list[dict[str, object]]:
        status, body = await asyncio.to_thread(self.get, self.admin_port, "/workers")
        assert status == 200, body
        workers: list[dict[str, object]] = json.loads(body)["workers"]
        return workers

    async def certificate_serial(self, uri: str) -> str:
        """The serial (hex) of the certificate ztunnel holds for ``uri``, from /config_dump."""
        status, body = await asyncio.to_thread(self.get, self.admin_port, "/config_dump")
        assert status == 200, body
        serials = [c["serial"] for c in json.loads(body)["certificates"] if c["identity"] == uri]
        assert len(serials) == 1, body
        return str(serials[0])

    async def metrics(self, worker: int | None = None) -> str:
        query = "" if worker is None else f"?worker={worker}"
        status, body = await asyncio.to_thread(self.get, self.metrics_port, f"/metrics{query}")
        assert status == 200, body
        return body.decode()

    def log_events(self, event: str) -> list[dict[str, object]]:
        """The JSON log lines of ztunnel and its workers whose event is ``event``."""
        found = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == event:
                    found.append(entry)
        return found


def sample_sum(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples in exposition ``text`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@asynccontextmanager
async def ztunnel_process(
    pods: list[Pod], tmp: Path, *, workers: int = 2, drain_deadline: float = 5.0, extra: tuple[str, ...] = ()
) -> AsyncIterator[Node]:
    """istiod_lite (CA + xDS), then ``ztunnel --workers N``, then the pods enrolled; yields once
    the ztunnel is ready. Stops everything it started."""
    clock = SystemClock()
    authority = create_root(trust_domain=TD, now=clock.now())
    authenticator = LabTokenAuthenticator(
        {"tok-n1": Caller(WorkloadIdentity(TD, "istio-system", "ztunnel"), node=NODE)}, clock=clock
    )
    source = ConfigSource(pods)
    hub = Hub(clock=clock)
    push_metrics = PushMetrics(
        build_registry(component="istiod_lite"), connected=lambda: len(hub.connections())
    )
    pusher = ConfigPusher(source.build, hub, clock=clock, metrics=push_metrics, settings=DebounceSettings())
    source.pushers.append(pusher)
    ads = DeltaAdsServer(hub, clock=clock, metrics=push_metrics, authenticator=authenticator)
    ca_registry = build_registry(component="istiod_lite")
    istiod = build_server(
        IstiodSettings(
            listen="127.0.0.1:0",
            readiness_listen="127.0.0.1:0",
            monitoring_listen="127.0.0.1:0",
            trust_domain=TD,
        ),
        authority=authority,
        authenticator=authenticator,
        pods=InMemoryPodIndex([PodPlacement(p.namespace, p.service_account, NODE) for p in pods]),
        clock=clock,
        log=get_logger("istiod-test"),
        registry=ca_registry,
        extra_handlers=[ads.rpc_handler()],
    )
    await istiod.start()
    pushing = asyncio.create_task(pusher.run())
    (tmp / "root.pem").write_text(istiod.root_bundle_pem)
    (tmp / "token").write_text("tok-n1\n")
    zds_path = str(tmp / "ztunnel.sock")
    agent_socket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    agent_socket.bind(zds_path)
    agent_socket.listen(1)
    agent_socket.setblocking(False)
    ports = [free_port() for _ in range(3)]
    log_path = tmp / "ztunnel.log"
    process = None
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ztunnel", "--node", NODE, "--node-ip", "10.244.9.1",
                "--root-cert", str(tmp / "root.pem"), "--token-file", str(tmp / "token"),
                "--xds-address", f"127.0.0.1:{istiod.ca_port}", "--istiod-name", ISTIOD_NAME,
                "--zds-socket", zds_path, "--admin", f"127.0.0.1:{ports[0]}",
                "--metrics", f"127.0.0.1:{ports[1]}", "--readiness", f"127.0.0.1:{ports[2]}",
                "--workers", str(workers), "--drain-deadline", str(drain_deadline), *extra,
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        admin, metrics, readiness = ports
        node = Node(
            process, source, hub, ca_registry, istiod.ca_port, admin, metrics, readiness, log_path, authority
        )
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(agent_socket), 30)
        agent = ZdsChannel(conn)
        await enroll(agent, pods)
        await wait_ready(node)
        yield node
    finally:
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), drain_deadline + 10)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        pushing.cancel()
        await asyncio.gather(pushing, return_exceptions=True)
        await istiod.stop(grace=0.1)
        agent_socket.close()


async def wait_ready(node: Node, *, within: float = 30.0) -> None:
    """Waits until the ztunnel's readiness page says ready (every worker included)."""
    deadline = asyncio.get_running_loop().time() + within
    body = b""
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(OSError):
            status, body = await asyncio.to_thread(node.get, node.readiness_port, "/healthz/ready")
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"ztunnel not ready after {within} s: {body!r}; log: {node.log_path.read_text()[-3000:]}"
    )
