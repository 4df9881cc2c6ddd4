"""Removing everything a lab created, whether its daemon is alive, hung or long dead.

Order: ask the daemon to stop (it stops pods with CNI DEL and removes its namespaces); then kill
by PID whatever is still recorded in pid files (checked against the start time, so a reused PID
is never hit) and whatever still runs inside one of the lab's namespaces; then delete the
namespaces with the lab's prefix, its ``/etc/netns`` entries, the empty mount points it made on the
host (:mod:`meshctl.lab.mountpoints`) and the runtime part of the state directory (pods' volumes,
the nodes' hostPath directories). Every step tolerates things already gone, so this is idempotent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from meshctl.lab.errors import LabError
from meshctl.lab.mountpoints import REGISTRY, release_mountpoints
from meshctl.lab.netops import NETNS_DIR, delete_netns_sync, list_netns
from meshctl.lab.pods import ETC_NETNS
from meshctl.lab.store import StateDir
from meshctl.lab.supervisor import kill_group, process_start_time, read_pid_file

__all__ = [
    "REGISTRY",
    "CleanupReport",
    "check_lab_id_free",
    "cleanup_lab",
    "forget_lab_id",
    "processes_in_netns",
    "record_lab_id",
    "reset_state",
]

_DAEMON_TIMEOUT = 20.0
_KILL_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """What a cleanup found and removed."""

    daemon_stopped: bool
    processes_killed: int
    namespaces_removed: int
    etc_entries_removed: int

    @property
    def found_anything(self) -> bool:
        """True when there was something to clean."""
        return bool(
            self.daemon_stopped
            or self.processes_killed
            or self.namespaces_removed
            or self.etc_entries_removed
        )


def _wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_start_time(pid) != start:
            return True
        time.sleep(0.02)
    return process_start_time(pid) != start


def _stop_daemon(paths: StateDir, timeout: float) -> bool:
    pid = read_pid_file(paths.daemon_pid)
    if pid is None:
        return False
    start = process_start_time(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, start, timeout):
        kill_group(pid, signal.SIGKILL)
        _wait_gone(pid, start, 2.0)
    return True


def processes_in_netns(names: Iterable[str]) -> list[int]:
    """PIDs of processes whose network namespace is one of the named namespaces."""
    inodes = set()
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            inodes.add(os.stat(os.path.join(NETNS_DIR, name)).st_ino)
    if not inodes:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                found.append(int(entry))
    return sorted(found)


def _kill_pids(pids: list[int]) -> int:
    starts = {pid: process_start_time(pid) for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    killed = 0
    for pid in pids:
        if not _wait_gone(pid, starts[pid], _KILL_GRACE):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += 1
    return killed


def cleanup_lab(
    paths: StateDir,
    lab_id: str,
    *,
    progress: Callable[[str], None] = lambda _: None,
    daemon_timeout: float = _DAEMON_TIMEOUT,
) -> CleanupReport:
    """Removes every process, namespace and /etc/netns entry of lab ``lab_id`` (idempotent)."""
    prefix = f"{lab_id}-"
    stopped = _stop_daemon(paths, daemon_timeout)
    if stopped:
        progress("stopped the lab daemon")
    recorded = [
        pid for pid in (read_pid_file(p) for p in sorted(paths.pids.glob("*.pid"))) if pid is not None
    ]
    for pid in recorded:
        kill_group(pid, signal.SIGTERM)
    names = list_netns(prefix)
    stragglers = sorted(set(recorded) | set(processes_in_netns(names)))
    killed = _kill_pids(stragglers) if stragglers else 0
    if killed:
        progress(f"killed {killed} leftover processes")
    delete_netns_sync(names)
    if names:
        progress(f"removed {len(names)} network namespaces")
    entries = list(ETC_NETNS.glob(f"{prefix}*"))
    for entry in entries:
        shutil.rmtree(entry, ignore_errors=True)
    points = release_mountpoints(lab_id)
    if points:
        progress(f"removed {len(points)} empty mount points the lab made on the host")
    reset_state(paths, keep_logs=True)
    forget_lab_id(lab_id, paths.root)
    return CleanupReport(stopped, killed, len(names), len(entries))


def check_lab_id_free(lab_id: str, root: Path) -> None:
    """Refuses a lab id that a live lab with another state directory uses (cleanup would hit it)."""
    try:
        other = (REGISTRY / f"{lab_id}.state").read_text().strip()
    except FileNotFoundError:
        return
    if other != str(root) and read_pid_file(StateDir(other).daemon_pid) is not None:
        raise LabError(
            f"lab id {lab_id!r} is used by the running lab with state directory {other}",
            hint=f"pass another --lab-id, or stop that lab with 'meshctl lab down --state {other}'",
        )


def record_lab_id(lab_id: str, root: Path) -> None:
    """Notes that ``root`` uses ``lab_id``."""
    REGISTRY.mkdir(parents=True, exist_ok=True)
    (REGISTRY / f"{lab_id}.state").write_text(f"{root}\n")


def forget_lab_id(lab_id: str, root: Path) -> None:
    """Drops the note, if it is ours."""
    path = REGISTRY / f"{lab_id}.state"
    with contextlib.suppress(FileNotFoundError):
        if path.read_text().strip() == str(root):
            path.unlink()


def reset_state(paths: StateDir, *, keep_logs: bool) -> None:
    """Removes objects, runtime files (pods' volumes), the nodes' hostPath directories and lab.yaml
    (and logs unless ``keep_logs``); keeps cni/.

    The lab's token file (``mesh/``) goes too, and so does the lab Prometheus's (``prometheus/``, its
    data)."""
    targets = [paths.objects, paths.run, paths.root / "prometheus", paths.hostpath, paths.tokens.parent]
    if not keep_logs:
        targets.append(paths.logs)
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
    for file in (paths.settings_file, paths.counter_file):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
