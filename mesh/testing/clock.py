"""A clock that moves only when a test says so."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Deterministic clock; ``advance`` moves wall and monotonic time together."""

    def __init__(self, *, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        return self._wall

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Moves time forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock never goes back; pass a positive number of seconds")
        self._wall += seconds
        self._mono += seconds
