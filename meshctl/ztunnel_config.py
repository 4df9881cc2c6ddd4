"""``meshctl ztunnel-config``: what a ztunnel knows, read from its admin endpoint (like istioctl zc).

meshctl ztunnel-config workloads --node node1          # in the lab: enters the node's namespace
meshctl ztunnel-config policies --admin 127.0.0.1:15000 -o json
meshctl ztunnel-config log --node node1 --level debug  # read or change the log level
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from mesh.errors import MeshError
from mesh.ports import ADMIN_PORT
from meshctl.lab.api import Lab
from meshctl.lab.meshview import ztunnel
from meshctl.lab.settings import default_state_dir
from meshctl.nethttp import http_request

__all__ = ["HOST_ADMIN", "choose_ztunnel", "fetch_admin", "register", "render_table"]

HOST_ADMIN = f"127.0.0.1:{ADMIN_PORT}"
"""Where ztunnel's admin endpoint listens: in its own network namespace (a lab node's), on loopback."""

_VIEWS = ("workloads", "services", "policies", "certificates", "connections", "all", "log")


def register(subparsers: Any) -> None:
    """Adds ``ztunnel-config`` (alias ``zc``) to the meshctl parser."""
    parser = subparsers.add_parser(
        "ztunnel-config",
        aliases=["zc"],
        help="show a ztunnel's workloads, services, policies, certificates; read or set its log level",
    )
    parser.add_argument("view", choices=_VIEWS)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--node", help="lab node whose ztunnel to ask (enters that node's network namespace)")
    where.add_argument(
        "--admin",
        help=f"admin address of a ztunnel outside the lab (default {HOST_ADMIN} when no lab is running)",
    )
    parser.add_argument("--state", default=default_state_dir(), help="lab state directory")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.add_argument("--workload-namespace", help="only workloads in this namespace")
    parser.add_argument("--level", choices=["debug", "info", "warning", "error"], help="with 'log': set it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prints the chosen view."""
    if args.level and args.view != "log":
        raise MeshError(
            f"--level goes with the log view, not {args.view}", hint="meshctl zc log --level debug"
        )
    admin, netns, name = choose_ztunnel(args)
    if args.view == "log":
        if args.level:
            data = fetch_admin(admin, f"/logging?level={args.level}", netns=netns, method="POST")
        else:
            data = fetch_admin(admin, "/logging", netns=netns)
        print(f"{name}: log level {data['level']}")
        return 0
    path = "/connections" if args.view == "connections" else "/config_dump"
    data = fetch_admin(admin, path, netns=netns)
    if args.view == "connections":
        rows: list[dict[str, Any]] = data["connections"]
    elif args.view == "all":
        print(json.dumps(data, indent=1))
        return 0
    else:
        rows = data[args.view]
    if args.workload_namespace and args.view == "workloads":
        rows = [r for r in rows if r.get("namespace") == args.workload_namespace]
    if args.output == "json":
        print(json.dumps(rows, indent=1))
    else:
        sys.stdout.write(render_table(args.view, rows))
    return 0


def choose_ztunnel(args: argparse.Namespace) -> tuple[str, str | None, str]:
    """(admin address, network namespace or None, name to print) of the ztunnel to ask: ``--admin``,
    else the ztunnel pod of the lab node ``--node``, else of the running lab's only node; with several
    nodes, an error that lists them. With no lab running, the ztunnel on this host (``127.0.0.1:15000``)."""
    if args.admin:
        return args.admin, None, args.admin
    lab = Lab(args.state)
    node = args.node
    if node is None:
        if not lab.is_running():
            return HOST_ADMIN, None, HOST_ADMIN
        names = lab.settings.node_names()
        if len(names) != 1:
            raise MeshError(
                f"the lab has {len(names)} nodes ({', '.join(names)}), each with its own ztunnel; "
                "say which one to ask",
                hint=f"meshctl ztunnel-config {args.view} --node {names[0]}",
            )
        node = names[0]
    lab.settings.node(node)  # an unknown node is an error naming the lab's nodes
    return HOST_ADMIN, ztunnel(lab, node).netns, node


