"""The CNI plugin executable (``ztunnel-cni``, CNI spec 1.0): hands each pod to the node agent.

The runtime (kubelet, or the lab's pod runtime) runs it once per pod with ``CNI_COMMAND`` and the
other ``CNI_*`` variables in the environment and the network config (with ``prevResult`` when
chained) on stdin. ADD and CHECK send one JSON line to the node agent's unix stream socket and wait
for its verdict; ADD fails when the agent cannot be reached (fail closed: the pod must not start
outside the mesh). DEL is best effort and always succeeds. Errors are printed on stdout as the spec
says (``{"cniVersion", "code", "msg", "details"}``) with a non-zero exit status.

Network config keys of this plugin:
- ``agent_socket``: the agent's socket, default ``/var/run/ztunnel/pluginevent.sock``. ``@name``
  is an abstract socket (scoped to the network namespace the plugin runs in); ``{netns}`` is
  replaced by the name (under /var/run/netns) of the network namespace the plugin runs in.
- ``agent_timeout``: seconds to wait for the verdict, default 15.

It runs once per pod, so it imports only json, os, socket and sys. It imports nothing outside the
standard library either: the node agent installs this very file, with a ``python3`` shebang, as the
plugin executable in the node's CNI bin directory (``ztunnel.cni.install``), where the kubelet runs
it with the node's own python3 (3.11 or later), not the mesh's environment.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "AGENT_REFUSED",
    "DEFAULT_AGENT_SOCKET",
    "DEFAULT_TIMEOUT",
    "SUPPORTED_VERSIONS",
    "TRY_AGAIN_LATER",
    "PluginError",
    "agent_request",
    "call_agent",
    "error_result",
    "main",
    "parse_cni_args",
    "parse_verdict",
    "resolve_socket",
    "run",
]

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
DEFAULT_AGENT_SOCKET = "/var/run/ztunnel/pluginevent.sock"
DEFAULT_TIMEOUT = 15.0
NETNS_DIR = "/var/run/netns"
MAX_VERDICT = 64 * 1024

# Error codes of the CNI spec (1.0, "Error") and ours (100+).
INCOMPATIBLE_VERSION = 1
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
AGENT_REFUSED = 100

AgentCall = Callable[[str, Mapping[str, Any], float], Mapping[str, Any]]


class PluginError(Exception):
    """A CNI error: ``code`` per the spec, a message and details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K=V`` (CNI_ARGS) as a dict; entries without ``=`` are ignored."""
    pairs = (item.split("=", 1) for item in text.split(";") if "=" in item)
    return {key.strip(): value.strip() for key, value in pairs}


def _require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise PluginError(INVALID_ENVIRONMENT, f"{name} is not set", "the container runtime must set it")
    return value


def _pod_ips(prev_result: Any) -> list[str]:
    if not isinstance(prev_result, dict):
        return []
    ips = prev_result.get("ips") or []
    return [str(ip["address"]).split("/", 1)[0] for ip in ips if isinstance(ip, dict) and "address" in ip]


def agent_request(command: str, env: Mapping[str, str], netconf: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object sent to the node agent for ADD, DEL or CHECK."""
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    return {
        "command": command,
        "cniVersion": str(netconf.get("cniVersion", "")),
        "containerId": _require(env, "CNI_CONTAINERID"),
        "netns": env.get("CNI_NETNS", "") if command == "DEL" else _require(env, "CNI_NETNS"),
        "ifname": env.get("CNI_IFNAME", ""),
        "podNamespace": args.get("K8S_POD_NAMESPACE", ""),
        "podName": args.get("K8S_POD_NAME", ""),
        "podUid": args.get("K8S_POD_UID", ""),
        "podIps": _pod_ips(netconf.get("prevResult")),
    }


def error_result(cni_version: str, code: int, msg: str, details: str = "") -> dict[str, Any]:
    """The error object the spec wants on stdout."""
    return {"cniVersion": cni_version, "code": code, "msg": msg, "details": details}


def parse_verdict(data: bytes) -> dict[str, Any]:
    """The agent's answer: ``{"ok": bool, "code": int, "msg": str, "details": str}``."""
    try:
        verdict = json.loads(data)
    except ValueError:
        raise PluginError(IO_FAILURE, "the node agent sent an unreadable answer", repr(data[:200])) from None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("ok"), bool):
        raise PluginError(IO_FAILURE, "the node agent's answer has no 'ok' flag", repr(data[:200]))
    return verdict


