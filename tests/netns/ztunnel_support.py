"""A small real mesh for ztunnel netns tests: two pod namespaces joined by a veth, the capture rules
installed, the real istiod_lite CA in-process, ztunnel's node context and workload manager
in-process, and a fake node agent that hands the pods' netns fds over a real ZDS socket."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client.parser import text_string_to_metric_families

from istiod_lite.app import IstiodSettings, build_server
from istiod_lite.ca.auth import Caller, LabTokenAuthenticator
from istiod_lite.ca.authority import SigningAuthority, create_root
from istiod_lite.ca.pods import InMemoryPodIndex, PodPlacement
from mesh.api.istio.workload.zds import zds_pb2
from mesh.certs import IssuedCertificate
from mesh.identity import WorkloadIdentity
from mesh.rt.ca_client import CaClient
from mesh.rt.certs import CertificateManager
from mesh.rt.clock import SystemClock
from mesh.rt.hbone.pool import HbonePool, PoolKey
from mesh.rt.logs import get_logger
from mesh.rt.metrics import Registry, build_registry, render
from mesh.rt.net.memory import freeze_startup_heap
from mesh.rt.net.netns import InPodSocketFactory
from mesh.rt.tcp_metrics import TcpMetrics
from ztunnel.cni.apply import ensure_routing, write_sysctls
from ztunnel.cni.rules import plan_capture
from ztunnel.context import DEFAULT_MAX_CONNECTIONS, NodeContext
from ztunnel.local_config import parse_local_config
from ztunnel.manager import WorkloadManager
from ztunnel.state import ProxyState
from ztunnel.zds import ZdsChannel, decode_response

TD = "cluster.local"
NODE = "n1"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    service_account: str
    ip: str
    netns: str

    @property
    def uid(self) -> str:
        return f"Kubernetes//Pod/{self.namespace}/{self.name}"


def sh(*argv: str, ns: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    result = subprocess.run(
        [*prefix, *argv], input=stdin, text=True, capture_output=True, timeout=30, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def build_pods(tag: str, *, capture: dict[str, bool]) -> list[Pod]:
    """Two pod namespaces on one veth; ``capture`` says which get the in-pod rules."""
    pods = [
        Pod("client", "demo", "client", "10.244.9.2", f"mtest-zt-{tag}-a"),
        Pod("server", "demo", "server", "10.244.9.3", f"mtest-zt-{tag}-b"),
    ]
    a, b = pods
    for pod in pods:
        sh("ip", "netns", "add", pod.netns)
        sh("ip", "link", "set", "lo", "up", ns=pod.netns)
    sh(
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        a.netns,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.netns,
    )
    for pod in pods:
        sh("ip", "addr", "add", f"{pod.ip}/24", "dev", "eth0", ns=pod.netns)
        sh("ip", "link", "set", "eth0", "up", ns=pod.netns)
        if capture.get(pod.name, True):
            plan = plan_capture()
            sh("iptables-restore", "--noflush", ns=pod.netns, stdin=plan.iptables_restore)
            ensure_routing(f"/var/run/netns/{pod.netns}", plan.ip_rule)  # as the node agent does
            write_sysctls(f"/var/run/netns/{pod.netns}", {c.key: c.value for c in plan.sysctls})
    return pods


def remove_pods(pods: list[Pod]) -> None:
    for pod in pods:
        subprocess.run(["ip", "netns", "delete", pod.netns], check=False, capture_output=True)


def local_state(pods: list[Pod], *, extra: str = "") -> ProxyState:
    workloads = "".join(
        f"""
- name: {p.name}
  namespace: {p.namespace}
  serviceAccount: {p.service_account}
  workloadIps: ["{p.ip}"]
  protocol: HBONE
  node: {NODE}
  canonicalName: {p.name}
  canonicalRevision: v1
  workloadName: {p.name}
"""
        for p in pods
    )
    return parse_local_config(f"workloads:{workloads}\n{extra}")


@dataclass
class Mesh:
    ctx: NodeContext
    manager: WorkloadManager
    registry: Registry
    pods: list[Pod]
    authority: SigningAuthority
    """The CA's signing certificate and key (to sign CRLs in tests)."""


