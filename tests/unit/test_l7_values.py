"""Scalar values of L7 config: durations, percentages, RE2 regexes (as Envoy accepts them)."""

from __future__ import annotations

import pytest

from istiod_lite.translate._fields import FieldError
from istiod_lite.translate.l7._values import duration, fraction, percentage, regex


@pytest.mark.parametrize(
    ("text", "seconds", "nanos"),
    [
        ("10s", 10, 0),
        ("1.5s", 1, 500_000_000),
        ("250ms", 0, 250_000_000),
        ("1m30s", 90, 0),
        ("2h", 7200, 0),
        ("100us", 0, 100_000),
        ("0s", 0, 0),
        (".5s", 0, 500_000_000),
    ],
)
def test_durations(text: str, seconds: int, nanos: int) -> None:
    got = duration(text, "spec.timeout")
    assert (got.seconds, got.nanos) == (seconds, nanos)


@pytest.mark.parametrize("text", ["", "10", "ten seconds", "1s ", "-1s", "1d", 10, None, "s"])
def test_bad_durations_name_the_field(text: object) -> None:
    with pytest.raises(FieldError) as caught:
        duration(text, "spec.http[0].timeout")  # type: ignore[arg-type]
    assert caught.value.field == "spec.http[0].timeout" and "e.g. 10s" in caught.value.problem


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (0, True),
        (50, True),
        (100, True),
        (12.5, True),
        (101, False),
        (-1, False),
        ("5", False),
        (True, False),
    ],
)
def test_percentages(value: object, ok: bool) -> None:
    if ok:
        assert percentage(value, "p") == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(FieldError):
            percentage(value, "p")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "default", "expected"),
    [
        ({"percentage": {"value": 50}}, None, (500_000, "MILLION")),
        ({"percentage": {"value": 0.1}}, None, (1_000, "MILLION")),
        ({"percent": 30}, None, (30, "HUNDRED")),
        ({}, 100.0, (1_000_000, "MILLION")),
        ({}, 0.0, (0, "MILLION")),
        ({}, None, None),
    ],
)
def test_fractions(spec: dict[str, object], default: float | None, expected: tuple[int, str] | None) -> None:
    got = fraction(spec, "f", default=default)  # type: ignore[arg-type]
    if expected is None:
        assert got is None
    else:
        assert got is not None and (got.numerator, got.DenominatorType.Name(got.denominator)) == expected


@pytest.mark.parametrize("pattern", ["/api/v[0-9]+/.*", "^/a(b|c)*$", "(?i)/case", r"\d{1,3}"])
def test_re2_patterns_pass(pattern: str) -> None:
    assert regex(pattern, "uri.regex").regex == pattern


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("(a", "missing )"),
        ("(?<=a)b", "look-around"),
        (r"(a)\1", "invalid escape"),
        ("a{1001}", "RE2"),
        ("((a|b|c|d|e){1,50}){1,5}x", "too complex"),
    ],
)
def test_patterns_re2_or_envoy_refuse_are_problems(pattern: str, says: str) -> None:
    with pytest.raises(FieldError) as caught:
        regex(pattern, "spec.http[0].match[0].uri.regex")
    assert caught.value.field == "spec.http[0].match[0].uri.regex"
    assert says in caught.value.problem and repr(pattern) in caught.value.problem
