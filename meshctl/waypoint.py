"""``meshctl waypoint``: deploy and inspect waypoints in the lab, like ``istioctl waypoint``.

meshctl waypoint apply -n demo [--name waypoint] [--for service] [--enroll-namespace] [--wait]
meshctl waypoint list [-n demo]
meshctl waypoint status -n demo [--name waypoint]
meshctl waypoint delete -n demo [NAME ...]

``apply`` writes the Gateway ``istioctl waypoint generate`` prints (class ``istio-waypoint``, one
HBONE listener on 15008, label ``istio.io/waypoint-for``); istiod_lite deploys it. With
``--enroll-namespace`` the namespace is labelled ``istio.io/use-waypoint=<name>``, so its Services
send their traffic through it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from mesh.errors import MeshError
from meshctl.lab.api import Lab
from meshctl.lab.settings import default_state_dir
from meshctl.tables import format_table

__all__ = ["gateway", "register"]

_CLASS = "istio-waypoint"
_FOR = ("service", "workload", "all", "none")


def gateway(name: str, namespace: str, traffic_for: str) -> dict[str, Any]:
    """The waypoint Gateway, as ``istioctl waypoint generate`` prints it."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace, "labels": {"istio.io/waypoint-for": traffic_for}},
        "spec": {
            "gatewayClassName": _CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def register(subparsers: Any) -> None:
    """Adds ``waypoint`` to the meshctl parser."""
    parser = subparsers.add_parser("waypoint", help="deploy, list, inspect and delete waypoints (in the lab)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", default=default_state_dir(), help="lab state directory")
    apply = verbs.add_parser("apply", parents=[common], help="deploy a waypoint for a namespace")
    apply.add_argument("-n", "--namespace", required=True)
    apply.add_argument("--name", default="waypoint")
    apply.add_argument("--for", dest="traffic_for", choices=_FOR, default="service", help="traffic it takes")
    apply.add_argument("--enroll-namespace", action="store_true", help="label the namespace to use it")
    apply.add_argument("--wait", action="store_true", help="wait until it is programmed (its pod ready)")
    apply.add_argument("--timeout", type=float, default=60.0)
    apply.set_defaults(func=_apply)
    listing = verbs.add_parser("list", parents=[common], help="the waypoints and whether they are programmed")
    listing.add_argument("-n", "--namespace", help="one namespace (default: all)")
    listing.set_defaults(func=_list)
    status = verbs.add_parser("status", parents=[common], help="a waypoint's conditions")
    status.add_argument("-n", "--namespace", required=True)
    status.add_argument("--name", default="waypoint")
    status.set_defaults(func=_status)
    delete = verbs.add_parser("delete", parents=[common], help="delete waypoints")
    delete.add_argument("-n", "--namespace", required=True)
    delete.add_argument("names", nargs="*", default=["waypoint"])
    delete.set_defaults(func=_delete)


def _waypoints(lab: Lab, namespace: str | None) -> list[dict[str, Any]]:
    return [
        g for g in lab.objects("Gateway", namespace) if g.get("spec", {}).get("gatewayClassName") == _CLASS
    ]


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), {})


def _apply(args: argparse.Namespace) -> int:
    lab = Lab(args.state)
    for message in lab.apply([gateway(args.name, args.namespace, args.traffic_for)]):
        print(message)
    if args.enroll_namespace:
        found = [n for n in lab.objects("Namespace") if n["metadata"]["name"] == args.namespace]
        if not found:
            raise MeshError(
                f"namespace {args.namespace!r} does not exist", hint="create it first (lab apply)"
            )
        namespace = found[0]
        namespace["metadata"].setdefault("labels", {})["istio.io/use-waypoint"] = args.name
        for message in lab.apply([namespace]):
            print(message)
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while _condition(_find(lab, args.namespace, args.name), "Programmed").get("status") != "True":
            if time.monotonic() > deadline:
                raise MeshError(
                    f"waypoint {args.namespace}/{args.name} is not programmed after {args.timeout:.0f} s",
                    hint=f"see meshctl waypoint status -n {args.namespace} --name {args.name}",
                )
            time.sleep(0.5)
        print(f"waypoint {args.namespace}/{args.name} is programmed")
    return 0


def _find(lab: Lab, namespace: str, name: str) -> dict[str, Any]:
    found = [g for g in _waypoints(lab, namespace) if g["metadata"]["name"] == name]
    if not found:
        raise MeshError(f"no waypoint {namespace}/{name}", hint=f"meshctl waypoint list -n {namespace}")
    return found[0]


def _list(args: argparse.Namespace) -> int:
    rows = [("NAMESPACE", "NAME", "FOR", "PROGRAMMED", "ADDRESS")]
    for g in _waypoints(Lab(args.state), args.namespace):
        addresses = [
            a["value"] for a in (g.get("status") or {}).get("addresses") or [] if a.get("type") == "IPAddress"
        ]
        traffic_for = (g["metadata"].get("labels") or {}).get("istio.io/waypoint-for", "service")
        programmed = _condition(g, "Programmed").get("status", "Unknown")
        rows.append(
            (
                g["metadata"]["namespace"],
                g["metadata"]["name"],
                traffic_for,
                programmed,
                ",".join(addresses) or "-",
            )
        )
    sys.stdout.write(format_table(rows))
    return 0


def _status(args: argparse.Namespace) -> int:
    g = _find(Lab(args.state), args.namespace, args.name)
    for condition in (g.get("status") or {}).get("conditions") or []:
        reason, message = condition.get("reason", ""), condition.get("message", "")
        print(f"{condition['type']}: {condition['status']} ({reason}) {message}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    lab = Lab(args.state)
    targets = [_find(lab, args.namespace, name) for name in args.names]
    for message in lab.delete(targets):
        print(message)
    return 0
