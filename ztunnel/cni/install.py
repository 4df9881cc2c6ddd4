"""The node agent's CNI installer: puts the mesh's plugin into the node's CNI chain, keeps it there,
and takes it out on uninstall, as Istio's install-cni does.

Two things are kept in place, checked every ``poll_interval`` seconds:

- the plugin executable ``<bin dir>/ztunnel-cni``: the source of ``ztunnel.cni.plugin`` (standard
  library only) behind a ``#!/usr/bin/env python3`` line, so the kubelet runs it with the node's
  python3 (3.11 or later) and needs nothing of the mesh's environment;
- the entry ``{"type": "ztunnel-cni", "agent_socket": ...}`` in the node's primary config
  (``ztunnel.cni.cniconf``): a config rewritten without it (the primary CNI plugin reinstalling
  itself) gets it back on the next pass.

Every write goes to a temporary file in the same directory that is renamed over the target, with
the target's mode, and only when the target did not change since it was read. While the node has no
config yet (its primary CNI plugin is not installed) or the primary one does not parse, the
installer waits and says so; it never rewrites a file it cannot parse. The executable is installed
before the entry that names it and removed after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from pathlib import Path

import structlog

from mesh.clock import Clock
from ztunnel.cni import plugin
from ztunnel.cni.cniconf import (
    PLUGIN_TYPE,
    CniConfigError,
    Rewrite,
    is_config_name,
    plan_install,
    plan_uninstall,
    plugin_entry,
    primary_config,
)

__all__ = ["CniInstaller", "plugin_executable"]

Logger = structlog.typing.FilteringBoundLogger
SHEBANG = b"#!/usr/bin/env python3\n"
_TMP_SUFFIX = ".ztunnel-cni.tmp"


def plugin_executable() -> bytes:
    """The content of the installed plugin: the plugin module's source as a python3 script."""
    return SHEBANG + Path(plugin.__file__).read_bytes()


class _ChangedError(Exception):
    """The file changed between reading and replacing it: this pass is skipped."""


