"""The exec step of a lab container with volumes: bind-mount them, then exec the command.

Run as ``ip netns exec NS python -I -S .../mountexec.py CWD [VOLUME SOURCE TARGET ro|rw[+single]
private|slave]... -- COMMAND ARGS...``: ``ip netns exec`` has already unshared a mount namespace
(every mount a slave of the host's, so nothing mounted here reaches the host) and mounted the pod's
hosts and resolv.conf. The mounts come in mounting order (:func:`meshctl.lab.volumes.plan_mounts`).
Every source is opened before the first mount (a mount may cover another's source). Each is a
recursive bind, or with ``+single`` the source's own file system only (a directory bound back over
a volume that covers it: a recursive bind would bring that volume along); ``private`` stops host
mounts from reaching it, ``slave`` (HostToContainer) lets them in; ``ro`` remounts it read-only,
keeping the nosuid/nodev/noexec flags of what it binds. Then the step changes to CWD and execs the
command.

The module uses the standard library only (no json: it costs as much as the rest) and is run by
path with ``-I -S``: about 16 ms, against 250 ms for importing the ``meshctl.lab`` package and
about 3 ms per util-linux ``mount`` process (a read-only volume takes three).
Exit codes: 126 when a mount fails, 127 when the command cannot be run (both explained on stderr,
which is the container's log).
"""

from __future__ import annotations

import ctypes
import os
import sys

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
_FIELDS = 5


class MountError(Exception):
    """One mount could not be made."""


def _mount(libc: ctypes.CDLL, source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    if libc.mount(src, target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise MountError(f"mount {source or ''} on {target}: {os.strerror(errno)}")


def mount_all(mounts: list[list[str]]) -> None:
    """Makes every mount (``[volume, source, target, ro|rw[+single], private|slave]``) in order;
    raises MountError naming the volume at fault."""
    libc = ctypes.CDLL(None, use_errno=True)
    held = _open_sources(mounts)
    for (volume, source, target, mode_field, propagation), fd in zip(mounts, held, strict=True):
        mode, _, single = mode_field.partition("+")
        try:
            try:
                _mount(libc, f"/proc/self/fd/{fd}", target, _MS_BIND | (0 if single else _MS_REC))
            except MountError as exc:
                raise MountError(str(exc).replace(f"/proc/self/fd/{fd}", source, 1)) from None
            _mount(libc, None, target, (_MS_SLAVE if propagation == "slave" else _MS_PRIVATE) | _MS_REC)
            if mode == "ro":
                kept = os.statvfs(target).f_flag
                extra = sum(ms for st, ms in _KEPT_FLAGS if kept & st)
                _mount(libc, None, target, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | extra)
        except (MountError, OSError) as exc:
            raise MountError(f"volume {volume!r} at {target}: {exc}") from None


def _open_sources(mounts: list[list[str]]) -> list[int]:
    """Every source opened (O_PATH) before the first mount: a mount may cover a source's path (an
    emptyDir at /tmp covers a lab whose state is under /tmp), its open descriptor still names it.
    The descriptors close at exec."""
    fds = []
    for volume, source, target, _, _ in mounts:
        try:
            fds.append(os.open(source, os.O_PATH))
        except OSError as exc:
            raise MountError(f"volume {volume!r} at {target}: {source}: {exc.strerror}") from None
    return fds


def main(argv: list[str]) -> int:
    """``mountexec.py CWD [VOLUME SOURCE TARGET ro|rw[+single] private|slave]... -- COMMAND ARGS...``;
    execs the command, or returns an exit code."""
    split = argv.index("--") if "--" in argv else -1
    fields = argv[1:split]
    if split < 1 or split == len(argv) - 1 or len(fields) % _FIELDS:
        print(
            "usage: mountexec.py CWD [VOLUME SOURCE TARGET ro|rw[+single] private|slave]... -- COMMAND...",
            file=sys.stderr,
        )
        return 2
    try:
        mount_all([fields[i : i + _FIELDS] for i in range(0, len(fields), _FIELDS)])
    except MountError as exc:
        print(f"lab: cannot mount {exc}", file=sys.stderr)
        return EXIT_MOUNT_FAILED
    command = argv[split + 1 :]
    try:
        os.chdir(argv[0])
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"lab: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
    return EXIT_EXEC_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
