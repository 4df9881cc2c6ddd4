"""``meshctl proxy-config routes|clusters|endpoints <waypoint pod>``: what a waypoint serves, read from
its admin ``/config_dump`` inside the pod's network namespace (like ``istioctl proxy-config``).

meshctl proxy-config routes demo/waypoint          # a unique name prefix is enough
meshctl proxy-config clusters demo/waypoint -o json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mesh.errors import MeshError
from mesh.ports import ADMIN_PORT
from meshctl.lab.api import Lab
from meshctl.lab.settings import default_state_dir
from meshctl.nethttp import http_request
from meshctl.tables import format_table

__all__ = ["register", "rows"]

_TYPES = {
    "routes": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "clusters": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "endpoints": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
}


def register(subparsers: Any) -> None:
    """Adds ``proxy-config`` (alias ``pc``) to the meshctl parser."""
    parser = subparsers.add_parser(
        "proxy-config", aliases=["pc"], help="a waypoint's routes, clusters, endpoints"
    )
    parser.add_argument("view", choices=sorted(_TYPES))
    parser.add_argument("pod", help="the waypoint pod: NAMESPACE/NAME or a unique name prefix")
    parser.add_argument("--state", default=default_state_dir(), help="lab state directory")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.set_defaults(func=_run)


def rows(view: str, dump: dict[str, Any]) -> list[tuple[str, ...]]:
    """The table of ``view`` from a waypoint's ``/config_dump`` (header first)."""
    configs = [c["resource"] for c in dump.get("configs", []) if c.get("@type") == _TYPES[view]]
    if view == "routes":
        table: list[tuple[str, ...]] = [("ROUTE CONFIG", "VIRTUAL HOST", "DOMAINS", "ROUTES")]
        for config in configs:
            for vhost in config.get("virtualHosts", []):
                names = [r.get("name", "-") for r in vhost.get("routes", [])]
                domains = ",".join(vhost.get("domains", []))
                table.append((config.get("name", ""), vhost.get("name", ""), domains, ",".join(names)))
        return table
    if view == "clusters":
        table = [("CLUSTER", "LB POLICY", "TYPE")]
        table += [
            (c.get("name", ""), c.get("lbPolicy", "ROUND_ROBIN"), c.get("type", "EDS")) for c in configs
        ]
        return table
    table = [("CLUSTER", "ENDPOINT", "HBONE")]
    for config in configs:
        for locality in config.get("endpoints", []):
            for lb in locality.get("lbEndpoints", []):
                address = lb.get("endpoint", {}).get("address", {}).get("socketAddress", {})
                matches = (
                    lb.get("metadata", {}).get("filterMetadata", {}).get("envoy.transport_socket_match", {})
                )
                endpoint = f"{address.get('address')}:{address.get('portValue')}"
                hbone = "yes" if matches.get("tunnel") == "http" else "no"
                table.append((config.get("clusterName", ""), endpoint, hbone))
    return table


def _run(args: argparse.Namespace) -> int:
    lab = Lab(args.state)
    netns = lab.pod_netns(args.pod)
    try:
        status, body = http_request("GET", "127.0.0.1", ADMIN_PORT, "/config_dump", netns=netns)
    except OSError as exc:
        raise MeshError(
            f"cannot reach the admin endpoint of {args.pod} (127.0.0.1:{ADMIN_PORT} in its namespace): {exc}",
            hint="is it a waypoint pod? see 'meshctl waypoint list' and 'meshctl lab status'",
        ) from None
    if status != 200:
        raise MeshError(
            f"{args.pod} answered HTTP {status} for /config_dump", hint="see its log: meshctl lab logs"
        )
    dump: dict[str, Any] = json.loads(body)
    if args.output == "json":
        configs = [c for c in dump.get("configs", []) if c.get("@type") == _TYPES[args.view]]
        print(json.dumps(configs, indent=1))
        return 0
    sys.stdout.write(format_table(rows(args.view, dump)))
    return 0
