"""The ``waypoint`` command: the per-namespace L7 proxy.

Its config comes from istiod_lite over Delta ADS (``--xds-address``, TLS with ``--root-cert`` and
the bearer token of ``--token-file``; the pod's POD_NAME, POD_NAMESPACE, INSTANCE_IP and
WAYPOINT_NAME from the environment, as the lab sets them) or from a local file (``--local-config
FILE``: Envoy v3 RouteConfiguration, Cluster and ClusterLoadAssignment resources in Envoy's own
JSON/YAML, so its routing can be compared with a real Envoy loading the same file). It serves plain
HTTP/1.1 clients on ``--http-listen`` and, with istiod_lite, HBONE on 15008 (``--hbone-listen``)
with its own certificate from the CA, tunnelling to enrolled pods over HBONE too. With a local
config it serves HBONE too when given its certificate as files (``--cert-chain``, ``--key`` and
the mesh roots in ``--root-cert``, as Istio mounts ``cert-chain.pem``, ``key.pem`` and
``root-cert.pem``); its upstreams stay the plain addresses of the file. Admin
(``/config_dump``) on 15000, metrics on 15020, readiness on 15021 (ready once the config and, in
the mesh, the certificate are in);
SIGTERM drains: listeners close, in-flight requests get ``--drain-deadline`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf import json_format

from mesh.errors import MeshError
from mesh.identity.spiffe import WorkloadIdentity
from mesh.l7.normalize import MODES
from mesh.ports import ADMIN_PORT, INBOUND_HBONE_PORT, METRICS_PORT, READINESS_PORT
from mesh.rt.ca_client import CaClient, token_from_file
from mesh.rt.clock import SystemClock
from mesh.rt.drain import Drain
from mesh.rt.hbone.pool import HbonePool
from mesh.rt.http import HttpReply, HttpServer, json_reply, text_reply
from mesh.rt.logs import configure_logging, get_logger
from mesh.rt.loop import run
from mesh.rt.metrics import CONTENT_TYPE, Registry, build_registry, render
from mesh.rt.net.memory import freeze_startup_heap
from mesh.rt.net.sockets import PlainSocketFactory
from mesh.rt.rpc import client_tls
from mesh.rt.tcp_metrics import TcpMetrics
from waypoint.config import WaypointConfig, load_local_config
from waypoint.hbone import HboneFront, HboneUpstream
from waypoint.identity import FileCredentials, WaypointCredentials
from waypoint.proxy import WaypointProxy
from waypoint.tcp import TcpPassthrough
from waypoint.telemetry import AddressBook, RequestMetrics
from waypoint.tracing import Tracer, TracingSettings, exporter_for
from waypoint.xds import WaypointPod, WaypointXds

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line flags of ``waypoint``."""
    p = argparse.ArgumentParser(prog="waypoint", description="the mesh's per-namespace L7 proxy")
    p.add_argument("--local-config", type=Path, help="Envoy v3 resources (JSON/YAML) to serve")
    p.add_argument(
        "--http-listen", default="127.0.0.1:15080", help="plain HTTP/1.1 address (default %(default)s)"
    )
    p.add_argument("--route-config", default="", help="the RouteConfiguration to serve (default: the first)")
    p.add_argument("--xds-address", help="istiod_lite host:port (Delta ADS over TLS) to get the config from")
    p.add_argument(
        "--root-cert", type=Path,
        help="PEM roots that istiod_lite's certificate chains to (with --cert-chain: the mesh roots "
        "HBONE clients' certificates chain to)",
    )  # fmt: skip
    p.add_argument(
        "--cert-chain", type=Path,
        help="with --local-config: the waypoint's certificate chain (PEM, leaf first) to serve HBONE with",
    )  # fmt: skip
    p.add_argument("--key", type=Path, help="with --cert-chain: the PEM private key of its leaf")
    p.add_argument("--token-file", type=Path, help="the bearer token for istiod_lite")
    p.add_argument(
        "--istiod-name", default="istiod.istio-system.svc", help="the DNS name istiod_lite's cert carries"
    )
    p.add_argument(
        "--hbone-listen",
        default=f"0.0.0.0:{INBOUND_HBONE_PORT}",
        help="HBONE address, with --xds-address or --cert-chain (default %(default)s)",
    )
    p.add_argument(
        "--ca-address", help="CA host:port for the waypoint's certificate (default: --xds-address)"
    )
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--cluster-id", default="Kubernetes")
    p.add_argument("--admin", default=f"127.0.0.1:{ADMIN_PORT}")
    p.add_argument("--metrics", default=f"0.0.0.0:{METRICS_PORT}")
    p.add_argument("--readiness", default=f"0.0.0.0:{READINESS_PORT}")
    p.add_argument("--drain-deadline", type=float, default=5.0)
    p.add_argument(
        "--tracing-otlp",
        metavar="URL",
        help="export spans with OTLP/HTTP, e.g. http://collector:4318/v1/traces",
    )
    p.add_argument(
        "--tracing-zipkin", metavar="URL", help="export spans to Zipkin, e.g. http://zipkin:9411/api/v2/spans"
    )
    p.add_argument(
        "--tracing-sampling", type=float, default=1.0, metavar="PERCENT",
        help="percent of requests traced when neither the caller nor the route decides (default 1, as Istio)",
    )  # fmt: skip
    p.add_argument("--mesh-id", default="cluster.local", help="the istio.mesh_id span tag")
    p.add_argument(
        "--path-normalization", choices=MODES, default="BASE",
        help="Istio's meshConfig.pathNormalization for routing and the forwarded path (default BASE)",
    )  # fmt: skip
    p.add_argument("--log-format", choices=["json", "console"], default="json")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def _proxy(
    args: argparse.Namespace,
    config: Callable[[], WaypointConfig],
    registry: Registry,
    book: AddressBook | None,
    log: structlog.typing.FilteringBoundLogger,
) -> WaypointProxy:
    """The proxy with its request metrics (peers named from ``book``) and tracer."""

    def cluster_hosts(name: str) -> list[str]:
        picker = config().clusters.get(name)
        return [e.host for e in picker.endpoints] if picker else []

    requests = RequestMetrics(registry, log, book, cluster_hosts=cluster_hosts)
    return WaypointProxy(
        config, requests, route_config=args.route_config, log=log, tracer=_tracer(args, registry),
        path_normalization=args.path_normalization,
    )  # fmt: skip


