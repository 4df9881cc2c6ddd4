"""One pod's volumes on the host: prepared before its sandbox, kept current while it runs (content
updates, token refreshes), removed with it. Plans come from :mod:`meshctl.lab.volumes`.

Projected service-account tokens are the lab's TokenRequest: a random token bound to the pod, its
``namespace/serviceaccount``, its node, the audience and an expiry, written into the volume and
registered in the lab's token file (istiod_lite's lab authenticator reads it), refreshed at 80 %
of its lifetime (at most a day), as the kubelet does. Older tokens stay valid until they expire;
every token of the pod leaves the token file with the pod.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.clock import Clock
from meshctl.lab import mountexec
from meshctl.lab.mountpoints import REGISTRY, ensure_mountpoint
from meshctl.lab.objects import ObjKey
from meshctl.lab.tokenfile import (
    TokenEntries,
    drop_expired,
    drop_pod_tokens,
    pod_token_entry,
    update_lab_tokens,
)
from meshctl.lab.volumefs import path_kind, prepare_empty_dir, prepare_host_path, write_payload
from meshctl.lab.volumes import (
    CONTENT,
    EMPTY_DIR,
    HOST_PATH,
    PodVolumes,
    TokenSource,
    Volume,
    VolumeError,
    VolumeLayout,
    plan_mounts,
    plan_volumes,
    runtime_rebinds,
)

__all__ = ["IssuedToken", "VolumeRuntime", "referenced_objects", "token_refresh_at"]

_MAX_TOKEN_AGE = 24 * 3600
_RUNTIME_DIRS = (
    sys.base_prefix,
    sys.prefix,
    str(Path(__file__).resolve().parents[2]),  # the code the lab and its containers run
    *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
)
"""What the lab's containers run (the interpreter, the venv, the code): bound back over a volume
that would hide them (:func:`meshctl.lab.volumes.runtime_rebinds`)."""
Objects = Mapping[ObjKey, Mapping[str, Any]]


def token_refresh_at(issued_at: float, expiration_seconds: int) -> float:
    """When the kubelet replaces a token: at 80 % of its lifetime, or after a day (pure)."""
    return issued_at + min(0.8 * expiration_seconds, _MAX_TOKEN_AGE)


def referenced_objects(pod: Mapping[str, Any]) -> tuple[ObjKey, ...]:
    """The ServiceAccount, ConfigMaps and Secrets a pod's volumes read (pure)."""
    namespace = pod["metadata"]["namespace"]
    keys: list[ObjKey] = [("ServiceAccount", namespace, pod["spec"].get("serviceAccountName") or "default")]
    for volume in pod["spec"].get("volumes") or ():
        sources = [volume, *((volume.get("projected") or {}).get("sources") or ())]
        for source in sources:
            if "configMap" in source:
                keys.append(("ConfigMap", namespace, str(source["configMap"].get("name"))))
            if "secret" in source:
                secret = source["secret"]
                keys.append(("Secret", namespace, str(secret.get("secretName") or secret.get("name"))))
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token written into a volume: when it was issued and when it expires."""

    token: str
    issued_at: float
    expires: float


def _mint() -> str:
    return secrets.token_urlsafe(32)


class VolumeRuntime:
    """Sets up, updates and removes one pod's volumes (see the module docstring)."""

    def __init__(
        self,
        pod: Mapping[str, Any],
        *,
        layout: VolumeLayout,
        clock: Clock,
        tokens_file: Path,
        lab_id: str,
        registry: Path = REGISTRY,
        mint: Callable[[], str] = _mint,
    ) -> None:
        self.pod = pod
        meta = pod["metadata"]
        self._label = f"{meta['namespace']}/{meta['name']}"
        self._uid: str = meta["uid"]
        self._layout = layout
        self._clock = clock
        self._tokens_file = tokens_file
        self._lab_id = lab_id
        self._registry = registry
        self._mint = mint
        self._planned: PodVolumes | None = None
        self._issued: dict[tuple[str, str], IssuedToken] = {}
        self._refs: tuple[object, ...] | None = None

    @property
    def service_account(self) -> str:
        """The pod's service account name."""
        return str(self.pod["spec"].get("serviceAccountName") or "default")

    def prepare(self, objects: Objects) -> str:
        """Sets every volume up; returns why the pod must wait ("" once all are ready).

        Raises :class:`VolumeError` for a spec the lab cannot run."""
        namespace = self.pod["metadata"]["namespace"]
        if ("ServiceAccount", namespace, self.service_account) not in objects:
            return (
                f"error looking up service account {namespace}/{self.service_account}: "
                f'serviceaccount "{self.service_account}" not found'
            )
        planned = plan_volumes(self.pod, objects, layout=self._layout)
        waiting = list(planned.waiting)
        for volume in planned.volumes:
            if volume.kind == HOST_PATH:
                why = prepare_host_path(
                    volume.host_path,
                    Path(volume.source),
                    volume.host_type,
                    lab_root=Path(self._layout.state_root),
                )
                waiting += [f'MountVolume.SetUp failed for volume "{volume.name}": {why}'] if why else []
        if waiting:
            return "; ".join(waiting)
        for volume in planned.volumes:
            if volume.kind == EMPTY_DIR:
                prepare_empty_dir(Path(volume.source))
            elif volume.kind == CONTENT:
                self._write(volume)
        self._planned = planned
        self._refs = self._signature(objects)
        return ""

    def update(self, objects: Objects) -> None:
        """Brings running content volumes up to date with ``objects``; a volume whose object went
        missing keeps its last content (as the kubelet does)."""
        if self._planned is None or self._signature(objects) == self._refs:
            return
        planned = plan_volumes(self.pod, objects, layout=self._layout)
        current = {v.name: v for v in self._planned.volumes}
        fresh: list[Volume] = []
        for volume in planned.volumes:
            failed = any(f'volume "{volume.name}"' in why for why in planned.waiting)
            if volume.kind == CONTENT and not failed:
                self._write(volume)
            fresh.append(current[volume.name] if failed else volume)
        self._planned = PodVolumes(tuple(fresh))
        self._refs = self._signature(objects)

    def _signature(self, objects: Objects) -> tuple[object, ...]:
        return tuple(
            (objects.get(key) or {}).get("metadata", {}).get("resourceVersion")
            for key in referenced_objects(self.pod)
        )

    def next_token_refresh(self) -> float | None:
        """When the next token is due for replacement (None without tokens)."""
        due = [
            token_refresh_at(issued.issued_at, source.expiration_seconds)
            for volume in (self._planned.volumes if self._planned else ())
            for source in volume.tokens
            if (issued := self._issued.get((volume.name, source.path))) is not None
        ]
        return min(due, default=None)

    def refresh_tokens(self) -> int:
        """Replaces every token that is due; returns how many."""
        if self._planned is None:
            return 0
        now = self._clock.now()
        count = 0
        for volume in self._planned.volumes:
            due = [
                s
                for s in volume.tokens
                if token_refresh_at(self._issued[(volume.name, s.path)].issued_at, s.expiration_seconds)
                <= now
            ]
            for source in due:
                del self._issued[(volume.name, source.path)]
            if due:
                self._write(volume)
                count += len(due)
        return count

    def _write(self, volume: Volume) -> None:
        payload = {f.path: (f.data, f.mode) for f in volume.files}
        for source in volume.tokens:
            issued = self._issued.get((volume.name, source.path)) or self._issue(volume.name, source)
            payload[source.path] = (issued.token.encode(), source.mode)
        write_payload(Path(volume.source), payload, now=self._clock.now())

    def _issue(self, volume: str, source: TokenSource) -> IssuedToken:
        now = self._clock.now()
        issued = IssuedToken(self._mint(), now, now + source.expiration_seconds)
        entry = pod_token_entry(
            pod=self._label,
            uid=self._uid,
            node=str(self.pod["spec"].get("nodeName", "")),
            service_account=self.service_account,
            audience=source.audience,
            expires=issued.expires,
        )

        def add(entries: TokenEntries) -> bool:
            drop_expired(entries, now)
            entries[issued.token] = entry
            return True

        update_lab_tokens(self._tokens_file, add)
        self._issued[(volume, source.path)] = issued
        return issued

    def exec_prefix(self, container: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, ...]:
        """The exec step that mounts ``container``'s volumes (empty without volume mounts), after
        creating the sources and mount points it needs (host ones recorded for ``lab down``)."""
        if not container.get("volumeMounts"):
            return ()
        if self._planned is None:
            raise VolumeError(f"pod {self._label}: volumes are not set up yet")
        mounts = plan_mounts(container, self._planned, env=env)
        mounts += runtime_rebinds(mounts, _RUNTIME_DIRS)
        lab_root = Path(self._layout.state_root)
        for mount in mounts:
            source = Path(mount.source)
            if mount.create_source:
                source.mkdir(parents=True, exist_ok=True)
            kind = path_kind(source)
            if kind is None:
                raise VolumeError(f"volume {mount.volume!r}: {mount.source} does not exist (subPath?)")
            point = Path(mount.mountpoint)
            if point.is_relative_to(lab_root):
                _make_point(point, directory=kind == "directory")
            else:
                ensure_mountpoint(
                    mount.mountpoint,
                    directory=kind == "directory",
                    lab_id=self._lab_id,
                    registry=self._registry,
                )
        fields = [field for mount in mounts for field in mount.exec_args()]
        cwd = container.get("workingDir") or "/"
        return (sys.executable, "-I", "-S", mountexec.__file__, cwd, *fields, "--")

    def teardown(self) -> None:
        """Removes the pod's volume directories and its tokens from the token file (idempotent)."""
        self._planned = None
        shutil.rmtree(self._layout.pod_dir(self._uid), ignore_errors=True)
        if self._issued or self._tokens_file.exists():
            update_lab_tokens(self._tokens_file, lambda entries: drop_pod_tokens(entries, self._uid))
        self._issued.clear()


def _make_point(point: Path, *, directory: bool) -> None:
    if path_kind(point) is not None:
        return
    if directory:
        point.mkdir(parents=True, exist_ok=True)
    else:
        point.parent.mkdir(parents=True, exist_ok=True)
        point.touch(mode=0o644)
