"""The push side's pages for the 15014 debug/metrics port, served by ``mesh.rt.http.HttpServer``.

``/debug/syncz``: per connected subscriber and type URL, the last version sent, ACKed and NACKed
(with the agent's error); ``meshctl proxy-status`` reads it. ``/debug/waypointz``: the waypoints
in the current snapshot with their resource counts, and with ``?waypoint=<ns>/<name>`` that
waypoint's resources in Envoy's JSON form (what it is sent). ``/metrics``: the Prometheus text of
the registry the push metrics live in. ``/debug/workloadz``: every workload and Service in the
current snapshot with what the mesh does for it (tunnel protocol, waypoint, policies), for
``meshctl dashboard``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from istiod_lite.push.hub import Hub
from istiod_lite.push.snapshot import SCOPE_SEPARATOR, ResourceSet, Snapshot
from istiod_lite.push.status import syncz
from mesh.api.istio.workload import workload_pb2
from mesh.rt.http import Handler, HttpReply, json_reply, text_reply
from mesh.rt.metrics import CONTENT_TYPE, Registry, render
from mesh.rt.xds import ADDRESS_TYPE_URL

__all__ = ["debug_routes", "waypointz", "workloadz"]


def _get_only(page: Handler) -> Handler:
    def handler(method: str, query: Mapping[str, str]) -> HttpReply:
        if method != "GET":
            return text_reply("only GET\n", status=405)
        return page(method, query)

    return handler


def waypointz(snapshot: Snapshot, waypoint: str = "") -> tuple[int, object]:
    """(HTTP status, JSON body): every waypoint's resource counts, or one waypoint's resources."""
    scoped: dict[str, dict[str, ResourceSet]] = {}
    for key, resources in snapshot.resources.items():
        type_url, separator, scope = key.partition(SCOPE_SEPARATOR)
        if separator:
            scoped.setdefault(scope, {})[type_url] = resources
    if not waypoint:
        counts = {s: {t: len(r) for t, r in by_type.items()} for s, by_type in sorted(scoped.items())}
        return 200, {"version": snapshot.version, "waypoints": counts}
    if waypoint not in scoped:
        return 404, {
            "error": f"no waypoint {waypoint!r} in snapshot {snapshot.version}",
            "known": sorted(scoped),
        }
    dump = {
        type_url: {
            name: json_format.MessageToDict(resource.source, preserving_proto_field_name=True)
            for name, resource in resources.items()
            if resource.source is not None
        }
        for type_url, resources in sorted(scoped[waypoint].items())
    }
    return 200, {"version": snapshot.version, "waypoint": waypoint, "resources": dump}


def workloadz(snapshot: Snapshot) -> dict[str, Any]:
    """Every workload and Service of the snapshot's address set: who is enrolled (tunnel protocol
    HBONE), which waypoint each uses, and the authorization policies that select each workload."""
    workloads: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for resource in snapshot.resources.get(ADDRESS_TYPE_URL, {}).values():
        address = resource.source
        if not isinstance(address, workload_pb2.Address):
            continue
        if address.HasField("workload"):
            w = address.workload
            workloads.append({
                "uid": w.uid, "namespace": w.namespace, "name": w.name, "workload": w.workload_name,
                "canonicalName": w.canonical_name, "serviceAccount": w.service_account, "node": w.node,
                "protocol": workload_pb2.TunnelProtocol.Name(w.tunnel_protocol),
                "waypoint": _gateway(w.waypoint) if w.HasField("waypoint") else "",
                "policies": sorted(w.authorization_policies),
            })  # fmt: skip
        elif address.HasField("service"):
            svc = address.service
            services.append({
                "namespace": svc.namespace, "name": svc.name, "hostname": svc.hostname,
                "waypoint": _gateway(svc.waypoint) if svc.HasField("waypoint") else "",
            })  # fmt: skip
    workloads.sort(key=lambda w: (str(w["namespace"]), str(w["name"])))
    services.sort(key=lambda s: (str(s["namespace"]), str(s["name"])))
    return {"version": snapshot.version, "workloads": workloads, "services": services}


def _gateway(gateway: workload_pb2.GatewayAddress) -> str:
    if gateway.HasField("hostname"):
        return f"{gateway.hostname.namespace}/{gateway.hostname.hostname}"
    return str(ipaddress.ip_address(gateway.address.address)) if gateway.address.address else ""


def _waypointz(hub: Hub, query: Mapping[str, str]) -> HttpReply:
    status, body = waypointz(hub.current, query.get("waypoint", ""))
    return json_reply(body, status=status)


def debug_routes(hub: Hub, registry: Registry) -> dict[str, Handler]:
    """The 15014 pages: ``/debug/syncz``, ``/debug/waypointz``, ``/debug/workloadz`` (JSON) and
    ``/metrics`` (Prometheus text)."""
    return {
        "/debug/syncz": _get_only(lambda _m, _q: json_reply(syncz(hub))),
        "/debug/waypointz": _get_only(lambda _m, q: _waypointz(hub, q)),
        "/debug/workloadz": _get_only(lambda _m, _q: json_reply(workloadz(hub.current))),
        "/metrics": _get_only(lambda _m, _q: HttpReply(200, CONTENT_TYPE, render(registry))),
    }