class CniInstaller:
    """Keeps the mesh's plugin in ``bin_dir`` and chained in the primary config of ``conf_dir``."""

    def __init__(
        self,
        *,
        conf_dir: Path,
        bin_dir: Path,
        agent_socket: str,
        clock: Clock,
        log: Logger,
        poll_interval: float = 1.0,
        progress_every: float = 30.0,
    ) -> None:
        self.conf_dir = conf_dir
        self.plugin_path = bin_dir / PLUGIN_TYPE
        self._entry = plugin_entry(agent_socket)
        self._executable = plugin_executable()
        self._clock = clock
        self._log = log.bind(component="cni-installer")
        self._poll = poll_interval
        self._progress_every = progress_every
        self._status = ""
        self._status_since = 0.0
        self._reported_at = 0.0
        self._lock = threading.Lock()  # a pass runs in a thread; uninstall may come meanwhile
        self._uninstalled = False
        self.installed_in: str | None = None
        """The config file that chains the plugin (after the last pass), None while it is not."""
        self.problem = "not checked yet"
        """Why the plugin is not in the chain (after the last pass), empty when it is."""

    @property
    def installed(self) -> bool:
        """Whether the last pass left the plugin executable and its entry in place."""
        return self.installed_in is not None

    async def run(self) -> None:
        """Checks and repairs the installation every ``poll_interval`` seconds until cancelled."""
        while True:
            await asyncio.to_thread(self.sync)
            await asyncio.sleep(self._poll)

    def sync(self) -> bool:
        """One pass: installs what is missing or stale; returns whether everything is in place.
        Nothing once :meth:`uninstall` ran (a pass still running in its thread when the agent
        stopped must not put the plugin back)."""
        with self._lock:
            return False if self._uninstalled else self._sync()

    def _sync(self) -> bool:
        try:
            self._sync_executable()
            name = self._sync_config()
        except CniConfigError as exc:
            self._not_installed(
                "cni.config_invalid", exc.name, str(exc), level="error",
                error=exc.problem, file=str(self.conf_dir / exc.name), hint=exc.hint,
            )  # fmt: skip
            return False
        except _ChangedError:
            return self.installed  # someone is writing: the next pass looks again
        except OSError as exc:
            self._not_installed(
                "cni.install_failed", str(exc), f"cannot install the CNI plugin: {exc}", level="error",
                error=str(exc), conf_dir=str(self.conf_dir), bin_dir=str(self.plugin_path.parent),
                hint="check that the host's CNI directories are mounted writable into the agent",
            )  # fmt: skip
            return False
        if name is None:
            problem = f"no CNI config in {self.conf_dir} yet (the node's primary CNI plugin is not installed)"
            self._not_installed(
                "cni.waiting_for_config", "", problem, conf_dir=str(self.conf_dir), level="info",
                hint="no *.conf or *.conflist yet: the node's primary CNI plugin has not installed itself",
            )  # fmt: skip
            return False
        if self._status != f"installed:{name}":
            self._status = f"installed:{name}"
            self._log.info("cni.installed", file=str(self.conf_dir / name), plugin=str(self.plugin_path))
        self.installed_in, self.problem = name, ""
        return True

    def uninstall(self) -> list[str]:
        """Takes the entry out of every config that has it, then removes the executable; returns
        the configs changed. A file that cannot be read or written is logged and left as it is.
        No later :meth:`sync` installs anything again."""
        with self._lock:
            self._uninstalled = True
            return self._uninstall()

    def _uninstall(self) -> list[str]:
        changed = []
        for name in sorted(filter(is_config_name, _listdir(self.conf_dir))):
            path = self.conf_dir / name
            try:
                before = os.stat(path)
                rewrite = plan_uninstall(name, path.read_text())
                if rewrite is not None:
                    self._write(rewrite, before)
                    changed.append(name)
            except _ChangedError:
                error = "it changed while being rewritten"
                self._log.error("cni.uninstall_skipped", file=str(path), error=error)
            except (CniConfigError, OSError) as exc:
                self._log.error("cni.uninstall_skipped", file=str(path), error=str(exc))
        with contextlib.suppress(FileNotFoundError):
            self.plugin_path.unlink()
        self.installed_in, self.problem = None, "uninstalled"
        self._log.info("cni.uninstalled", configs=changed, plugin=str(self.plugin_path))
        return changed

    def _sync_executable(self) -> None:
        path = self.plugin_path
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == self._executable and os.access(path, os.X_OK):
                return
        _write_atomic(path, self._executable, mode=0o755)
        self._log.info("cni.plugin_installed", plugin=str(path))

    def _sync_config(self) -> str | None:
        """The config that chains the entry after this pass, None when there is no config yet."""
        name = primary_config(_listdir(self.conf_dir))
        if name is None:
            return None
        path = self.conf_dir / name
        try:
            before = os.stat(path)
            text = path.read_text()
        except FileNotFoundError:
            raise _ChangedError(name) from None  # removed since the listing
        rewrite = plan_install(name, text, self._entry)
        if rewrite is None:
            return name
        self._write(rewrite, before)
        event = "cni.config_restored" if self.installed_in == rewrite.name else "cni.config_chained"
        log = self._log.warning if event == "cni.config_restored" else self._log.info
        log(event, file=str(self.conf_dir / rewrite.name), converted_from=rewrite.replaces)
        return rewrite.name

    def _write(self, rewrite: Rewrite, before: os.stat_result) -> None:
        """Writes ``rewrite`` with the mode of the file it was planned from, if that is unchanged."""
        source = self.conf_dir / (rewrite.replaces or rewrite.name)
        _write_atomic(
            self.conf_dir / rewrite.name,
            rewrite.text.encode(),
            mode=stat.S_IMODE(before.st_mode),
            unless_changed=(source, before),
        )
        if rewrite.replaces is not None:
            _unlink_unless_changed(source, before)

    def _not_installed(self, event: str, detail: str, problem: str, *, level: str, **fields: object) -> None:
        """Records why the plugin is out of the chain (``problem``, for the readiness page) and logs
        it when it starts, then every ``progress_every`` seconds for as long as it lasts."""
        now = self._clock.monotonic()
        self.installed_in, self.problem = None, problem
        status = f"{event}:{detail}"
        if status != self._status:
            self._status, self._status_since, self._reported_at = status, now, now
        elif now - self._reported_at >= self._progress_every:
            self._reported_at = now
        else:
            return
        log = self._log.error if level == "error" else self._log.info
        log(event, waited_s=round(now - self._status_since, 1), **fields)


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev, a.st_mtime_ns, a.st_size) == (b.st_ino, b.st_dev, b.st_mtime_ns, b.st_size)


def _write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int,
    unless_changed: tuple[Path, os.stat_result] | None = None,
) -> None:
    """Writes ``data`` to a temporary file next to ``path`` and renames it over ``path``; when
    ``unless_changed`` names a file and how it was read, raises :class:`_ChangedError` instead if that
    file changed meanwhile (the last moment it can be checked is just before the rename)."""
    tmp = path.with_name(f".{path.name}{_TMP_SUFFIX}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by an agent that died mid-write
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)  # the umask narrowed the mode os.open was given
            os.fsync(out.fileno())
        if unless_changed is not None:
            source, before = unless_changed
            try:
                now = os.stat(source)
            except FileNotFoundError:
                raise _ChangedError(str(source)) from None
            if not _same_file(now, before):
                raise _ChangedError(str(source))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _unlink_unless_changed(path: Path, before: os.stat_result) -> None:
    with contextlib.suppress(FileNotFoundError):
        if _same_file(os.stat(path), before):
            path.unlink()
