"""The dashboard's web server (aiohttp): the page, its assets, and the JSON API behind it.

``GET /api/graph?namespace=&window=``: the service graph (see ``graph.build_graph``).
``GET /api/edge?source=&target=&protocol=&minutes=``: one edge's golden signals over time.
Every error is JSON ``{"error": ..., "hint": ...}`` with a 4xx/5xx status; the page shows it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from importlib import resources
from typing import Any

from aiohttp import web

from meshctl.dashboard.graph import QUERIES, build_graph, edge_series_queries
from meshctl.dashboard.sources import LiveMesh, Prometheus, SourceError

__all__ = ["Dashboard"]

_WINDOW = re.compile(r"^([1-9][0-9]{0,3})([smh])$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NODE = re.compile(r"^[a-z0-9][-a-z0-9.]{0,62}/[A-Za-z0-9][-A-Za-z0-9_.]{0,252}$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}
_PROMETHEUS_HINT = "start the lab with 'meshctl lab up --observability', or pass --prometheus URL"


class Dashboard:
    """The web application over a Prometheus and, when given, the live mesh."""

    def __init__(self, prometheus: Prometheus, live: LiveMesh | None = None) -> None:
        self.prometheus = prometheus
        self.live = live
        self.app = web.Application()
        static = resources.files("meshctl.dashboard") / "static"
        self._static = static
        self.app.add_routes([
            web.get("/", self._index),
            web.get("/static/{path:.+}", self._asset),
            web.get("/api/graph", self._graph),
            web.get("/api/edge", self._edge),
        ])  # fmt: skip

    async def _index(self, _: web.Request) -> web.Response:
        return web.Response(body=(self._static / "index.html").read_bytes(), content_type="text/html")

    async def _asset(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        if ".." in path.split("/") or not re.fullmatch(r"[A-Za-z0-9_./-]+", path):
            raise _error(404, f"no asset {path!r}")
        asset = self._static.joinpath(*path.split("/"))
        if not asset.is_file():
            raise _error(404, f"no asset {path!r}")
        kind = {"js": "text/javascript", "css": "text/css", "html": "text/html"}.get(path.rpartition(".")[2])
        return web.Response(body=asset.read_bytes(), content_type=kind or "application/octet-stream")

    async def _graph(self, request: web.Request) -> web.Response:
        window = _window(request.query.get("window", "1m"))
        namespace = request.query.get("namespace", "")
        if namespace and not _NAME.match(namespace):
            raise _error(
                400, f"{namespace!r} is not a namespace name", "use lower-case letters, digits and '-'"
            )
        results = await self._query_all(window)
        warnings: list[str] = []
        workloads: list[dict[str, Any]] | None = None
        if self.live is not None:
            try:
                workloads = await self.live.workloads()
            except SourceError as exc:
                warnings.append(f"the live mesh did not answer ({exc}); enrolment is judged from traffic")
        graph = build_graph(results, workloads=workloads, namespace=namespace).to_json()
        known = sorted({n["namespace"] for n in build_graph(results, workloads=workloads).to_json()["nodes"]}
                       | {str(w.get("namespace")) for w in workloads or ()})  # fmt: skip
        if namespace and namespace not in known:
            raise _error(
                404, f"no namespace {namespace!r} in the mesh's metrics or workloads",
                f"known namespaces: {', '.join(known) or 'none yet (send some traffic)'}",
            )  # fmt: skip
        return web.json_response({**graph, "window": window, "namespaces": known, "warnings": warnings})

    async def _query_all(self, window: str) -> dict[str, Any]:
        names = list(QUERIES)
        try:
            answers = await asyncio.gather(
                *(self.prometheus.query(QUERIES[n].format(window=window)) for n in names)
            )
        except SourceError as exc:
            raise _error(503, f"Prometheus: {exc}", _PROMETHEUS_HINT) from None
        return dict(zip(names, answers, strict=True))

    async def _edge(self, request: web.Request) -> web.Response:
        source, target = request.query.get("source", ""), request.query.get("target", "")
        protocol = request.query.get("protocol", "http")
        for name, node in (("source", source), ("target", target)):
            if not _NODE.match(node):
                raise _error(400, f"{name}={node!r} is not a node id", "use <namespace>/<workload>")
        if protocol not in ("http", "tcp"):
            raise _error(400, f"protocol={protocol!r}", "use http or tcp")
        try:
            minutes = min(max(int(request.query.get("minutes", "15")), 1), 180)
        except ValueError:
            raise _error(400, "minutes must be a whole number", "e.g. minutes=15") from None
        end = time.time()
        start, step = end - 60 * minutes, max(5.0, 60 * minutes / 180)
        queries = edge_series_queries(source, target, protocol)
        try:
            series = await asyncio.gather(
                *(self.prometheus.query_range(q, start=start, end=end, step=step) for q in queries.values())
            )
        except SourceError as exc:
            raise _error(503, f"Prometheus: {exc}", _PROMETHEUS_HINT) from None
        return web.json_response({
            "source": source, "target": target, "protocol": protocol, "start": start, "end": end,
            "series": dict(zip(queries, series, strict=True)),
        })  # fmt: skip


def _window(value: str) -> str:
    match = _WINDOW.match(value)
    if not match or not 30 <= int(match.group(1)) * _SECONDS[match.group(2)] <= 3600:
        raise _error(400, f"window={value!r}", "use a duration from 30s to 1h, e.g. 1m or 5m")
    return value


def _error(status: int, error: str, hint: str = "") -> web.HTTPException:
    return _STATUS[status](text=json.dumps({"error": error, "hint": hint}), content_type="application/json")


_STATUS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    404: web.HTTPNotFound,
    503: web.HTTPServiceUnavailable,
}
