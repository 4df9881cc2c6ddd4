"""``meshctl install|upgrade|uninstall``: the mesh's Kubernetes objects rendered from ``daemonset/``
(the base, or an overlay) in pure Python, printed (``--dry-run -o yaml``) or applied to the cluster of
the kubeconfig (server-side apply, ``mesh.rt.kube.apply``). The renderer is the subset of kustomize
the manifests use:
``resources`` (files, or directories with a kustomization), ``images`` (newName/newTag by image
name) and ``patches``: a file of objects is merged into the object of the same kind and name (lists of
named items such as containers, volumes and ports merged by name, other lists replaced); a file
holding a list of RFC 6902 operations (``add``, ``remove``, ``replace``, ``test``) is applied to the
objects its ``target`` (kind, name, optionally namespace) selects. ``kubectl apply -k
daemonset/overlays/<name>`` gives the same objects.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.config import ConfigException

from mesh.errors import MeshError
from mesh.rt.kube.apply import apply_object, delete_object, describe, read_object
from mesh.rt.kube.watch import make_api_client
from meshctl.lab.api import Lab

__all__ = [
    "DAEMONSET", "apply_all", "apply_to_lab", "install_order", "json_patch", "overlays", "register",
    "render", "uninstall", "uninstall_from_lab",
]  # fmt: skip

DAEMONSET = Path(__file__).resolve().parent.parent / "daemonset"
Obj = dict[str, Any]


def overlays() -> list[str]:
    """The overlay names (``base`` first)."""
    return ["base", *sorted(p.name for p in (DAEMONSET / "overlays").iterdir() if p.is_dir())]


def render(overlay: str = "base", *, image: str = "") -> list[Obj]:
    """The objects of ``overlay`` (``--set image=`` replaces every mesh image when given)."""
    root = DAEMONSET / "base" if overlay == "base" else DAEMONSET / "overlays" / overlay
    if not (root / "kustomization.yaml").is_file():
        raise MeshError(f"no overlay {overlay!r} in {DAEMONSET}", hint=f"use one of: {', '.join(overlays())}")
    objects = _build(root)
    if image:
        for container in _containers(objects):
            container["image"] = image
    return objects


def _build(directory: Path) -> list[Obj]:
    kustomization = _load(directory / "kustomization.yaml")[0]
    objects: list[Obj] = []
    for resource in kustomization.get("resources") or ():
        path = (directory / str(resource)).resolve()
        objects += _build(path) if path.is_dir() else _load(path)
    for patch in kustomization.get("patches") or ():
        if "target" in patch:
            _apply_operations(objects, patch, directory)
            continue
        for change in _load(directory / str(patch["path"])):
            target = next((o for o in objects if _key(o) == _key(change)), None)
            if target is None:
                raise MeshError(
                    f"{directory}: patch {patch['path']} names {_key(change)}, which is not in the resources",
                    hint="patch an object the resources define",
                )
            _merge(target, change)
    for rule in kustomization.get("images") or ():
        for container in _containers(objects):
            name, tag = _split_image(str(container.get("image", "")))
            if name == rule["name"] or name.rsplit("/", 1)[-1] == rule["name"]:
                new_name, new_tag = rule.get("newName") or name, rule.get("newTag") or tag
                container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
    return objects


def _apply_operations(objects: list[Obj], patch: Mapping[str, Any], directory: Path) -> None:
    """An RFC 6902 patch (``patch["path"]``, a YAML list of operations) on each object its ``target``
    selects; a ``test`` that fails, a path that does not exist or no object selected is an error
    naming the file, so a change to the base that an overlay no longer fits stops the rendering."""
    source = directory / str(patch["path"])
    operations = _read_yaml(source)[0]
    target = patch["target"]
    selected = [
        o
        for o in objects
        if (_key(o)[0], _key(o)[2]) == (target.get("kind"), target.get("name"))
        and target.get("namespace", _key(o)[1]) == _key(o)[1]
    ]
    if not isinstance(operations, list):
        raise MeshError(
            f"{source} is not a list of operations",
            hint="a patch with a target is a YAML list of RFC 6902 operations",
        )
    if not selected:
        raise MeshError(
            f"{source}: its target {dict(target)} selects no object",
            hint="target an object the resources define (kind, name, optionally namespace)",
        )
    for obj in selected:
        for number, operation in enumerate(operations, 1):
            try:
                json_patch(obj, operation)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise MeshError(
                    f"{source}: operation {number} ({operation}) does not fit {_key(obj)}: {exc}",
                    hint="the base changed under this overlay: update the overlay's operations",
                ) from None


def json_patch(document: Obj, operation: Mapping[str, Any]) -> None:
    """One RFC 6902 operation (add, remove, replace, test) on ``document``, in place; a path that does
    not exist or a failed test raises KeyError, IndexError or ValueError."""
    op, pointer = operation["op"], str(operation["path"])
    if not pointer.startswith("/"):
        raise ValueError(f"path {pointer!r} must start with /")
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    container: Any = document
    for part in parents:
        container = container[int(part)] if isinstance(container, list) else container[part]
    if op == "test":
        found = container[int(last)] if isinstance(container, list) else container[last]
        if found != operation["value"]:
            raise ValueError(f"{pointer} is {found!r}, not {operation['value']!r}")
    elif op == "add" and isinstance(container, list):
        index = len(container) if last == "-" else int(last)
        if not 0 <= index <= len(container):
            raise IndexError(f"{pointer}: index {index} out of range")
        container.insert(index, copy.deepcopy(operation["value"]))
    elif op in ("add", "replace") and isinstance(container, dict):
        if op == "replace" and last not in container:
            raise KeyError(f"{pointer} does not exist")
        container[last] = copy.deepcopy(operation["value"])
    elif op == "replace":
        container[int(last)] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del container[int(last) if isinstance(container, list) else last]
    else:
        raise ValueError(f"unknown op {op!r} (add, remove, replace and test are supported)")


def _split_image(image: str) -> tuple[str, str]:
    """(name, tag) of ``registry/name:tag`` (a registry's port is not a tag)."""
    name, colon, tag = image.rpartition(":")
    return (name, tag) if colon and "/" not in tag else (image, "")


def _load(path: Path) -> list[Obj]:
    return [d for d in _read_yaml(path) if isinstance(d, dict)]


def _read_yaml(path: Path) -> list[Any]:
    try:
        return list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise MeshError(
            f"cannot read {path}: {exc}", hint="the daemonset/ directory of the repository"
        ) from None


def _key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return str(obj.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name"))


def _merge(target: Obj, change: Mapping[str, Any]) -> None:
    for key, value in change.items():
        current = target.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            _merge(current, value)
        elif isinstance(value, list) and isinstance(current, list) and _named(value) and _named(current):
            by_name = {item["name"]: item for item in current}
            for item in value:
                if item["name"] in by_name:
                    _merge(by_name[item["name"]], item)
                else:
                    current.append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "name" in i for i in items)


def _containers(objects: list[Obj]) -> Iterator[Obj]:
    for obj in objects:
        spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        yield from spec.get("containers") or ()
        yield from spec.get("initContainers") or ()


_INSTALL_ORDER = (
    "Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
    "Role", "RoleBinding", "ConfigMap", "Secret", "Service", "PodDisruptionBudget", "Deployment", "DaemonSet",
)  # fmt: skip
NODE_AGENT = ("DaemonSet", "istio-cni-node")
NODE_AGENT_NAMESPACE = "istio-system"
LAB_OVERLAY = "lab"
"""Deleted first on uninstall, and waited for: its agents release every pod while ztunnel still runs."""


def install_order(objects: list[Obj]) -> list[Obj]:
    """Dependencies first: namespaces, CRDs, identities and RBAC, then the workloads."""
    rank = {kind: i for i, kind in enumerate(_INSTALL_ORDER)}
    return sorted(objects, key=lambda o: rank.get(str(o.get("kind")), len(rank)))


def apply_all(api: k8s.ApiClient, objects: list[Obj], *, verb: str = "applied") -> None:
    """Server-side applies every object in install order, printing one line each."""
    for obj in install_order(objects):
        apply_object(api, obj)
        print(f"{verb} {describe(obj)}", flush=True)


def uninstall(api: k8s.ApiClient, objects: list[Obj], *, purge: bool = False, timeout: float = 120.0) -> None:
    """Deletes the node agent's DaemonSet and waits until it is gone (each agent takes its node's pods
    out of the mesh as it stops), then the rest in reverse install order; CRDs only with ``purge``."""
    agent = [o for o in objects if (o.get("kind"), (o.get("metadata") or {}).get("name")) == NODE_AGENT]
    rest = [o for o in reversed(install_order(objects)) if o not in agent]
    for obj in agent:
        if delete_object(api, obj):
            print(f"deleting {describe(obj)}: its agents release every pod of their node", flush=True)
        _wait_gone(api, obj, timeout=timeout)
    for obj in rest:
        if obj.get("kind") == "CustomResourceDefinition" and not purge:
            print(f"kept {describe(obj)} (--purge deletes it, and every object of its kind)")
            continue
        print(f"{'deleted' if delete_object(api, obj) else 'absent'} {describe(obj)}", flush=True)


def apply_to_lab(lab: Lab, objects: list[Obj]) -> None:
    """Applies every object to the running lab in install order, printing what it did."""
    for line in lab.apply(install_order(objects)):
        print(line, flush=True)


def uninstall_from_lab(lab: Lab, objects: list[Obj], *, purge: bool = False, timeout: float = 120.0) -> None:
    """As :func:`uninstall`, on the lab: the node agents' DaemonSet first, waiting until its pods are
    gone (each agent releases its node's pods), then the rest in reverse install order."""
    agent = [o for o in objects if (o.get("kind"), (o.get("metadata") or {}).get("name")) == NODE_AGENT]
    kept = [o for o in objects if o.get("kind") == "CustomResourceDefinition" and not purge]
    rest = [o for o in reversed(install_order(objects)) if o not in agent and o not in kept]
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
    for obj in kept:
        print(f"kept {describe(obj)} (--purge deletes it, and every object of its kind)")


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
