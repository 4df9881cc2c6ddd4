"""A container's readiness probe as the kubelet reads and counts it (pure).

:func:`readiness_probe` reads ``readinessProbe`` with Kubernetes' defaults (period 10 s, timeout 1 s,
initial delay 0, success threshold 1, failure threshold 3) and resolves a named port against the
container's ports. A container without a probe but with TCP ``containerPorts`` gets the lab's own
check (:data:`PORTS`): ready once every one of them listens, and from then on while it runs, as a
probe-less container is on Kubernetes. :func:`observe` is the kubelet's counting: the ready state
changes only after ``successThreshold`` consecutive successes or ``failureThreshold`` consecutive
failures. :func:`next_delay` is the time to the next attempt: the period once the container has been
ready, a short poll growing to at most :data:`FAST_POLL_MAX` before that (the lab calls a pod ready
soon after it is, where the kubelet would wait up to a period).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from meshctl.lab.errors import LabError

__all__ = [
    "EXEC",
    "FAST_POLL_MAX",
    "HTTP_GET",
    "PORTS",
    "TCP_SOCKET",
    "Probe",
    "ProbeSpecError",
    "ProbeState",
    "next_delay",
    "observe",
    "readiness_probe",
    "resolve_port",
    "still_launching",
]

HTTP_GET, TCP_SOCKET, EXEC, PORTS = "httpGet", "tcpSocket", "exec", "ports"
_FAST_POLL_FIRST = 0.05
_FAST_POLL_GROWTH = 1.5
FAST_POLL_MAX = 0.5
"""Seconds: until the container is first ready the lab probes after 0.05 s, then 1.5 times longer
each attempt up to this (or the period when it is shorter)."""
_HANDLERS = (HTTP_GET, TCP_SOCKET, EXEC)
_UNSUPPORTED = ("grpc",)
_DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}


class ProbeSpecError(LabError):
    """A readiness probe the lab cannot run: the container is never ready until it is fixed."""


@dataclass(frozen=True, slots=True)
class Probe:
    """One container's readiness check, defaults applied and its port resolved."""

    kind: str
    port: int = 0
    host: str = ""
    """``httpGet.host`` / ``tcpSocket.host``; empty: the pod's IP (a hostNetwork pod's is its node's)."""
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    ports: frozenset[int] = frozenset()
    """:data:`PORTS`: the TCP ports that must all listen."""
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True, slots=True)
class ProbeState:
    """The counting of one run of a container: its readiness, the last result and how many times in a
    row it came, the attempts so far and whether it has been ready once."""

    ready: bool = False
    last: bool | None = None
    run: int = 0
    attempts: int = 0
    was_ready: bool = False


def readiness_probe(container: Mapping[str, Any]) -> Probe | None:
    """The container's readiness check; None: ready once started (no probe and no TCP port).

    Raises :class:`ProbeSpecError` for a probe the lab cannot run (no handler or several, a gRPC
    probe, a named port the container does not have, a value out of range), saying what to change.
    """
    spec = container.get("readinessProbe")
    if not spec:
        ports = frozenset(
            int(p["containerPort"]) for p in container.get("ports") or () if p.get("protocol", "TCP") == "TCP"
        )
        return Probe(PORTS, ports=ports, period=FAST_POLL_MAX) if ports else None
    name = container.get("name", "")
    kinds = [k for k in (*_HANDLERS, *_UNSUPPORTED) if k in spec]
    if len(kinds) != 1:
        raise ProbeSpecError(
            f"container {name}: readinessProbe needs exactly one of httpGet, tcpSocket, exec"
            f" (it has {', '.join(kinds) or 'none'})",
            hint="give the probe one handler",
        )
    (kind,) = kinds
    if kind in _UNSUPPORTED:
        raise ProbeSpecError(
            f"container {name}: {kind} readiness probes are not supported by the lab",
            hint="use an httpGet, tcpSocket or exec probe",
        )
    return replace(_handler(kind, spec[kind] or {}, container), **_timing(spec, name))