def _tracer(args: argparse.Namespace, registry: Registry) -> Tracer | None:
    """The span exporter of ``--tracing-otlp`` or ``--tracing-zipkin`` (none: no tracing)."""
    if args.tracing_otlp and args.tracing_zipkin:
        raise MeshError(
            "give one of --tracing-otlp and --tracing-zipkin", hint="a waypoint exports to one collector"
        )
    if not 0 <= args.tracing_sampling <= 100:
        raise MeshError(f"--tracing-sampling {args.tracing_sampling} is not a percentage", hint="0 to 100")
    settings = TracingSettings(
        service_name=os.environ.get("GATEWAY_NAME")
        or os.environ.get("POD_NAME", "waypoint").rsplit("-", 2)[0],
        namespace=os.environ.get("POD_NAMESPACE", ""),
        mesh_id=args.mesh_id,
        default_sampling=args.tracing_sampling,
    )
    kind, url = ("otlp", args.tracing_otlp) if args.tracing_otlp else ("zipkin", args.tracing_zipkin)
    return Tracer(settings, exporter_for(kind, url, settings), registry) if url else None


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise MeshError(f"{address!r} is not host:port", hint="e.g. 127.0.0.1:15080")
    return host.strip("[]"), int(port)


def _config_dump(config: WaypointConfig) -> dict[str, object]:
    return {
        "configs": [
            {"@type": type_url, "name": name, "resource": json_format.MessageToDict(resource)}
            for type_url, resources in sorted(config.resources.items())
            for name, resource in sorted(resources.items())
        ]
    }


def _xds(args: argparse.Namespace) -> WaypointXds:
    """The Delta ADS client for ``--xds-address``: TLS to istiod_lite, the pod's bearer token."""
    if args.root_cert is None or args.token_file is None:
        raise MeshError(
            "--xds-address needs --root-cert and --token-file", hint="the lab passes both (docs/waypoints.md)"
        )
    try:
        roots = args.root_cert.read_bytes()
    except OSError as exc:
        raise MeshError(f"cannot read {args.root_cert}: {exc.strerror}", hint="check --root-cert") from None
    token = token_from_file(args.token_file)()
    return WaypointXds(
        args.xds_address,
        node=WaypointPod.from_env(os.environ).node(),
        rng=random.Random(),
        tls=client_tls(roots),
        server_name=args.istiod_name,
        call_metadata=(("authorization", f"Bearer {token}"), ("clusterid", args.cluster_id)),
    )


@dataclass
class _Mesh:
    """The waypoint in the mesh: its certificate, HBONE in on 15008, HBONE out to enrolled pods."""

    credentials: WaypointCredentials
    front: HboneFront
    pool: HbonePool

    async def close(self) -> None:
        await self.front.close()
        await self.pool.close()
        await self.credentials.close()


def _mesh(args: argparse.Namespace, proxy: WaypointProxy, book: AddressBook, tcp: TcpPassthrough) -> _Mesh:
    pod = WaypointPod.from_env(os.environ)
    account = os.environ.get("SERVICE_ACCOUNT") or pod.waypoint  # the lab runs it as the Gateway's account
    identity = WorkloadIdentity(args.trust_domain, pod.namespace, account)
    ca = CaClient(
        args.ca_address or args.xds_address,
        roots_pem=args.root_cert.read_bytes(),
        token=token_from_file(args.token_file),
        cluster_id=args.cluster_id,
        server_name=args.istiod_name,
    )
    credentials = WaypointCredentials(identity, ca)
    pool = HbonePool(sockets=PlainSocketFactory(), certs=credentials, clock=SystemClock())

    def expected(ip: str) -> frozenset[WorkloadIdentity]:
        """The identity the pod at ``ip`` must present, from the workload API (none: refused)."""
        workload = book.workload_at(ip)
        return frozenset({WorkloadIdentity.parse(workload.spiffe_uri)}) if workload else frozenset()

    proxy.upstreams.tunnel = HboneUpstream(pool, identity, expected, source_ip=pod.ip).connect
    proxy.tcp = tcp
    return _Mesh(credentials, HboneFront(proxy, credentials.server_material), pool)