@asynccontextmanager
async def running_mesh(
    pods: list[Pod],
    tmp: Path,
    *,
    enrolled: list[Pod] | None = None,
    cert_ttl: int = 3600,
    uncertified: tuple[Pod, ...] = (),
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> AsyncIterator[Mesh]:
    """The CA, ztunnel's context and manager (workload certificates of ``cert_ttl`` seconds, at most
    ``max_connections`` downstream connections), and a fake node agent that enrolls ``enrolled``. The
    CA refuses the identities of ``uncertified`` (it does not know them to run on this node), so those
    pods never get a certificate."""
    clock = SystemClock()
    authority = create_root(trust_domain=TD, now=clock.now())
    ztunnel_id = WorkloadIdentity(TD, "istio-system", "ztunnel")
    placements = [PodPlacement(p.namespace, p.service_account, NODE) for p in pods if p not in uncertified]
    istiod = build_server(
        IstiodSettings(listen="127.0.0.1:0", readiness_listen="127.0.0.1:0", trust_domain=TD),
        authority=authority,
        authenticator=LabTokenAuthenticator({"tok-n1": Caller(ztunnel_id, node=NODE)}, clock=clock),
        pods=InMemoryPodIndex(placements),
        clock=clock,
        log=get_logger("istiod-test"),
    )
    await istiod.start()
    ca = CaClient(
        f"127.0.0.1:{istiod.ca_port}", roots_pem=istiod.root_bundle_pem.encode(), token=lambda: "tok-n1"
    )

    async def fetch(identity: WorkloadIdentity) -> IssuedCertificate:
        return await ca.fetch(identity, impersonate=True, ttl_seconds=cert_ttl)

    rng = random.Random(7)
    registry = build_registry(component="ztunnel")
    ctx = NodeContext(
        node=NODE,
        trust_domain=TD,
        certs=CertificateManager(fetcher=fetch, clock=clock, rng=rng),
        metrics=TcpMetrics(registry),
        clock=clock,
        rng=rng,
        access_log=structlog.get_logger("access"),
        log=get_logger("ztunnel-test"),
        max_connections=max_connections,
    )
    registry.register(ctx.budget)
    ctx.apply_state(local_state(pods))
    path = str(tmp / "ztunnel.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)
    listener.setblocking(False)
    manager = WorkloadManager(ctx, socket_path=path, rng=rng)
    task = asyncio.get_running_loop().create_task(manager.run())
    try:
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(listener), 10)
        await enroll(ZdsChannel(conn), pods if enrolled is None else enrolled)
        for pod in pods:
            if pod not in uncertified:
                await ctx.certs.get(WorkloadIdentity(TD, pod.namespace, pod.service_account))
        freeze_startup_heap()  # as the ztunnel process does once started (this heap is pytest's too)
        yield Mesh(ctx, manager, registry, pods, authority)
    finally:
        gc.unfreeze()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await manager.stop_all(deadline=0.5)
        await ctx.certs.close()
        await ca.close()
        await istiod.stop(grace=0.1)
        listener.close()


async def enroll(agent: ZdsChannel, pods: list[Pod]) -> None:
    """Plays the node agent after ztunnel connected: its hello, an add per pod (with the pod's netns
    fd), then snapshot_sent; every ack must be clean."""
    await agent.recv()  # ZdsHello
    for pod in pods:
        fd = os.open(f"/var/run/netns/{pod.netns}", os.O_RDONLY)
        add = zds_pb2.WorkloadRequest(
            add=zds_pb2.AddWorkload(
                uid=pod.uid,
                workload_info=zds_pb2.WorkloadInfo(
                    name=pod.name, namespace=pod.namespace, service_account=pod.service_account
                ),
            )
        )
        await agent.send(add.SerializeToString(), fd=fd)
        os.close(fd)
        reply, _ = await agent.recv()
        assert decode_response(reply).ack.error == ""
    await agent.send(zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent()).SerializeToString())
    await agent.recv()


async def run_in(pod: Pod, *argv: str, limit: float = 15.0) -> tuple[int, str, str]:
    """Runs a command inside the pod's netns without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", pod.netns, *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


@asynccontextmanager
async def http_server(pod: Pod, port: int = 8080) -> AsyncIterator[None]:
    """A real HTTP server (python -m http.server) inside the pod."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", pod.netns, "python3", "-m", "http.server", str(port), "--bind", "0.0.0.0",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(100):
            code, _, _ = await run_in(
                pod, "python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
            )
            if code == 0:
                break
            await asyncio.sleep(0.05)
        yield
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 5)


def metric_total(registry: Registry, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``, read from the exposition text."""
    total = 0.0
    for metric in text_string_to_metric_families(render(registry).decode()):
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@asynccontextmanager
async def tcp_echo(pod: Pod, port: int = 9000) -> AsyncIterator[None]:
    """The sample TCP echo app, listening in ``pod``."""
    echo = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", pod.netns, sys.executable, "-m", "meshctl.apps.tcpecho",
        "--port", str(port), start_new_session=True,
    )  # fmt: skip
    try:
        await wait_port(pod, port)
        yield
    finally:
        echo.terminate()
        await echo.wait()


async def wait_port(pod: Pod, port: int) -> None:
    """Waits until something listens on ``port`` inside ``pod``."""
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
    for _ in range(100):
        if (await run_in(pod, sys.executable, "-c", probe))[0] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on {pod.name}:{port}")


@asynccontextmanager
async def client_hbone_pool(mesh: Mesh, client: Pod, server: Pod) -> AsyncIterator[tuple[HbonePool, PoolKey]]:
    """HBONE from inside the client pod with the client's own certificate, as its ztunnel would."""
    fd = os.open(f"/var/run/netns/{client.netns}", os.O_RDONLY)
    pool = HbonePool(sockets=InPodSocketFactory(fd), certs=mesh.ctx, clock=mesh.ctx.clock)
    key = PoolKey(
        source=WorkloadIdentity("cluster.local", "demo", "client"),
        source_ip=client.ip,
        destination=(server.ip, 15008),
        expected=frozenset({WorkloadIdentity("cluster.local", "demo", "server")}),
    )
    try:
        yield pool, key
    finally:
        await pool.close()
        os.close(fd)
