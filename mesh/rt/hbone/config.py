"""The HBONE transport's knobs: ztunnel's defaults, each one overridable."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.errors import ConfigError
from mesh.h2.config import H2Config

__all__ = ["HboneConfig"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HboneConfig:
    """Timers and memory bounds of one HBONE connection (either role)."""

    h2: H2Config = field(default_factory=H2Config)
    """Windows (4 MiB per stream, 16 MiB per connection), frame size and the engine's defences."""
    keepalive_interval: float = 10.0
    """Seconds between PINGs (after the previous one was answered)."""
    keepalive_timeout: float = 20.0
    """A PING unanswered this long means the peer is dead: the connection is closed."""
    handshake_timeout: float = 10.0
    """A TLS handshake (plus identity check) that takes longer is aborted (slowloris)."""
    close_timeout: float = 2.0
    """After a close (TLS close_notify sent), how long to wait for the peer's before dropping the socket."""
    read_buffer_cap: int = 16 * MiB + 256 * 1024
    """Bytes held for streams that are paused; above it the TLS connection stops reading.

    The windows already bound what a peer may send (the engine fails a peer that ignores them), so
    the default (the connection window plus one read) never triggers for a compliant peer. A smaller
    cap saves memory at the price of head-of-line blocking: every stream of the connection, and its
    PINGs, wait until the paused streams drain."""
    tls_write_high_water: int = 512 * 1024
    """The TLS transport's write buffer bound: streams stop sending above it."""

    def __post_init__(self) -> None:
        for name in ("keepalive_interval", "keepalive_timeout", "handshake_timeout", "close_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"HboneConfig.{name} must be positive", hint="use a number of seconds > 0")
        if self.read_buffer_cap < self.h2.max_frame_size:
            raise ConfigError(
                "HboneConfig.read_buffer_cap is smaller than one frame",
                hint=f"use at least h2.max_frame_size ({self.h2.max_frame_size} bytes)",
            )
        if self.tls_write_high_water < 16 * 1024:
            raise ConfigError("HboneConfig.tls_write_high_water is too small", hint="use at least 16 KiB")