def _file_credentials(args: argparse.Namespace) -> FileCredentials | None:
    """The certificate of ``--cert-chain`` and ``--key`` (None without them), for local mode."""
    if args.cert_chain is None and args.key is None:
        return None
    if args.local_config is None:
        raise MeshError(
            "--cert-chain and --key are for --local-config",
            hint="with --xds-address the waypoint gets its certificate from istiod_lite's CA",
        )
    if args.cert_chain is None or args.key is None or args.root_cert is None:
        raise MeshError(
            "HBONE from files needs --cert-chain, --key and --root-cert together",
            hint="e.g. --cert-chain cert-chain.pem --key key.pem --root-cert root-cert.pem",
        )
    return FileCredentials.load(
        cert_chain=args.cert_chain, key=args.key, root_cert=args.root_cert, trust_domain=args.trust_domain
    )


def _config_source(args: argparse.Namespace) -> tuple[Callable[[], WaypointConfig], WaypointXds | None]:
    """The current config's getter, and the xDS client when it comes from istiod_lite."""
    if args.local_config is not None:
        local = load_local_config(args.local_config)
        return lambda: local, None
    if args.xds_address:
        xds = _xds(args)
        return xds.config, xds
    raise MeshError(
        "no config: give --xds-address (istiod_lite) or --local-config FILE",
        hint="e.g. 'waypoint --local-config FILE --http-listen ADDR' with Envoy v3 resources "
        "(docs/waypoints.md)",
    )


async def _serve(args: argparse.Namespace) -> int:
    log = get_logger("waypoint")
    files = _file_credentials(args)
    config, xds = _config_source(args)
    registry: Registry = build_registry(component="waypoint")
    book = AddressBook(lambda: xds.addresses) if xds is not None else None
    proxy = _proxy(args, config, registry, book, log)
    tracer = proxy.tracer
    mesh = (
        _mesh(args, proxy, book, TcpPassthrough(config, book, TcpMetrics(registry), proxy.upstreams.open))
        if xds is not None and book is not None
        else None
    )
    ready = False
    drain = Drain(deadline=args.drain_deadline)
    drain.install_signal_handlers(asyncio.get_running_loop())  # before "started": a SIGTERM is never lost

    def readiness(method: str, query: Mapping[str, str]) -> HttpReply:
        if xds is not None and not xds.synced:
            return text_reply("not ready: config not received from istiod_lite yet\n", status=503)
        if mesh is not None and not mesh.credentials.ready:
            return text_reply(
                f"not ready: no certificate for {mesh.credentials.identity.uri} yet\n", status=503
            )
        if files is not None and not files.ready:
            return text_reply(
                f"not ready: the certificate of {files.identity.uri} is not valid now\n", status=503
            )
        return text_reply("ready\n") if ready else text_reply("not ready\n", status=503)

    def metrics(method: str, query: Mapping[str, str]) -> HttpReply:
        return HttpReply(200, CONTENT_TYPE, render(registry))

    servers = {
        "admin": (args.admin, HttpServer({"/config_dump": lambda m, q: json_reply(_config_dump(config()))})),
        "metrics": (args.metrics, HttpServer({"/metrics": metrics, "/stats/prometheus": metrics})),
        "readiness": (args.readiness, HttpServer({"/healthz/ready": readiness})),
    }
    ports = {}
    for role, (address, server) in servers.items():
        host, port = _split(address)
        ports[role] = await server.start(host, port)
    xds_task = asyncio.create_task(xds.run()) if xds is not None else None
    front = mesh.front if mesh is not None else HboneFront(proxy, files.server_material) if files else None
    if front is not None:
        host, port = _split(args.hbone_listen)
        ports["hbone"] = (await front.listen(host, port))[1]
    host, port = _split(args.http_listen)
    listener = await proxy.serve(host, port)
    bound = listener.sockets[0].getsockname()[1]
    ready = True
    log.info("waypoint.started", **{"http.port": bound, "config": "xds" if xds else "local",
                                    "routes": sorted(config().routers), "ports": ports,
                                    # full collections then walk only what requests made
                                    "gc.frozen": freeze_startup_heap()})  # fmt: skip
    await drain.wait_triggered()
    ready = False
    listener.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.drain_deadline):
            await listener.wait_closed()
    if mesh is not None:
        await mesh.close()
    elif front is not None:
        await front.close()
    proxy.upstreams.close()
    if tracer is not None:
        await tracer.close()
    if xds_task is not None:
        xds_task.cancel()
        await asyncio.gather(xds_task, return_exceptions=True)
    for _, server in servers.values():
        await server.close()
    log.info("waypoint.stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``waypoint`` console script."""
    args = parse_args(argv)
    configure_logging(fmt=args.log_format, level=args.log_level)
    try:
        return run(_serve(args))
    except MeshError as err:
        print(f"waypoint: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
