"""``meshctl analyze``: finds mesh configuration that is accepted but does not do what was meant
(like ``istioctl analyze``), in YAML files (``-f``, offline) or in the running lab.

    meshctl analyze -f samples/ [-f more.yaml] [-o json]
    meshctl analyze            # the running lab's objects
    meshctl analyze --live -f strict.yaml   # the lab's objects as they would be with the file applied
    meshctl analyze --kubeconfig ~/.kube/config [--live -f strict.yaml]   # a cluster's objects instead

Exit code 1 when there is an Error finding, else 0. Each finding has a stable code (``MSH...``),
the object, what is wrong and how to fix it (see ``meshctl.analysis``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog
import yaml
from kubernetes import client as k8s
from kubernetes.config import ConfigException

from istiod_lite.sources.kube import RESOURCES
from mesh.errors import MeshError
from mesh.rt.kube.watch import Resource, list_once, make_api_client
from meshctl.analysis import ERROR, analyze
from meshctl.lab.api import Lab
from meshctl.lab.settings import default_state_dir
from meshctl.tables import format_table

__all__ = ["cluster_objects", "load_files", "overlay", "register", "run"]

_CLUSTER_RESOURCES = (
    *(r for r in RESOURCES if r.kind in ("Namespace", "Pod", "Service")),
    Resource("Deployment", "apps", "v1", "deployments"),
    *(
        r
        for r in RESOURCES
        if r.group.endswith((".istio.io", "gateway.networking.k8s.io", "policy.mesh.dev"))
    ),
)
"""What ``--kubeconfig`` lists: istiod_lite's resources (their versions) and Deployments."""
_LIVE_KINDS = (
    "Namespace",
    "Pod",
    "Service",
    "Deployment",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "VirtualService",
    "DestinationRule",
    "Gateway",
    "HTTPRoute",
    "Telemetry",
    "LocalRateLimit",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``analyze`` to the meshctl CLI."""
    parser = subparsers.add_parser("analyze", help="find mesh configuration that does not do what was meant")
    parser.add_argument(
        "-f", "--filename", action="append", default=[], help="YAML file or directory (repeatable)"
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="with -f: analyze the files as if applied on top of the running lab's objects",
    )
    parser.add_argument(
        "--kubeconfig",
        help="analyze this Kubernetes cluster's objects instead of the lab's (needs list on them)",
    )
    parser.add_argument("--context", help="the kubeconfig context")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument(
        "--state", default=default_state_dir(), help="lab state directory (without -f, or --live)"
    )
    parser.set_defaults(func=run)


def load_files(paths: list[str]) -> list[dict[str, Any]]:
    """Every object in the YAML files (directories: their ``*.yaml``/``*.yml``; a ``List``, as
    ``kubectl get -o yaml`` writes, gives its items); raises MeshError naming a file that cannot be
    read or parsed."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        files += sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    objects: list[dict[str, Any]] = []
    for path in files:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except OSError as exc:
            raise MeshError(
                f"cannot read {path}: {exc.strerror}", hint="check the path given with -f"
            ) from None
        except yaml.YAMLError as exc:
            raise MeshError(f"{path} is not valid YAML: {exc}", hint="fix the file") from None
        for document in documents:
            if isinstance(document, dict) and str(document.get("kind", "")).endswith("List"):
                objects += [item for item in document.get("items") or [] if isinstance(item, dict)]
            elif isinstance(document, dict):
                objects.append(document)
    return objects


def overlay(live: list[dict[str, Any]], files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``live`` with each object of ``files`` applied: it replaces the live object of the same kind,
    namespace and name, or is added."""

    def key(obj: dict[str, Any]) -> tuple[str, str, str]:
        kind, meta = str(obj.get("kind")), obj.get("metadata") or {}
        namespace = meta.get("namespace") or ("" if kind == "Namespace" else "default")  # as kubectl applies
        return kind, str(namespace), str(meta.get("name"))

    merged = {key(obj): obj for obj in live}
    merged.update((key(obj), obj) for obj in files)
    return list(merged.values())


def cluster_objects(api: k8s.ApiClient, *, within: float = 30.0) -> list[dict[str, Any]]:
    """The analyzed kinds' objects on a Kubernetes cluster (one listing each; kinds whose CRD is not
    installed have none), each with its ``kind`` (list items come without it)."""

    def parse(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
        return {"kind": kind, **raw}

    log = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),  # stdout is the report (-o json)
        processors=[_quiet_not_served, structlog.processors.add_log_level, structlog.dev.ConsoleRenderer()],
    )
    listed = asyncio.run(list_once(api, _CLUSTER_RESOURCES, parse=parse, within=within, log=log))
    return [obj for kind in _LIVE_KINDS for obj in listed.get(kind, [])]


def _quiet_not_served(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A kind whose CRD is not installed simply has no objects to analyze: not worth a warning."""
    if event.get("event") == "source.kube.not_served":
        raise structlog.DropEvent
    return event


def _api_client(args: argparse.Namespace) -> k8s.ApiClient:
    try:
        return make_api_client(kubeconfig=args.kubeconfig, context=args.context)
    except (ConfigException, OSError, TypeError) as exc:
        raise MeshError(
            f"cannot use the kubeconfig: {exc}", hint="pass a readable --kubeconfig FILE"
        ) from None


def run(args: argparse.Namespace, *, api: k8s.ApiClient | None = None) -> int:
    """Prints the findings; 1 when one is an Error. ``api``: the cluster to read (tests)."""
    files = load_files(args.filename) if args.filename else []
    if args.filename and not args.live:
        objects = files
    elif api is not None or args.kubeconfig or args.context:
        objects = overlay(cluster_objects(api or _api_client(args)), files)
    else:
        lab = Lab(args.state)
        if not lab.is_running():
            raise MeshError(
                "no lab is running to analyze",
                hint="pass -f FILE (without --live) for YAML files, or --kubeconfig FILE for a cluster",
            )
        objects = overlay([o for kind in _LIVE_KINDS for o in lab.objects(kind)], files)
    findings = analyze(objects)
    if args.output == "json":
        print(json.dumps([f.to_json() for f in findings], indent=1))
    elif findings:
        rows = [["CODE", "SEVERITY", "RESOURCE", "MESSAGE", "FIX"]]
        rows += [[f.code, f.severity, f.resource, f.message, f.fix] for f in findings]
        print(format_table(rows), end="")
    else:
        print(f"no problems found in {len(objects)} objects")
    return 1 if any(f.severity == ERROR for f in findings) else 0
