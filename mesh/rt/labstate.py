"""The lab's state directory (docs/lab-state.md) for processes other than meshctl: read, patch.

The writers' protocol, shared with ``meshctl/lab/store.py``: a writer holds an exclusive ``flock``
on ``<state>/.lock`` for one transaction; each object write takes the next
``metadata.resourceVersion`` and is written to a temporary file next to the object, then renamed
into place; when the transaction wrote anything, the counter file ``<state>/resource-version`` is
rewritten (atomically) with the last resourceVersion, so a watcher that sees the counter change
knows a batch of writes is complete. Readers take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from mesh.errors import MeshError

__all__ = [
    "LabState",
    "LabStateError",
    "LabTransaction",
    "ObjKey",
    "dump_yaml",
    "load_yaml",
    "patch_pod_annotations",
    "write_atomic",
]

ObjKey = tuple[str, str, str]
"""(kind, namespace, name); namespace is "" for cluster-scoped objects."""

_CLUSTER_DIR = "_cluster"
_SECRET_MODE = 0o600
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class LabStateError(MeshError):
    """The state directory cannot be read or written."""


def load_yaml(path: Path) -> Any:
    """One YAML document from ``path``, or None when the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise LabStateError(f"{path} is not valid YAML: {exc}", hint="fix or remove the file") from None


def dump_yaml(obj: Any) -> str:
    """Block-style YAML with keys in insertion order (the lab's file format)."""
    text: str = yaml.dump(obj, Dumper=_DUMPER, sort_keys=False, default_flow_style=False)
    return text


def write_atomic(path: Path, text: str, *, mode: int | None = None) -> None:
    """Writes ``text`` to a temporary file next to ``path`` and renames it into place; with
    ``mode`` the file has that mode from its creation (a secret is never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if mode is None:
        tmp.write_text(text)
    else:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a leftover of a crashed writer with this pid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)  # whatever the umask took away
    os.replace(tmp, path)


class LabTransaction:
    """Writes made while holding the state lock."""

    def __init__(self, state: LabState, counter: int) -> None:
        self._state = state
        self.counter = counter
        self.writes = 0

    def get(self, key: ObjKey) -> dict[str, Any] | None:
        """The current object or None."""
        return self._state.read(key)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Writes ``obj`` with the next resourceVersion; returns it. A Secret's file is readable by
        its owner only (mode 0600), as a Secret on a cluster is not readable by everyone."""
        self.counter += 1
        self.writes += 1
        obj["metadata"]["resourceVersion"] = str(self.counter)
        mode = _SECRET_MODE if obj.get("kind") == "Secret" else None
        write_atomic(self._state.object_path(_key_of(obj)), dump_yaml(obj), mode=mode)
        return obj

    def create(self, obj: dict[str, Any]) -> bool:
        """Writes ``obj`` as a new object, with a ``uid`` and ``creationTimestamp`` as the API
        server fills them in; False (and nothing written) when it exists already."""
        if self.get(_key_of(obj)) is not None:
            return False
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.put(obj)
        return True

    def remove(self, key: ObjKey) -> bool:
        """Deletes the object; False when it was not there."""
        try:
            self._state.object_path(key).unlink()
        except FileNotFoundError:
            return False
        self.counter += 1
        self.writes += 1
        return True

    def update(self, key: ObjKey, change: Callable[[dict[str, Any]], bool]) -> bool:
        """Read-modify-write: ``change`` edits the object in place and says whether it changed it.

        Nothing happens when the object is gone (it was deleted meanwhile).
        """
        current = self.get(key)
        if current is None or not change(current):
            return False
        self.put(current)
        return True


