"""The lab's token file (``<state>/mesh/tokens.yaml``), which istiod_lite's lab authenticator reads
(``istiod_lite.ca.auth.load_lab_tokens``): token -> ``{node, identity: "ns/sa", expires}``.

The pod runtime writes it (each pod's projected service-account tokens, refreshed), and may do so
from several tasks, so every change is a read-modify-write under an
exclusive ``flock`` on ``.tokens.yaml.lock`` next to it, written to a private (0600) temporary
file and renamed into place: a reader never sees half a file, a writer never drops another's tokens.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from meshctl.lab.errors import LabError

__all__ = [
    "TokenEntries", "drop_expired", "drop_pod_tokens", "ensure_lab_token_file", "pod_token_entry",
    "update_lab_tokens",
]  # fmt: skip

TokenEntries = dict[str, dict[str, Any]]
"""token -> entry: ``node``, ``identity``; a pod token also ``expires``, ``audience``, ``pod``, ``podUID``."""


def update_lab_tokens(path: Path, change: Callable[[TokenEntries], bool]) -> bool:
    """Applies ``change`` to the token file's entries under the file's lock; ``change`` edits the
    mapping in place and returns True when it changed something, which is then written (mode 0600).

    Returns whether the file was rewritten. A missing file counts as empty; an unreadable one raises
    :class:`LabError` and is left alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        entries = _read(path)
        if not change(entries):
            return False
        _write_private(path, yaml.safe_dump(entries, sort_keys=True))
    return True


def ensure_lab_token_file(path: Path) -> None:
    """Writes an empty token file when there is none: the lab's token API exists from the start, so
    istiod_lite can start (and read tokens as pods get them) before any pod has one."""
    update_lab_tokens(path, lambda _: not path.exists())


def _read(path: Path) -> TokenEntries:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise LabError(
            f"cannot read the lab token file {path}: {exc}",
            hint="remove it; 'meshctl lab down' and 'up' write a new one",
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LabError(f"the lab token file {path} is not a mapping of token -> entry", hint="remove it")
    return data


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # an existing temporary file keeps its mode through O_CREAT
    os.replace(tmp, path)


def pod_token_entry(
    *, pod: str, uid: str, node: str, service_account: str, audience: str, expires: float
) -> dict[str, Any]:
    """The entry of a pod's projected token: its identity ``ns/sa`` on ``node`` until ``expires``,
    with the pod (``ns/name``, uid) and audience it was issued for."""
    namespace = pod.split("/", 1)[0]
    return {
        "node": node,
        "identity": f"{namespace}/{service_account}",
        "expires": int(expires),
        "audience": audience,
        "pod": pod,
        "podUID": uid,
    }


def drop_pod_tokens(entries: TokenEntries, uid: str) -> bool:
    """Removes every token issued to the pod with ``uid``; True when there was one."""
    gone = [
        token for token, entry in entries.items() if isinstance(entry, dict) and entry.get("podUID") == uid
    ]
    for token in gone:
        del entries[token]
    return bool(gone)


def drop_expired(entries: TokenEntries, now: float) -> bool:
    """Removes pod tokens that have expired (others have no expiry); True when there was one."""
    gone = [
        token
        for token, entry in entries.items()
        if isinstance(entry, dict) and "podUID" in entry and float(entry.get("expires", now)) <= now
    ]
    for token in gone:
        del entries[token]
    return bool(gone)
