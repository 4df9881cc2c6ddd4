"""SPIFFE IDs (``spiffe://<trust-domain><path>``) and Istio workload identities, per SPIFFE-ID.md.

Parsing is strict and never normalises: a string either is the canonical form of an ID or is refused with an
:class:`InvalidSpiffeId` naming the first rule it breaks.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from mesh.identity.errors import InvalidSpiffeId, Reason

__all__ = [
    "MAX_SPIFFE_ID_BYTES",
    "MAX_TRUST_DOMAIN_BYTES",
    "SCHEME_PREFIX",
    "SpiffeId",
    "WorkloadIdentity",
    "validate_path_segment",
    "validate_trust_domain",
]

SCHEME_PREFIX = "spiffe://"
MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")
_SPEC = "see the SPIFFE ID specification (SPIFFE-ID.md)"
_NO_QUERY_HINT = "queries, fragments and percent-encoding are not allowed in a SPIFFE ID"


def _refuse(what: str, reason: Reason, value: str, hint: str = _SPEC) -> InvalidSpiffeId:
    return InvalidSpiffeId(what, reason=reason, value=value[:120], hint=hint)


def validate_trust_domain(trust_domain: str) -> str:
    """Returns ``trust_domain`` if it is a valid SPIFFE trust domain, else raises :class:`InvalidSpiffeId`."""
    if not isinstance(trust_domain, str):
        raise _refuse("a trust domain must be a str", Reason.NOT_A_STRING, repr(trust_domain))
    if not trust_domain:
        raise _refuse("the trust domain is empty", Reason.EMPTY_TRUST_DOMAIN, trust_domain)
    if len(trust_domain) > MAX_TRUST_DOMAIN_BYTES:
        raise _refuse(
            f"the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes",
            Reason.TRUST_DOMAIN_TOO_LONG,
            trust_domain,
        )
    if "\x00" in trust_domain:
        raise _refuse("the trust domain contains a NUL byte", Reason.NUL_BYTE, trust_domain)
    bad = [c for c in trust_domain if c not in _TRUST_DOMAIN_CHARS]
    if bad and all(c in string.ascii_uppercase for c in bad):
        raise _refuse(
            f"trust domain {trust_domain!r} has upper-case letters",
            Reason.TRUST_DOMAIN_UPPERCASE,
            trust_domain,
            "trust domains are lower case only; write it in lower case",
        )
    if bad:
        raise _refuse(
            f"trust domain {trust_domain!r} contains {bad[0]!r}",
            Reason.TRUST_DOMAIN_BAD_CHAR,
            trust_domain,
            "a trust domain holds only lower-case letters, digits, '.', '-' and '_' (no port, no user)",
        )
    return trust_domain


def validate_path_segment(segment: str, *, value: str | None = None) -> str:
    """Returns ``segment`` if it is a valid SPIFFE path segment: non-empty, not ``.``/``..``, of
    ``[A-Za-z0-9._-]``; ``value`` is the whole ID to show in the error."""
    shown = segment if value is None else value
    if not isinstance(segment, str):
        raise _refuse("a path segment must be a str", Reason.NOT_A_STRING, repr(segment))
    if not segment:
        raise _refuse("the path has an empty segment ('//')", Reason.EMPTY_SEGMENT, shown)
    if segment in (".", ".."):
        raise _refuse(f"the path has a {segment!r} segment", Reason.DOT_SEGMENT, shown)
    if "\x00" in segment:
        raise _refuse("the path contains a NUL byte", Reason.NUL_BYTE, shown)
    bad = [c for c in segment if c not in _SEGMENT_CHARS]
    if bad:
        raise _refuse(
            f"path segment {segment[:60]!r} contains {bad[0]!r}",
            Reason.PATH_BAD_CHAR,
            shown,
            "path segments hold only letters, digits, '.', '-' and '_'",
        )
    return segment


def _validate_path(path: str) -> None:
    if not isinstance(path, str):
        raise _refuse("a SPIFFE path must be a str", Reason.NOT_A_STRING, repr(path))
    if not path:
        return
    if not path.startswith("/"):
        raise _refuse(f"path {path[:60]!r} does not start with '/'", Reason.PATH_NOT_ABSOLUTE, path)
    segments = path[1:].split("/")
    if segments[-1] == "":
        raise _refuse("the path ends with '/'", Reason.TRAILING_SLASH, path, "remove the trailing '/'")
    for segment in segments:
        validate_path_segment(segment, value=path)


def _check_uri_syntax(uri: str) -> str:
    """URI-level rules; returns the part after ``spiffe://``."""
    if not isinstance(uri, str):
        raise _refuse("a SPIFFE ID must be a str", Reason.NOT_A_STRING, repr(uri))
    if len(uri) > MAX_SPIFFE_ID_BYTES:
        raise _refuse(f"the SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes", Reason.TOO_LONG, uri)
    if "\x00" in uri:
        raise _refuse("the SPIFFE ID contains a NUL byte", Reason.NUL_BYTE, uri)
    if not uri.startswith(SCHEME_PREFIX):
        raise _refuse(
            f"{uri[:60]!r} is not a SPIFFE ID",
            Reason.NOT_SPIFFE_SCHEME,
            uri,
            "a SPIFFE ID starts with the lower-case scheme 'spiffe://'",
        )
    for char, reason in (("?", Reason.QUERY), ("#", Reason.FRAGMENT), ("%", Reason.PERCENT_ENCODING)):
        if char in uri:
            raise _refuse(f"the SPIFFE ID contains {char!r}", reason, uri, _NO_QUERY_HINT)
    rest = uri[len(SCHEME_PREFIX) :]
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        raise _refuse("the SPIFFE ID has user info ('@')", Reason.USERINFO, uri, "remove 'user@'")
    if ":" in authority:
        raise _refuse("the SPIFFE ID has a port", Reason.PORT, uri, "a trust domain never carries a port")
    return rest


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A valid SPIFFE ID; ``path`` is empty (the trust domain's own ID) or starts with ``/``."""

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _validate_path(self.path)
        total = len(SCHEME_PREFIX) + len(self.trust_domain) + len(self.path)
        if total > MAX_SPIFFE_ID_BYTES:
            raise _refuse(
                f"the SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes", Reason.TOO_LONG, self.path
            )

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parses ``spiffe://td/path``; raises :class:`InvalidSpiffeId` (never anything else) when invalid."""
        rest = _check_uri_syntax(uri)
        trust_domain, slash, path = rest.partition("/")
        return cls(trust_domain, slash + path)

    @property
    def uri(self) -> str:
        """The canonical URI form, ``spiffe://td/path``."""
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        """The path segments, e.g. ``("ns", "x", "sa", "y")``."""
        return tuple(self.path[1:].split("/")) if self.path else ()

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """An Istio workload identity: ``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        validate_path_segment(self.namespace)
        validate_path_segment(self.service_account)
        if len(self.uri) > MAX_SPIFFE_ID_BYTES:
            raise _refuse(
                f"the SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes", Reason.TOO_LONG, self.uri
            )

    @classmethod
    def parse(cls, uri: str) -> WorkloadIdentity:
        """Parses ``spiffe://td/ns/<ns>/sa/<sa>``; raises :class:`InvalidSpiffeId` for anything else."""
        return cls.from_spiffe_id(SpiffeId.parse(uri))

    @classmethod
    def from_spiffe_id(cls, spiffe_id: SpiffeId) -> WorkloadIdentity:
        """The workload identity of ``spiffe_id``; its path must be exactly ``/ns/<ns>/sa/<sa>``."""
        segments = spiffe_id.segments
        if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
            raise InvalidSpiffeId(
                f"{spiffe_id.uri[:120]!r} is not a workload identity",
                reason=Reason.NOT_WORKLOAD_PATH,
                value=spiffe_id.uri[:120],
                hint="a workload SPIFFE ID has the path /ns/<namespace>/sa/<service-account>",
            )
        return cls(spiffe_id.trust_domain, segments[1], segments[3])

    @classmethod
    def from_principal(cls, principal: str) -> WorkloadIdentity:
        """Parses the Istio principal form ``td/ns/<ns>/sa/<sa>`` (no scheme)."""
        if not isinstance(principal, str):
            raise _refuse("a principal must be a str", Reason.NOT_A_STRING, repr(principal))
        if principal.startswith(SCHEME_PREFIX):
            raise _refuse(
                "a principal carries no 'spiffe://' prefix",
                Reason.NOT_SPIFFE_SCHEME,
                principal,
                "write the principal as <trust-domain>/ns/<ns>/sa/<sa>",
            )
        return cls.parse(SCHEME_PREFIX + principal)

    @property
    def spiffe_id(self) -> SpiffeId:
        """The generic SPIFFE ID."""
        return SpiffeId(self.trust_domain, f"/ns/{self.namespace}/sa/{self.service_account}")

    @property
    def uri(self) -> str:
        """``spiffe://td/ns/<ns>/sa/<sa>``."""
        return f"{SCHEME_PREFIX}{self.principal}"

    @property
    def principal(self) -> str:
        """Istio's principal form, without the scheme: ``td/ns/<ns>/sa/<sa>``."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri
