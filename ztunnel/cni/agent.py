"""``ztunnel-node-agent``: the node agent process (CNI role), one per node. Composition root.

    ztunnel-node-agent --node n1 --state-dir /var/lib/mesh-lab/state --run-dir /var/run/ztunnel
    ztunnel-node-agent --node "$NODE_NAME" --kube   # in its DaemonSet (in-cluster service account)

Listens on ``<run-dir>/pluginevent.sock`` (``--plugin-socket``; ``@name`` = abstract) for the CNI
plugin and on ``<run-dir>/ztunnel.sock`` (``--zds-socket``, SEQPACKET) for ztunnel; remembers
sandboxes in ``<run-dir>/pods/``. Pods come from the lab state directory, or with ``--kube`` from
the Kubernetes API (the node's pods and the namespaces, watched). On start it rebuilds its
enrolled set (pod annotations + sandbox cache + existing namespaces) before listening, so a
reconnecting ztunnel gets the full snapshot. With ``--cni-conf-dir`` and ``--cni-bin-dir`` it
installs the CNI plugin into the node's chain once it listens, and keeps it there
(``ztunnel.cni.install``); ``--readiness-port`` serves ``/readyz``, 200 only once it listens and the
plugin is chained. SIGTERM/SIGINT stop it; rules, enrollments and the plugin stay, unless
``--daemonset`` says the mesh is being uninstalled: then the plugin leaves the chain and the pods
are released.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from mesh.errors import MeshError
from mesh.rt.clock import SystemClock
from mesh.rt.http import HttpReply, HttpServer, text_reply
from mesh.rt.kube.watch import make_api_client
from mesh.rt.labstate import LabState
from mesh.rt.logs import configure_logging, get_logger
from mesh.rt.loop import run as run_loop
from ztunnel.cni.apply import HostProbeSnat, NetnsRules
from ztunnel.cni.install import CniInstaller
from ztunnel.cni.kube_pods import KubePodSource
from ztunnel.cni.node_agent import NodeAgent, ProbeSnat, Rules
from ztunnel.cni.plugin_server import PluginServer
from ztunnel.cni.pods import LabPodSource, PodSource
from ztunnel.cni.sandboxes import SandboxCache
from ztunnel.cni.zds_server import ZdsServer, ZdsWorkload

Logger = structlog.typing.FilteringBoundLogger

__all__ = ["main", "parse_args", "serve"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="ztunnel-node-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True, help="this node's name (pods with spec.nodeName == NODE)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", type=Path, help="the lab state directory")
    where.add_argument(
        "--kube", action="store_true", help="watch the Kubernetes API (in-cluster or kubeconfig)"
    )
    parser.add_argument("--kubeconfig", help="with --kube outside a cluster: the kubeconfig file")
    parser.add_argument(
        "--daemonset",
        metavar="NAMESPACE/NAME",
        help="the agent's own DaemonSet: when it is gone or being deleted at SIGTERM, the "
        "mesh is being uninstalled: the plugin leaves the CNI chain and every pod is released (rules "
        "removed); otherwise rules and the plugin stay",
    )
    parser.add_argument(
        "--cni-conf-dir",
        type=Path,
        help="the node's CNI config directory (/etc/cni/net.d): chain the mesh's plugin into its primary "
        "config and keep it there (with --cni-bin-dir)",
    )
    parser.add_argument(
        "--cni-bin-dir", type=Path, help="the node's CNI plugin directory (/opt/cni/bin): install the plugin"
    )
    parser.add_argument(
        "--cni-poll-interval", type=float, default=1.0, help="seconds between checks of the installed plugin"
    )
    parser.add_argument(
        "--readiness-port",
        type=int,
        help="serve GET /readyz on this port (all addresses): 200 once the agent listens for the plugin "
        "and the plugin is in the node's CNI chain, 503 with the reason before",
    )
    parser.add_argument("--run-dir", type=Path, default=Path("/var/run/ztunnel"), help="sockets and cache")
    parser.add_argument("--plugin-socket", help="default <run-dir>/pluginevent.sock; @name = abstract")
    parser.add_argument("--zds-socket", help="default <run-dir>/ztunnel.sock")
    parser.add_argument(
        "--cluster-id", help="cluster of ZDS uids (default: lab.yaml clusterId or Kubernetes)"
    )
    parser.add_argument("--poll-interval", type=float, default=0.2, help="state directory poll, seconds")
    parser.add_argument("--zds-timeout", type=float, default=5.0, help="seconds to wait for a ztunnel ack")
    parser.add_argument(
        "--no-probe-snat",
        action="store_true",
        help="leave the node's nat table alone (no kubelet-probe SNAT: probes to STRICT pods then fail)",
    )
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if (args.cni_conf_dir is None) != (args.cni_bin_dir is None):
        parser.error("--cni-conf-dir and --cni-bin-dir go together (the config names the installed plugin)")
    return args


def _plugin_socket(args: argparse.Namespace) -> str:
    """Where the agent listens for the plugin (and what the installed chain entry names)."""
    return str(args.plugin_socket or args.run_dir / "pluginevent.sock")


class _Readiness:
    """The readiness page: ready once the agent listens for the plugin and, when it installs the
    plugin, the plugin is chained (until then new pods would bypass the mesh)."""

    def __init__(self, installer: CniInstaller | None) -> None:
        self.listening = False
        self._installer = installer

    def page(self, method: str, query: Mapping[str, str]) -> HttpReply:
        if not self.listening:
            return text_reply("not ready: starting or stopping\n", status=503)
        if self._installer is not None and not self._installer.installed:
            return text_reply(f"not ready: {self._installer.problem}\n", status=503)
        return text_reply("ready\n")


async def _listen_readiness(port: int | None, readiness: _Readiness) -> tuple[HttpServer | None, int]:
    if port is None:
        return None, 0
    server = HttpServer({"/readyz": readiness.page})
    try:
        return server, await server.start("0.0.0.0", port)
    except OSError as exc:
        raise AgentCrashedError(
            f"cannot listen on the readiness port {port}: {exc.strerror or exc}",
            hint="another process holds it (the agent runs in the node's network namespace): "
            "choose another --readiness-port",
        ) from None


def _installer(args: argparse.Namespace, log: Logger) -> CniInstaller | None:
    if args.cni_conf_dir is None:
        return None
    return CniInstaller(
        conf_dir=args.cni_conf_dir,
        bin_dir=args.cni_bin_dir,
        agent_socket=_plugin_socket(args),
        clock=SystemClock(),
        log=log,
        poll_interval=args.cni_poll_interval,
    )


class RunningPodSource(PodSource, Protocol):
    """A pod source the agent runs: loaded once before recovery, then kept current."""

    async def wait_loaded(self) -> None: ...

    async def run(self) -> None: ...

    async def uninstalling(self, namespace: str, name: str) -> bool: ...


def _source(args: argparse.Namespace, log: Logger) -> RunningPodSource:
    if args.kube:
        api = make_api_client(kubeconfig=args.kubeconfig)
        return KubePodSource(api, node=args.node, log=log.bind(component="pod-source"))
    return LabPodSource(args.state_dir, node=args.node, poll_interval=args.poll_interval)


def _build(
    args: argparse.Namespace,
    *,
    source: RunningPodSource,
    rules: Rules,
    probes: ProbeSnat | None,
    log: Logger,
) -> tuple[NodeAgent, ZdsServer, PluginServer]:
    """Wires the agent, its ZDS server and its plugin server (they refer to each other)."""
    run_dir: Path = args.run_dir
    lab_cluster = LabState(args.state_dir).read_settings().get("clusterId") if args.state_dir else None
    cluster = args.cluster_id or str(lab_cluster or "Kubernetes")
    agent: NodeAgent

    def snapshot() -> list[ZdsWorkload]:
        return agent.snapshot()

    def ready() -> None:
        agent.zds_ready()

    zds_path = str(args.zds_socket or run_dir / "ztunnel.sock")
    zds = ZdsServer(zds_path, snapshot=snapshot, on_ready=ready, ack_timeout=args.zds_timeout, log=log)
    agent = NodeAgent(
        source=source,
        rules=rules,
        zds=zds,
        sandboxes=SandboxCache(run_dir / "pods"),
        clock=SystemClock(),
        log=log,
        cluster=cluster,
        probes=probes,
    )
    plugin = PluginServer(_plugin_socket(args), agent.handle, log=log)
    return agent, zds, plugin


async def serve(
    args: argparse.Namespace,
    *,
    stop: asyncio.Event,
    rules: Rules | None = None,
    probes: ProbeSnat | None = None,
    source: RunningPodSource | None = None,
) -> None:
    """Runs the agent until ``stop`` is set (``rules`` and ``probes`` replace the iptables appliers,
    ``source`` the pod source the arguments name)."""
    log = get_logger("ztunnel-node-agent").bind(node=args.node)
    source = source or _source(args, log)
    installer = _installer(args, log)
    readiness = _Readiness(installer)
    http, readiness_port = await _listen_readiness(args.readiness_port, readiness)  # 503 until ready
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(source.run(), name="pod source")]
    zds: ZdsServer | None = None
    plugin: PluginServer | None = None
    try:
        await _loaded(source, tasks[0])
        if probes is None and not args.no_probe_snat:
            probes = HostProbeSnat()
        agent, zds, plugin = _build(args, source=source, rules=rules or NetnsRules(), probes=probes, log=log)
        await agent.recover()
        await zds.start()
        await plugin.start()
        tasks.append(loop.create_task(agent.run(), name="reconciler"))
        if installer is not None:  # only now: a pod the chain sends here must find the agent listening
            tasks.append(loop.create_task(installer.run(), name="cni installer"))
        readiness.listening = True
        log.info(
            "agent.ready",
            **{"zds.socket": zds.path, "cni.socket": plugin.path, "cluster": agent.cluster},
            **({"readiness.port": readiness_port} if http else {}),
        )
        await _until_stopped(stop, tasks)
        readiness.listening = False
        if args.daemonset:
            namespace, _, name = args.daemonset.partition("/")
            if await source.uninstalling(namespace, name):
                await _cancel(tasks[1:])  # the reconciler must not enrol again what is released
                if installer is not None:  # first, so that no new pod is sent to an agent that is leaving
                    await asyncio.to_thread(installer.uninstall)
                await agent.release_all()
    finally:
        await _cancel(tasks)
        if http is not None:
            await http.close()
        if plugin is not None:
            await plugin.close()
        if zds is not None:
            await zds.close()
        log.info("agent.stopped")


async def _loaded(source: RunningPodSource, running: asyncio.Task[None], *, within: float = 60.0) -> None:
    """Waits for the source's first complete view (the agent must not judge pods on an empty one)."""
    loading = asyncio.ensure_future(source.wait_loaded())
    done, _ = await asyncio.wait([loading, running], timeout=within, return_when=asyncio.FIRST_COMPLETED)
    if loading in done:
        loading.result()
        return
    loading.cancel()
    error = running.exception() if running in done and not running.cancelled() else None
    raise AgentCrashedError(
        f"the pods of this node could not be listed within {within:g} s" + (f": {error!r}" if error else ""),
        hint="check that the API server is reachable and that the agent's ClusterRole allows list/watch "
        "on pods and namespaces (see its log)",
    )


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class AgentCrashedError(MeshError):
    """A long-lived task of the agent failed; the process exits so its supervisor restarts it."""


async def _until_stopped(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stopping = asyncio.get_running_loop().create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    for task in tasks:
        if task in done:
            error = None if task.cancelled() else task.exception()
            raise AgentCrashedError(
                f"task {task.get_name()} stopped: {error!r}", hint="see the log; restarting the agent is safe"
            ) from error


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(args, stop=stop)
    except MeshError as exc:
        get_logger("ztunnel-node-agent").error("agent.failed", error=str(exc))
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``ztunnel-node-agent``."""
    args = parse_args(argv)
    try:
        configure_logging(fmt=args.log_format, level=args.log_level)
    except ValueError as exc:
        sys.exit(f"ztunnel-node-agent: {exc}")
    sys.exit(run_loop(_main(args)))
