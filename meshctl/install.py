"""``meshctl install|upgrade|uninstall``: the mesh's Kubernetes objects rendered from ``daemonset/``
(the base, or an overlay; :mod:`meshctl.manifests`), printed (``--dry-run -o yaml``), applied to the
cluster of the kubeconfig (server-side apply, ``mesh.rt.kube.apply``) or, with ``--lab``, to a running
lab.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.config import ConfigException

from mesh.errors import MeshError
from mesh.rt.kube.apply import apply_object, delete_object, describe, read_object
from mesh.rt.kube.watch import make_api_client
from meshctl.lab.api import Lab
from meshctl.manifests import LAB_OVERLAY, Obj, install_order, render

__all__ = ["apply_all", "apply_to_lab", "register", "uninstall", "uninstall_from_lab"]

NODE_AGENT = ("DaemonSet", "istio-cni-node")
"""Deleted first on uninstall, and waited for: its agents release every pod while ztunnel still runs."""
NODE_AGENT_NAMESPACE = "istio-system"


def apply_all(api: k8s.ApiClient, objects: list[Obj], *, verb: str = "applied") -> None:
    """Server-side applies every object in install order, printing one line each."""
    for obj in install_order(objects):
        apply_object(api, obj)
        print(f"{verb} {describe(obj)}", flush=True)


def uninstall(api: k8s.ApiClient, objects: list[Obj], *, purge: bool = False, timeout: float = 120.0) -> None:
    """Deletes the node agent's DaemonSet and waits until it is gone (each agent takes its node's pods
    out of the mesh as it stops), then the rest in reverse install order; CRDs only with ``purge``."""
    agent, rest, kept = _uninstall_groups(objects, purge=purge)
    for obj in agent:
        if delete_object(api, obj):
            print(f"deleting {describe(obj)}: its agents release every pod of their node", flush=True)
        _wait_gone(api, obj, timeout=timeout)
    for obj in rest:
        print(f"{'deleted' if delete_object(api, obj) else 'absent'} {describe(obj)}", flush=True)
    _report_kept(kept)


def _uninstall_groups(objects: list[Obj], *, purge: bool) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """(the node agent's DaemonSet, the rest in reverse install order, the CRDs kept without purge)."""
    agent = [o for o in objects if (o.get("kind"), (o.get("metadata") or {}).get("name")) == NODE_AGENT]
    kept = [o for o in objects if o.get("kind") == "CustomResourceDefinition" and not purge]
    rest = [o for o in reversed(install_order(objects)) if o not in agent and o not in kept]
    return agent, rest, kept


def _report_kept(kept: list[Obj]) -> None:
    for obj in kept:
        print(f"kept {describe(obj)} (--purge deletes it, and every object of its kind)")


def apply_to_lab(lab: Lab, objects: list[Obj]) -> None:
    """Applies every object to the running lab in install order, printing what it did."""
    for line in lab.apply(install_order(objects)):
        print(line, flush=True)


def uninstall_from_lab(lab: Lab, objects: list[Obj], *, purge: bool = False, timeout: float = 120.0) -> None:
    """As :func:`uninstall`, on the lab: the node agents' DaemonSet first, waiting until its pods are
    gone (each agent releases its node's pods), then the rest in reverse install order."""
    agent, rest, kept = _uninstall_groups(objects, purge=purge)
    for line in lab.delete(agent):
        print(f"{line}: its agents release every pod of their node", flush=True)
    deadline = time.monotonic() + timeout
    while agent_pods := [p for p in lab.store.list("Pod", NODE_AGENT_NAMESPACE) if _owned_by_agent(p)]:
        if time.monotonic() > deadline:
            raise MeshError(
                f"{len(agent_pods)} node agent pods were not gone within {timeout:g} s",
                hint="see their logs (meshctl lab logs istio-system/<pod>); "
                "run meshctl uninstall --lab again",
            )
        time.sleep(0.2)
    for line in lab.delete(rest):
        print(line, flush=True)
    _report_kept(kept)


def _owned_by_agent(pod: Mapping[str, Any]) -> bool:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or ()
    return any((o.get("kind"), o.get("name")) == NODE_AGENT for o in owners)


def _wait_gone(api: k8s.ApiClient, obj: Obj, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while read_object(api, obj) is not None:
        if time.monotonic() > deadline:
            raise MeshError(
                f"{describe(obj)} was not gone within {timeout:g} s",
                hint="its pods may be stuck terminating: kubectl -n istio-system get pods; "
                "run meshctl uninstall again when they are gone",
            )
        time.sleep(1.0)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``install``, ``upgrade`` and ``uninstall`` to the meshctl CLI."""
    for name, text in (
        ("install", "render the mesh's Kubernetes objects (daemonset/) and apply them"),
        ("upgrade", "apply the objects of this version over an installed mesh (DaemonSets roll)"),
        ("uninstall", "remove the mesh: node agents release every pod first"),
    ):
        parser = subparsers.add_parser(name, help=text)
        if name != "uninstall":
            parser.add_argument(
                "--dry-run", action="store_true", help="print the objects instead of applying them"
            )
            parser.add_argument("-o", "--output", choices=("yaml",), default="yaml")
        else:
            parser.add_argument(
                "--purge", action="store_true", help="also delete the CRDs (and all their objects)"
            )
            parser.add_argument(
                "--timeout", type=float, default=120.0, help="seconds to wait for the node agents"
            )
        parser.add_argument(
            "--overlay", default="base", help="base, or an overlay: plugin-ca, trust-domain, image-pin"
        )
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="image=REPO:TAG")
        parser.add_argument(
            "--lab",
            nargs="?",
            const="",
            metavar="STATE",
            help="into the running lab of this state directory (default $MESH_LAB_STATE or "
            "/var/lib/mesh-lab/state) instead of a Kubernetes cluster: the lab overlay",
        )
        parser.add_argument(
            "--kubeconfig", help="the cluster's kubeconfig (default: in cluster, or ~/.kube/config)"
        )
        parser.add_argument("--context", help="the kubeconfig context")
        parser.set_defaults(func=run, action=name)


def run(args: argparse.Namespace, *, api: k8s.ApiClient | None = None) -> int:
    """Prints (``--dry-run``) or applies/deletes the rendered objects on the kubeconfig's cluster, or
    with ``--lab`` the lab overlay's on the running lab."""
    settings = dict(item.partition("=")[::2] for item in args.set)
    unknown = sorted(set(settings) - {"image"})
    if unknown:
        raise MeshError(
            f"unknown --set {', '.join(unknown)}", hint=f"meshctl {args.action} takes --set image=REPO:TAG"
        )
    lab_state = getattr(args, "lab", None)
    if lab_state is not None and args.overlay not in ("base", LAB_OVERLAY):
        raise MeshError(
            f"--lab takes the {LAB_OVERLAY} overlay, not {args.overlay!r}",
            hint="leave --overlay out with --lab (the lab's trust domain and CA are its own)",
        )
    overlay = LAB_OVERLAY if lab_state is not None else args.overlay
    objects = render(overlay, image=settings.get("image", ""))
    if getattr(args, "dry_run", False):
        print(yaml.safe_dump_all(objects, sort_keys=False), end="")
        return 0
    if lab_state is not None:
        lab = Lab(lab_state or None, progress=lambda line: print(line, flush=True))
        if args.action == "uninstall":
            uninstall_from_lab(lab, objects, purge=args.purge, timeout=args.timeout)
        else:
            apply_to_lab(lab, objects)
        return 0
    if api is None:
        try:
            api = make_api_client(kubeconfig=args.kubeconfig, context=args.context)
        except (ConfigException, OSError, TypeError) as exc:
            raise MeshError(
                f"no Kubernetes cluster to {args.action} into: {exc}",
                hint="pass --kubeconfig (or run in a cluster), or print the objects with --dry-run -o yaml; "
                "the lab runs the mesh with meshctl lab up --mesh",
            ) from None
    if args.action == "uninstall":
        uninstall(api, objects, purge=args.purge, timeout=args.timeout)
    else:
        apply_all(api, objects, verb="upgraded" if args.action == "upgrade" else "applied")
    return 0
