"""The state directory (docs/lab-state.md): objects as YAML files, written atomically under a lock.

Writers (the CLI and the lab daemon) hold an exclusive ``flock`` on ``<state>/.lock`` for each
transaction; every object write takes the next ``metadata.resourceVersion`` and the counter file
``<state>/resource-version`` is rewritten when the transaction ends, so a watcher that sees the
counter change knows a batch of writes is complete. Readers take no lock: files are replaced by
rename, so a reader sees either the old or the new object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mesh.rt.labstate import LabState, LabTransaction, dump_yaml, load_yaml, write_atomic
from meshctl.lab.errors import LabError, LabNotRunningError
from meshctl.lab.objects import ObjKey, key_of
from meshctl.lab.settings import LabSettings

__all__ = ["StateDir", "Store", "Transaction", "dump_yaml", "load_yaml", "write_atomic"]

Transaction = LabTransaction
"""Writes made while holding the state lock (the writers' protocol lives in ``mesh.rt.labstate``)."""


class StateDir(LabState):
    """The paths of one state directory: the shared protocol's (objects, lock, counter, lab.yaml)
    and the lab runtime's own."""

    def __init__(self, root: Path | str) -> None:
        super().__init__(Path(root).absolute())

    @property
    def run(self) -> Path:
        """Runtime files of the daemon (pids, CNI cache, synced marker)."""
        return self.root / "run"

    @property
    def tokens(self) -> Path:
        """The lab's service-account tokens (its TokenReview), which istiod_lite reads."""
        return self.root / "mesh" / "tokens.yaml"

    @property
    def pids(self) -> Path:
        """``<ns>_<pod>_<container>.pid`` files: ``PID STARTTIME``."""
        return self.root / "run" / "pids"

    @property
    def cni_cache(self) -> Path:
        """Cached CNI results per pod uid (for DEL)."""
        return self.root / "run" / "cni"

    @property
    def hostpath(self) -> Path:
        """``<node>/...``: each node's host paths for hostPath volumes (see meshctl.lab.volumes)."""
        return self.root / "hostpath"

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

    def pod_log(self, namespace: str, name: str) -> Path:
        """``logs/<ns>_<pod>.log``."""
        return self.logs / f"{namespace}_{name}.log"


class Store:
    """Reads and writes one lab's state directory."""

    def __init__(self, root: Path | str) -> None:
        self.paths = StateDir(root)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Holds the state lock; the counter file is written at the end if anything changed."""
        with self.paths.transaction() as txn:
            yield txn

    def current_rv(self) -> int:
        """The last resourceVersion written (0 for a new directory)."""
        return self.paths.current_rv()

    def get(self, key: ObjKey) -> dict[str, Any] | None:
        """One object or None."""
        return self.paths.read(key)

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects of one kind (optionally one namespace), sorted by namespace and name."""
        return self.paths.list(kind, namespace)

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
