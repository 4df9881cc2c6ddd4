"""Reading the scalar values of L7 config: durations, percentages, RE2 regexes, gRPC status names.

Every reader raises ``FieldError`` naming the field, so one bad value drops only the rule (or
route) that holds it.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import re2
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2

from istiod_lite.translate._fields import FieldError, mapping
from istiod_lite.view import Json

__all__ = [
    "ENVOY_MAX_REGEX_PROGRAM_SIZE",
    "GRPC_STATUS",
    "duration",
    "fraction",
    "percentage",
    "regex",
]

ENVOY_MAX_REGEX_PROGRAM_SIZE = 100
"""Envoy refuses a RE2 regex with a bigger program (runtime ``re2.max_program_size.error_level``)."""

GRPC_STATUS = {
    name: code
    for code, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}
"""gRPC status names (as Istio's ``abort.grpcStatus`` takes them) to their codes."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_NANOS = {
    "ns": Decimal(1),
    "us": Decimal(1_000),
    "µs": Decimal(1_000),
    "ms": Decimal(1_000_000),
    "s": Decimal(1_000_000_000),
    "m": Decimal(60_000_000_000),
    "h": Decimal(3_600_000_000_000),
}
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error is returned as a problem, not printed by the C++ library


def duration(value: Json, field: str) -> duration_pb2.Duration:
    """A duration written as Istio and the Gateway API accept it: ``10s``, ``1.5s``, ``250ms``, ``1m30s``."""
    if not isinstance(value, str) or not value:
        raise FieldError(field, f"{value!r} is not a duration; write e.g. 10s, 250ms or 1m30s")
    parts = list(_DURATION_PART.finditer(value))
    if not parts or "".join(p.group(0) for p in parts) != value:
        raise FieldError(field, f"{value!r} is not a duration; write e.g. 10s, 250ms or 1m30s")
    try:
        nanos = int(sum(Decimal(p.group(1)) * _NANOS[p.group(2)] for p in parts))
    except InvalidOperation:
        raise FieldError(field, f"{value!r} is not a duration") from None
    return duration_pb2.Duration(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


def percentage(value: Json, field: str) -> float:
    """A percentage 0-100 given as a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise FieldError(field, f"{value!r} is not a percentage between 0 and 100")
    return float(value)


def fraction(spec: Json, field: str, *, default: float | None) -> percent_pb2.FractionalPercent | None:
    """Istio's ``percentage: {value: 12.5}`` as parts per million, or the deprecated int ``percent``.

    ``spec`` is the object holding the field (a fault's delay or abort, an HTTP route for its
    mirror). Without either field: ``default`` percent, or None when ``default`` is None.
    """
    holder = mapping(spec, field)
    if holder.get("percentage") is not None:
        where = f"{field}.percentage"
        pct = percentage(mapping(holder["percentage"], where).get("value", 0.0), f"{where}.value")
    elif holder.get("percent") is not None:
        pct = percentage(holder["percent"], f"{field}.percent")
        return percent_pb2.FractionalPercent(
            numerator=int(pct), denominator=percent_pb2.FractionalPercent.HUNDRED
        )
    elif default is None:
        return None
    else:
        pct = default
    return percent_pb2.FractionalPercent(
        numerator=round(pct * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def regex(pattern: Json, field: str) -> regex_pb2.RegexMatcher:
    """A RE2 pattern (Envoy's ``safe_regex``) that compiles and that Envoy would accept."""
    if not isinstance(pattern, str):
        raise FieldError(field, "must be a string (a RE2 regular expression)")
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = (
            exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        )
        raise FieldError(
            field,
            f"{pattern!r} is not a valid RE2 regular expression ({reason});"
            " RE2 has no look-around or backreferences",
        ) from None
    if compiled.programsize > ENVOY_MAX_REGEX_PROGRAM_SIZE:
        raise FieldError(
            field,
            f"{pattern!r} is too complex (RE2 program size {compiled.programsize}, Envoy's limit is"
            f" {ENVOY_MAX_REGEX_PROGRAM_SIZE}); simplify it",
        )
    return regex_pb2.RegexMatcher(regex=pattern)
