"""The engine's limits: Istio's ztunnel HTTP/2 settings plus the defences' budgets."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.errors import ConfigError

__all__ = ["DEFAULT_WINDOW", "H2Config", "MAX_WINDOW", "MIN_FRAME_SIZE", "MAX_FRAME_SIZE_LIMIT"]

KiB = 1024
MiB = 1024 * KiB
DEFAULT_WINDOW = 65_535
"""RFC 9113 initial window (stream and connection) before any SETTINGS or WINDOW_UPDATE."""
MAX_WINDOW = 2**31 - 1
MIN_FRAME_SIZE = 16_384
MAX_FRAME_SIZE_LIMIT = 2**24 - 1


@dataclass(frozen=True, slots=True)
class H2Config:
    """Settings we offer the peer and the budgets that protect us from it.

    Defaults follow ztunnel (stream window 4 MiB, connection window 16 MiB, frames up to 1 MiB,
    header lists up to 64 KiB, a server accepting 200 concurrent streams per connection; our own
    pool opens a new connection at 100)."""

    initial_window_size: int = 4 * MiB
    """Per-stream receive window we advertise (SETTINGS_INITIAL_WINDOW_SIZE): the memory bound per stream."""
    connection_window_size: int = 16 * MiB
    """Connection receive window, reached with a WINDOW_UPDATE right after the preface."""
    max_frame_size: int = 1 * MiB
    """Largest frame payload we accept (SETTINGS_MAX_FRAME_SIZE)."""
    max_concurrent_streams: int = 200
    """Streams the peer may have open towards us; more are refused with REFUSED_STREAM."""
    max_header_list_size: int = 64 * KiB
    """Decoded header list bound, 32 bytes of overhead counted per field (RFC 9113 section 6.5.2)."""
    header_table_size: int = 4096
    """HPACK dynamic table size we allow the peer's encoder, and the most we use for ours."""
    max_continuation_frames: int = 64
    """CONTINUATION frames allowed in one header block before ENHANCE_YOUR_CALM."""
    max_premature_resets: int = 400
    """Streams per window that the peer resets before we answered them, plus streams we had to reset
    for its protocol errors (Rapid Reset, MadeYouReset); one more means GOAWAY ENHANCE_YOUR_CALM."""
    reset_window_streams: int = 1000
    """The reset budget starts afresh after this many peer-opened streams."""
    max_outbound_control_frames: int = 10_000
    """Control frames the peer made us queue (PING/SETTINGS acks, resets) that nobody drained yet."""
    max_outbound_control_bytes: int = 1 * MiB
    """Bytes of such frames pending; beyond either bound the peer is not reading: ENHANCE_YOUR_CALM."""
    max_empty_data_frames: int = 100
    """Consecutive DATA frames without payload or END_STREAM tolerated (CPU flood)."""
    max_closed_streams: int = 1000
    """How many recently closed streams are remembered to judge late frames on them."""
    accept_requests: bool = False
    """Server side: ordinary requests become ``RequestReceived`` (a proxy for HTTP/2 clients);
    when False (an HBONE server) they are ``InvalidRequest``, answered 400."""

    def __post_init__(self) -> None:
        _require(
            DEFAULT_WINDOW <= self.connection_window_size <= MAX_WINDOW,
            "connection_window_size",
            f"between {DEFAULT_WINDOW} and {MAX_WINDOW}",
        )
        _require(
            1 <= self.initial_window_size <= MAX_WINDOW, "initial_window_size", f"between 1 and {MAX_WINDOW}"
        )
        _require(
            MIN_FRAME_SIZE <= self.max_frame_size <= MAX_FRAME_SIZE_LIMIT,
            "max_frame_size",
            f"between {MIN_FRAME_SIZE} and {MAX_FRAME_SIZE_LIMIT}",
        )
        _require(1 <= self.max_concurrent_streams <= MAX_WINDOW, "max_concurrent_streams", "at least 1")
        _require(
            1024 <= self.max_header_list_size <= 16 * MiB, "max_header_list_size", "between 1 KiB and 16 MiB"
        )
        _require(0 <= self.header_table_size <= 64 * KiB, "header_table_size", "between 0 and 64 KiB")
        for name in (
            "max_continuation_frames",
            "max_premature_resets",
            "reset_window_streams",
            "max_outbound_control_frames",
            "max_outbound_control_bytes",
            "max_empty_data_frames",
            "max_closed_streams",
        ):
            _require(getattr(self, name) >= 1, name, "at least 1")


def _require(ok: bool, name: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"H2Config.{name} is out of range", hint=f"use a value {expected}")