def _current_netns_name() -> str:
    mine = os.stat("/proc/self/ns/net")
    try:
        entries = list(os.scandir(NETNS_DIR))
    except OSError:
        entries = []
    for entry in entries:
        try:
            st = os.stat(entry.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return entry.name
    raise PluginError(
        INVALID_CONFIG,
        "agent_socket contains {netns} but this plugin does not run in a named network namespace",
        f"no entry of {NETNS_DIR} is this process's network namespace",
    )


def resolve_socket(netconf: Mapping[str, Any], *, netns_name: Callable[[], str] = _current_netns_name) -> str:
    """The agent's socket address: ``@name`` becomes an abstract address, ``{netns}`` is filled in."""
    path = netconf.get("agent_socket", DEFAULT_AGENT_SOCKET)
    if not isinstance(path, str) or not path:
        raise PluginError(INVALID_CONFIG, "agent_socket must be a non-empty string", repr(path))
    if "{netns}" in path:
        path = path.replace("{netns}", netns_name())
    return "\0" + path[1:] if path.startswith("@") else path


def _timeout(netconf: Mapping[str, Any]) -> float:
    value = netconf.get("agent_timeout", DEFAULT_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise PluginError(INVALID_CONFIG, "agent_timeout must be a positive number of seconds", repr(value))
    return float(value)


def call_agent(address: str, request: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
    """Sends ``request`` as one JSON line and reads the verdict until the agent closes."""
    shown = address.replace("\0", "@")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(json.dumps(request).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks: list[bytes] = []
            while sum(map(len, chunks)) <= MAX_VERDICT and (chunk := sock.recv(4096)):
                chunks.append(chunk)
    except TimeoutError:
        raise PluginError(
            TRY_AGAIN_LATER, f"the node agent at {shown} did not answer within {timeout:g} s", "retry later"
        ) from None
    except OSError as exc:
        raise PluginError(
            TRY_AGAIN_LATER,
            f"cannot reach the node agent at {shown}: {exc.strerror or exc}",
            "is ztunnel-node-agent running on this node? the pod cannot start until it is",
        ) from None
    return parse_verdict(b"".join(chunks))


def _handle(command: str, env: Mapping[str, str], netconf: Mapping[str, Any], call: AgentCall) -> str:
    version = str(netconf.get("cniVersion", "1.0.0"))
    if command == "VERSION":
        return json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})
    if version not in SUPPORTED_VERSIONS:
        raise PluginError(
            INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported", str(SUPPORTED_VERSIONS)
        )
    request = agent_request(command, env, netconf)
    if command == "DEL":
        try:
            call(resolve_socket(netconf), request, _timeout(netconf))
        except PluginError as exc:
            print(f"ztunnel-cni: DEL not delivered ({exc.msg}); ignored", file=sys.stderr)
        return ""
    if command == "ADD" and not (request["podName"] and request["podNamespace"]):
        return json.dumps(netconf.get("prevResult") or {"cniVersion": version})
    verdict = call(resolve_socket(netconf), request, _timeout(netconf))
    if not verdict.get("ok"):
        code = verdict.get("code")
        raise PluginError(
            code if isinstance(code, int) and code > 0 else AGENT_REFUSED,
            str(verdict.get("msg") or "the node agent refused the pod"),
            str(verdict.get("details") or ""),
        )
    if command == "ADD":
        return json.dumps(netconf.get("prevResult") or {"cniVersion": version})
    return ""


def run(env: Mapping[str, str], stdin: str, *, call: AgentCall = call_agent) -> tuple[int, str]:
    """One plugin invocation: (exit status, stdout text)."""
    version = "1.0.0"
    try:
        try:
            netconf = json.loads(stdin) if stdin.strip() else {}
        except ValueError as exc:
            raise PluginError(DECODE_FAILURE, "the network config on stdin is not JSON", str(exc)) from None
        if not isinstance(netconf, dict):
            raise PluginError(DECODE_FAILURE, "the network config on stdin is not a JSON object")
        version = str(netconf.get("cniVersion", version))
        command = _require(env, "CNI_COMMAND")
        if command not in ("ADD", "DEL", "CHECK", "VERSION"):
            raise PluginError(
                INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {command!r}", "ADD, DEL, CHECK or VERSION"
            )
        return 0, _handle(command, env, netconf, call)
    except PluginError as exc:
        return 1, json.dumps(error_result(version, exc.code, exc.msg, exc.details))


def main() -> None:
    """Entry point of ``ztunnel-cni``."""
    status, out = run(os.environ, sys.stdin.read())
    if out:
        sys.stdout.write(out + "\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
