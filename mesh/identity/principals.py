"""Matching a peer identity against policy patterns, with ztunnel's semantics and nothing cleverer.

Istio's ``StringMatch`` is exact | prefix | suffix | presence. Comparisons are literal string operations:
no regular expressions (``a.b`` never matches ``aXb``, CVE-2026-39350), no case folding, no normalisation.
Principals are compared in Istio's principal form ``td/ns/<ns>/sa/<sa>`` (no ``spiffe://``), so a suffix
pattern like ``/ns/a/sa/b`` written for ``*/ns/a/sa/b`` matches as intended (CVE-2020-16844). A connection
without a peer identity (plaintext) matches no principal and no service account.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from mesh.identity.spiffe import WorkloadIdentity

__all__ = [
    "MatchKind",
    "ServiceAccountMatch",
    "StringMatch",
    "matches_namespace",
    "matches_principal",
    "principal_of",
]


class MatchKind(StrEnum):
    """The four kinds of ``istio.security.StringMatch``."""

    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class StringMatch:
    """One pattern, e.g. ``StringMatch.exact("td/ns/a/sa/b")``, ``.prefix(..)``, ``.presence()``."""

    kind: MatchKind
    value: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise TypeError(f"a StringMatch value must be a str, got {type(self.value).__name__}")
        if self.kind is MatchKind.PRESENCE and self.value:
            raise ValueError("a presence match has no value; use StringMatch.presence()")

    @classmethod
    def exact(cls, value: str) -> StringMatch:
        """Matches exactly ``value``, character for character."""
        return cls(MatchKind.EXACT, value)

    @classmethod
    def prefix(cls, value: str) -> StringMatch:
        """Matches strings starting with ``value``."""
        return cls(MatchKind.PREFIX, value)

    @classmethod
    def suffix(cls, value: str) -> StringMatch:
        """Matches strings ending with ``value``."""
        return cls(MatchKind.SUFFIX, value)

    @classmethod
    def presence(cls) -> StringMatch:
        """Matches any non-empty string."""
        return cls(MatchKind.PRESENCE)

    @classmethod
    def from_istio(cls, pattern: str) -> StringMatch:
        """Istio's policy wildcard form: ``*`` -> presence, ``*x`` -> suffix ``x``, ``x*`` -> prefix ``x``,
        anything else -> exact (a ``*`` elsewhere is a literal character)."""
        if pattern == "*":
            return cls.presence()
        if pattern.startswith("*"):
            return cls.suffix(pattern[1:])
        if pattern.endswith("*"):
            return cls.prefix(pattern[:-1])
        return cls.exact(pattern)

    def matches(self, candidate: str) -> bool:
        """Whether ``candidate`` matches this pattern (literal string comparison)."""
        if self.kind is MatchKind.EXACT:
            return candidate == self.value
        if self.kind is MatchKind.PREFIX:
            return candidate.startswith(self.value)
        if self.kind is MatchKind.SUFFIX:
            return candidate.endswith(self.value)
        return candidate != ""

    def __str__(self) -> str:
        if self.kind is MatchKind.PRESENCE:
            return "*"
        if self.kind is MatchKind.PREFIX:
            return f"{self.value}*"
        if self.kind is MatchKind.SUFFIX:
            return f"*{self.value}"
        return self.value


def principal_of(identity: WorkloadIdentity | None) -> str:
    """The principal string (``td/ns/<ns>/sa/<sa>``), or ``""`` for a connection without a peer identity."""
    return identity.principal if identity is not None else ""


def matches_principal(identity: WorkloadIdentity | None, patterns: Iterable[StringMatch]) -> bool:
    """Whether the peer's principal matches any of ``patterns``; a missing identity matches none."""
    if identity is None:
        return False
    principal = identity.principal
    return any(p.matches(principal) for p in patterns)


def matches_namespace(identity: WorkloadIdentity | None, patterns: Iterable[StringMatch]) -> bool:
    """Whether the peer's namespace matches any of ``patterns``.

    As in ztunnel, a missing identity has the namespace ``""`` (only ``exact("")``/``prefix("")`` match it).
    """
    namespace = identity.namespace if identity is not None else ""
    return any(p.matches(namespace) for p in patterns)


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    """``istio.security.ServiceAccountMatch``: namespace and service account, both compared exactly."""

    namespace: str
    service_account: str

    def matches(self, identity: WorkloadIdentity | None) -> bool:
        """Whether ``identity`` is this service account (any trust domain, as in ztunnel)."""
        if identity is None:
            return False
        return identity.namespace == self.namespace and identity.service_account == self.service_account
