"""ztunnel's HTTP ports: admin on localhost:15000, metrics on 15020, readiness on 15021."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from mesh.rt.http import Handler, HttpReply, json_reply, text_reply
from mesh.rt.logs import current_level, set_level
from mesh.rt.metrics import CONTENT_TYPE, Registry, render
from ztunnel.context import NodeContext
from ztunnel.dump import config_dump
from ztunnel.manager import WorkloadManager

__all__ = ["admin_routes", "metrics_routes", "readiness_routes"]


def admin_routes(
    ctx: NodeContext, manager: WorkloadManager, *, quit_: Callable[[], None]
) -> dict[str, Handler]:
    """``/config_dump``, ``/connections``, ``/logging``, ``/quitquitquit`` and an index."""

    def dump(method: str, query: Mapping[str, str]) -> HttpReply:
        certificates = [status.as_dict() for status in ctx.certs.snapshot()]
        proxies = [
            {
                "uid": uid,
                "pod": f"{p.info.namespace}/{p.info.name}",
                "identity": p.identity.uri,
                "connections": p.active,
            }
            for uid, p in sorted(manager.proxies.items())
        ]
        return json_reply(config_dump(ctx.state, certificates=certificates, proxies=proxies))

    def connections(method: str, query: Mapping[str, str]) -> HttpReply:
        now = time.time()
        return json_reply({"connections": [c.row(now) for c in ctx.registry]})

    def logging_handler(method: str, query: Mapping[str, str]) -> HttpReply:
        level = query.get("level")
        if level is None:
            return json_reply({"level": current_level()})
        if method != "POST":
            return text_reply(f"use POST /logging?level={level} to change the level\n", status=405)
        try:
            set_level(level)
        except ValueError as exc:
            return text_reply(f"{exc}\n", status=400)
        ctx.log.info("admin.log_level", new_level=current_level())
        return json_reply({"level": current_level()})

    def quit_handler(method: str, query: Mapping[str, str]) -> HttpReply:
        if method != "POST":
            return text_reply("use POST /quitquitquit\n", status=405)
        quit_()
        return text_reply("draining\n")

    routes: dict[str, Handler] = {
        "/config_dump": dump,
        "/connections": connections,
        "/logging": logging_handler,
        "/quitquitquit": quit_handler,
    }
    routes["/"] = lambda method, query: text_reply("".join(f"{path}\n" for path in sorted(routes)))
    return routes


def metrics_routes(registry: Registry) -> dict[str, Handler]:
    """Prometheus text on ``/metrics`` and ``/stats/prometheus``, as ztunnel serves it."""

    def metrics(method: str, query: Mapping[str, str]) -> HttpReply:
        return HttpReply(200, CONTENT_TYPE, render(registry))

    return {"/metrics": metrics, "/stats/prometheus": metrics}


def readiness_routes(ready: Callable[[], list[str]]) -> dict[str, Handler]:
    """``/healthz/ready``: 200 when ``ready()`` lists nothing missing, else 503 naming what is."""

    def handler(method: str, query: Mapping[str, str]) -> HttpReply:
        missing = ready()
        if missing:
            return text_reply("not ready: " + "; ".join(missing) + "\n", status=503)
        return text_reply("ready\n")

    return {"/healthz/ready": handler}
