"""``meshctl proxy-status``: per connected proxy, whether it has the controller's latest config.

Reads istiod_lite's ``/debug/syncz`` (port 15014) and prints, like ``istioctl proxy-status``, one
row per proxy and one column per xDS type: SYNCED (the last response sent was ACKed), STALE (sent
but not ACKed: in flight or NACKed; "Never Acknowledged" when nothing was ever ACKed), NOT SENT.
NACKs are listed under the table with the proxy's error message.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from mesh.errors import MeshError
from meshctl.lab.api import Lab
from meshctl.lab.meshview import istiods
from meshctl.lab.settings import default_state_dir
from meshctl.nethttp import http_get

__all__ = ["ProxyStatusError", "fetch_syncz", "merge_syncz", "register", "render", "run", "xds_status"]

DEFAULT_ENDPOINT = "http://127.0.0.1:15014"


class ProxyStatusError(MeshError):
    """The debug endpoint could not be read or did not answer with a syncz document."""


def xds_status(sent: str, acked: str) -> str:
    """istioctl's rule: NOT SENT, SYNCED, STALE (Never Acknowledged), or STALE."""
    if not sent:
        return "NOT SENT"
    if sent == acked:
        return "SYNCED"
    if not acked:
        return "STALE (Never Acknowledged)"
    return "STALE"


def _short(type_url: str) -> str:
    return type_url.rpartition(".")[2].upper() or type_url


def _rows(doc: dict[str, Any], columns: list[str], *, replicas: bool) -> tuple[list[list[str]], list[str]]:
    rows, nacks = [], []
    for sub in doc.get("subscribers", []):
        by_type = {t["type_url"]: t for t in sub.get("types", [])}
        cells = [sub.get("pod", ""), sub.get("node", ""), *([sub.get("istiod", "")] if replicas else [])]
        for type_url in columns:
            entry = by_type.get(type_url)
            sent = entry["sent"]["version"] if entry else ""
            acked = (entry.get("acked") or {}).get("version", "") if entry else ""
            cells.append(xds_status(sent, acked))
            nacked = entry.get("nacked") if entry else None
            if nacked:
                nacks.append(
                    f"{sub.get('pod', '')} {_short(type_url)} {nacked['version']}: {nacked['error']}"
                )
        versions = {t["sent"]["version"] for t in by_type.values() if t["sent"]["version"]}
        cells.append(",".join(sorted(versions)) or "-")
        rows.append(cells)
    return rows, nacks


def render(doc: dict[str, Any]) -> str:
    """The proxy-status table (and NACK details) for a syncz document."""
    columns = sorted({t["type_url"] for s in doc.get("subscribers", []) for t in s.get("types", [])})
    replicas = any("istiod" in s for s in doc.get("subscribers", []))
    header = ["NAME", "NODE", *(["ISTIOD"] if replicas else []), *(_short(c) for c in columns), "VERSION"]
    rows, nacks = _rows(doc, columns, replicas=replicas)
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.append(f"istiod_lite version: {doc.get('version') or 'none built yet'}")
    if nacks:
        lines.append("NACKs:")
        lines.extend(f"  {n}" for n in nacks)
    return "\n".join(lines) + "\n"


def fetch_syncz(endpoint: str, *, timeout: float = 5.0, netns: str | None = None) -> dict[str, Any]:
    """GETs ``<endpoint>/debug/syncz`` (from inside ``netns`` when given); raises ProxyStatusError."""
    url = endpoint.rstrip("/") + "/debug/syncz"
    parsed = urllib.parse.urlsplit(url)
    try:
        status, body = http_get(
            parsed.hostname or "127.0.0.1", parsed.port or 15014, parsed.path, netns=netns, timeout=timeout
        )
    except (OSError, MeshError) as exc:
        raise ProxyStatusError(
            f"cannot read {url}: {exc}", hint="is istiod_lite running? pass --istiod http://<host>:15014"
        ) from exc
    try:
        doc = json.loads(body) if status == 200 else None
    except ValueError as exc:
        raise ProxyStatusError(f"{url} did not answer with JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("subscribers"), list):
        raise ProxyStatusError(
            f"{url} did not answer with a syncz document (HTTP {status})", hint="point --istiod at port 15014"
        )
    return doc


def _endpoints(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """``--istiod``, else the running lab's istiod_lite replicas (their pods, reached from the first
    node), else the default."""
    if args.istiod:
        return args.istiod.split(","), None
    lab = Lab(getattr(args, "state", None) or default_state_dir())
    if lab.is_running() and lab.settings.mesh:
        return [f"http://{p.ip}:15014" for p in istiods(lab)], lab.settings.nodes[0].netns
    return [DEFAULT_ENDPOINT], None


def merge_syncz(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One syncz document from several replicas' (by endpoint), as istioctl shows all istiods: each
    subscriber names the replica it is connected to (``istiod``); one document is returned as is."""
    if len(docs) == 1:
        return next(iter(docs.values()))
    subscribers = [
        {**sub, "istiod": urllib.parse.urlsplit(endpoint).hostname or endpoint}
        for endpoint, doc in docs.items()
        for sub in doc.get("subscribers", [])
    ]
    versions = sorted({str(doc.get("version") or "") for doc in docs.values()} - {""})
    return {"version": ",".join(versions), "subscribers": subscribers}


def run(args: argparse.Namespace) -> int:
    """Prints the table; returns 0, or 1 when no endpoint can be read (a replica that cannot is
    named on stderr and left out)."""
    endpoints, netns = _endpoints(args)
    docs: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        try:
            docs[endpoint] = fetch_syncz(endpoint, timeout=args.timeout, netns=netns)
        except ProxyStatusError as exc:
            print(f"meshctl proxy-status: {exc}", file=sys.stderr)
    if not docs:
        return 1
    doc = merge_syncz(docs)
    sys.stdout.write(json.dumps(doc, indent=1) + "\n" if args.output == "json" else render(doc))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``proxy-status`` to the meshctl CLI (dispatch: ``args.func(args)``)."""
    parser = subparsers.add_parser(
        "proxy-status", help="show whether each proxy has the latest config (SYNCED / STALE / NOT SENT)"
    )
    parser.add_argument(
        "--istiod",
        default=None,
        help=f"debug endpoints, comma-separated (default: the lab's replicas, else {DEFAULT_ENDPOINT})",
    )
    parser.add_argument("--state", default=default_state_dir(), help="lab state directory")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.set_defaults(func=run)
