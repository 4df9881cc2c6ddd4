"""Distributed tracing, pure: trace context in W3C ``traceparent``/``tracestate`` and B3 (single
``b3`` and multi ``x-b3-*`` headers), the proxy's own span as the child of the caller's, the
head sampling decision (the caller's flag when it sent one, as Envoy does, else a random draw at
the configured percentage) and the tail keep of failures (a request ending 5xx or with a response
flag is exported even when the head decision said no).
"""

from __future__ import annotations

import random
import re
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, field

__all__ = [
    "B3_HEADERS",
    "Span",
    "TraceContext",
    "child_context",
    "extract",
    "inject",
    "keep",
]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_HEX = re.compile(r"^[0-9a-f]+$")
B3_HEADERS = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags")
_PROPAGATION = ("traceparent", "tracestate", "b3", *B3_HEADERS)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A position in a trace: its id, the current span, whether it is sampled (None: no decision
    yet), the W3C ``tracestate`` to pass on, and which formats the caller used."""

    trace_id: int
    span_id: int
    sampled: bool | None = None
    tracestate: str = ""
    formats: frozenset[str] = frozenset({"w3c"})


@dataclass(slots=True)
class Span:
    """One span the proxy reports."""

    trace_id: int
    span_id: int
    parent_span_id: int
    name: str
    start_ns: int
    end_ns: int = 0
    sampled: bool = False
    attributes: dict[str, str] = field(default_factory=dict)
    error: bool = False


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v.strip() for k, v in headers if k == name), None)


def extract(headers: Sequence[tuple[str, str]]) -> TraceContext | None:
    """The caller's trace context (lower-case header names): ``traceparent`` first, else ``b3``,
    else ``x-b3-*``; malformed or all-zero ids count as absent (a new trace starts)."""
    return _w3c(headers) or _b3_single(headers) or _b3_multi(headers)


def _w3c(headers: Sequence[tuple[str, str]]) -> TraceContext | None:
    raw = _header(headers, "traceparent")
    match = _TRACEPARENT.match(raw.lower()) if raw else None
    if not match or match.group(1) == "ff" or (match.group(1) == "00" and match.group(5)):
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if not trace_id or not span_id:
        return None
    tracestate = _header(headers, "tracestate") or ""
    return TraceContext(
        trace_id, span_id, bool(int(match.group(4), 16) & 1), tracestate[:512], frozenset({"w3c"})
    )


def _ids(trace: str, span: str) -> tuple[int, int] | None:
    trace, span = trace.lower(), span.lower()
    if len(trace) not in (16, 32) or len(span) != 16 or not _HEX.match(trace) or not _HEX.match(span):
        return None
    ids = int(trace, 16), int(span, 16)
    return ids if all(ids) else None


def _b3_sampled(flag: str) -> bool | None:
    return {"1": True, "d": True, "true": True, "0": False, "false": False}.get(flag.lower())


def _b3_single(headers: Sequence[tuple[str, str]]) -> TraceContext | None:
    raw = _header(headers, "b3")
    if not raw:
        return None
    parts = raw.split("-")
    if len(parts) < 2:
        return None
    ids = _ids(parts[0], parts[1])
    if ids is None:
        return None
    sampled = _b3_sampled(parts[2]) if len(parts) > 2 else None
    return TraceContext(ids[0], ids[1], sampled, "", frozenset({"b3"}))


def _b3_multi(headers: Sequence[tuple[str, str]]) -> TraceContext | None:
    trace, span = _header(headers, "x-b3-traceid"), _header(headers, "x-b3-spanid")
    ids = _ids(trace, span) if trace and span else None
    if ids is None:
        return None
    sampled = _b3_sampled(_header(headers, "x-b3-sampled") or "")
    if _header(headers, "x-b3-flags") == "1":
        sampled = True
    return TraceContext(ids[0], ids[1], sampled, "", frozenset({"b3multi"}))


def child_context(
    parent: TraceContext | None, rng: random.Random, *, sampling_percent: float
) -> tuple[TraceContext, int]:
    """The proxy's span as a child of ``parent`` (a new trace without one): the new context (its
    span id is the proxy's span) and the parent span id (0 for a root). The caller's sampling flag
    wins; without one, a random draw at ``sampling_percent``."""
    if parent is not None and parent.sampled is not None:
        sampled = parent.sampled
    else:
        sampled = rng.random() * 100 < sampling_percent
    span_id = rng.getrandbits(64) or 1
    if parent is None:
        return TraceContext(rng.getrandbits(128) or 1, span_id, sampled), 0
    return TraceContext(parent.trace_id, span_id, sampled, parent.tracestate, parent.formats), parent.span_id


def inject(headers: MutableSequence[tuple[str, str]], context: TraceContext) -> None:
    """Replaces the trace headers with ``context`` (in place): always ``traceparent`` (and the
    caller's ``tracestate``), and the B3 form the caller used, so each hop reads what it sent."""
    headers[:] = [(k, v) for k, v in headers if k not in _PROPAGATION]
    flags = "01" if context.sampled else "00"
    headers.append(("traceparent", f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags}"))
    if context.tracestate:
        headers.append(("tracestate", context.tracestate))
    sampled = "1" if context.sampled else "0"
    if "b3" in context.formats:
        headers.append(("b3", f"{context.trace_id:032x}-{context.span_id:016x}-{sampled}"))
    if "b3multi" in context.formats:
        headers += [
            ("x-b3-traceid", f"{context.trace_id:032x}"),
            ("x-b3-spanid", f"{context.span_id:016x}"),
            ("x-b3-sampled", sampled),
        ]


def keep(span: Span, *, status: int, flags: str) -> bool:
    """Whether to export ``span``: head-sampled, or (tail keep) it failed: 5xx or a response flag."""
    return span.sampled or status >= 500 or bool(flags and flags != "-")