def fetch_admin(
    address: str, path: str, *, netns: str | None = None, timeout: float = 5.0, method: str = "GET"
) -> dict[str, Any]:
    """Asks a ztunnel admin port for ``path`` (inside ``netns`` when given) and decodes the JSON."""
    host, _, port = address.rpartition(":")
    try:
        status, body = http_request(method, host, int(port), path, netns=netns, timeout=timeout)
    except OSError as exc:
        where = f" in network namespace {netns}" if netns else ""
        raise MeshError(
            f"cannot reach the ztunnel admin endpoint {address}{where}: {exc}",
            hint="is ztunnel running there? in the lab, check 'meshctl lab status'",
        ) from None
    if status != 200:
        detail = body.decode(errors="replace").strip()[:200]
        raise MeshError(f"ztunnel admin answered HTTP {status}: {detail}", hint="check the ztunnel's logs")
    decoded: dict[str, Any] = json.loads(body)
    return decoded


def _identity(uri: str) -> str:
    """``ns/sa`` of a SPIFFE URI (the trust domain is the mesh's), or ``-`` for plaintext."""
    return uri.split("/ns/", 1)[1].replace("/sa/", "/", 1) if "/ns/" in uri else (uri or "-")


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def _expiry(row: dict[str, Any]) -> str:
    return str(row.get("not_after") or "-")


_COLUMNS: dict[str, list[tuple[str, Callable[[dict[str, Any]], str]]]] = {
    "workloads": [
        ("NAMESPACE", lambda r: r["namespace"]),
        ("POD NAME", lambda r: r["name"]),
        ("ADDRESS", lambda r: ",".join(r["workloadIps"])),
        ("NODE", lambda r: r["node"] or "-"),
        ("WAYPOINT", lambda r: (r["waypoint"] or {}).get("destination", "None")),
        ("PROTOCOL", lambda r: r["protocol"]),
    ],
    "services": [
        ("NAMESPACE", lambda r: r["namespace"]),
        ("SERVICE NAME", lambda r: r["name"]),
        ("SERVICE VIP", lambda r: ",".join(v.lstrip("/") for v in r["vips"])),
        ("WAYPOINT", lambda r: (r["waypoint"] or {}).get("destination", "None")),
        ("PORTS", lambda r: ",".join(f"{p}->{t}" for p, t in r["ports"].items())),
    ],
    "policies": [
        ("NAMESPACE", lambda r: r["namespace"]),
        ("POLICY NAME", lambda r: r["name"]),
        ("ACTION", lambda r: r["action"]),
        ("SCOPE", lambda r: r["scope"]),
        ("RULES", lambda r: str(len(r["rules"]))),
    ],
    "certificates": [
        ("CERTIFICATE NAME", lambda r: str(r.get("identity", "-"))),
        ("STATE", lambda r: str(r.get("state", "-"))),
        ("SERIAL NUMBER", lambda r: str(r.get("serial") or "-")),
        ("EXPIRES", _expiry),
    ],
    "connections": [
        ("DIRECTION", lambda r: r["direction"]),
        ("SOURCE", lambda r: r["src.addr"]),
        ("DESTINATION", lambda r: r["dst.addr"]),
        ("SOURCE IDENTITY", lambda r: _identity(r["src.identity"])),
        ("DESTINATION IDENTITY", lambda r: _identity(r["dst.identity"])),
        ("BYTES SENT", lambda r: str(r["bytes_sent"])),
        ("BYTES RECV", lambda r: str(r["bytes_recv"])),
        ("AGE", lambda r: _age(float(r["age_seconds"]))),
    ],
}


def render_table(view: str, rows: list[dict[str, Any]]) -> str:
    """An aligned text table of ``rows`` for ``view``."""
    columns = _COLUMNS[view]
    cells = [[title for title, _ in columns]] + [[str(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in cells
    )
