"""Request path normalization as Istio's ``meshConfig.pathNormalization`` does it (pure), before
routing and authorization; the normalized path is also what the backend gets, so a policy judges
what the application sees (CVE-2021-31920).

- ``NONE``: the path as received.
- ``BASE`` (Istio's default, Envoy's ``normalize_path``): percent-encoded unreserved characters
  (``%2d %2e %30-%39 %41-%5a %5f %61-%7a %7e``, any case) are decoded once, backslashes become
  slashes, and ``.``/``..`` segments are resolved (RFC 3986 section 5.2.4).
- ``MERGE_SLASHES``: BASE, then runs of slashes become one.
- ``DECODE_AND_MERGE_SLASHES``: ``%2f``/``%5c`` are decoded first, then MERGE_SLASHES.

``%00`` is always refused (400), as is a method that is not upper case. For policy, the authority
is compared in lower case without a trailing dot on the host (CVE-2021-39155), and a header value
with NUL/CR/LF or a second Host is refused (CVE-2019-9900, request smuggling). The query (after ``?``)
is kept as it is; a fragment (``#``) is dropped.
"""

from __future__ import annotations

import re

from mesh.errors import MeshError

__all__ = [
    "MODES",
    "NormalizationError",
    "check_headers",
    "normalize_authority",
    "normalize_method",
    "normalize_target",
]

MODES = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
_UNRESERVED = re.compile(r"%(2[dDeE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])")
_SLASHES = re.compile(r"%(2[fF]|5[cC])")
_NUL = re.compile(r"%00")


class NormalizationError(MeshError):
    """A request the proxy refuses (400) rather than normalize."""

    status = 400


def normalize_target(target: str, mode: str = "BASE") -> str:
    """The request target (path and query) with its path normalized by ``mode``; raises
    NormalizationError for ``%00``."""
    if mode not in MODES:
        raise ValueError(f"unknown path normalization {mode!r}; use one of {', '.join(MODES)}")
    target = target.partition("#")[0]  # Envoy drops a fragment wherever it is (CVE-2021-39156)
    path, question, query = target.partition("?")
    if _NUL.search(path):
        raise NormalizationError(
            "the path has an encoded NUL (%00)", hint="the request is refused, as Istio does"
        )
    if mode == "NONE":
        return target
    if mode == "DECODE_AND_MERGE_SLASHES":
        path = _SLASHES.sub(lambda m: "/" if m.group(1).lower() == "2f" else "\\", path)
    path = _UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), path).replace("\\", "/")
    path = _remove_dot_segments(path if path.startswith("/") else f"/{path}")
    if mode in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"):
        path = re.sub(r"/{2,}", "/", path)
    return f"{path}{question}{query}"


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def normalize_method(method: str) -> str:
    """The method, refused (400) when it is not upper case, as Istio does."""
    if method != method.upper():
        raise NormalizationError(f"method {method!r} is not upper case", hint="send the method in capitals")
    return method


def normalize_authority(authority: str) -> str:
    """``Secret.COM.:80`` -> ``secret.com:80``: lower case, no trailing dot on the host."""
    authority = authority.strip().lower()
    if authority.startswith("["):  # an IPv6 literal keeps its brackets and port
        return authority
    host, colon, port = authority.rpartition(":")
    if not colon or not port.isdigit():
        host, colon, port = authority, "", ""
    return f"{host.rstrip('.')}{colon}{port}"


def check_headers(headers: list[tuple[str, str]]) -> None:
    """Refuses (400) what a policy cannot judge safely: NUL/CR/LF in a header value, or more than
    one Host header."""
    hosts = 0
    for name, value in headers:
        if any(c in value for c in "\x00\r\n"):
            raise NormalizationError(f"header {name!r} has a NUL, CR or LF in its value")
        hosts += name.lower() == "host"
    if hosts > 1:
        raise NormalizationError("the request has more than one Host header", hint="send one Host")
