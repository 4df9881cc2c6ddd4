"""The mesh's Kubernetes objects rendered from ``daemonset/`` (the base, or an overlay) in pure Python:
the subset of kustomize the manifests use. ``resources`` (files, or directories with a
kustomization), ``images`` (newName/newTag by image name) and ``patches``: a file of objects is merged
into the object of the same kind and name (lists of named items such as containers, volumes and ports
merged by name, other lists replaced); a file holding a list of RFC 6902 operations (``add``,
``remove``, ``replace``, ``test``) is applied to the objects its ``target`` (kind, name, optionally
namespace) selects. ``kubectl apply -k daemonset/overlays/<name>`` gives the same objects.
``meshctl install`` applies them to a cluster, ``meshctl lab up --mesh`` to the lab.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from mesh.errors import MeshError

__all__ = ["DAEMONSET", "LAB_OVERLAY", "Obj", "install_order", "json_patch", "overlays", "render"]

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
LAB_OVERLAY = "lab"
"""The overlay that runs on the lab's API (``meshctl install --lab``, ``meshctl lab up --mesh``)."""


def install_order(objects: list[Obj]) -> list[Obj]:
    """Dependencies first: namespaces, CRDs, identities and RBAC, then the workloads."""
    rank = {kind: i for i, kind in enumerate(_INSTALL_ORDER)}
    return sorted(objects, key=lambda o: rank.get(str(o.get("kind")), len(rank)))
