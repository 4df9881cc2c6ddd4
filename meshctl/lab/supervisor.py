"""Supervised processes: run a command (optionally inside a network namespace), restart it with
backoff per the restart policy, keep its output in a log file, track its PID in a pid file.

Every process starts in its own session (``start_new_session``), so it survives the terminal that
started the lab and can be stopped as a whole process group by its PID. The ztunnel work can use
the same class for per-node agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mesh.clock import Clock

__all__ = [
    "Backoff",
    "ProcessEvent",
    "ProcessSpec",
    "SupervisedProcess",
    "kill_group",
    "next_backoff",
    "process_start_time",
    "read_pid_file",
]


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to run, where, and where its output and PID go."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path
    pid_path: Path
    netns: str | None = None
    cwd: str = "/"
    wrapper: tuple[str, ...] = ()
    """A step run before ``argv`` that execs it (a container's volume mounts), inside the netns."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: ``initial`` doubling to ``maximum``; reset after ``reset_after`` s of running."""

    initial: float = 0.5
    maximum: float = 10.0
    reset_after: float = 10.0


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    """``started`` (pid), ``exited`` (exit code), or ``waiting`` (delay before the next start)."""

    kind: str
    pid: int = 0
    exit_code: int = 0
    delay: float = 0.0
    restarts: int = 0
    at: float = 0.0


def next_backoff(
    backoff: Backoff, *, policy: str, exit_code: int, ran_for: float, streak: int
) -> tuple[float | None, int]:
    """The delay before restarting (None: do not restart) and the new failure streak (pure)."""
    if policy == "Never" or (policy == "OnFailure" and exit_code == 0):
        return None, streak
    streak = 0 if ran_for >= backoff.reset_after else streak + 1
    return min(backoff.initial * 2 ** max(streak - 1, 0), backoff.maximum), streak


def process_start_time(pid: int) -> int | None:
    """The process start time in clock ticks since boot (field 22 of /proc/PID/stat).

    None when there is no such process or it is a zombie (exited, not yet reaped).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def read_pid_file(path: Path) -> int | None:
    """The PID in a ``pid starttime`` file if that process still runs (not a reused PID)."""
    try:
        pid_text, start_text = path.read_text().split()[:2]
        pid, start = int(pid_text), int(start_text)
    except (FileNotFoundError, ValueError):
        return None
    return pid if process_start_time(pid) == start else None


def kill_group(pid: int, sig: int) -> bool:
    """Signals the process group led by ``pid``; False when it is gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    return True


class SupervisedProcess:
    """Runs one :class:`ProcessSpec` until cancelled (or until the policy says not to restart)."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        clock: Clock,
        on_event: Callable[[ProcessEvent], None],
        policy: str = "Always",
        backoff: Backoff | None = None,
        grace: float = 2.0,
    ) -> None:
        self.spec = spec
        self.pid: int | None = None
        self.restarts = 0
        self._clock = clock
        self._on_event = on_event
        self._policy = policy
        self._backoff = backoff or Backoff()
        self._grace = grace

    async def run(self) -> int:
        """Starts, waits, restarts; returns the last exit code when no restart is due."""
        streak = 0
        while True:
            started = self._clock.monotonic()
            code = await self._run_once()
            ran_for = self._clock.monotonic() - started
            delay, streak = next_backoff(
                self._backoff, policy=self._policy, exit_code=code, ran_for=ran_for, streak=streak
            )
            self._emit(ProcessEvent("exited", exit_code=code, restarts=self.restarts))
            if delay is None:
                return code
            self._note(f"exited with code {code}; restarting in {delay:.1f} s")
            self._emit(ProcessEvent("waiting", delay=delay, restarts=self.restarts))
            await asyncio.sleep(delay)
            self.restarts += 1

    async def _run_once(self) -> int:
        spec = self.spec
        argv = (*spec.wrapper, *spec.argv)
        if spec.netns:
            argv = ("ip", "netns", "exec", spec.netns, *argv)
        with self._open_log() as log:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(spec.env), cwd=spec.cwd, start_new_session=True,
            )  # fmt: skip
        self.pid = proc.pid
        self._write_pid(proc.pid)
        self._note(f"started pid {proc.pid}: {' '.join(spec.argv)}")
        self._emit(ProcessEvent("started", pid=proc.pid, restarts=self.restarts))
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            await self._terminate(proc)
            raise
        finally:
            kill_group(proc.pid, signal.SIGKILL)
            self.pid = None
            with contextlib.suppress(FileNotFoundError):
                spec.pid_path.unlink()
        return 128 - code if code < 0 else code

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        kill_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(self._grace):
                await proc.wait()
        except TimeoutError:
            kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        self._note("stopped")

    def _open_log(self) -> BinaryIO:
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.spec.log_path, "ab")

    def _write_pid(self, pid: int) -> None:
        self.spec.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.spec.pid_path.write_text(f"{pid} {process_start_time(pid) or 0}\n")

    def _emit(self, event: ProcessEvent) -> None:
        self._on_event(
            ProcessEvent(
                event.kind, event.pid, event.exit_code, event.delay, event.restarts, self._clock.now()
            )
        )

    def _note(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self._clock.now()))
        with open(self.spec.log_path, "a") as log:
            log.write(f"[lab {stamp}Z] {self.spec.name}: {text}\n")