class LabState:
    """One state directory: paths, lock-free reads and locked transactions."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._parsed: dict[Path, tuple[tuple[int, int, int], Any]] = {}

    @property
    def objects(self) -> Path:
        """``<state>/objects``."""
        return self.root / "objects"

    @property
    def lock_file(self) -> Path:
        """``<state>/.lock``, flocked by writers."""
        return self.root / ".lock"

    @property
    def counter_file(self) -> Path:
        """``<state>/resource-version``, the last resourceVersion written."""
        return self.root / "resource-version"

    @property
    def settings_file(self) -> Path:
        """``<state>/lab.yaml``."""
        return self.root / "lab.yaml"

    def object_path(self, key: ObjKey) -> Path:
        """``objects/<Kind>/<namespace or _cluster>/<name>.yaml``."""
        kind, namespace, name = key
        return self.objects / kind / (namespace or _CLUSTER_DIR) / f"{name}.yaml"

    def current_rv(self) -> int:
        """The last resourceVersion written (0 for a new directory)."""
        try:
            return int(self.counter_file.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            raise LabStateError(
                f"{self.counter_file} does not hold a number",
                hint="the lab state is corrupt; recreate the lab",
            ) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[LabTransaction]:
        """Holds the state lock; the counter file is written at the end if anything changed."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.lock_file, "a+")  # noqa: SIM115 - held for the whole transaction
        except OSError as exc:
            message = f"cannot lock the lab state in {self.root}: {exc}"
            raise LabStateError(message, hint="run as root") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                txn = LabTransaction(self, self.current_rv())
                try:
                    yield txn
                finally:
                    if txn.writes:
                        write_atomic(self.counter_file, f"{txn.counter}\n")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self, key: ObjKey) -> dict[str, Any] | None:
        """One object or None."""
        obj = load_yaml(self.object_path(key))
        return obj if isinstance(obj, dict) else None

    def list(self, kind: str, namespace: str | None = None, *, shared: bool = False) -> list[dict[str, Any]]:
        """Objects of one kind (optionally one namespace), sorted by namespace and name.

        Temporary files (``.name.pid.tmp``) are not objects and are skipped. With ``shared`` a file
        unchanged since the last shared read (same inode, mtime and size: writers replace files
        whole) is not parsed again, and its object is the one returned then: read it, never change
        it. A poller of hundreds of pods then parses only what changed.
        """
        kind_dir = self.objects / kind
        dirs = [kind_dir / namespace] if namespace else sorted(kind_dir.glob("*"))
        result, seen = [], set()
        for directory in dirs:
            for path in sorted(directory.glob("*.yaml")):
                if path.name.startswith("."):
                    continue
                seen.add(path)
                obj = self._shared(path) if shared else load_yaml(path)
                if isinstance(obj, dict):
                    result.append(obj)
        if shared and namespace is None:  # forget the objects of this kind that were deleted
            for gone in [p for p in self._parsed if p.parent.parent == kind_dir and p not in seen]:
                del self._parsed[gone]
        return result

    def _shared(self, path: Path) -> Any:
        try:
            st = path.stat()
        except FileNotFoundError:
            self._parsed.pop(path, None)
            return None
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        obj = load_yaml(path)
        self._parsed[path] = (version, obj)
        return obj

    def read_settings(self) -> dict[str, Any]:
        """``lab.yaml`` as a mapping ({} when there is none)."""
        data = load_yaml(self.settings_file)
        return data if isinstance(data, dict) else {}


def patch_pod_annotations(
    state: LabState, namespace: str, name: str, patch: Mapping[str, str | None], *, uid: str | None = None
) -> bool:
    """Applies a merge patch to one Pod's annotations in one transaction (a None value removes the
    key, as in a Kubernetes merge patch); True when the file changed.

    With ``uid`` the patch applies only to that incarnation of the pod (a pod deleted and
    recreated under the same name is left alone). A missing pod is not an error: it was deleted.
    """

    def change(obj: dict[str, Any]) -> bool:
        meta = obj.setdefault("metadata", {})
        if uid is not None and meta.get("uid") != uid:
            return False
        annotations = dict(meta.get("annotations") or {})
        updated = {k: v for k, v in annotations.items() if patch.get(k, v) is not None}
        updated |= {k: v for k, v in patch.items() if v is not None}
        if updated == annotations:
            return False
        if updated:
            meta["annotations"] = updated
        else:
            meta.pop("annotations", None)
        return True

    with state.transaction() as txn:
        return txn.update(("Pod", namespace, name), change)


def _key_of(obj: Mapping[str, Any]) -> ObjKey:
    meta = obj["metadata"]
    return (str(obj["kind"]), str(meta.get("namespace", "")), str(meta["name"]))
