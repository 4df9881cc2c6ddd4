"""The CNI chain, called as kubelet's runtime calls it (CNI spec 1.0).

The lab runtime itself plays the main plugin (namespace, veth, address, routes) and produces the
first result; then each plugin of the conflist in ``<state>/cni/`` (the first ``*.conflist`` by
name; empty chain by default) is run with ``CNI_COMMAND=ADD`` and its config plus ``prevResult`` on
stdin, inside the node's namespace (a plugin runs on its node). ``DEL`` goes in reverse order with
the cached result. A failing ADD raises :class:`CniError`; the runtime then tears the sandbox down
and retries with backoff.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.lab.errors import CniError, LabError

__all__ = [
    "CNI_VERSION",
    "CniChain",
    "CniRequest",
    "CniRunner",
    "cni_env",
    "default_conflist",
    "load_chain",
    "plugin_config",
    "primary_result",
]

CNI_VERSION = "1.0.0"
CONFLIST_NAME = "10-lab.conflist"
_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class CniChain:
    """The network configuration list: its name, version and chained plugins."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class CniRequest:
    """Who the plugins are called for."""

    container_id: str
    netns_path: str
    namespace: str
    pod_name: str
    pod_uid: str
    node_netns: str


def default_conflist(lab_id: str) -> dict[str, Any]:
    """The conflist ``lab up`` writes when there is none: no chained plugins."""
    return {"cniVersion": CNI_VERSION, "name": f"{lab_id}-net", "plugins": []}


def load_chain(cni_dir: Path) -> CniChain:
    """Reads the first ``*.conflist`` in ``cni_dir`` (an empty chain when there is none)."""
    files = sorted(cni_dir.glob("*.conflist"))
    if not files:
        return CniChain(name="lab", cni_version=CNI_VERSION, plugins=())
    try:
        data = json.loads(files[0].read_text())
        plugins = tuple(data.get("plugins") or ())
        if not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
            raise ValueError("every plugin needs a string 'type'")
        return CniChain(
            name=str(data["name"]), cni_version=str(data.get("cniVersion", CNI_VERSION)), plugins=plugins
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LabError(
            f"bad CNI config {files[0]}: {exc}",
            hint='write {"cniVersion": "1.0.0", "name": ..., "plugins": [{"type": ...}, ...]}',
        ) from exc


def primary_result(
    *, pod_ip: str, gateway: str, netns_path: str, host_link: str, search: Sequence[str]
) -> dict[str, Any]:
    """The result of the lab's own network setup, handed to the first chained plugin."""
    return {
        "cniVersion": CNI_VERSION,
        "interfaces": [{"name": host_link}, {"name": "eth0", "sandbox": netns_path}],
        "ips": [{"address": f"{pod_ip}/32", "gateway": gateway, "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
        "dns": {"nameservers": ["127.0.0.1"], "search": list(search), "options": ["ndots:5"]},
    }


def plugin_config(
    chain: CniChain, plugin: dict[str, Any], prev_result: dict[str, Any] | None
) -> dict[str, Any]:
    """The stdin of one plugin: its config with the list's name and version, and ``prevResult``."""
    config = dict(plugin)
    config["cniVersion"] = chain.cni_version
    config["name"] = chain.name
    if prev_result is not None:
        config["prevResult"] = prev_result
    return config


NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The PATH plugins run with, as a node's container runtime runs them: the system's, not the lab
user's (the mesh's installed plugin is a ``python3`` script: a user's pyenv shim costs ~130 ms a call)."""


def cni_env(command: str, request: CniRequest, *, cni_path: Sequence[str]) -> dict[str, str]:
    """The CNI environment for one plugin call (with kubelet's K8S_* args)."""
    args = (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={request.namespace};K8S_POD_NAME={request.pod_name};"
        f"K8S_POD_INFRA_CONTAINER_ID={request.container_id};K8S_POD_UID={request.pod_uid}"
    )
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": request.container_id,
        "CNI_NETNS": request.netns_path,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": args,
        "CNI_PATH": ":".join(cni_path),
        "PATH": NODE_PATH,
    }


class CniRunner:
    """Runs the chain's plugins for ADD and DEL."""

    def __init__(self, *, cni_dir: Path, bin_dirs: Sequence[str], timeout: float = _TIMEOUT) -> None:
        self._cni_dir = cni_dir
        self._bin_dirs = tuple(bin_dirs)
        self._timeout = timeout

    async def add(self, request: CniRequest, primary: dict[str, Any]) -> dict[str, Any]:
        """Runs ADD through the chain; returns the final result. On failure runs DEL, raises CniError."""
        chain = load_chain(self._cni_dir)
        result = primary
        for plugin in chain.plugins:
            try:
                out = await self._call("ADD", request, plugin_config(chain, plugin, result), plugin["type"])
            except CniError:
                await self.delete(request, result)
                raise
            result = out or result
        return result

    async def delete(self, request: CniRequest, cached: dict[str, Any] | None) -> list[str]:
        """Runs DEL through the chain in reverse; returns the errors (DEL must not stop teardown)."""
        chain = load_chain(self._cni_dir)
        errors = []
        for plugin in reversed(chain.plugins):
            try:
                await self._call("DEL", request, plugin_config(chain, plugin, cached), plugin["type"])
            except CniError as exc:
                errors.append(str(exc))
        return errors

    def _find(self, plugin_type: str) -> str | None:
        for directory in self._bin_dirs:
            path = os.path.join(directory, plugin_type)
            if os.access(path, os.X_OK):
                return path
        return None

    async def _call(
        self, command: str, request: CniRequest, config: dict[str, Any], ptype: str
    ) -> dict[str, Any] | None:
        path = self._find(ptype)
        if path is None:
            raise CniError(
                plugin=ptype,
                command=command,
                code=-1,
                msg=f"not found in CNI_PATH {':'.join(self._bin_dirs)}",
            )
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", request.node_netns, path,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=cni_env(command, request, cni_path=self._bin_dirs),
        )  # fmt: skip
        try:
            async with asyncio.timeout(self._timeout):
                out, err = await proc.communicate(json.dumps(config).encode())
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CniError(
                plugin=ptype, command=command, code=-1, msg=f"timed out after {self._timeout} s"
            ) from None
        return _parse_output(ptype, command, proc.returncode or 0, out, err)


def _parse_output(ptype: str, command: str, code: int, out: bytes, err: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(out) if out.strip() else None
    except ValueError:
        data = None
    if code != 0:
        if isinstance(data, dict) and "msg" in data:
            raise CniError(
                plugin=ptype, command=command, code=int(data.get("code", code)), msg=str(data["msg"])
            )
        text = (err or out).decode(errors="replace").strip()[-300:]
        raise CniError(plugin=ptype, command=command, code=code, msg=text or f"exit status {code}")
    return data if isinstance(data, dict) else None
