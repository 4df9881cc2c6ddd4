"""HTTP/2 keepalive: a PING after every quiet interval, the connection presumed dead without an answer.

ztunnel's defaults: a PING 10 s after the previous answer, and 20 s to answer it. Timers go through
the injected :class:`~mesh.rt.net.timers.Scheduler`, so tests run them on a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable

from mesh.rt.net.timers import Scheduler, TimerHandle

__all__ = ["Keepalive"]


class Keepalive:
    """Sends PINGs through ``send_ping(opaque)`` and calls ``on_dead()`` when one goes unanswered."""

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        interval: float,
        timeout: float,
        send_ping: Callable[[bytes], None],
        on_dead: Callable[[], None],
    ) -> None:
        self._scheduler = scheduler
        self._interval = interval
        self._timeout = timeout
        self._send_ping = send_ping
        self._on_dead = on_dead
        self._timer: TimerHandle | None = None
        self.sent = 0
        """PINGs sent so far."""
        self.outstanding: bytes | None = None
        """The opaque data of the PING waiting for its answer, if any."""
        self._stopped = False

    def start(self) -> None:
        """Schedules the first PING one interval from now."""
        self._stopped = False
        self._arm(self._interval, self._ping)

    def stop(self) -> None:
        """No more PINGs or timeouts (the connection is closing)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def acked(self, opaque: bytes) -> None:
        """The peer answered: the next PING goes one interval from now."""
        if opaque == self.outstanding and not self._stopped:
            self.outstanding = None
            self._arm(self._interval, self._ping)

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._scheduler.call_later(delay, callback)

    def _ping(self) -> None:
        if self._stopped:
            return
        self.sent += 1
        self.outstanding = self.sent.to_bytes(8, "big")
        self._send_ping(self.outstanding)
        self._arm(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if not self._stopped:
            self._stopped = True
            self._on_dead()
