"""Readiness probes run against a lab container, as the kubelet runs them (the I/O half of
:mod:`meshctl.lab.probes`).

- ``httpGet``: a GET of the path on the pod's IP (``host`` when given; a hostNetwork pod's IP is its
  node's address), from inside the pod's network namespace; a status 200-399 is a success (a
  redirect is not followed: it counts as a success, as the kubelet counts one to another host).
  ``HTTPS`` is TLS without verifying the server's certificate, as the kubelet does.
- ``tcpSocket``: a TCP connection to the port opens (and is closed at once), as the kubelet checks.
- ``exec``: the command runs in the container's mount and network namespaces (``nsenter`` into its
  process, as ``meshctl lab exec`` enters it) with the container's environment and working
  directory; exit code 0 is a success. A command still running after ``timeoutSeconds`` is killed.
- the lab's port check (:data:`~meshctl.lab.probes.PORTS`): every port listens in the process's
  namespace (``/proc/PID/net/tcp``), nothing connects to it.

A probe runs once the container's process is in the pod's namespace and runs the container's
command (not yet while the lab's launch steps run), and counts toward readiness per
:func:`~meshctl.lab.probes.observe`; every attempt is bounded by ``timeoutSeconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mesh.clock import Clock
from mesh.errors import MeshError
from mesh.http1 import ResponseParser
from meshctl.lab.netops import NETNS_DIR
from meshctl.lab.podspec import listening_tcp_ports
from meshctl.lab.probes import EXEC, HTTP_GET, PORTS, Probe, ProbeState, next_delay, observe, still_launching
from meshctl.lab.supervisor import kill_group
from meshctl.nethttp import socket_in

__all__ = ["ProbeResult", "ProbeTarget", "container_launched", "probe_once", "watch_readiness"]

_USER_AGENT = "kube-probe/lab"
_MAX_OUTPUT = 200
"""Characters of an exec probe's output kept in its failure message."""


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """The running container a probe checks."""

    netns: str | None
    """The pod's network namespace (None: the lab's own)."""
    pod_ip: str
    pid: int
    argv: tuple[str, ...]
    """The container's command, as its process runs it once launched."""
    env: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One attempt: a success, or a failure and why (the kubelet's event text)."""

    ok: bool
    message: str = ""


_OK = ProbeResult(True)


async def watch_readiness(
    probe: Probe, target: ProbeTarget, *, clock: Clock, report: Callable[[bool, str], None]
) -> None:
    """Probes the container until cancelled (its process ended). ``report(ready, failure)`` is called
    when its readiness or the failure message changes (``failure`` is "" after a success).

    The lab's port check is no probe: its failures are not reported, and it ends once the container
    is ready (which it stays while the process runs)."""
    await asyncio.sleep(probe.initial_delay)
    state, failure = ProbeState(), ""
    while not (probe.kind == PORTS and state.ready):
        started = clock.monotonic()
        if container_launched(target):
            result = await probe_once(probe, target)
            new = observe(probe, state, result.ok)
            message = "" if result.ok or probe.kind == PORTS else result.message
            if (new.ready, message) != (state.ready, failure):
                report(new.ready, message)
            state, failure = new, message
        await asyncio.sleep(max(next_delay(probe, state) - (clock.monotonic() - started), 0.0))


def container_launched(target: ProbeTarget) -> bool:
    """True once the container's process is in the pod's network namespace and runs its command."""
    try:
        mine = os.stat(f"/proc/{target.pid}/ns/net")
        pods = os.stat(f"{NETNS_DIR}/{target.netns}" if target.netns else "/proc/self/ns/net")
        with open(f"/proc/{target.pid}/cmdline", "rb") as f:
            cmdline = [os.fsdecode(part) for part in f.read().split(b"\0")[:-1]]
    except OSError:
        return False
    same = (mine.st_dev, mine.st_ino) == (pods.st_dev, pods.st_ino)
    return same and bool(cmdline) and not still_launching(cmdline, target.argv)


async def probe_once(probe: Probe, target: ProbeTarget) -> ProbeResult:
    """One attempt of ``probe`` (module docstring), bounded by its timeout."""
    if probe.kind == EXEC:
        return await _exec(probe, target)
    if probe.kind == PORTS:
        missing = sorted(probe.ports - _listening(target.pid))
        return ProbeResult(False, f"ports {', '.join(map(str, missing))} do not listen") if missing else _OK
    host = probe.host or target.pod_ip
    address = f"[{host}]:{probe.port}" if ":" in host else f"{host}:{probe.port}"
    what = (
        f'Get "{probe.scheme.lower()}://{address}{probe.path}"'
        if probe.kind == HTTP_GET
        else f"dial tcp {address}"
    )
    try:
        async with asyncio.timeout(probe.timeout):
            status = await _connect(probe, target.netns, host, address)
    except TimeoutError:
        return ProbeResult(False, f"{what}: no answer within {probe.timeout:g} s")
    except MeshError as exc:
        return ProbeResult(False, f"{what}: {exc.message}")
    except OSError as exc:  # asyncio's own text repeats the address: the reason alone
        return ProbeResult(False, f"{what}: {os.strerror(exc.errno) if exc.errno else exc}")
    if status is None or 200 <= status < 400:
        return _OK
    return ProbeResult(False, f"HTTP probe failed with statuscode: {status}")


async def _connect(probe: Probe, netns: str | None, host: str, address: str) -> int | None:
    """Connects from inside ``netns``; for ``httpGet`` sends the GET and returns the answer's status."""
    loop = asyncio.get_running_loop()
    sock = _socket_in(netns)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, probe.port))
        if probe.kind != HTTP_GET:
            sock.close()
            return None
        tls = _insecure_tls() if probe.scheme == "HTTPS" else None
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=tls, server_hostname=host if tls else None
        )  # the connection's transport owns the socket from here
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(_request(probe, address))
        parser = ResponseParser(head_only=True)
        while True:
            chunk = await reader.read(65536)
            responses = parser.feed(chunk) if chunk else parser.finish()
            if responses:
                return responses[0].status
            if not chunk:
                raise ConnectionError("the connection closed before the answer's head")
    finally:
        writer.close()


