"""The node agent's plugin-event socket: one JSON request line from ``ztunnel-cni``, one verdict.

Request (written by ``ztunnel.cni.plugin.agent_request``)::

    {"command": "ADD"|"DEL"|"CHECK", "cniVersion": "1.0.0", "containerId": "...",
     "netns": "/var/run/netns/...", "ifname": "eth0", "podNamespace": "demo",
     "podName": "web-0", "podUid": "...", "podIps": ["10.244.1.5"]}

Verdict: ``{"ok": true|false, "code": 0|<CNI error code>, "msg": "...", "details": "..."}``; the
agent then closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from mesh.errors import MeshError

__all__ = ["CniEvent", "CniVerdict", "PluginEventError", "PluginServer", "encode_verdict", "parse_event"]

MAX_REQUEST = 64 * 1024
_COMMANDS = ("ADD", "DEL", "CHECK")


class PluginEventError(MeshError):
    """A plugin request that cannot be understood."""


@dataclass(frozen=True, slots=True)
class CniEvent:
    """One CNI call forwarded by the plugin."""

    command: str
    container_id: str
    netns: str
    namespace: str
    name: str
    pod_uid: str = ""
    ifname: str = "eth0"
    pod_ips: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CniVerdict:
    """The agent's answer; ``code`` is a CNI error code when not ``ok``."""

    ok: bool
    msg: str = ""
    code: int = 0
    details: str = ""


def parse_event(data: bytes) -> CniEvent:
    """Validates one request line."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise PluginEventError(f"the plugin request is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise PluginEventError("the plugin request is not a JSON object")
    command = raw.get("command")
    if command not in _COMMANDS:
        raise PluginEventError(f"unknown plugin command {command!r}; expected ADD, DEL or CHECK")
    fields = ("containerId", "netns", "podNamespace", "podName", "podUid", "ifname")
    values = {key: raw.get(key, "") for key in fields}
    bad = [key for key, value in values.items() if not isinstance(value, str)]
    ips = raw.get("podIps", [])
    if bad or not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        raise PluginEventError(f"bad types in the plugin request: {', '.join(bad) or 'podIps'}")
    if not values["containerId"] or (command != "DEL" and not values["netns"]):
        raise PluginEventError("the plugin request lacks containerId or netns")
    return CniEvent(
        command=str(command),
        container_id=values["containerId"],
        netns=values["netns"],
        namespace=values["podNamespace"],
        name=values["podName"],
        pod_uid=values["podUid"],
        ifname=values["ifname"] or "eth0",
        pod_ips=tuple(ips),
    )


def encode_verdict(verdict: CniVerdict) -> bytes:
    """The verdict line."""
    body = {"ok": verdict.ok, "code": verdict.code, "msg": verdict.msg, "details": verdict.details}
    return json.dumps(body).encode() + b"\n"


Handler = Callable[[CniEvent], Awaitable[CniVerdict]]


class PluginServer:
    """A unix stream server at ``path`` (``@name`` = abstract) calling ``handler`` per request."""

    def __init__(
        self,
        path: str,
        handler: Handler,
        *,
        log: structlog.typing.FilteringBoundLogger,
        read_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._handler = handler
        self._log = log
        self._read_timeout = read_timeout
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Binds (replacing a stale socket file) and starts serving."""
        if not self.path.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self._address, limit=MAX_REQUEST)
        except OSError as exc:
            raise PluginEventError(f"cannot listen on the plugin socket {self.path}: {exc}") from None

    async def close(self) -> None:
        """Stops serving and removes the socket file."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        if not self.path.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(self._read_timeout):
                    line = await reader.readline()
                verdict = await self._handler(parse_event(line))
            except (TimeoutError, ValueError, PluginEventError) as exc:
                message = exc.message if isinstance(exc, PluginEventError) else "no complete request line"
                self._log.warning("cni.bad_request", error=message)
                verdict = CniVerdict(ok=False, code=5, msg=message)
            except Exception as exc:  # the process boundary: answer the plugin, never leave it hanging
                self._log.exception("cni.handler_crashed")
                verdict = CniVerdict(
                    ok=False, code=5, msg=f"node agent error: {exc!r}", details="see its log"
                )
            writer.write(encode_verdict(verdict))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            self._log.warning("cni.reply_failed", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
