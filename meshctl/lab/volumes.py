"""Kubernetes volumes in lab pods, planned (pure): a Pod and the cluster's objects in, what the
runtime writes and what each container mounts out.

Kinds: ``configMap`` and ``secret`` (one file per key, or the ``items`` given; ``defaultMode`` and
item ``mode``; ``optional``), ``projected`` (``serviceAccountToken``, ``configMap``, ``secret``
sources), ``hostPath`` (per node, see :data:`REAL_HOST_PATHS`) and ``emptyDir`` (per pod). Content
volumes (configMap, secret, projected) are always mounted read-only, as the kubelet does. A missing
object or key that is not optional is a *waiting* message (the kubelet's FailedMount): the pod
waits until it appears. docs/lab-state.md describes the directories.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshctl.lab.errors import LabError
from meshctl.lab.objects import ObjKey
from meshctl.lab.podspec import expand_vars

__all__ = [
    "CONTENT",
    "DEFAULT_MODE",
    "EMPTY_DIR",
    "HOST_PATH",
    "LAB_API_PATH",
    "REAL_HOST_PATHS",
    "Mount",
    "PodVolumes",
    "TokenSource",
    "Volume",
    "VolumeError",
    "VolumeFile",
    "VolumeLayout",
    "RUNTIME_VOLUME",
    "plan_mounts",
    "plan_volumes",
    "runtime_rebinds",
]

CONTENT, HOST_PATH, EMPTY_DIR = "content", "hostPath", "emptyDir"
DEFAULT_MODE = 0o644
"""The mode of configMap, secret and projected files unless ``defaultMode`` or ``mode`` says otherwise."""
DEFAULT_TOKEN_SECONDS = 3600

LAB_API_PATH = "/var/lib/mesh-lab/state"
"""The host path that is the lab's API (its state directory) wherever the lab keeps it: what the
lab overlay of daemonset/ mounts for istiod_lite and the node agents (docs/lab-state.md)."""
REAL_HOST_PATHS: tuple[tuple[str, str], ...] = (
    ("/etc/cni/net.d", "{cni}"),
    ("/opt/cni/bin", "{cni_bin}"),
    ("/var/run/netns", "/var/run/netns"),
    ("/run/netns", "/var/run/netns"),
    (LAB_API_PATH, "{state}"),
)
"""Host paths (and everything under them) that are the lab's real directories on every node, not a
per-node directory: the CNI conf dir, its CNI_PATH dir, the pods' network namespaces, and the lab's
state directory (its API)."""


class VolumeError(LabError):
    """A pod's volumes cannot be planned (an invalid spec the validation did not catch)."""


@dataclass(frozen=True, slots=True)
class VolumeLayout:
    """Where volumes live on the host (all but the real host paths are under the state directory)."""

    state_root: str
    cluster_domain: str = "cluster.local"

    @property
    def cni(self) -> str:
        """The lab's CNI conf dir, the node's /etc/cni/net.d."""
        return f"{self.state_root}/cni"

    def pod_dir(self, uid: str) -> str:
        """Everything of one pod's volumes (removed with the pod)."""
        return f"{self.state_root}/run/pods/{uid}"

    def volume_dir(self, uid: str, name: str) -> str:
        """One content or emptyDir volume of one pod."""
        return f"{self.pod_dir(uid)}/volumes/{name}"

    def node_root(self, node: str) -> str:
        """The directory that stands for the root of ``node``'s file system for hostPath volumes."""
        return f"{self.state_root}/hostpath/{node}"

    def host_source(self, node: str, path: str) -> str:
        """Where host path ``path`` of ``node`` lives (``path`` absolute and normalised)."""
        for pod_path, real in REAL_HOST_PATHS:
            if path == pod_path or path.startswith(pod_path + "/"):
                base = real.format(cni=self.cni, cni_bin=f"{self.cni}/bin", state=self.state_root)
                return base + path[len(pod_path) :]
        if path == "/var/run" or path.startswith("/var/run/"):  # /var/run is a link to /run on a node
            path = path[len("/var") :]
        return self.node_root(node) + ("" if path == "/" else path)

    @property
    def default_audience(self) -> str:
        """The API server's audience, for tokens that name none."""
        return f"https://kubernetes.default.svc.{self.cluster_domain}"


@dataclass(frozen=True, slots=True)
class VolumeFile:
    """One file of a content volume: its path inside the volume, bytes and mode."""

    path: str
    data: bytes
    mode: int


@dataclass(frozen=True, slots=True)
class TokenSource:
    """A projected service-account token the runtime requests, writes at ``path`` and refreshes."""

    path: str
    audience: str
    expiration_seconds: int
    mode: int


@dataclass(frozen=True, slots=True)
class Volume:
    """One volume of a pod and its host directory (``source``)."""

    name: str
    kind: str
    source: str
    files: tuple[VolumeFile, ...] = ()
    tokens: tuple[TokenSource, ...] = ()
    host_path: str = ""
    host_type: str = ""


