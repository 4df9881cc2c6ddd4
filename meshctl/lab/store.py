"""The state directory (docs/lab-state.md): objects as YAML files, written atomically under a lock.

Writers (the CLI and the lab daemon) hold an exclusive ``flock`` on ``<state>/.lock`` for each
transaction; every object write takes the next ``metadata.resourceVersion`` and the counter file
``<state>/resource-version`` is rewritten when the transaction ends, so a watcher that sees the
counter change knows a batch of writes is complete. Readers take no lock: files are replaced by
rename, so a reader sees either the old or the new object.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from meshctl.lab.errors import LabError, LabNotRunningError
from meshctl.lab.objects import ObjKey, key_of
from meshctl.lab.settings import LabSettings

__all__ = ["StateDir", "Store", "Transaction", "dump_yaml", "load_yaml"]

_CLUSTER_DIR = "_cluster"
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_yaml(path: Path) -> Any:
    """One YAML document from ``path``, or None when the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return yaml.load(text, Loader=_LOADER)


def dump_yaml(obj: Any) -> str:
    """Block-style YAML with keys in insertion order."""
    text: str = yaml.dump(obj, Dumper=_DUMPER, sort_keys=False, default_flow_style=False)
    return text


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file next to ``path`` and renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class StateDir:
    """The paths of one state directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()

    @property
    def objects(self) -> Path:
        """Namespaced and cluster objects: ``objects/<Kind>/<ns or _cluster>/<name>.yaml``."""
        return self.root / "objects"

    @property
    def settings_file(self) -> Path:
        """The lab settings."""
        return self.root / "lab.yaml"

    @property
    def counter_file(self) -> Path:
        """The last resourceVersion written."""
        return self.root / "resource-version"

    @property
    def lock_file(self) -> Path:
        """The writers' lock."""
        return self.root / ".lock"

    @property
    def run(self) -> Path:
        """Runtime files of the daemon (pids, CNI cache, synced marker)."""
        return self.root / "run"

    @property
    def pids(self) -> Path:
        """``<ns>_<pod>_<container>.pid`` files: ``PID STARTTIME``."""
        return self.root / "run" / "pids"

    @property
    def cni_cache(self) -> Path:
        """Cached CNI results per pod uid (for DEL)."""
        return self.root / "run" / "cni"

    @property
    def daemon_pid(self) -> Path:
        """The daemon's ``PID STARTTIME``."""
        return self.root / "run" / "daemon.pid"

    @property
    def synced_file(self) -> Path:
        """The resourceVersion the daemon has fully acted on."""
        return self.root / "run" / "synced"

    @property
    def logs(self) -> Path:
        """Pod logs and the daemon log."""
        return self.root / "logs"

    @property
    def cni(self) -> Path:
        """The CNI conflist."""
        return self.root / "cni"

    @property
    def cni_bin(self) -> Path:
        """A CNI_PATH directory for chained plugins."""
        return self.root / "cni" / "bin"

    @property
    def daemon_log(self) -> Path:
        """The daemon's log."""
        return self.root / "logs" / "daemon.log"

    def object_path(self, key: ObjKey) -> Path:
        """``objects/<Kind>/<namespace or _cluster>/<name>.yaml``."""
        kind, namespace, name = key
        return self.objects / kind / (namespace or _CLUSTER_DIR) / f"{name}.yaml"

    def pod_log(self, namespace: str, name: str) -> Path:
        """``logs/<ns>_<pod>.log``."""
        return self.logs / f"{namespace}_{name}.log"


class Transaction:
    """Writes made while holding the state lock."""

    def __init__(self, store: Store, counter: int) -> None:
        self._store = store
        self.counter = counter
        self.writes = 0

    def get(self, key: ObjKey) -> dict[str, Any] | None:
        """The current object or None."""
        return self._store.get(key)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Writes ``obj`` with the next resourceVersion; returns it."""
        self.counter += 1
        self.writes += 1
        obj["metadata"]["resourceVersion"] = str(self.counter)
        write_atomic(self._store.paths.object_path(key_of(obj)), dump_yaml(obj))
        return obj

    def remove(self, key: ObjKey) -> bool:
        """Deletes the object; False when it was not there."""
        try:
            self._store.paths.object_path(key).unlink()
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


class Store:
    """Reads and writes one lab's state directory."""

    def __init__(self, root: Path | str) -> None:
        self.paths = StateDir(root)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Holds the state lock; the counter file is written at the end if anything changed."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.paths.lock_file, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                txn = Transaction(self, self.current_rv())
                try:
                    yield txn
                finally:
                    if txn.writes:
                        write_atomic(self.paths.counter_file, f"{txn.counter}\n")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def current_rv(self) -> int:
        """The last resourceVersion written (0 for a new directory)."""
        try:
            return int(self.paths.counter_file.read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def get(self, key: ObjKey) -> dict[str, Any] | None:
        """One object or None."""
        obj = load_yaml(self.paths.object_path(key))
        return obj if isinstance(obj, dict) else None

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects of one kind (optionally one namespace), sorted by namespace and name."""
        kind_dir = self.paths.objects / kind
        dirs = [kind_dir / namespace] if namespace else sorted(kind_dir.glob("*"))
        result = []
        for directory in dirs:
            for path in sorted(directory.glob("*.yaml")):
                obj = load_yaml(path)
                if isinstance(obj, dict):
                    result.append(obj)
        return result

    def load_all(self) -> dict[ObjKey, dict[str, Any]]:
        """Every object, keyed by (kind, namespace, name)."""
        result: dict[ObjKey, dict[str, Any]] = {}
        if not self.paths.objects.is_dir():
            return result
        for kind_dir in sorted(self.paths.objects.iterdir()):
            for obj in self.list(kind_dir.name):
                result[key_of(obj)] = obj
        return result

    def read_settings(self) -> LabSettings:
        """lab.yaml, or :class:`LabNotRunningError` when there is none."""
        data = load_yaml(self.paths.settings_file)
        if not isinstance(data, dict):
            raise LabNotRunningError(str(self.paths.root))
        return LabSettings.from_dict(data)

    def write_settings(self, settings: LabSettings) -> None:
        """Writes lab.yaml atomically."""
        write_atomic(self.paths.settings_file, dump_yaml(settings.to_dict()))

    def synced_rv(self) -> int:
        """The resourceVersion the daemon has fully acted on (-1 if none)."""
        try:
            return int(self.paths.synced_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return -1

    def write_synced(self, rv: int) -> None:
        """Records that everything up to ``rv`` is in the data plane."""
        write_atomic(self.paths.synced_file, f"{rv}\n")

    def check_writable(self) -> None:
        """Raises a readable error when the state directory cannot be created."""
        try:
            self.paths.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabError(
                f"cannot create the state directory {self.paths.root}: {exc.strerror}",
                hint="run as root or pass --state DIR / set MESH_LAB_STATE",
            ) from exc
