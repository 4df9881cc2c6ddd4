"""Volume directories on the host: content volumes written atomically as the kubelet does, hostPath
type checks, emptyDir directories.

A content volume (configMap, secret, projected) is a directory holding a timestamped directory
``..2026_12_06_01_02_03.XXXX`` with the files, a symlink ``..data`` to it, and for each top-level
name a symlink ``name -> ..data/name``. An update writes a new timestamped directory and swaps
``..data`` with one rename, so a reader (through the container's bind mount of the directory) sees
the old files or the new ones, never a mix; then the old directory goes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "DATA_LINK",
    "Payload",
    "host_path_action",
    "path_kind",
    "prepare_empty_dir",
    "prepare_host_path",
    "read_payload",
    "write_payload",
]

DATA_LINK = "..data"
Payload = Mapping[str, tuple[bytes, int]]
"""Relative path -> (content, mode)."""
_EMPTY_DIR_MODE = 0o777


def read_payload(directory: Path) -> dict[str, tuple[bytes, int]]:
    """What the volume holds now (empty when it was never written)."""
    data = directory / DATA_LINK
    if not data.is_dir():
        return {}
    found: dict[str, tuple[bytes, int]] = {}
    for root, _dirs, files in os.walk(data):
        for name in files:
            path = Path(root, name)
            found[str(path.relative_to(data))] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return found


def write_payload(directory: Path, payload: Payload, *, now: float) -> bool:
    """Makes the volume hold exactly ``payload`` (atomically; see the module docstring).

    Returns False when it already did (nothing written)."""
    directory.mkdir(parents=True, exist_ok=True)
    if read_payload(directory) == dict(payload):
        return False
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime(now))
    fresh = Path(tempfile.mkdtemp(prefix=stamp, dir=directory))
    os.chmod(fresh, 0o755)
    for rel, (data, mode) in payload.items():
        path = fresh / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
    link, swap = directory / DATA_LINK, directory / f"{DATA_LINK}_tmp"
    old = os.readlink(link) if link.is_symlink() else None
    with contextlib.suppress(FileNotFoundError):
        swap.unlink()
    os.symlink(fresh.name, swap)
    os.rename(swap, link)
    tops = {rel.split("/", 1)[0] for rel in payload}
    for top in sorted(tops):
        if not (directory / top).is_symlink():
            os.symlink(f"{DATA_LINK}/{top}", directory / top)
    for entry in directory.iterdir():
        if not entry.name.startswith("..") and entry.name not in tops and entry.is_symlink():
            entry.unlink()
    if old is not None and old != fresh.name:
        shutil.rmtree(directory / old, ignore_errors=True)
    return True


def path_kind(path: Path) -> str | None:
    """``directory``, ``file``, ``socket`` or ``other`` (following links); None when nothing is there."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "socket" if stat.S_ISSOCK(mode) else "other"


_WANTED = {
    "DirectoryOrCreate": ("directory", "mkdir", "a directory"),
    "Directory": ("directory", "", "a directory"),
    "FileOrCreate": ("file", "touch", "a file"),
    "File": ("file", "", "a file"),
    "Socket": ("socket", "", "a socket file"),
}


def host_path_action(host_type: str, found: str | None) -> tuple[str, str]:
    """What to do for a hostPath of ``host_type`` where ``found`` is (:func:`path_kind`), as the
    kubelet's type check: ``("ok", "")``, ``("mkdir", "")``, ``("touch", "")``, or
    ``("wait", why)``. No type: anything there is fine, nothing there becomes a directory."""
    if not host_type:
        return ("ok", "") if found is not None else ("mkdir", "")
    wanted, create, noun = _WANTED[host_type]
    if found == wanted:
        return "ok", ""
    if found is None and create:
        return create, ""
    return "wait", f"is not {noun}" if found is not None else f"does not exist (type {host_type})"


def prepare_host_path(pod_path: str, source: Path, host_type: str, *, lab_root: Path) -> str:
    """Checks (and creates, for the *OrCreate types) one hostPath; returns why the pod must wait, or "".

    The lab creates only under ``lab_root`` (its per-node directories and CNI dirs); the parents of
    a FileOrCreate path are created there too, as a node's usual directories would exist."""
    action, why = host_path_action(host_type, path_kind(source))
    if action in ("mkdir", "touch") and not source.is_relative_to(lab_root):
        action, why = "wait", "does not exist"
    if action == "mkdir":
        source.mkdir(parents=True, exist_ok=True)
    elif action == "touch":
        source.parent.mkdir(parents=True, exist_ok=True)
        source.touch(mode=0o644, exist_ok=True)
    if action != "wait":
        return ""
    return f"hostPath type check failed: {pod_path} {why} (the node's {pod_path} is {source})"


def prepare_empty_dir(directory: Path) -> None:
    """An emptyDir volume: a directory everyone may write (mode 0777, as the kubelet makes it)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, _EMPTY_DIR_MODE)