@dataclass(frozen=True, slots=True)
class PodVolumes:
    """A pod's volumes, and why it must wait (missing objects or keys), if it must."""

    volumes: tuple[Volume, ...]
    waiting: tuple[str, ...] = ()

    def volume(self, name: str) -> Volume:
        """The volume called ``name``."""
        for volume in self.volumes:
            if volume.name == name:
                return volume
        raise VolumeError(f"the pod has no volume {name!r}", hint="add it to spec.volumes")


@dataclass(frozen=True, slots=True)
class Mount:
    """One bind mount of a container: ``source`` on the host at ``target`` in the container.

    ``mountpoint`` is the host path that must exist for it: ``target`` itself, or the place inside
    an earlier mount's source when ``target`` lies inside that mount. ``create_source`` says the
    source is a subPath directory the runtime creates (in an emptyDir or hostPath volume).
    ``recursive`` binds the mounts below the source too (volumes); a directory bound back over a
    volume that covers it is bound alone, or it would bring that volume along."""

    volume: str
    source: str
    target: str
    read_only: bool
    propagation: str
    mountpoint: str
    create_source: bool = False
    recursive: bool = True

    def exec_args(self) -> tuple[str, str, str, str, str]:
        """The mount as the exec step (:mod:`meshctl.lab.mountexec`) takes it."""
        mode = ("ro" if self.read_only else "rw") + ("" if self.recursive else "+single")
        return (self.volume, self.source, self.target, mode, self.propagation)


def plan_volumes(
    pod: Mapping[str, Any], objects: Mapping[ObjKey, Mapping[str, Any]], *, layout: VolumeLayout
) -> PodVolumes:
    """The pod's volumes with their content from ``objects`` (ConfigMaps and Secrets)."""
    meta, spec = pod["metadata"], pod["spec"]
    namespace, uid, node = meta["namespace"], meta["uid"], spec.get("nodeName", "")
    volumes: list[Volume] = []
    waiting: list[str] = []
    for item in spec.get("volumes") or ():
        name = item["name"]
        if "hostPath" in item:
            host = item["hostPath"]
            path = _host_path(host.get("path"), name)
            volumes.append(
                Volume(name, HOST_PATH, layout.host_source(node, path), host_path=path,
                       host_type=str(host.get("type") or ""))
            )  # fmt: skip
        elif "emptyDir" in item:
            volumes.append(Volume(name, EMPTY_DIR, layout.volume_dir(uid, name)))
        else:
            files, tokens, missing = _content(item, namespace, objects, layout=layout)
            waiting += [f'MountVolume.SetUp failed for volume "{name}": {m}' for m in missing]
            volumes.append(Volume(name, CONTENT, layout.volume_dir(uid, name), files=files, tokens=tokens))
    return PodVolumes(tuple(volumes), tuple(waiting))


def _host_path(path: object, volume: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/"):
        raise VolumeError(
            f"volume {volume!r}: hostPath.path must be an absolute path without '..', got {path!r}"
        )
    return posixpath.normpath(path).replace("//", "/")


def _content(
    item: Mapping[str, Any],
    namespace: str,
    objects: Mapping[ObjKey, Mapping[str, Any]],
    *,
    layout: VolumeLayout,
) -> tuple[tuple[VolumeFile, ...], tuple[TokenSource, ...], list[str]]:
    if "configMap" in item or "secret" in item:
        kind = "configMap" if "configMap" in item else "secret"
        source = item[kind]
        mode = int(source.get("defaultMode", DEFAULT_MODE))
        files, missing = _object_files(kind, source, namespace, objects, default_mode=mode)
        return files, (), missing
    if "projected" in item:
        return _projected(item["projected"], namespace, objects, layout=layout)
    kinds = ", ".join(k for k in item if k != "name")
    raise VolumeError(
        f"volume {item['name']!r} is of a kind the lab does not run ({kinds})",
        hint="use configMap, secret, projected, hostPath or emptyDir",
    )


def _projected(
    projected: Mapping[str, Any],
    namespace: str,
    objects: Mapping[ObjKey, Mapping[str, Any]],
    *,
    layout: VolumeLayout,
) -> tuple[tuple[VolumeFile, ...], tuple[TokenSource, ...], list[str]]:
    mode = int(projected.get("defaultMode", DEFAULT_MODE))
    files: list[VolumeFile] = []
    tokens: list[TokenSource] = []
    missing: list[str] = []
    for source in projected.get("sources") or ():
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            tokens.append(
                TokenSource(
                    path=str(token["path"]),
                    audience=str(token.get("audience") or layout.default_audience),
                    expiration_seconds=int(token.get("expirationSeconds", DEFAULT_TOKEN_SECONDS)),
                    mode=mode,
                )
            )
            continue
        kind = "configMap" if "configMap" in source else "secret"
        more, absent = _object_files(kind, source[kind], namespace, objects, default_mode=mode)
        files += more
        missing += absent
    return tuple(files), tuple(tokens), missing


def _object_files(
    kind: str,
    source: Mapping[str, Any],
    namespace: str,
    objects: Mapping[ObjKey, Mapping[str, Any]],
    *,
    default_mode: int,
) -> tuple[tuple[VolumeFile, ...], list[str]]:
    """The files of one ConfigMap or Secret source, or why they cannot be made yet."""
    name = source.get("name") if kind == "configMap" else source.get("secretName", source.get("name"))
    optional = bool(source.get("optional", False))
    obj = objects.get(("ConfigMap" if kind == "configMap" else "Secret", namespace, str(name)))
    noun = kind.lower()
    if obj is None:
        return (), [] if optional else [f'{noun} "{name}" not found in namespace "{namespace}"']
    try:
        payload = _configmap_payload(obj) if kind == "configMap" else _secret_payload(obj)
    except ValueError as exc:
        return (), [f'{noun} "{name}" in namespace "{namespace}": {exc}']
    items = source.get("items")
    if not items:
        return tuple(VolumeFile(k, v, default_mode) for k, v in sorted(payload.items())), []
    files: list[VolumeFile] = []
    missing: list[str] = []
    for entry in items:
        key = str(entry["key"])
        if key in payload:
            files.append(VolumeFile(str(entry["path"]), payload[key], int(entry.get("mode", default_mode))))
        elif not optional:
            missing.append(f'{noun} "{name}" in namespace "{namespace}" has no key "{key}"')
    return tuple(files), missing


def _configmap_payload(obj: Mapping[str, Any]) -> dict[str, bytes]:
    payload = {str(k): str(v).encode() for k, v in (obj.get("data") or {}).items()}
    for key, value in (obj.get("binaryData") or {}).items():
        payload[str(key)] = _b64(key, value)
    return payload


def _secret_payload(obj: Mapping[str, Any]) -> dict[str, bytes]:
    payload = {str(k): _b64(k, v) for k, v in (obj.get("data") or {}).items()}
    for key, value in (obj.get("stringData") or {}).items():  # as the API server merges it into data
        payload[str(key)] = str(value).encode()
    return payload


def _b64(key: object, value: object) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f'the value of key "{key}" is not valid base64') from None


