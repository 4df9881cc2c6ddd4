"""Processes that look to the node agent like a running pod's: in a network namespace of their own
(or the node's, for a host-network pod) and in a cgroup named the way the kubelet names pod cgroups.
Everything made here is removed afterwards (the processes by PID, the cgroups, the namespace)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PodProcesses", "cgroup_root", "pod_processes"]


def cgroup_root() -> Path:
    """A cgroup hierarchy this machine lets root create groups in (cgroup v2 first)."""
    for candidate in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/pids")):
        if (candidate / "cgroup.procs").exists():
            return candidate
    raise AssertionError("no cgroup hierarchy found under /sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class PodProcesses:
    """The pod's sandbox (pause) process, an app process started after it, and the netns name."""

    pause: int
    app: int
    netns: str | None


@contextlib.contextmanager
def pod_processes(uid: str, *, systemd: bool, host_network: bool = False) -> Iterator[PodProcesses]:
    """Two processes of pod ``uid`` in its cgroup (systemd's or cgroupfs's naming)."""
    tag = f"mtest-kubepods-{os.getpid()}-{uid[:8]}"
    if systemd:
        parts = [
            f"{tag}.slice",
            f"{tag}-besteffort-pod{uid.replace('-', '_')}.slice",
            "cri-containerd-0a1b.scope",
        ]
    else:
        parts = [tag, "besteffort", f"pod{uid}", "0a1b"]
    groups = [cgroup_root().joinpath(*parts[: i + 1]) for i in range(len(parts))]
    netns = None if host_network else f"mtest-scan-{os.getpid()}-{uid[:8]}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for group in groups:
            group.mkdir()
        if netns:
            subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
        prefix = ["ip", "netns", "exec", netns] if netns else []
        for _ in range(2):  # `ip netns exec` execs the command: the PID is the sleeper's
            processes.append(subprocess.Popen([*prefix, "sleep", "60"], start_new_session=True))
            (groups[-1] / "cgroup.procs").write_text(f"{processes[-1].pid}\n")
            if netns:
                _wait_in(processes[-1].pid, netns)
        yield PodProcesses(processes[0].pid, processes[1].pid, netns)
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
        for group in reversed(groups):
            with contextlib.suppress(FileNotFoundError):
                group.rmdir()
        if netns:
            subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=10)


def _wait_in(pid: int, netns: str) -> None:
    """Until ``ip netns exec`` has moved the process into the namespace."""
    wanted, deadline = os.stat(f"/var/run/netns/{netns}").st_ino, time.monotonic() + 5
    while os.stat(f"/proc/{pid}/ns/net").st_ino != wanted:
        assert time.monotonic() < deadline, f"process {pid} never entered {netns}"
        time.sleep(0.005)
