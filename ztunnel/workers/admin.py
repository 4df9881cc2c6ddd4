"""ztunnel's HTTP pages with ``--workers N``: what the node serves is the sum of its processes.

``/metrics`` sums the parent's series and every worker's with the same name and labels
(``?worker=N`` shows one worker's own); ``/connections`` lists every worker's connections, each
row saying which worker holds it; ``/config_dump`` counts each pod's connections over the workers;
``/workers`` shows each worker process (pid, starts, ready, the identities it holds, the config it
applies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mesh.rt.http import AsyncHandler, Handler, HttpReply, json_reply, text_reply
from mesh.rt.metrics import CONTENT_TYPE, MetricFamily, Registry, render
from ztunnel.context import NodeContext
from ztunnel.dump import config_dump
from ztunnel.manager import WorkloadManager
from ztunnel.workers.channel import WorkerChannelError
from ztunnel.workers.pool import WorkerPool
from ztunnel.workers.stats import families_from_json, sum_families

__all__ = ["worker_admin_routes", "worker_metrics_routes"]


def worker_metrics_routes(registry: Registry, pool: WorkerPool) -> dict[str, Handler | AsyncHandler]:
    """``/metrics`` and ``/stats/prometheus``: the node's series, summed over the processes."""

    async def metrics(method: str, query: Mapping[str, str]) -> HttpReply:
        answers = await pool.ask_all("stats")
        only = query.get("worker")
        try:
            groups = [
                families_from_json(reply.fields.get("families"))
                for link, reply in answers
                if only is None or str(link.index) == only
            ]
        except WorkerChannelError as exc:
            return text_reply(f"{exc}\n", status=500)
        if only is not None:
            if not groups:
                return text_reply(f"no running worker {only}; see /workers on the admin port\n", status=404)
            return HttpReply(200, CONTENT_TYPE, _render(sum_families(groups)))
        return HttpReply(200, CONTENT_TYPE, _render(sum_families([list(registry.collect()), *groups])))

    return {"/metrics": metrics, "/stats/prometheus": metrics}


def worker_admin_routes(
    ctx: NodeContext, manager: WorkloadManager, pool: WorkerPool, *, base: dict[str, Handler]
) -> dict[str, Handler | AsyncHandler]:
    """``base`` (the single-process admin pages) with the pages that must ask the workers."""

    async def connections(method: str, query: Mapping[str, str]) -> HttpReply:
        rows: list[dict[str, object]] = []
        for link, reply in await pool.ask_all("status"):
            rows.extend({**row, "worker": link.index} for row in reply.fields.get("connections", []))
        return json_reply({"connections": rows})

    async def dump(method: str, query: Mapping[str, str]) -> HttpReply:
        active: dict[str, int] = {}
        for _, reply in await pool.ask_all("status"):
            for uid, count in reply.fields.get("active", {}).items():
                active[uid] = active.get(uid, 0) + int(count)
        certificates = [status.as_dict() for status in ctx.certs.snapshot()]
        proxies = [
            {
                "uid": uid,
                "pod": f"{p.info.namespace}/{p.info.name}",
                "identity": p.identity.uri,
                "connections": active.get(uid, 0),
            }
            for uid, p in sorted(manager.proxies.items())
        ]
        return json_reply(config_dump(ctx.state, certificates=certificates, proxies=proxies))

    async def workers(method: str, query: Mapping[str, str]) -> HttpReply:
        answers = {link.index: reply.fields for link, reply in await pool.ask_all("status")}
        rows = [
            {**row, "config": answers.get(link.index, {}).get("config")}
            for link, row in zip(pool.links, pool.status(), strict=True)
        ]
        return json_reply({"workers": rows})

    routes: dict[str, Handler | AsyncHandler] = {
        **base,
        "/connections": connections,
        "/config_dump": dump,
        "/workers": workers,
    }
    index = "".join(f"{path}\n" for path in sorted(routes))
    routes["/"] = lambda method, query: text_reply(index)
    return routes


class _Families:
    def __init__(self, families: Iterable[MetricFamily]) -> None:
        self._families = list(families)

    def collect(self) -> list[MetricFamily]:
        return self._families


def _render(families: Iterable[MetricFamily]) -> bytes:
    registry = Registry()
    registry.register(_Families(families))
    return render(registry)
