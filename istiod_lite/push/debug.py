"""The push side's pages for the 15014 debug/metrics port, served by ``mesh.rt.http.HttpServer``.

``/debug/syncz``: per connected subscriber and type URL, the last version sent, ACKed and NACKed
(with the agent's error); ``meshctl proxy-status`` reads it. ``/metrics``: the Prometheus text
of the registry the push metrics live in.
"""

from __future__ import annotations

from collections.abc import Mapping

from istiod_lite.push.hub import Hub
from istiod_lite.push.status import syncz
from mesh.rt.http import Handler, HttpReply, json_reply, text_reply
from mesh.rt.metrics import CONTENT_TYPE, Registry, render

__all__ = ["debug_routes"]


def _get_only(page: Handler) -> Handler:
    def handler(method: str, query: Mapping[str, str]) -> HttpReply:
        if method != "GET":
            return text_reply("only GET\n", status=405)
        return page(method, query)

    return handler


def debug_routes(hub: Hub, registry: Registry) -> dict[str, Handler]:
    """``/debug/syncz`` (JSON) and ``/metrics`` (Prometheus text), for an ``HttpServer``."""
    return {
        "/debug/syncz": _get_only(lambda _m, _q: json_reply(syncz(hub))),
        "/metrics": _get_only(lambda _m, _q: HttpReply(200, CONTENT_TYPE, render(registry))),
    }
