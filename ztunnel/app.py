"""ztunnel's composition root: ``ztunnel --node NAME ...``.

Config comes from istiod_lite over Delta xDS (``--xds-address``) or from a local file
(``--local-config``); certificates from the CA by impersonation; pods from the node agent over ZDS.
SIGTERM (or POST /quitquitquit) drains: listeners close, connections get ``--drain-deadline``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import sys
from collections.abc import Iterable
from pathlib import Path

import structlog

from mesh.certs import IssuedCertificate
from mesh.errors import MeshError
from mesh.identity.spiffe import WorkloadIdentity
from mesh.ports import ADMIN_PORT, METRICS_PORT, READINESS_PORT
from mesh.rt.ca_client import CaClient, token_from_file
from mesh.rt.certs import CertificateManager
from mesh.rt.clock import SystemClock
from mesh.rt.drain import Drain
from mesh.rt.http import AsyncHandler, Handler, HttpServer, ThreadedHttpServer
from mesh.rt.limits import raise_open_files_limit
from mesh.rt.logs import configure_logging, get_logger
from mesh.rt.loop import run
from mesh.rt.metrics import LoopTasks, build_registry
from mesh.rt.net.memory import freeze_startup_heap, trim_when_idle, tune_malloc
from mesh.rt.rpc import client_tls
from mesh.rt.tcp_metrics import TcpMetrics
from mesh.rt.xds import Converter, XdsClient, XdsNode, XdsState
from ztunnel.admin import admin_routes, metrics_routes, readiness_routes
from ztunnel.context import NodeContext
from ztunnel.local_config import load_local_config
from ztunnel.manager import ServedPod, WorkloadManager, WorkloadManagerMetrics
from ztunnel.revocation import CrlWatcher
from ztunnel.skew import IgnoredFields
from ztunnel.workers.admin import worker_admin_routes, worker_metrics_routes
from ztunnel.workers.mirror import ResourceMirror
from ztunnel.workers.pool import WorkerPool, worker_command
from ztunnel.xds_config import converters, state_from_xds

__all__ = ["main", "state_from_xds"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ztunnel", description="The mesh's per-node L4 proxy (in-pod mode).")
    p.add_argument("--node", required=True, help="this node's name (pods with spec.nodeName equal to it)")
    p.add_argument("--node-ip", default="", help="this ztunnel's IP, for its xDS node id")
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--cluster-id", default="Kubernetes")
    p.add_argument(
        "--zds-socket", default="/var/run/ztunnel/ztunnel.sock", help="the node agent's ZDS socket"
    )
    p.add_argument("--xds-address", help="istiod_lite host:port (Delta xDS over TLS)")
    p.add_argument(
        "--local-config", type=Path, help="local config file instead of xDS (ztunnel's YAML format)"
    )
    p.add_argument("--ca-address", help="CA host:port (defaults to --xds-address)")
    p.add_argument(
        "--root-cert", type=Path, required=True, help="PEM roots that istiod_lite's certificate chains to"
    )
    p.add_argument("--token-file", type=Path, required=True, help="this node's bearer token for istiod_lite")
    p.add_argument(
        "--istiod-name", default="istiod.istio-system.svc", help="the DNS name istiod_lite's cert carries"
    )
    p.add_argument(
        "--cert-ttl", type=int, default=24 * 3600, help="requested workload certificate TTL, seconds"
    )
    p.add_argument("--admin", default=f"127.0.0.1:{ADMIN_PORT}")
    p.add_argument("--metrics", default=f"0.0.0.0:{METRICS_PORT}")
    p.add_argument("--readiness", default=f"0.0.0.0:{READINESS_PORT}")
    p.add_argument("--drain-deadline", type=float, default=5.0)
    p.add_argument(
        "--crl-file",
        type=Path,
        help="the CA's CRLs (PEM), re-read when the file changes: revoked peers are refused and cut off",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        help="downstream connections served at once; more are refused at once "
        "(default: half the open-files limit, of each process with --workers; a value given is the "
        "node's, each worker serving its share)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="processes serving the pods' connections (SO_REUSEPORT); 'auto' is min(2, cores). "
        "With more than 1, this process keeps xDS, the CA and the ports and hands the rest to them",
    )
    p.add_argument("--log-format", choices=["json", "console"], default="json")
    p.add_argument("--log-level", default="info")
    return p


def _workers(value: str) -> int:
    """``--workers``: a count of at least 1, or ``auto`` (min(2, the cores this process may use))."""
    if value == "auto":
        return min(2, len(os.sched_getaffinity(0)))
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"--workers takes a count of at least 1 or 'auto', not {value!r}")
    return int(value)


def _host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise MeshError(f"{flag} {value!r} is not host:port", hint=f"e.g. {flag} 127.0.0.1:15000")
    return host, int(port)


class Ztunnel:
    """The running process: context, config source, workload manager and HTTP ports."""

    def __init__(self, args: argparse.Namespace) -> None:
        if bool(args.xds_address) == bool(args.local_config):
            raise MeshError("give exactly one of --xds-address and --local-config", hint="see ztunnel --help")
        if not (args.ca_address or args.xds_address):
            raise MeshError(
                "with --local-config, ztunnel still needs a CA for its pods' certificates",
                hint="pass --ca-address host:port (istiod's port 15012)",
            )
        self.args = args
        clock = SystemClock()
        rng = random.Random()
        roots = args.root_cert.read_bytes()
        self.registry = build_registry(component="ztunnel")
        self.ca = CaClient(
            args.ca_address or args.xds_address,
            roots_pem=roots,
            token=token_from_file(args.token_file),
            cluster_id=args.cluster_id,
            server_name=args.istiod_name,
        )
        ttl = args.cert_ttl
        self.workers: WorkerPool | None = None

        async def fetch(identity: WorkloadIdentity) -> IssuedCertificate:
            cert = await self.ca.fetch(identity, impersonate=True, ttl_seconds=ttl)
            if self.workers is not None:
                self.workers.certificate_issued(cert)  # issued or renewed: the workers using it get it
            return cert

        certs = CertificateManager(fetcher=fetch, clock=clock, rng=rng)
        self.ctx = NodeContext(
            node=args.node,
            trust_domain=args.trust_domain,
            certs=certs,
            metrics=TcpMetrics(self.registry),
            clock=clock,
            rng=rng,
            access_log=structlog.get_logger("access"),
            log=get_logger("ztunnel").bind(node=args.node),
            max_connections=(
                _default_max_connections() if args.max_connections is None else args.max_connections
            ),
        )
        self._was_ready = False
        if args.workers > 1:
            self.workers = self._worker_pool(certs)
            self.manager = WorkloadManager(
                self.ctx, socket_path=args.zds_socket, rng=rng, proxy_factory=self.workers.pod
            )
        else:
            self.manager = WorkloadManager(self.ctx, socket_path=args.zds_socket, rng=rng)
        self.registry.register(WorkloadManagerMetrics(self.manager))
        self.registry.register(self.ctx.budget)
        self.crl: CrlWatcher | None = None
        if args.crl_file:
            self.crl = CrlWatcher(args.crl_file, self.ctx, self._proxies)
            self.registry.register(self.crl)
        self.xds: XdsClient | None = None
        if args.xds_address:
            self.xds = self._xds_client(roots, rng)
        self.drain = Drain(deadline=args.drain_deadline)
        self._servers: list[HttpServer | ThreadedHttpServer] = []

    def _worker_pool(self, certs: CertificateManager) -> WorkerPool:
        args = self.args
        command = worker_command(
            node=args.node,
            trust_domain=args.trust_domain,
            log_format=args.log_format,
            log_level=args.log_level,
            drain_deadline=args.drain_deadline,
            max_connections=args.max_connections,
            workers=args.workers,
            local_config=None if args.local_config is None else str(args.local_config),
            crl_file=None if args.crl_file is None else str(args.crl_file),
        )
        return WorkerPool(
            count=args.workers, command=command, certs=certs, mirror=ResourceMirror(), log=self.ctx.log
        )

    def _xds_client(self, roots: bytes, rng: random.Random) -> XdsClient:
        args = self.args
        node = XdsNode(
            id=f"ztunnel~{args.node_ip}~ztunnel-{args.node}.istio-system~istio-system.svc.cluster.local",
            metadata={"NODE_NAME": args.node, "NAME": f"ztunnel-{args.node}", "NAMESPACE": "istio-system"},
        )
        token = args.token_file.read_text().strip()
        ignored = IgnoredFields(self.registry, self.ctx.log)
        return XdsClient(
            args.xds_address,
            node=node,
            converters=self._converters(ignored),
            on_state=self._on_xds_state,
            rng=rng,
            tls=client_tls(roots),
            server_name=args.istiod_name,
            call_metadata=(("authorization", f"Bearer {token}"), ("clusterid", args.cluster_id)),
        )

    def _converters(self, ignored: IgnoredFields) -> dict[str, Converter]:
        """The xDS converters; with workers, each accepted resource is also kept to hand to them."""
        by_type = converters(ignored)
        if self.workers is None:
            return by_type
        mirror = self.workers.mirror
        return {type_url: mirror.recording(type_url, convert) for type_url, convert in by_type.items()}

    def _on_xds_state(self, xds: XdsState) -> None:
        self.ctx.apply_state(state_from_xds(xds))
        if self.workers is not None:
            self.workers.publish(xds)

    def _proxies(self) -> Iterable[ServedPod]:
        """The served pods now (read each time: the manager replaces its dict when it stops)."""
        return self.manager.proxies.values()

    def missing(self) -> list[str]:
        """What readiness still waits for (empty when ready). Called on the readiness thread: it only
        reads flags and a copy of the proxies (copying a dict is atomic in CPython).

        Readiness gates the start only, as in Istio's ztunnel: once ready, ztunnel stays ready. A node
        agent restarting (a DaemonSet upgrade) or istiod going away does not stop it serving, so it
        must not make the pod unready (and count as unavailable in the ztunnel DaemonSet's roll)."""
        if self._was_ready:
            return []
        missing = []
        if self.xds is not None and not self.xds.synced:
            missing.append("config not received from istiod yet")
        if not self.manager.ready:
            missing.append("not connected to the node agent")
        for proxy in list(self.manager.proxies.values()):
            if not self.ctx.certs.usable(proxy.identity):
                missing.append(f"no certificate for {proxy.identity.uri}")
        if self.workers is not None:
            missing.extend(self.workers.missing())
        self._was_ready = not missing
        return missing

    async def _manage_pods_once_configured(self) -> None:
        """Takes pods from the node agent only once istiod's config is in (catalogue 21).

        Before that, a pod's outbound connection to a mesh workload would be planned on an empty
        state, as a destination outside the mesh: plain TCP, past mTLS and policy. Until then the
        node agent cannot enroll new pods (their CNI ADD fails, the pod does not start) and pods
        already captured have no listener, so their connections are refused, never passed through.
        """
        if self.xds is not None:
            await self.xds.wait_synced()
            self.ctx.log.info("ztunnel.config_received", workloads=len(self.ctx.state.workloads))
        if self.workers is not None:
            await self.workers.wait_live()  # each worker has the config before the first pod
        await self.manager.run()

    async def serve(self) -> int:
        """Runs until drained; returns the exit code."""
        loop = asyncio.get_running_loop()
        self.drain.install_signal_handlers(loop)
        self.registry.register(LoopTasks(loop, "ztunnel_event_loop_tasks"))
        if self.args.local_config:
            self.ctx.apply_state(load_local_config(self.args.local_config))
        await self._start_http()
        tasks = [loop.create_task(self._manage_pods_once_configured()), loop.create_task(trim_when_idle())]
        if self.xds is not None:
            tasks.append(loop.create_task(self.xds.run()))
        if self.crl is not None:
            self.crl.check()  # in force before the first pod is served
            tasks.append(loop.create_task(self.crl.run()))
        workers = None if self.workers is None else loop.create_task(self.workers.run())
        self.ctx.log.info(
            "ztunnel.started",
            zds=self.args.zds_socket,
            xds=self.args.xds_address,
            max_connections=self.ctx.budget.limit,
            workers=self.args.workers,
            **{"gc.frozen": freeze_startup_heap()},  # full collections then walk only what traffic made
        )
        await self.drain.wait_triggered()
        self.ctx.log.info("ztunnel.draining", deadline=self.args.drain_deadline)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cut = 0
        if self.workers is not None and workers is not None:
            cut = await self.workers.drain(deadline=self.args.drain_deadline)  # all with one deadline
            await asyncio.gather(workers, return_exceptions=True)
        cut += await self.manager.stop_all(deadline=self.args.drain_deadline)
        for server in self._servers:
            await server.close()
        await self.ctx.certs.close()
        await self.ca.close()
        self.ctx.log.info("ztunnel.stopped", connections_cut=cut)
        return 0

    async def _start_http(self) -> None:
        # Readiness has its own thread: kubelet's probe must be answered even while a burst of
        # connections keeps the main loop busy for longer than the probe's timeout.
        admin: dict[str, Handler | AsyncHandler] = {
            **admin_routes(self.ctx, self.manager, quit_=self.drain.trigger)
        }
        metrics: dict[str, Handler | AsyncHandler] = {**metrics_routes(self.registry)}
        if self.workers is not None:
            admin = worker_admin_routes(
                self.ctx,
                self.manager,
                self.workers,
                base=admin_routes(self.ctx, self.manager, quit_=self.drain.trigger),
            )
            metrics = worker_metrics_routes(self.registry, self.workers)
        readiness = ThreadedHttpServer(readiness_routes(self.missing), name="readiness")
        plan: list[tuple[str, str, HttpServer | ThreadedHttpServer]] = [
            ("--admin", self.args.admin, HttpServer(admin)),
            ("--metrics", self.args.metrics, HttpServer(metrics)),
            ("--readiness", self.args.readiness, readiness),
        ]
        for flag, address, server in plan:
            host, port = _host_port(address, flag)
            await server.start(host, port)
            self._servers.append(server)


def _default_max_connections() -> int:
    """Half the open-files limit (raised to the hard limit at start): each downstream connection
    also holds an upstream socket, so the limit keeps ztunnel clear of EMFILE."""
    return max(1, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)


async def _serve(args: argparse.Namespace) -> int:
    # Built inside the running loop: gRPC channels bind to the loop that creates them.
    return await Ztunnel(args).serve()


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = _parser().parse_args(argv)
    configure_logging(fmt=args.log_format, level=args.log_level)
    tune_malloc()  # the data path's large buffers stay on the heap instead of a page fault per use
    before, after = raise_open_files_limit()
    get_logger("ztunnel").info("ztunnel.open_files_limit", before=before, after=after)
    try:
        return run(_serve(args))
    except MeshError as exc:
        print(f"ztunnel: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ztunnel: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
