"""The ztunnel benchmark's log summary: ztunnel's events and stray lines counted, the lab's own not."""

from __future__ import annotations

from perf._ztunnel_lab import count_log_events


def test_log_events_count_ztunnel_lines_and_skip_the_lab_supervisors() -> None:
    log = "\n".join(
        [
            "[lab 2026-11-26T03:09:02Z] ztunnel-node1: started pid 6023: /venv/bin/ztunnel --node node1",
            '{"event": "proxy.started", "level": "info"}',
            '{"event": "proxy.started", "level": "info"}',
            '{"event": "xds.disconnected", "level": "warning"}',
            '{"event": "inbound.accepted", "level": "info"}',
            "Traceback (most recent call last):",
        ]
    )
    assert count_log_events(log) == {
        "proxy.started": 2,
        "warning: xds.disconnected": 1,
        "(non-JSON lines, e.g. tracebacks)": 1,
    }
