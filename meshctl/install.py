"""``meshctl install --dry-run -o yaml``: the mesh's Kubernetes objects rendered from ``daemonset/``
(the base, or an overlay) in pure Python, the subset of kustomize the manifests use:
``resources`` (files, or directories with a kustomization), ``images`` (newName/newTag by image
name) and ``patches`` (merged into the object of the same kind and name; lists of named items such
as containers, volumes and ports merged by name, other lists replaced). ``kubectl apply -k
daemonset/overlays/<name>`` gives the same objects.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from mesh.errors import MeshError

__all__ = ["DAEMONSET", "overlays", "register", "render"]

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


def _split_image(image: str) -> tuple[str, str]:
    """(name, tag) of ``registry/name:tag`` (a registry's port is not a tag)."""
    name, colon, tag = image.rpartition(":")
    return (name, tag) if colon and "/" not in tag else (image, "")


def _load(path: Path) -> list[Obj]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
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


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``install`` to the meshctl CLI."""
    parser = subparsers.add_parser("install", help="render the mesh's Kubernetes objects (daemonset/)")
    parser.add_argument("--dry-run", action="store_true", help="print the objects instead of applying them")
    parser.add_argument("-o", "--output", choices=("yaml",), default="yaml")
    parser.add_argument(
        "--overlay", default="base", help="base, or an overlay: plugin-ca, trust-domain, image-pin"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="image=REPO:TAG")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prints the rendered objects (``--dry-run``); applying them is not built yet."""
    settings = dict(item.partition("=")[::2] for item in args.set)
    unknown = sorted(set(settings) - {"image"})
    if unknown:
        raise MeshError(
            f"unknown --set {', '.join(unknown)}", hint="meshctl install takes --set image=REPO:TAG"
        )
    if not args.dry_run:
        raise MeshError(
            "meshctl install applies nothing yet (issue 17 part 3)",
            hint="render with --dry-run -o yaml and apply with kubectl, or: kubectl apply -k daemonset/base",
        )
    print(yaml.safe_dump_all(render(args.overlay, image=settings.get("image", "")), sort_keys=False), end="")
    return 0
