"""Running the network commands: ``ip``, ``iptables-restore`` and ``sysctl`` inside namespaces.

``ip`` in batch mode was measured faster than pyroute2 here (one pod's namespace, veth, addresses
and routes: three short processes, about 10 ms), and it keeps the daemon's event loop free.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Sequence

from meshctl.lab.errors import LabNetworkError

__all__ = [
    "NETNS_DIR",
    "delete_netns_sync",
    "ip_batch",
    "list_netns",
    "netns_exec",
    "run_cmd",
]

NETNS_DIR = "/var/run/netns"
_TIMEOUT = 30.0


def _failure(argv: Sequence[str], code: int | None, stderr: bytes | str) -> LabNetworkError:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    return LabNetworkError(
        f"{' '.join(argv)} failed (exit {code}): {text.strip()[-400:]}",
        hint="see the daemon log; 'meshctl lab down' removes what the lab created",
    )


async def run_cmd(argv: Sequence[str], *, stdin: str | None = None, limit: float = _TIMEOUT) -> str:
    """Runs a command, returns stdout; raises :class:`LabNetworkError` with stderr on failure."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate(stdin.encode() if stdin else None)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise _failure(argv, proc.returncode, err)
    return out.decode(errors="replace")


async def ip_batch(lines: Sequence[str], *, netns: str | None = None, force: bool = False) -> None:
    """Runs ``ip [-n NETNS] [-force] -batch -`` with ``lines``."""
    argv = ["ip"]
    if netns:
        argv += ["-n", netns]
    if force:
        argv.append("-force")
    await run_cmd([*argv, "-batch", "-"], stdin="\n".join(lines) + "\n")


async def netns_exec(netns: str, argv: Sequence[str], *, stdin: str | None = None) -> str:
    """Runs ``argv`` inside ``netns`` (``ip netns exec``)."""
    return await run_cmd(["ip", "netns", "exec", netns, *argv], stdin=stdin)


def list_netns(prefix: str) -> list[str]:
    """Named network namespaces whose names start with ``prefix``."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def delete_netns_sync(names: Sequence[str]) -> None:
    """Deletes named namespaces (unmount and unlink), ignoring ones already gone."""
    if not names:
        return
    lines = "".join(f"netns del {n}\n" for n in names)
    subprocess.run(
        ["ip", "-force", "-batch", "-"],
        input=lines,
        text=True,
        capture_output=True,
        timeout=_TIMEOUT,
        check=False,
    )
    left = [n for n in names if os.path.exists(os.path.join(NETNS_DIR, n))]
    if left:
        raise LabNetworkError(
            f"could not delete network namespaces: {', '.join(left)}",
            hint="a process may still hold them; check 'ip netns pids NAME'",
        )
