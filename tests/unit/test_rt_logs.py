"""Logging: JSON lines with dotted keys, and one process-wide level that can change at runtime
(ztunnel's admin ``/logging``), also for loggers made before the change."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from mesh.rt.logs import configure_logging, current_level, get_logger, set_level
from ztunnel.admin import admin_routes


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging(stream=out, level="info")
    try:
        yield out
    finally:
        configure_logging(level="info")


def _events(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_keep_dotted_keys(stream: io.StringIO) -> None:
    get_logger("ztunnel").info("connection complete", **{"src.identity": "spiffe://td/ns/a/sa/b"})
    (event,) = _events(stream)
    assert event["event"] == "connection complete" and event["src.identity"] == "spiffe://td/ns/a/sa/b"
    assert event["level"] == "info" and event["component"] == "ztunnel" and "timestamp" in event


def test_the_level_changes_for_loggers_that_already_exist(stream: io.StringIO) -> None:
    log = get_logger("ztunnel")
    log.debug("hidden")
    set_level("debug")
    log.debug("shown")
    set_level("error")
    log.warning("hidden too")
    log.error("shown too")
    assert [e["event"] for e in _events(stream)] == ["shown", "shown too"]
    assert current_level() == "error"


def test_an_unknown_level_is_refused_and_changes_nothing(stream: io.StringIO) -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'; use one of debug, info, warning, error"):
        set_level("loud")
    assert current_level() == "info"


def test_admin_logging_reads_sets_and_refuses(stream: io.StringIO) -> None:
    handler = admin_routes(None, None, quit_=lambda: None)["/logging"]  # type: ignore[arg-type]
    assert json.loads(handler("GET", {}).body) == {"level": "info"}
    assert handler("GET", {"level": "debug"}).status == 405  # changing needs POST, as Istio's
    refused = handler("POST", {"level": "loud"})
    assert refused.status == 400 and b"use one of debug, info" in refused.body
    assert current_level() == "info"
