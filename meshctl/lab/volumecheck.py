"""Validation of a pod spec's ``volumes`` and its containers' ``volumeMounts`` (pure), as the API
server validates them, plus what the lab cannot run. Each problem names the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["HOST_PATH_TYPES", "MIN_TOKEN_SECONDS", "volume_problems"]

HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket")
MIN_TOKEN_SECONDS = 600
"""The API server refuses a projected token shorter than 10 minutes."""
_MAX_TOKEN_SECONDS = 2**32
_KINDS = ("configMap", "secret", "projected", "hostPath", "emptyDir")
_OTHER_KINDS = (
    "persistentVolumeClaim", "downwardAPI", "csi", "ephemeral", "nfs", "iscsi", "image", "gitRepo",
    "awsElasticBlockStore", "gcePersistentDisk", "azureDisk", "azureFile", "cephfs", "rbd", "fc",
)  # fmt: skip
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
Problem = tuple[str, str]
"""(field, problem)."""


def volume_problems(spec: Mapping[str, Any], path: str) -> list[Problem]:
    """Every problem in ``spec.volumes`` and the containers' ``volumeMounts`` (``path`` is the spec's)."""
    problems: list[Problem] = []
    volumes = spec.get("volumes") or []
    if not isinstance(volumes, list):
        return [(f"{path}.volumes", "must be a list")]
    names: set[str] = set()
    for i, volume in enumerate(volumes):
        problems += _volume(volume, f"{path}.volumes[{i}]", names)
    for i, container in enumerate(spec.get("containers") or []):
        if isinstance(container, dict):
            problems += _mounts(container.get("volumeMounts"), f"{path}.containers[{i}].volumeMounts", names)
    return problems


def _volume(volume: object, field: str, names: set[str]) -> list[Problem]:
    if not isinstance(volume, dict):
        return [(field, "must be a mapping")]
    name = volume.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or name in names:
        return [(f"{field}.name", f"must be a unique lowercase DNS label, got {name!r}")]
    names.add(name)
    kinds = [k for k in volume if k != "name"]
    unsupported = [k for k in kinds if k in _OTHER_KINDS]
    if unsupported:
        return [(f"{field}.{unsupported[0]}", f"{unsupported[0]} volumes are not supported by the lab")]
    if len(kinds) != 1 or kinds[0] not in _KINDS:
        return [(field, f"must have exactly one of {', '.join(_KINDS)}, got {', '.join(kinds) or 'none'}")]
    kind = kinds[0]
    source = volume[kind]
    if not isinstance(source, dict):
        return [(f"{field}.{kind}", "must be a mapping")]
    return _SOURCE_CHECKS[kind](source, f"{field}.{kind}")


def _object_source(source: Mapping[str, Any], field: str, *, name_key: str) -> list[Problem]:
    problems: list[Problem] = []
    if not isinstance(source.get(name_key), str) or not source[name_key]:
        problems.append((f"{field}.{name_key}", "is required"))
    problems += _mode(source.get("defaultMode"), f"{field}.defaultMode")
    if not isinstance(source.get("optional", False), bool):
        problems.append((f"{field}.optional", "must be true or false"))
    items = source.get("items") or []
    if not isinstance(items, list):
        return [*problems, (f"{field}.items", "must be a list")]
    for i, item in enumerate(items):
        where = f"{field}.items[{i}]"
        if not isinstance(item, dict):
            problems.append((where, "must be a mapping with key and path"))
            continue
        key = item.get("key")
        if not isinstance(key, str) or not _KEY.match(key):
            problem = f"must be a key of letters, digits, '-', '_' or '.', got {key!r}"
            problems.append((f"{where}.key", problem))
        problems += _relative(item.get("path"), f"{where}.path")
        problems += _mode(item.get("mode"), f"{where}.mode")
    return problems


def _config_map(source: Mapping[str, Any], field: str) -> list[Problem]:
    return _object_source(source, field, name_key="name")


def _secret(source: Mapping[str, Any], field: str) -> list[Problem]:
    return _object_source(source, field, name_key="secretName")


def _projected(source: Mapping[str, Any], field: str) -> list[Problem]:
    problems = _mode(source.get("defaultMode"), f"{field}.defaultMode")
    sources = source.get("sources")
    if not isinstance(sources, list) or not sources:
        return [*problems, (f"{field}.sources", "must be a non-empty list")]
    paths: set[str] = set()
    for i, item in enumerate(sources):
        where = f"{field}.sources[{i}]"
        kinds = list(item) if isinstance(item, dict) else []
        for path in _source_paths(item):
            if path in paths:
                problems.append((where, f"conflicting duplicate path {path!r} in the projected volume"))
            paths.add(path)
        if kinds == ["serviceAccountToken"] and isinstance(item[kinds[0]], dict):
            problems += _token(item["serviceAccountToken"], f"{where}.serviceAccountToken")
        elif kinds == ["configMap"] and isinstance(item[kinds[0]], dict):
            problems += _object_source(item["configMap"], f"{where}.configMap", name_key="name")
        elif kinds == ["secret"] and isinstance(item[kinds[0]], dict):
            problems += _object_source(item["secret"], f"{where}.secret", name_key="name")
        else:
            problems.append(
                (where, "must be one of serviceAccountToken, configMap or secret (the lab's projections)")
            )
    return problems


def _source_paths(source: object) -> list[str]:
    """The paths a projected source names explicitly (a source without items names none)."""
    if not isinstance(source, dict):
        return []
    paths: list[str] = []
    for kind, value in source.items():
        if not isinstance(value, dict):
            continue
        if kind == "serviceAccountToken" and isinstance(value.get("path"), str):
            paths.append(value["path"])
        items = value.get("items")
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                paths.append(item["path"])
    return paths


def _token(token: Mapping[str, Any], field: str) -> list[Problem]:
    problems = _relative(token.get("path"), f"{field}.path")
    seconds = token.get("expirationSeconds", MIN_TOKEN_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        problems.append((f"{field}.expirationSeconds", f"must be an integer, got {seconds!r}"))
    elif not MIN_TOKEN_SECONDS <= seconds <= _MAX_TOKEN_SECONDS:
        problem = f"must be between {MIN_TOKEN_SECONDS} and 2^32 seconds, got {seconds}"
        problems.append((f"{field}.expirationSeconds", problem))
    if not isinstance(token.get("audience", ""), str):
        problems.append((f"{field}.audience", "must be a string"))
    return problems


def _host_path(source: Mapping[str, Any], field: str) -> list[Problem]:
    path = source.get("path")
    problems: list[Problem] = []
    if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/"):
        problems.append((f"{field}.path", f"must be an absolute path without '..', got {path!r}"))
    kind = source.get("type") or ""
    if kind in ("CharDevice", "BlockDevice"):
        problems.append((f"{field}.type", f"{kind} is not supported by the lab (its nodes have no devices)"))
    elif kind not in HOST_PATH_TYPES:
        problems.append((f"{field}.type", f"must be one of {', '.join(HOST_PATH_TYPES[1:])}, got {kind!r}"))
    return problems


def _empty_dir(source: Mapping[str, Any], field: str) -> list[Problem]:
    medium = source.get("medium") or ""
    if medium not in ("", "Memory"):
        return [(f"{field}.medium", f"must be '' or Memory, got {medium!r}")]
    return []


_SOURCE_CHECKS = {
    "configMap": _config_map,
    "secret": _secret,
    "projected": _projected,
    "hostPath": _host_path,
    "emptyDir": _empty_dir,
}


def _mounts(mounts: object, field: str, volumes: set[str]) -> list[Problem]:
    if mounts is None:
        return []
    if not isinstance(mounts, list):
        return [(field, "must be a list")]
    problems: list[Problem] = []
    targets: set[str] = set()
    for i, mount in enumerate(mounts):
        where = f"{field}[{i}]"
        if not isinstance(mount, dict):
            problems.append((where, "must be a mapping with name and mountPath"))
            continue
        if mount.get("name") not in volumes:
            problems.append((f"{where}.name", f"names no volume of the pod: {mount.get('name')!r}"))
        target = mount.get("mountPath")
        if not isinstance(target, str) or not target.startswith("/") or target.rstrip("/") in targets:
            problems.append((f"{where}.mountPath", f"must be a unique absolute path, got {target!r}"))
        else:
            targets.add(target.rstrip("/"))
        if mount.get("subPath") and mount.get("subPathExpr"):
            problems.append((f"{where}.subPathExpr", "subPath and subPathExpr are mutually exclusive"))
        if mount.get("subPath"):
            problems += _relative(mount["subPath"], f"{where}.subPath")
        propagation = mount.get("mountPropagation", "None")
        if propagation not in ("None", "HostToContainer"):
            problem = f"must be None or HostToContainer in the lab, got {propagation!r}"
            problems.append((f"{where}.mountPropagation", problem))
        if not isinstance(mount.get("readOnly", False), bool):
            problems.append((f"{where}.readOnly", "must be true or false"))
    return problems


def _relative(path: object, field: str) -> list[Problem]:
    if not isinstance(path, str) or not path or path.startswith("/"):
        return [(field, f"must be a relative path, got {path!r}")]
    parts = path.split("/")
    if ".." in parts or parts[0].startswith(".."):
        return [(field, f"must not contain '..' or start with '..', got {path!r}")]
    return []


def _mode(mode: object, field: str) -> list[Problem]:
    if mode is None:
        return []
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        return [(field, f"must be a file mode between 0 and 0777 (octal; 511 decimal), got {mode!r}")]
    return []
