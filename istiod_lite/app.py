"""istiod_lite's composition root: the gRPC server (CA now, config plane later), metrics and readiness.

Programmatic use (tests, the demo)::

    authority = load_authority(state_dir=path, cacerts=None, trust_domain="cluster.local", now=clock.now())
    istiod = build_server(IstiodSettings(listen="127.0.0.1:0", readiness_listen="127.0.0.1:0"),
                          authority=authority, authenticator=auth, pods=pods, clock=clock, log=log,
                          registry=None)  # a registry also serves /metrics on settings.monitoring_listen
    await istiod.start()        # istiod.ca_port, istiod.readiness_port, istiod.root_bundle_pem
    ...
    await istiod.stop()

CLI: ``istiod-lite --state-dir DIR --lab-tokens FILE [--listen 0.0.0.0:15012] ...`` (see ``--help``).

Every replica serves xDS and signs certificates with the same key: a plugged-in ``--cacerts``, else
the self-signed root shared through the ``istio-ca-secret`` Secret (``istiod_lite.ca.secret``),
else (the lab's replicas sharing one ``--state-dir``) the root kept in the state directory. Only the
elected leader writes (status conditions, the ``istio-ca-root-cert`` ConfigMap of every namespace,
the waypoints' objects on Kubernetes): a Lease in its namespace on Kubernetes, a lock file in the
lab's state directory in the lab (``mesh.rt.election``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import os
import random
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from istiod_lite.ca.auth import Authenticator, LabTokenAuthenticator
from istiod_lite.ca.authority import SigningAuthority
from istiod_lite.ca.authz import DEFAULT_TRUSTED_NODE_ACCOUNTS, NodeAccount, parse_node_accounts
from istiod_lite.ca.lab_secret import LabCaSecretStore
from istiod_lite.ca.metrics import CaMetrics
from istiod_lite.ca.pods import PodIndex
from istiod_lite.ca.secret import CaSecretStore, load_or_create_ca_secret, root_fingerprint
from istiod_lite.ca.server import DEFAULT_MAX_MESSAGE_BYTES, ServingCertificates, ca_rpc_handler
from istiod_lite.ca.service import CaPolicy, CertificateService
from istiod_lite.ca.signing import DEFAULT_MAX_TTL
from istiod_lite.ca.store import load_cacerts, load_or_create_root
from istiod_lite.push.invalid import InvalidConfig
from istiod_lite.push.plane import PushPlane
from istiod_lite.push.translated import translated_build
from istiod_lite.root_cert import LabRootCertStore, RootCertController, RootCertStore
from istiod_lite.sources import Source
from istiod_lite.sources.file import FileSource
from istiod_lite.status import LabStatusWriter, StatusReporter, StatusWriter
from istiod_lite.view import Informers
from mesh.clock import Clock
from mesh.errors import MeshError
from mesh.l7.normalize import MODES
from mesh.rt.clock import SystemClock
from mesh.rt.drain import Drain
from mesh.rt.election import (
    AlwaysLeader,
    ElectionSettings,
    Elector,
    FileLockElector,
    Leadership,
    holder_identity,
    run_while_leading,
)
from mesh.rt.http import Handler, HttpReply, HttpServer, text_reply
from mesh.rt.logs import configure_logging, get_logger
from mesh.rt.loop import run
from mesh.rt.metrics import CONTENT_TYPE, Gauge, Registry, build_registry, render

if TYPE_CHECKING:
    from istiod_lite.sources.kube_waypoints import KubeWaypointDeployer
__all__ = ["Istiod", "IstiodSettings", "build_server", "load_authority", "main", "parse_args"]

_DEFAULT_LAB_STATE = "/var/lib/mesh-lab/state"
_WAYPOINT_SYNC_EVERY = 10.0
_LAB_LOCK_RETRY = 1.0
"""How often a lab follower tries the lock file (a takeover follows a leader's exit within this)."""


@dataclass(frozen=True, slots=True)
class IstiodSettings:
    """Listening addresses and CA policy knobs."""

    listen: str = "0.0.0.0:15012"
    readiness_listen: str = "0.0.0.0:15021"
    monitoring_listen: str = "0.0.0.0:15014"
    trust_domain: str = "cluster.local"
    max_ttl: dt.timedelta = DEFAULT_MAX_TTL
    node_accounts: tuple[NodeAccount, ...] = DEFAULT_TRUSTED_NODE_ACCOUNTS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """The largest CreateCertificate request."""
    xds_max_receive_bytes: int = 16 * 1024 * 1024
    """The server's receive limit, sized for xDS (a reconnect's initial_resource_versions)."""
    xds_max_send_bytes: int = 200 * 1024 * 1024
    """A full state for 10,000 workloads is one message (ztunnel accepts up to 200 MiB)."""
    max_concurrent_rpcs: int = 1024
    serving_dns_names: tuple[str, ...] = field(default=("istiod.istio-system.svc",))


def load_authority(
    *,
    state_dir: Path | None,
    cacerts: Path | None,
    trust_domain: str,
    now: float,
    secret: CaSecretStore | None = None,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> SigningAuthority:
    """The root of trust, the first of: a plugged-in ``cacerts`` directory; the self-signed root in
    the ``secret`` store (created there on a fresh install, the winner's when replicas race);
    the self-signed root persisted in ``state_dir``. Blocking (the Secret may be read through the
    API): logs ``ca.root`` with where the root came from and its fingerprint."""
    if cacerts is not None:
        authority, source = load_cacerts(cacerts, now=now), f"cacerts {cacerts}"
    elif secret is not None:
        shared = load_or_create_ca_secret(secret, trust_domain=trust_domain, now=now)
        authority, source = shared.authority, f"{secret.name} ({shared.outcome})"
    elif state_dir is not None:
        authority = load_or_create_root(state_dir, trust_domain=trust_domain, now=now)
        source = f"state directory {state_dir}"
    else:
        raise MeshError("no root of trust configured", hint="pass --state-dir DIR or --cacerts DIR")
    if log is not None:
        log.info("ca.root", **{"ca.source": source, "ca.root_sha256": root_fingerprint(authority)})
    return authority


class Istiod:
    """A built istiod_lite: the TLS gRPC server (15012), monitoring (15014) and readiness (15021)."""

    def __init__(
        self,
        *,
        settings: IstiodSettings,
        authority: SigningAuthority,
        grpc_server: grpc.aio.Server,
        serving: ServingCertificates,
        log: structlog.typing.FilteringBoundLogger,
        registry: Registry | None = None,
    ) -> None:
        self.settings = settings
        self.authority = authority
        self.grpc_server = grpc_server
        self.serving = serving
        self.registry = registry
        self._log = log
        self._ready = False
        self._readiness = HttpServer({"/healthz/ready": self._readiness_page})
        self.monitoring_routes: dict[str, Handler] = (
            {"/metrics": self._metrics_page} if registry is not None else {}
        )
        """Pages of the monitoring port (15014); add to it before ``start``."""
        self._monitoring: HttpServer | None = None
        self.readiness_gates: list[Callable[[], str | None]] = []
        """Checks that name what is not ready yet (None when ready), e.g. the sources' initial lists."""
        self.ca_port = 0
        self.readiness_port = 0
        self.monitoring_port = 0

    @property
    def root_bundle_pem(self) -> str:
        """The trust bundle clients verify the server (and the issued leaves) against."""
        return self.authority.root_bundle_pem

    @property
    def ready(self) -> bool:
        """True between a successful start and the beginning of stop."""
        return self._ready

    async def start(self) -> None:
        """Binds every listener and starts serving; ports are known afterwards."""
        self.ca_port = self.grpc_server.add_secure_port(self.settings.listen, self.serving.credentials())
        if self.ca_port == 0:
            raise MeshError(f"cannot listen on {self.settings.listen}", hint="is the port already in use?")
        await self.grpc_server.start()
        self.readiness_port = await self._readiness.start(*_split_host_port(self.settings.readiness_listen))
        if self.monitoring_routes:
            self._monitoring = HttpServer(self.monitoring_routes)
            self.monitoring_port = await self._monitoring.start(
                *_split_host_port(self.settings.monitoring_listen)
            )
        self._ready = True
        self._log.info(
            "istiod.started",
            **{
                "ca.port": self.ca_port,
                "readiness.port": self.readiness_port,
                "monitoring.port": self.monitoring_port,
            },
        )

    async def stop(self, grace: float = 1.0) -> None:
        """Turns not-ready, lets in-flight calls finish within ``grace`` seconds, closes the listeners."""
        self._ready = False
        await self.grpc_server.stop(grace)
        await self._readiness.close()
        if self._monitoring is not None:
            await self._monitoring.close()
        self._log.info("istiod.stopped")

    def _readiness_page(self, method: str, query: Mapping[str, str]) -> HttpReply:
        if not self._ready:
            return text_reply("not ready: starting or stopping\n", status=503)
        waiting = [reason for gate in self.readiness_gates if (reason := gate()) is not None]
        if waiting:
            return text_reply("not ready: " + "; ".join(waiting) + "\n", status=503)
        return text_reply("ready\n")

    def _metrics_page(self, method: str, query: Mapping[str, str]) -> HttpReply:
        assert self.registry is not None
        return HttpReply(200, CONTENT_TYPE, render(self.registry))


def build_server(
    settings: IstiodSettings,
    *,
    authority: SigningAuthority,
    authenticator: Authenticator,
    pods: PodIndex,
    clock: Clock,
    log: structlog.typing.FilteringBoundLogger,
    registry: Registry | None = None,
    extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
) -> Istiod:
    """Wires the CA (and any ``extra_handlers``, e.g. the config plane) into one TLS gRPC server."""
    metrics = CaMetrics(registry) if registry is not None else None
    if metrics is not None:
        metrics.root_cert_expiry_timestamp.set(authority.not_after.timestamp())
    policy = CaPolicy(
        trust_domain=settings.trust_domain, max_ttl=settings.max_ttl, node_accounts=settings.node_accounts
    )
    service = CertificateService(
        lambda: authority,
        authenticator=authenticator,
        pods=pods,
        clock=clock,
        policy=policy,
        log=log,
        metrics=metrics,
    )
    serving = ServingCertificates(
        lambda: authority,
        trust_domain=settings.trust_domain,
        clock=clock,
        dns_names=settings.serving_dns_names,
    )
    handlers = [ca_rpc_handler(service, max_request_bytes=settings.max_message_bytes), *extra_handlers]
    server = _grpc_server(settings, handlers)
    return Istiod(
        settings=settings,
        authority=authority,
        grpc_server=server,
        serving=serving,
        log=log,
        registry=registry,
    )


MIN_CLIENT_PING_INTERVAL = 15.0
"""Seconds a client must leave between keepalive PINGs (istiod: ``KeepaliveEnforcementPolicy.MinTime``)."""


def _grpc_server(
    settings: IstiodSettings, handlers: list[grpc.GenericRpcHandler[Any, Any]]
) -> grpc.aio.Server:
    """The gRPC server with its limits: oversized messages get RESOURCE_EXHAUSTED before any parsing.

    Clients may PING every 15 s, idle or not, as istiod's keepalive enforcement allows (grpc's default
    of 5 minutes would answer an idle xDS stream's keepalive with GOAWAY ENHANCE_YOUR_CALM).
    """
    return grpc.aio.server(
        handlers=handlers,
        options=[
            ("grpc.max_receive_message_length", settings.xds_max_receive_bytes),
            ("grpc.max_send_message_length", settings.xds_max_send_bytes),
            ("grpc.http2.min_ping_interval_without_data_ms", int(MIN_CLIENT_PING_INTERVAL * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise MeshError(f"address {address!r} is not host:port", hint="e.g. 0.0.0.0:15021")
    return host.strip("[]") or "0.0.0.0", int(port)


def _default_monitoring(readiness_listen: str) -> str:
    host, port = _split_host_port(readiness_listen)
    return f"{host}:0" if port == 0 else "0.0.0.0:15014"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line flags of ``istiod-lite``."""
    parser = argparse.ArgumentParser(
        prog="istiod-lite", description="istiod_lite: the mesh's CA and controller"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/istiod-lite"),
        help="where the self-signed root is created and kept when no Secret holds it (see "
        "--ca-secret) (default %(default)s)",
    )
    parser.add_argument(
        "--cacerts",
        type=Path,
        default=None,
        help="plugged-in CA in Istio's cacerts layout (overrides the self-signed root)",
    )
    parser.add_argument(
        "--ca-secret",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the self-signed root in the Secret istio-ca-secret of istiod's namespace "
        "($POD_NAMESPACE or istio-system), as istiod: read at start, created with a new root when "
        "absent (when replicas race, all use the winner's), so every replica signs with one key. "
        "Default: on with --auth kubernetes; with --auth lab (the Secret in the lab's state) on when "
        "the lab holds that Secret, else the root in --state-dir (the lab's replicas share one). "
        "--cacerts takes precedence over both",
    )
    parser.add_argument(
        "--listen", default="0.0.0.0:15012", help="gRPC over TLS address (default %(default)s)"
    )
    parser.add_argument(
        "--waypoint-image",
        default="",
        help="on Kubernetes: deploy the waypoint of each istio-waypoint Gateway with this image",
    )
    parser.add_argument(
        "--path-normalization",
        choices=MODES,
        default="BASE",
        help="meshConfig.pathNormalization of every waypoint (default %(default)s)",
    )
    parser.add_argument("--readiness-listen", default="0.0.0.0:15021", help="readiness HTTP address")
    parser.add_argument(
        "--monitoring-listen",
        default=None,
        help="metrics HTTP address, /metrics (default 0.0.0.0:15014; an ephemeral port on the readiness "
        "host when --readiness-listen uses port 0)",
    )
    parser.add_argument(
        "--trust-domain", default="cluster.local", help="SPIFFE trust domain (default %(default)s)"
    )
    parser.add_argument(
        "--max-ttl",
        type=float,
        default=DEFAULT_MAX_TTL.total_seconds(),
        help="longest certificate lifetime issued, in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--trusted-node-accounts",
        default="istio-system/ztunnel",
        help="comma-separated ns/sa allowed to impersonate pods on their node",
    )
    parser.add_argument("--auth", choices=("lab", "kubernetes"), default="lab", help="caller authentication")
    parser.add_argument(
        "--lab-tokens", type=Path, default=None, help="lab token file (YAML/JSON), for --auth lab"
    )
    parser.add_argument(
        "--lab-state",
        type=Path,
        default=Path(os.environ.get("MESH_LAB_STATE", _DEFAULT_LAB_STATE)),
        help="lab state directory the pod index reads (default $MESH_LAB_STATE or %(default)s)",
    )
    parser.add_argument(
        "--drain-deadline",
        type=float,
        default=1.0,
        help="on SIGTERM, how long in-flight calls may take before they are cut (default %(default)s s); "
        "gRPC waits this long for any client connection left open, so keep it short",
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="only the elected replica writes statuses and waypoint objects (default on; "
        "--no-leader-election for a single replica that always writes)",
    )
    parser.add_argument(
        "--leader-lease-name",
        default="istiod-lite-leader",
        help="the Lease (Kubernetes) or lock file (lab: <lab state>/run/<name>.lock) (default %(default)s)",
    )
    parser.add_argument(
        "--leader-lease-namespace",
        default=_own_namespace(),
        help="the Lease's namespace (default $POD_NAMESPACE or istio-system)",
    )
    parser.add_argument(
        "--leader-lease-duration",
        type=float,
        default=30.0,
        help="seconds a follower waits on a silent leader's Lease; renewed within half, tried every "
        "quarter, as istiod (default %(default)s)",
    )
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def _plugins(
    args: argparse.Namespace,
    informers: Informers,
    *,
    leadership: Leadership,
    clock: Clock,
    log: structlog.typing.FilteringBoundLogger,
) -> tuple[Authenticator, Source, StatusWriter, Any]:
    """Caller authentication, the source that feeds the informers (lab files or Kubernetes), where
    status conditions are written (while leading), and the Kubernetes API client (None in the lab)."""

    def may_write() -> bool:
        return leadership.is_leader

    if args.auth == "lab":
        if args.lab_tokens is None:
            raise MeshError(
                "--auth lab needs --lab-tokens FILE", hint="write a token -> {node, identity} file"
            )
        authenticator = LabTokenAuthenticator.from_file(
            args.lab_tokens, trust_domain=args.trust_domain, clock=clock
        )
        source = FileSource(args.lab_state, informers.sink("lab"), logger=log)
        return authenticator, source, LabStatusWriter(args.lab_state, may_write=may_write), None
    # Only the kubernetes mode pays for importing the kubernetes client.
    from istiod_lite.ca.kube_auth import KubernetesAuthenticator  # noqa: PLC0415
    from istiod_lite.sources.kube import KubeSource, make_api_client  # noqa: PLC0415
    from istiod_lite.sources.kube_status import KubeStatusWriter  # noqa: PLC0415

    api = make_api_client()
    return (
        KubernetesAuthenticator(api, trust_domain=args.trust_domain, clock=clock),
        KubeSource(api, informers.sink("kubernetes"), logger=log),
        KubeStatusWriter(api, may_write=may_write, logger=log),
        api,
    )


def _own_namespace() -> str:
    """istiod_lite's namespace: the pod's (``POD_NAMESPACE``, from the downward API), else istio-system."""
    return os.environ.get("POD_NAMESPACE") or "istio-system"


def _ca_secret_store(args: argparse.Namespace, api: Any) -> CaSecretStore | None:
    """Where the shared root lives, or None for the state directory (``--ca-secret``'s rule)."""
    if args.cacerts is not None or args.ca_secret is False:
        return None
    if api is not None:
        from istiod_lite.ca.kube_secret import KubeCaSecretStore  # noqa: PLC0415 - Kubernetes only

        return KubeCaSecretStore(api, namespace=_own_namespace())
    store = LabCaSecretStore(args.lab_state, namespace=_own_namespace())
    return store if args.ca_secret or store.exists() else None


def _root_cert_store(
    args: argparse.Namespace, api: Any, log: structlog.typing.FilteringBoundLogger
) -> RootCertStore:
    """Where the istio-ca-root-cert ConfigMaps live: the Kubernetes API, or the lab's state."""
    if api is None:
        return LabRootCertStore(args.lab_state, logger=log)
    from istiod_lite.sources.kube_root_cert import KubeRootCertStore  # noqa: PLC0415 - Kubernetes only

    return KubeRootCertStore(api, logger=log)


def _leadership(args: argparse.Namespace, log: structlog.typing.FilteringBoundLogger) -> Leadership:
    """This replica's standing; its identity is the pod's name (``POD_NAME``) plus a random part."""
    pod = os.environ.get("POD_NAME") or os.uname().nodename
    identity = holder_identity(pod, random.SystemRandom())
    return Leadership(lease=args.leader_lease_name, identity=identity, logger=log)


def _elector(
    args: argparse.Namespace,
    api: Any,
    leadership: Leadership,
    *,
    clock: Clock,
    log: structlog.typing.FilteringBoundLogger,
) -> Elector:
    """A Lease on Kubernetes; in the lab a lock file, which the kernel frees the moment its holder
    dies (an instant takeover, and no clock to trust on one machine); nothing when turned off."""
    if not args.leader_election:
        return AlwaysLeader(leadership)
    settings = ElectionSettings.from_lease_duration(args.leader_lease_duration)
    if api is None:
        lock = args.lab_state / "run" / f"{args.leader_lease_name}.lock"
        return FileLockElector(lock, leadership, retry_period=min(_LAB_LOCK_RETRY, settings.retry_period))
    from mesh.rt.kube.lease import LeaseElector  # noqa: PLC0415 - Kubernetes mode only

    return LeaseElector(
        api,
        leadership,
        namespace=args.leader_lease_namespace,
        settings=settings,
        clock=clock,
        rng=random.SystemRandom(),
        logger=log,
    )


async def _serve(args: argparse.Namespace) -> int:
    clock = SystemClock()
    log = get_logger("istiod")
    settings = IstiodSettings(
        listen=args.listen,
        readiness_listen=args.readiness_listen,
        monitoring_listen=args.monitoring_listen or _default_monitoring(args.readiness_listen),
        trust_domain=args.trust_domain,
        max_ttl=dt.timedelta(seconds=args.max_ttl),
        node_accounts=parse_node_accounts(a for a in args.trusted_node_accounts.split(",") if a.strip()),
    )
    informers = Informers()
    leadership = _leadership(args, log)
    authenticator, source, status_writer, api = _plugins(
        args, informers, leadership=leadership, clock=clock, log=log
    )
    elector = _elector(args, api, leadership, clock=clock, log=log)
    authority = await asyncio.to_thread(
        functools.partial(
            load_authority,
            state_dir=args.state_dir,
            cacerts=args.cacerts,
            trust_domain=args.trust_domain,
            now=clock.now(),
            secret=_ca_secret_store(args, api),
            log=log,
        )
    )
    registry = build_registry(component="istiod")
    leader_gauge = Gauge(
        "leader_election_master_status",
        "1 while this replica leads (writes statuses and waypoint objects), else 0 (client-go's name).",
        ("name",),
        registry=registry,
    )
    leader_gauge.labels(leadership.lease).set_function(lambda: float(leadership.is_leader))
    reporter = StatusReporter(status_writer, now=clock.now)
    plane = PushPlane(
        translated_build(
            informers,
            trust_domain=args.trust_domain,
            on_problems=reporter.submit,
            invalid=InvalidConfig(registry, log),
        ),
        clock=clock,
        registry=registry,
        authenticator=authenticator,
    )
    istiod = build_server(
        settings,
        authority=authority,
        authenticator=authenticator,
        pods=informers,
        clock=clock,
        log=log,
        registry=registry,
        extra_handlers=[plane.rpc_handler()],
    )
    istiod.monitoring_routes.update(plane.debug_routes())
    istiod.readiness_gates.append(
        lambda: None if informers.synced else "the config sources are still listing"
    )
    informers.on_change(plane.mark_dirty)
    drain = Drain(deadline=args.drain_deadline)
    drain.install_signal_handlers(asyncio.get_running_loop())
    roots = RootCertController(
        _root_cert_store(args, api, log),
        authority.root_bundle_pem,
        namespaces=lambda: informers.current("Namespace").values(),
        may_write=lambda: leadership.is_leader,
        logger=log,
    )
    informers.on_change(roots.poke)
    leader_jobs = [reporter.run, lambda: _when_synced(informers, roots.run)]
    if api is not None and args.waypoint_image:
        deployer = _waypoint_deployer(args, api, leadership, log)
        leader_jobs.append(lambda: _deploy_waypoints(informers, deployer, status_writer))
    # Stopped in this order: the leader's writes, then the election (which releases the lease).
    stages = [[asyncio.create_task(run_while_leading(leadership, *leader_jobs))]]
    stages.append([asyncio.create_task(elector.run())])
    stages.append([asyncio.create_task(source.run())])
    try:
        await istiod.start()
        stages[-1].append(asyncio.create_task(_when_synced(informers, plane.run)))
        await drain.wait_triggered()
        await istiod.stop(grace=drain.deadline)
    finally:
        for stage in stages:
            for task in stage:
                task.cancel()
            await asyncio.gather(*stage, return_exceptions=True)
    return 0


def _waypoint_deployer(
    args: argparse.Namespace,
    api: Any,
    leadership: Leadership,
    log: structlog.typing.FilteringBoundLogger,
) -> KubeWaypointDeployer:
    from istiod_lite.sources.kube_waypoints import (  # noqa: PLC0415 - Kubernetes mode only
        KubeWaypointDeployer,
        KubeWaypointSettings,
    )

    settings = KubeWaypointSettings(
        image=args.waypoint_image, trust_domain=args.trust_domain, path_normalization=args.path_normalization
    )
    return KubeWaypointDeployer(api, settings, may_write=lambda: leadership.is_leader, logger=log)


async def _deploy_waypoints(
    informers: Informers, deployer: KubeWaypointDeployer, status_writer: StatusWriter
) -> None:
    """Keeps every waypoint's objects and its Gateway's status right (repairs drift every 10 s);
    a leader-only job."""
    await informers.wait_synced()
    while True:
        gateways = list(informers.view().gateways.values())
        statuses = await asyncio.to_thread(deployer.sync, gateways)
        await asyncio.to_thread(status_writer.write, statuses)
        await asyncio.sleep(_WAYPOINT_SYNC_EVERY)


async def _when_synced(informers: Informers, job: Callable[[], Awaitable[None]]) -> None:
    """Runs ``job`` once the informers have listed everything: the first snapshot, and the root
    ConfigMaps' namespaces, come from complete caches (never a partial cluster)."""
    await informers.wait_synced()
    await job()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``istiod-lite`` console script."""
    args = parse_args(argv)
    configure_logging(fmt=args.log_format, level=args.log_level)
    try:
        return run(_serve(args))
    except (MeshError, ValueError) as err:
        print(f"istiod-lite: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
