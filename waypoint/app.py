"""The ``waypoint`` command: the per-namespace L7 proxy.

Today it runs from a local config (``--local-config FILE``: Envoy v3 RouteConfiguration, Cluster and
ClusterLoadAssignment resources in Envoy's own JSON/YAML) and serves plain HTTP/1.1 clients on
``--http-listen``, so its routing can be compared with a real Envoy loading the same file. HBONE on
15008 and config from istiod_lite over Delta ADS are the next step (issue 15); asked for them, it
says so and exits. Admin (``/config_dump``) on 15000, metrics on 15020, readiness on 15021;
SIGTERM drains: listeners close, in-flight requests get ``--drain-deadline`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import json_format

from mesh.errors import MeshError
from mesh.ports import ADMIN_PORT, METRICS_PORT, READINESS_PORT
from mesh.rt.drain import Drain
from mesh.rt.http import HttpReply, HttpServer, json_reply, text_reply
from mesh.rt.logs import configure_logging, get_logger
from mesh.rt.loop import run
from mesh.rt.metrics import CONTENT_TYPE, Registry, build_registry, render
from waypoint.config import WaypointConfig, load_local_config
from waypoint.proxy import WaypointProxy
from waypoint.telemetry import RequestMetrics

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line flags of ``waypoint``."""
    p = argparse.ArgumentParser(prog="waypoint", description="the mesh's per-namespace L7 proxy")
    p.add_argument("--local-config", type=Path, help="Envoy v3 resources (JSON/YAML) to serve")
    p.add_argument(
        "--http-listen", default="127.0.0.1:15080", help="plain HTTP/1.1 address (default %(default)s)"
    )
    p.add_argument("--route-config", default="", help="the RouteConfiguration to serve (default: the first)")
    p.add_argument("--xds-address", help="istiod_lite host:port (Delta ADS); not supported yet")
    p.add_argument("--root-cert", type=Path)
    p.add_argument("--token-file", type=Path)
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--cluster-id", default="Kubernetes")
    p.add_argument("--admin", default=f"127.0.0.1:{ADMIN_PORT}")
    p.add_argument("--metrics", default=f"0.0.0.0:{METRICS_PORT}")
    p.add_argument("--readiness", default=f"0.0.0.0:{READINESS_PORT}")
    p.add_argument("--drain-deadline", type=float, default=5.0)
    p.add_argument("--log-format", choices=["json", "console"], default="json")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


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


async def _serve(args: argparse.Namespace) -> int:
    log = get_logger("waypoint")
    if args.local_config is None:
        raise MeshError(
            "this waypoint serves only a local config so far: HBONE and config from istiod_lite come next",
            hint="run 'waypoint --local-config FILE --http-listen ADDR' with Envoy v3 resources "
            "(docs/waypoints.md)",
        )
    config = load_local_config(args.local_config)
    registry: Registry = build_registry(component="waypoint")
    proxy = WaypointProxy(
        lambda: config, RequestMetrics(registry, log), route_config=args.route_config, log=log
    )
    ready = False
    drain = Drain(deadline=args.drain_deadline)
    drain.install_signal_handlers(asyncio.get_running_loop())  # before "started": a SIGTERM is never lost

    def readiness(method: str, query: Mapping[str, str]) -> HttpReply:
        return text_reply("ready\n") if ready else text_reply("not ready\n", status=503)

    def metrics(method: str, query: Mapping[str, str]) -> HttpReply:
        return HttpReply(200, CONTENT_TYPE, render(registry))

    servers = {
        "admin": (args.admin, HttpServer({"/config_dump": lambda m, q: json_reply(_config_dump(config))})),
        "metrics": (args.metrics, HttpServer({"/metrics": metrics, "/stats/prometheus": metrics})),
        "readiness": (args.readiness, HttpServer({"/healthz/ready": readiness})),
    }
    ports = {}
    for role, (address, server) in servers.items():
        host, port = _split(address)
        ports[role] = await server.start(host, port)
    host, port = _split(args.http_listen)
    listener = await proxy.serve(host, port)
    bound = listener.sockets[0].getsockname()[1]
    ready = True
    log.info("waypoint.started", **{"http.port": bound, "routes": sorted(config.routers),
                                    "clusters": sorted(config.clusters), "ports": ports})  # fmt: skip
    await drain.wait_triggered()
    ready = False
    listener.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(listener.wait_closed(), args.drain_deadline)
    proxy.upstreams.close()
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
