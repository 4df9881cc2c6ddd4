"""Helpers for tests that run labs: unique lab ids and a snapshot of what a lab leaves in the system.

Used by tests/netns and the e2e suite: each test lab gets its own id and state directory, and a
:class:`SystemSnapshot` before ``up`` compared with one after ``down`` shows anything left behind.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass

from meshctl.lab.cleanup import REGISTRY, processes_in_netns
from meshctl.lab.netops import list_netns
from meshctl.lab.pods import ETC_NETNS
from meshctl.lab.supervisor import process_start_time

__all__ = ["SystemSnapshot", "pid_alive", "unique_lab_id"]


def unique_lab_id(prefix: str = "t") -> str:
    """A fresh 6-character lab id such as ``t3f9a2`` (no clash with a user's lab or another test)."""
    return (prefix + secrets.token_hex(3))[:6]


def _root_links() -> frozenset[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return frozenset(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line)


def _mounts(marker: str) -> frozenset[str]:
    with open("/proc/self/mountinfo") as f:
        return frozenset(line.split()[4] for line in f if marker in line)


@dataclass(frozen=True, slots=True)
class SystemSnapshot:
    """What is in the system that carries one lab's id."""

    namespaces: tuple[str, ...]
    etc_netns: tuple[str, ...]
    root_links: frozenset[str]
    mounts: frozenset[str]
    processes: tuple[int, ...]
    registered: bool

    @classmethod
    def take(cls, lab_id: str) -> SystemSnapshot:
        """Namespaces, /etc/netns entries, mounts and processes of ``lab_id``; all root-namespace links."""
        prefix = f"{lab_id}-"
        names = list_netns(prefix)
        etc = sorted(e.name for e in ETC_NETNS.glob(f"{prefix}*")) if ETC_NETNS.is_dir() else []
        return cls(
            namespaces=tuple(names),
            etc_netns=tuple(etc),
            root_links=_root_links(),
            mounts=_mounts(prefix),
            processes=tuple(processes_in_netns(names)),
            registered=(REGISTRY / f"{lab_id}.state").exists(),
        )

    def leftovers(self, before: SystemSnapshot, *, lab_id: str) -> list[str]:
        """What is in this snapshot but was not in ``before`` (lab-named links in root count too)."""
        found = [f"netns {n}" for n in self.namespaces if n not in before.namespaces]
        found += [f"/etc/netns/{n}" for n in self.etc_netns if n not in before.etc_netns]
        found += [f"mount {m}" for m in sorted(self.mounts - before.mounts)]
        found += [f"process {p}" for p in self.processes if p not in before.processes]
        found += [
            f"root link {n}" for n in sorted(self.root_links - before.root_links) if n.startswith(lab_id)
        ]
        found += [f"{REGISTRY}/{lab_id}.state"] if self.registered and not before.registered else []
        return found


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live (not zombie) process."""
    return process_start_time(pid) is not None
