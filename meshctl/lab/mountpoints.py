"""Mount points on the host: a container's ``mountPath`` must exist in the host's file system before
the container's mount namespace can bind a volume there (the mounts themselves never reach the host).

The lab creates what is missing (directories, or an empty file for a file mount) and records it in
``/run/mesh-lab/mountpoints.created``; each lab records the mount points it uses in
``/run/mesh-lab/<lab id>.mountpoints``. ``lab down`` drops the lab's uses and removes each recorded
path that no other lab uses and that is still empty (deepest first). Removing a directory that is a
mount point in another lab's container would detach that container's mount, hence the uses.
All of it under an exclusive ``flock`` on ``/run/mesh-lab/mountpoints.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["REGISTRY", "ensure_mountpoint", "release_mountpoints"]

REGISTRY = Path("/run/mesh-lab")
"""The registry of labs on this machine (a tmpfs, cleared at boot)."""
_CREATED = "mountpoints.created"


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / "mountpoints.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)


def ensure_mountpoint(path: str, *, directory: bool, lab_id: str, registry: Path = REGISTRY) -> None:
    """Makes ``path`` exist (a directory, or else an empty file) and records that ``lab_id`` uses it."""
    with _locked(registry):
        uses = registry / f"{lab_id}.mountpoints"
        if path not in _lines(uses):
            _write_lines(uses, [*_lines(uses), path])
        created: list[str] = []
        missing = [p for p in (Path(path), *Path(path).parents) if not os.path.lexists(p)]
        for parent in reversed(missing[1:]):
            parent.mkdir()
            created.append(str(parent))
        if missing:
            if directory:
                Path(path).mkdir()
            else:
                Path(path).touch(mode=0o644)
            created.append(path)
        if created:
            _write_lines(registry / _CREATED, [*_lines(registry / _CREATED), *created])


def release_mountpoints(lab_id: str, *, registry: Path = REGISTRY) -> list[str]:
    """Forgets ``lab_id``'s uses and removes the lab-made mount points nobody uses that are empty
    (directories without entries, files without bytes); returns what it removed."""
    if not registry.is_dir():
        return []
    with _locked(registry):
        with contextlib.suppress(FileNotFoundError):
            (registry / f"{lab_id}.mountpoints").unlink()
        used = [u for f in registry.glob("*.mountpoints") for u in _lines(f)]
        removed: list[str] = []
        kept: list[str] = []
        for path in sorted(set(_lines(registry / _CREATED)), key=lambda p: (-p.count("/"), p)):
            if any(u == path or u.startswith(path.rstrip("/") + "/") for u in used):
                kept.append(path)
            elif _remove_if_empty(Path(path)):
                removed.append(path)
        _write_lines(registry / _CREATED, sorted(kept))
        return removed


def _remove_if_empty(path: Path) -> bool:
    try:
        if path.is_symlink():
            return False
        if path.is_dir():
            path.rmdir()
        elif path.is_file() and path.stat().st_size == 0:
            path.unlink()
        else:
            return False
    except OSError:  # not empty, or already gone: someone else's now
        return False
    return True
