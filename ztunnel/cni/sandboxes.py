"""The sandboxes the node agent has seen a CNI ADD for, kept in ``<run-dir>/pods/<uid>.json`` so a
restarted agent still knows each pod's network namespace (enrolled or not: a namespace relabelled
after the restart must still find its pods).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mesh.rt.labstate import write_atomic

__all__ = ["Sandbox", "SandboxCache"]


@dataclass(frozen=True, slots=True)
class Sandbox:
    """One pod sandbox as the CNI ADD described it."""

    uid: str
    namespace: str
    name: str
    netns: str
    container_id: str
    ips: tuple[str, ...] = ()
    """The pod's addresses from the CNI result (the node's probe SNAT needs them after a restart)."""


class SandboxCache:
    """One JSON file per pod uid under ``directory``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def _path(self, uid: str) -> Path:
        if not uid or "/" in uid or uid.startswith("."):
            raise ValueError(f"not a pod uid: {uid!r}")
        return self.directory / f"{uid}.json"

    def remember(self, sandbox: Sandbox) -> None:
        """Records (or replaces) the pod's sandbox."""
        write_atomic(self._path(sandbox.uid), json.dumps(asdict(sandbox)) + "\n")

    def forget(self, uid: str) -> None:
        """Drops the pod's entry (nothing when there is none)."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            self._path(uid).unlink()

    def load(self) -> dict[str, Sandbox]:
        """Every readable entry by uid; unreadable files are skipped."""
        result: dict[str, Sandbox] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                text = {f.name: str(data[f.name]) for f in fields(Sandbox) if f.name != "ips"}
                ips = data.get("ips", [])
                if not isinstance(ips, list):
                    continue
                sandbox = Sandbox(**text, ips=tuple(str(ipaddress.ip_address(ip)) for ip in ips))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            result[sandbox.uid] = sandbox
        return result