def _handler(kind: str, handler: Mapping[str, Any], container: Mapping[str, Any]) -> Probe:
    if kind == EXEC:
        command = tuple(str(part) for part in handler.get("command") or ())
        if not command:
            raise ProbeSpecError(
                f"container {container.get('name', '')}: readinessProbe.exec has no command",
                hint="give exec.command, e.g. [cat, /tmp/healthy]",
            )
        return Probe(EXEC, command=command)
    port = resolve_port(handler.get("port"), container)
    host = str(handler.get("host") or "")
    if kind == TCP_SOCKET:
        return Probe(TCP_SOCKET, port=port, host=host)
    scheme = str(handler.get("scheme") or "HTTP").upper()
    if scheme not in ("HTTP", "HTTPS"):
        raise ProbeSpecError(
            f"container {container.get('name', '')}: httpGet.scheme {scheme!r} is not HTTP or HTTPS",
            hint="set scheme: HTTP or HTTPS",
        )
    headers = tuple((str(h["name"]), str(h.get("value", ""))) for h in handler.get("httpHeaders") or ())
    path = str(handler.get("path") or "/")
    return Probe(
        HTTP_GET, port=port, host=host, path=path if path.startswith("/") else f"/{path}",
        scheme=scheme, headers=headers,
    )  # fmt: skip


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports (or a number written
    as a string, the kubelet's last resort)."""
    name = container.get("name", "")
    value = port
    if isinstance(port, str):
        named = [p["containerPort"] for p in container.get("ports") or () if p.get("name") == port]
        value = named[0] if named else int(port) if port.isdigit() else None
        if value is None:
            raise ProbeSpecError(
                f"container {name}: the readiness probe's port {port!r} is not one of its named ports",
                hint="name a containerPort so, or give the port number",
            )
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ProbeSpecError(
            f"container {name}: the readiness probe's port {port!r} is not a port number (1-65535)",
            hint="give the port number or the name of a containerPort",
        )
    return value


def _timing(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    values = {}
    for field, default in _DEFAULTS.items():
        value = spec.get(field, default)
        least = 0 if field == "initialDelaySeconds" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ProbeSpecError(
                f"container {name}: readinessProbe.{field} is {value!r}, not a whole number >= {least}",
                hint=f"leave it out for the default ({default})",
            )
        values[field] = value
    return {
        "initial_delay": float(values["initialDelaySeconds"]),
        "period": float(values["periodSeconds"]),
        "timeout": float(values["timeoutSeconds"]),
        "success_threshold": values["successThreshold"],
        "failure_threshold": values["failureThreshold"],
    }


def observe(probe: Probe, state: ProbeState, ok: bool) -> ProbeState:
    """The state after one attempt: readiness follows the result once it has come ``successThreshold``
    (success) or ``failureThreshold`` (failure) times in a row, as the kubelet counts."""
    run = state.run + 1 if state.last is ok else 1
    threshold = probe.success_threshold if ok else probe.failure_threshold
    ready = ok if run >= threshold else state.ready
    return ProbeState(ready, ok, run, state.attempts + 1, state.was_ready or ready)


def next_delay(probe: Probe, state: ProbeState) -> float:
    """Seconds from the start of one attempt to the start of the next (module docstring)."""
    if state.was_ready:
        return probe.period
    grown = _FAST_POLL_FIRST * _FAST_POLL_GROWTH ** max(state.attempts - 1, 0)
    return min(grown, FAST_POLL_MAX, probe.period)


def still_launching(cmdline: Sequence[str], argv: Sequence[str]) -> bool:
    """True while a container's process runs a launch step in front of its command (``ip netns
    exec``, the volume mount step), whose arguments end with the command: it is not started yet."""
    return bool(argv) and len(cmdline) > len(argv) and tuple(cmdline[-len(argv) :]) == tuple(argv)
