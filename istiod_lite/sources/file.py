"""The lab's state directory as a source (docs/lab-state.md): ``objects/<Kind>/<ns>/<name>.yaml``.

The directory is polled (default every 200 ms). A poll stats each ``<Kind>/<namespace>``
directory and re-reads a directory only when its mtime moved, or while the mtime is too recent
to trust (timestamps are coarse, so two renames in one tick could look like one), or on the
periodic full pass that also catches in-place edits. Writers rename files into place, so a
reader never sees half an object; temporary and hidden files (``.x``, ``*.tmp``) are ignored.

A file that is malformed (bad YAML, wrong envelope, kind or name not matching its path,
too large) is skipped with a warning naming the file; the last good version of that object
stays in the caches until the file is fixed or removed. Scanning runs in a worker thread; the
results are applied to the sink on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import yaml

from istiod_lite.sources import CacheSink
from istiod_lite.sources.objects import KINDS, KubeObject, ObjectError, parse_object

__all__ = ["FileChanges", "FileSource", "StateScanner"]

_CLUSTER_DIR = "_cluster"
_MAX_FILE_BYTES = 1024 * 1024
_RACY_NS = 2_000_000_000
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Sig = tuple[int, int, int, int]
_Key = tuple[str, str, str]


@dataclass(slots=True)
class FileChanges:
    """What one scan found: objects to upsert, keys (kind, ns, name) to delete, files skipped."""

    upserts: list[KubeObject] = field(default_factory=list)
    deletes: list[_Key] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(slots=True)
class _File:
    sig: _Sig
    key: _Key | None


def _sig(st: os.stat_result) -> _Sig:
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


def _subdirs(path: Path) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _load(path: Path, kind: str, namespace: str) -> KubeObject:
    """Reads and validates one object file; raises ``ObjectError`` saying what is wrong."""
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_FILE_BYTES + 1)
        if len(data) > _MAX_FILE_BYTES:
            raise ObjectError(f"larger than {_MAX_FILE_BYTES} bytes")
        raw = yaml.load(data, Loader=_Loader)  # a safe loader (libyaml when available)
    except yaml.YAMLError as exc:
        raise ObjectError(f"not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ObjectError(f"cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise ObjectError("does not hold one object (a mapping)")
    obj = parse_object(raw, kind=kind, namespace=namespace)
    if obj.kind != kind or obj.namespace != namespace or obj.name != path.stem:
        where = f"{obj.kind} {obj.namespace or _CLUSTER_DIR}/{obj.name}"
        raise ObjectError(f"holds {where}, which does not match its path")
    return obj


class StateScanner:
    """Finds what changed in a state directory since the last scan. Not thread-safe: one caller."""

    def __init__(
        self,
        state_dir: Path,
        *,
        kinds: Iterable[str] = KINDS,
        full_rescan_every: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._objects = state_dir / "objects"
        self._kinds = frozenset(kinds)
        self._full_every = full_rescan_every
        self._monotonic = monotonic
        self._last_full = float("-inf")
        self._dirs: dict[Path, tuple[int, bool]] = {}
        self._files: dict[Path, _File] = {}

    def scan(self) -> FileChanges:
        """Stats the tree and reads what changed."""
        changes = FileChanges()
        full = self._monotonic() - self._last_full >= self._full_every
        if full:
            self._last_full = self._monotonic()
        now_ns = time.time_ns()
        seen: set[Path] = set()
        for kind_dir in _subdirs(self._objects):
            if kind_dir.name not in self._kinds:
                continue
            for ns_dir in _subdirs(Path(kind_dir.path)):
                path = Path(ns_dir.path)
                seen.add(path)
                mtime = ns_dir.stat().st_mtime_ns
                cached = self._dirs.get(path)
                if full or cached is None or cached[0] != mtime or not cached[1]:
                    namespace = "" if ns_dir.name == _CLUSTER_DIR else ns_dir.name
                    self._rescan(path, kind_dir.name, namespace, changes)
                    self._dirs[path] = (mtime, mtime < now_ns - _RACY_NS)
        for gone in [d for d in self._dirs if d not in seen]:
            del self._dirs[gone]
            self._forget(gone, set(), changes)
        return changes

    def _rescan(self, directory: Path, kind: str, namespace: str, changes: FileChanges) -> None:
        present: set[Path] = set()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith((".yaml", ".yml")):
                continue
            path = Path(entry.path)
            try:
                sig = _sig(entry.stat(follow_symlinks=False))
            except FileNotFoundError:
                continue
            present.add(path)
            known = self._files.get(path)
            if known is not None and known.sig == sig:
                continue
            try:
                obj = _load(path, kind, namespace)
            except ObjectError as exc:
                changes.problems.append((path, exc.message))
                self._files[path] = _File(sig, known.key if known else None)
                continue
            self._files[path] = _File(sig, (obj.kind, obj.namespace, obj.name))
            changes.upserts.append(obj)
        self._forget(directory, present, changes)

    def _forget(self, directory: Path, present: set[Path], changes: FileChanges) -> None:
        for path in [p for p in self._files if p.parent == directory and p not in present]:
            key = self._files.pop(path).key
            if key is not None:
                changes.deletes.append(key)


class FileSource:
    """Feeds a ``CacheSink`` from a lab state directory until cancelled."""

    def __init__(
        self,
        state_dir: Path,
        sink: CacheSink,
        *,
        kinds: Iterable[str] = KINDS,
        poll_interval: float = 0.2,
        logger: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self._kinds = tuple(kinds)
        self._scanner = StateScanner(state_dir, kinds=self._kinds)
        self._state_dir = state_dir
        self._sink = sink
        self._poll_interval = poll_interval
        self._log = logger or structlog.get_logger().bind(component="istiod_lite.sources.file")

    async def run(self) -> None:
        """Lists the directory, marks the sink synced, then applies each poll's changes."""
        if not (self._state_dir / "objects").is_dir():
            self._log.warning(
                "source.file.missing", path=str(self._state_dir), hint="waiting for the lab to create it"
            )
        changes = await asyncio.to_thread(self._scanner.scan)
        self._report(changes)
        for kind in self._kinds:
            self._sink.replace(kind, [o for o in changes.upserts if o.kind == kind])
        self._sink.mark_synced()
        while True:
            await asyncio.sleep(self._poll_interval)
            changes = await asyncio.to_thread(self._scanner.scan)
            self._report(changes)
            for kind, namespace, name in changes.deletes:
                self._sink.delete(kind, namespace, name)
            for obj in changes.upserts:
                self._sink.upsert(obj)

    def _report(self, changes: FileChanges) -> None:
        for path, problem in changes.problems:
            self._log.warning("source.file.skipped", file=str(path), problem=problem)
