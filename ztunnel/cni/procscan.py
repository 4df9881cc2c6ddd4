"""Finding the network namespace of a pod that was already running when the node agent started.

The Kubernetes API does not say where a pod's network namespace is, and a pod created before the
mesh was installed never went through our CNI plugin. As Istio's node agent does
(``cni/pkg/nodeagent/podcgroupns.go``), the agent walks /proc: the kubelet puts every process of a
pod in a cgroup whose path names the pod's uid (``.../kubepods-burstable-pod<uid>.slice/...`` with
the systemd driver, ``/kubepods/burstable/pod<uid>/...`` with cgroupfs), and the process's
``ns/net`` is the pod's namespace. Processes in the node's own namespace (host-network pods) are
skipped. Of a pod's processes the one started first (then the lowest PID) is taken: the sandbox's
pause process, which lives as long as the pod; its ``/proc/<pid>/ns/net`` is the path the agent
then uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

__all__ = ["find_pod_netns", "pod_uid_from_cgroup"]

_POD_UID = re.compile(
    r"(?:^|[/-])pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?:/|$)"
)


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod uid named by a ``/proc/<pid>/cgroup`` file's paths (None when no line names one).

    The systemd cgroup driver writes the uid with underscores; it comes back with dashes."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if match := _POD_UID.search(path):
            return match.group(1).replace("_", "-")
    return None


def find_pod_netns(uids: Collection[str], *, proc: Path = Path("/proc")) -> dict[str, str]:
    """The network namespace path (``<proc>/<pid>/ns/net``) of each of ``uids`` that has a running
    process outside the node's namespace. Processes that end during the walk are skipped."""
    wanted = set(uids)
    if not wanted:
        return {}
    host = os.stat(proc / "self" / "ns" / "net").st_ino
    first: dict[str, tuple[int, int, str]] = {}  # uid -> (start time, pid, netns path)
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            uid = pod_uid_from_cgroup((Path(entry.path) / "cgroup").read_text())
            if uid not in wanted:
                continue
            netns = f"{entry.path}/ns/net"
            if os.stat(netns).st_ino == host:
                continue
            candidate = (_start_time(Path(entry.path) / "stat"), int(entry.name), netns)
        except (OSError, ValueError):
            continue  # the process ended meanwhile, or is not ours to read
        if uid not in first or candidate < first[uid]:
            first[uid] = candidate
    return {uid: netns for uid, (_, _, netns) in first.items()}


def _start_time(stat: Path) -> int:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot); the command name may hold spaces."""
    text = stat.read_text()
    return int(text[text.rindex(")") + 2 :].split()[19])