def _socket_in(netns: str | None) -> socket.socket:
    """A TCP socket made inside ``netns``, owned by the caller (a transport closes it once it has it)."""
    with socket_in(netns) as made:
        return socket.socket(fileno=made.detach())


def _request(probe: Probe, address: str) -> bytes:
    headers = {
        "host": ("Host", address),
        "user-agent": ("User-Agent", _USER_AGENT),
        "accept": ("Accept", "*/*"),
    }
    headers |= {name.lower(): (name, value) for name, value in probe.headers}  # the probe's win
    lines = [f"GET {probe.path} HTTP/1.1", *(f"{n}: {v}" for n, v in headers.values()), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()  # non-ASCII text as UTF-8, never an error


def _insecure_tls() -> ssl.SSLContext:
    """TLS that does not check the server's certificate (the kubelet's HTTPS probes)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _exec(probe: Probe, target: ProbeTarget) -> ProbeResult:
    argv = ("nsenter", f"--target={target.pid}", "--mount", "--net", "--wd", "--", *probe.command)
    command = shlex.join(probe.command)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(target.env), start_new_session=True,
        )  # fmt: skip
    except OSError as exc:
        return ProbeResult(False, f"cannot run nsenter for {command}: {exc.strerror or exc}")
    try:
        async with asyncio.timeout(probe.timeout):
            output, _ = await proc.communicate()
    except TimeoutError:
        return ProbeResult(False, f"command {command} timed out after {probe.timeout:g} s")
    finally:
        if kill_group(proc.pid, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
    if proc.returncode == 0:
        return _OK
    text = output.decode(errors="replace").strip()[-_MAX_OUTPUT:]
    return ProbeResult(
        False, f"command {command} exited with {proc.returncode}" + (f": {text}" if text else "")
    )


def _listening(pid: int) -> set[int]:
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as f:
            ports |= listening_tcp_ports(f.read())
    return ports
