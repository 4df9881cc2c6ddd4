"""``meshctl dashboard``: serves the service-graph page locally and prints its URL (opens nothing).

Prometheus is ``--prometheus URL``, else the running lab's (``lab up --observability``, reached
inside the lab's namespace); the live mesh is ``--istiod URL``, else the lab's istiod_lite (a
ready replica's pod, from a node's namespace).
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from mesh.errors import MeshError
from mesh.ports import ISTIOD_DEBUG_PORT
from mesh.rt.loop import run as run_loop
from meshctl.dashboard.server import Dashboard
from meshctl.dashboard.sources import Endpoint, LiveMesh, Prometheus
from meshctl.lab.api import Lab
from meshctl.lab.mesh import control_plane_address
from meshctl.lab.meshview import istiods
from meshctl.lab.observability import PROMETHEUS_PORT
from meshctl.lab.settings import default_state_dir

__all__ = ["DEFAULT_PORT", "prometheus_endpoint", "register", "run"]

DEFAULT_PORT = 20001
"""Kiali's port."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``dashboard`` to the meshctl CLI."""
    parser = subparsers.add_parser("dashboard", help="serve the mesh's service graph as a web page")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})"
    )
    parser.add_argument("--address", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--prometheus", default=None, help="Prometheus URL (default: the running lab's)")
    parser.add_argument("--istiod", default=None, help="istiod_lite debug URL (default: the running lab's)")
    parser.add_argument("--state", default=default_state_dir(), help="lab state directory")
    parser.set_defaults(func=run)


def prometheus_endpoint(state: str, url: str | None) -> Endpoint:
    """``url``, else the running lab's Prometheus (inside its namespace); raises MeshError."""
    if url:
        return Endpoint(url)
    lab = Lab(state)
    if lab.is_running() and lab.settings.observability:
        cp = control_plane_address(lab.settings)
        return Endpoint(f"http://{cp}:{PROMETHEUS_PORT}", lab.settings.bridge_netns)
    raise MeshError(
        "no Prometheus to read the mesh's metrics from",
        hint="start the lab with 'meshctl lab up --observability', or pass --prometheus URL",
    )


def sources(args: argparse.Namespace) -> tuple[Endpoint, Endpoint | None]:
    """Prometheus's and istiod_lite's endpoints from the flags, else from the running lab."""
    prometheus = prometheus_endpoint(args.state, args.prometheus)
    if args.istiod:
        return prometheus, Endpoint(args.istiod)
    lab = Lab(args.state)
    return prometheus, _lab_istiod(lab) if lab.is_running() and lab.settings.mesh else None


def _lab_istiod(lab: Lab) -> Endpoint:
    """The debug port of the lab's oldest ready istiod_lite replica (its pod IP, from the first
    node's namespace; every replica has the same view of the mesh); raises MeshError."""
    ready = istiods(lab)
    if not ready:
        raise MeshError(
            "istiod_lite has no ready replica in the lab",
            hint="see 'meshctl lab status' and its pod's log (istio-system), or pass --istiod URL",
        )
    return Endpoint(f"http://{ready[0].ip}:{ISTIOD_DEBUG_PORT}", lab.settings.nodes[0].netns)


def run(args: argparse.Namespace) -> int:
    """Serves until interrupted."""
    prometheus, istiod = sources(args)
    dashboard = Dashboard(Prometheus(prometheus), LiveMesh(istiod) if istiod else None)
    try:
        run_loop(_serve(dashboard, args.address, args.port, prometheus, istiod))
    except KeyboardInterrupt:
        print("dashboard: stopped")
    return 0


async def _serve(
    dashboard: Dashboard, address: str, port: int, prometheus: Endpoint, istiod: Endpoint | None
) -> None:
    runner = web.AppRunner(dashboard.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise MeshError(
            f"cannot serve on {address}:{port}: {exc.strerror}", hint="pick another --port"
        ) from None
    where = f" in {prometheus.netns}" if prometheus.netns else ""
    print(f"dashboard: http://{address}:{port}/  (Prometheus {prometheus.url}{where}", end="")
    print(f", live mesh {istiod.url})" if istiod else ", no live mesh)", "- Ctrl-C to stop", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