def plan_mounts(
    container: Mapping[str, Any], volumes: PodVolumes, *, env: Mapping[str, str]
) -> tuple[Mount, ...]:
    """The container's bind mounts in mounting order (parents before what is mounted inside them).

    ``subPathExpr`` expands ``$(VAR)`` from the container's ``env``. A mount point inside an earlier
    mount is created in that mount's source; any other is a host path.
    """
    planned: list[Mount] = []
    entries = sorted(
        container.get("volumeMounts") or (), key=lambda m: len(_norm(str(m["mountPath"])).split("/"))
    )
    for entry in entries:
        volume = volumes.volume(str(entry["name"]))
        target = _norm(str(entry["mountPath"]))
        sub = entry.get("subPath") or expand_vars(str(entry.get("subPathExpr") or ""), env)
        source = volume.source + (f"/{_sub_path(str(sub), volume.name)}" if sub else "")
        propagation = entry.get("mountPropagation") or "None"
        if propagation not in ("None", "HostToContainer"):
            raise VolumeError(
                f"volume mount {target}: mountPropagation {propagation!r} is not supported by the lab",
                hint="use None or HostToContainer (a lab container cannot propagate mounts to the host)",
            )
        planned.append(
            Mount(
                volume=volume.name,
                source=source,
                target=target,
                read_only=bool(entry.get("readOnly")) or volume.kind == CONTENT,
                propagation="slave" if propagation == "HostToContainer" else "private",
                mountpoint=_mountpoint(target, planned),
                create_source=bool(sub) and volume.kind != CONTENT,
            )
        )
    return tuple(planned)


RUNTIME_VOLUME = "lab-runtime"


def runtime_rebinds(mounts: Sequence[Mount], runtime_dirs: Iterable[str]) -> tuple[Mount, ...]:
    """The lab's own interpreter and code bound back, read-only, where a volume covers them (pure).

    The lab's containers share the host's file system and run the lab's own programs; a volume at a
    directory holding them (an emptyDir at /tmp, with a checkout and its venv under /tmp) would hide
    them. Nested directories are bound once, at the outermost."""
    planned = list(mounts)
    outermost = sorted({_norm(d) for d in runtime_dirs}, key=len)
    kept = [d for i, d in enumerate(outermost) if not any(_within(d, o) for o in outermost[:i])]
    for directory in kept:
        if any(_within(directory, m.target) for m in mounts):
            planned.append(
                Mount(
                    volume=RUNTIME_VOLUME,
                    source=directory,
                    target=directory,
                    read_only=True,
                    propagation="private",
                    mountpoint=_mountpoint(directory, planned),
                    recursive=False,
                )
            )
    return tuple(planned[len(mounts) :])


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _mountpoint(target: str, earlier: list[Mount]) -> str:
    for parent in reversed(earlier):
        if target.startswith(parent.target.rstrip("/") + "/"):
            return parent.source + target[len(parent.target.rstrip("/")) :]
    return target


def _norm(path: str) -> str:
    return posixpath.normpath(path).replace("//", "/")


def _sub_path(sub: str, volume: str) -> str:
    if sub.startswith("/") or ".." in sub.split("/"):
        raise VolumeError(f"volume {volume!r}: subPath must be a relative path without '..', got {sub!r}")
    return posixpath.normpath(sub)
