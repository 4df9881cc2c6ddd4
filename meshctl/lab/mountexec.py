"""The exec step of a lab container with volumes: bind-mount them, then exec the command.

Run as ``ip netns exec NS python -I -S .../mountexec.py PLAN -- COMMAND ARGS...``: ``ip netns
exec`` has already unshared a mount namespace (every mount a slave of the host's, so nothing
mounted here reaches the host) and mounted the pod's hosts and resolv.conf. PLAN is JSON
``{"mounts": [{"volume", "source", "target", "readOnly", "propagation"}], "cwd": DIR}`` in mounting
order (see :func:`meshctl.lab.volumes.plan_mounts`). Each mount is a recursive bind; ``private``
stops host mounts from reaching it, ``slave`` (HostToContainer) lets them in; read-only mounts are
remounted read-only, keeping the nosuid/nodev/noexec flags of what they bind.

The module uses the standard library only and is run by path with ``-I -S`` (about 15 ms, against
250 ms for importing the ``meshctl.lab`` package, or 3 ms per util-linux ``mount`` process).
Exit codes: 126 when a mount fails, 127 when the command cannot be run (both explained on stderr,
which is the container's log).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

__all__ = ["main", "mount_all"]

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND, _MS_REC = 32, 1024, 2048, 4096, 16384
_MS_PRIVATE, _MS_SLAVE, _MS_RELATIME = 1 << 18, 1 << 19, 1 << 21
_KEPT_FLAGS = (  # statvfs flag -> mount flag, kept when remounting read-only
    (os.ST_NOSUID, _MS_NOSUID),
    (os.ST_NODEV, _MS_NODEV),
    (os.ST_NOEXEC, _MS_NOEXEC),
    (os.ST_NOATIME, _MS_NOATIME),
    (os.ST_NODIRATIME, _MS_NODIRATIME),
    (os.ST_RELATIME, _MS_RELATIME),
)
EXIT_MOUNT_FAILED, EXIT_EXEC_FAILED = 126, 127


class MountError(Exception):
    """One mount could not be made."""


def _mount(libc: Any, source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    if libc.mount(src, target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise MountError(f"mount {source or ''} on {target}: {os.strerror(errno)}")


def mount_all(mounts: list[dict[str, Any]]) -> None:
    """Makes every mount of the plan, in order; raises MountError naming the volume at fault."""
    libc = ctypes.CDLL(None, use_errno=True)
    for item in mounts:
        target = item["target"]
        try:
            _mount(libc, item["source"], target, _MS_BIND | _MS_REC)
            propagation = _MS_SLAVE if item["propagation"] == "slave" else _MS_PRIVATE
            _mount(libc, None, target, propagation | _MS_REC)
            if item["readOnly"]:
                kept = os.statvfs(target).f_flag
                extra = sum(ms for st, ms in _KEPT_FLAGS if kept & st)
                _mount(libc, None, target, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | extra)
        except (MountError, OSError) as exc:
            raise MountError(f"volume {item['volume']!r} at {target}: {exc}") from None


def main(argv: list[str]) -> int:
    """``mountexec.py PLAN -- COMMAND ARGS...``; execs the command, or returns an exit code."""
    if len(argv) < 3 or argv[1] != "--":
        print("usage: mountexec.py PLAN -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    plan = json.loads(argv[0])
    try:
        mount_all(plan["mounts"])
    except MountError as exc:
        print(f"lab: cannot mount {exc}", file=sys.stderr)
        return EXIT_MOUNT_FAILED
    command = argv[2:]
    try:
        os.chdir(plan.get("cwd") or "/")
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"lab: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
    return EXIT_EXEC_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
